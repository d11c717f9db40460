"""The run report from small hand-made run files: real matplotlib PNGs, tables holding the files' numbers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from algoforge_jax import cli
from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import jsonl_text
from algoforge_jax.report import build_report, heldout_change, model_stage, pick_examples, write_report
from eval.metrics import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
HELDOUT_DIR = Path("eval/synthetic-heldout/planner-coder")
PROBLEMS = [{"task_id": "synthetic-heldout/00000", "prompt": "Given a list of integers xs, return their sum."},
            {"task_id": "synthetic-heldout/00001", "prompt": "Given a string s, return it reversed."}]
SAMPLES = [  # the RL pair's samples of the two problems: (plan, completion, verdict)
    ("1. Return the sum.", "```python\ndef solve(xs):\n    return sum(xs)\n```", "PASS"),
    ("1. Reverse s.", "```python\ndef solve(s):\n    return s\n```", "WA"),
]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _evaluation(folder: Path, benchmark: str, mode: str, models: dict, verdicts: list[str], samples=None) -> dict:
    """An `algoforge eval` output directory: results (and samples) as given, the summary from eval.metrics."""
    results = [{"task_id": p["task_id"], "sample_index": 0, "verdict": v, "passed": v == "PASS",
                "time_s": 0.01 * (i + 1), "peak_mem_mb": 10.0 + i, "program": "def solve(xs):\n    return sum(xs)\n"}
               for i, (p, v) in enumerate(zip(PROBLEMS, verdicts))]
    summary = {"benchmark": benchmark, "mode": mode, "n": 1, "models": models, **summarize(results, [1]),
               "truncated": 1}
    _write(folder / "summary.json", json.dumps(summary))
    _write(folder / "results.jsonl", jsonl_text({k: v for k, v in r.items() if k != "program"} for r in results))
    if samples:
        _write(folder / "samples.jsonl", jsonl_text(
            {"task_id": p["task_id"], "sample_index": 0, "plan": plan, "completion": completion}
            for p, (plan, completion, _) in zip(PROBLEMS, samples)))
    return summary


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished run's files: timings, SFT and RL metrics, rl/eval.json, the eval stage's two evaluations and two
    MBPP evaluations (a base model's and the RL Coder's)."""
    d = tmp_path
    _write(d / "run.json", json.dumps({"stage_seconds": {"data": 1.5, "sft-planner": 10.25, "rl": 20.0}}))
    for agent, scale in (("planner", 1.0), ("coder", 2.0)):
        _write(d / f"sft-{agent}" / "metrics.jsonl", jsonl_text(
            {"step": s, "loss": scale * 5 / s, **({"eval_loss": scale * 6 / s} if s % 2 == 0 else {})}
            for s in range(1, 5)))
    _write(d / "rl" / "metrics.jsonl", jsonl_text(
        {"step": s, "pass_rate": 0.1 * s, **{f"{a}/{k}": 0.01 * s for a in ("planner", "coder")
                                             for k in ("reward_mean", "pass_rate", "kl", "clip_fraction")}}
        for s in range(1, 4)))
    _write(d / "rl" / "eval.json", json.dumps({
        when: {"pass_at_1": p, "solved_any": p, "problems": 2, "samples_per_problem": 1, "temperature": 0.0}
        for when, p in (("before", 0.125), ("after", 0.375))}))
    _write(d / "data" / "problems" / "heldout.jsonl", jsonl_text(PROBLEMS))
    pair = {a: str(d / stage / a / "model") for stage, a in (("rl", "planner"), ("rl", "coder"))}
    _evaluation(d / HELDOUT_DIR / "rl", "synthetic-heldout", "planner-coder", pair, [v for *_, v in SAMPLES], SAMPLES)
    _evaluation(d / HELDOUT_DIR / "sft", "synthetic-heldout", "planner-coder",
                {a: str(d / f"sft-{a}" / "model") for a in ("planner", "coder")}, ["WA", "CE"], SAMPLES)
    _evaluation(d / "eval/mbpp/direct/base", "mbpp", "direct", {"coder": "/models/Qwen2.5-Coder-7B"}, ["PASS", "PASS"])
    _evaluation(d / "eval/mbpp/direct", "mbpp", "direct", {"coder": "rl/coder/model"}, ["PASS", "RE"])
    return d


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_MAGIC, path
    pixels = image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) >= 300 and np.ptp(pixels) > 0, pixels.shape  # drawn, not blank


def test_report_holds_the_files_numbers_and_links_valid_plots(run_dir):
    report = write_report(run_dir)
    assert report["pass@1"] == {"synthetic-heldout": {"planner-coder": {"sft": 0.125, "rl": 0.375}},
                                "mbpp": {"direct": {"base": 1.0, "rl": 0.5}}}
    assert report["wall_s"] == pytest.approx(31.75)
    assert json.loads((run_dir / "report.json").read_text()) == report
    for name in ("sft_loss.png", "rl_curves.png"):
        _assert_png(run_dir / name)
    md = (run_dir / "report.md").read_text()
    assert "![SFT loss of the Planner and the Coder](sft_loss.png)" in md and "](rl_curves.png)" in md
    assert "| synthetic-heldout | planner-coder | - | 0.125 | 0.375 |" in md
    assert "| mbpp | direct | 1.000 | - | 0.500 |" in md
    assert "| total | 31.8 |" in md
    # verdict columns: those some evaluation has (PASS, WA, RE, CE), with each evaluation's counts
    assert "| pass@1 | PASS | WA | RE | CE | CPU s (passing)" in md
    assert "| mbpp | direct | base | 2 x 1 | 1.000 | 2 | 0 | 0 | 0 | 0.0150 | 10.5 |" in md
    assert "| synthetic-heldout | planner-coder | sft | 2 x 1 | 0.000 | 0 | 1 | 0 | 1 | - | - |" in md
    assert "- `sft-coder`: step 4, loss 2.5, eval_loss 3" in md


def test_examples_show_the_rl_pairs_plan_program_and_verdicts(run_dir):
    report = build_report(run_dir)
    examples = report["examples"]
    assert [(e["task_id"], e["verdict"], e["sft_verdict"]) for e in examples] == [
        ("synthetic-heldout/00000", "PASS", "WA"), ("synthetic-heldout/00001", "WA", "CE")]
    assert [(e["problem"], e["plan"], e["completion"]) for e in examples] == [
        (p["prompt"], plan, completion) for p, (plan, completion, _) in zip(PROBLEMS, SAMPLES)]
    md = write_report(run_dir) and (run_dir / "report.md").read_text()
    assert "### `synthetic-heldout/00001` (sample 0): WA; the SFT pair: CE" in md
    assert "def solve(s):\n    return s" in md and "1. Reverse s." in md


def test_a_cut_short_rl_evaluation_does_not_mix_into_the_eval_stages_cell(run_dir):
    _write(run_dir / "rl" / "eval.json", json.dumps({"before": {"pass_at_1": 0.9}}))  # RL stopped before "after"
    report = build_report(run_dir)
    assert report["pass@1"]["synthetic-heldout"]["planner-coder"] == {"sft": 0.0, "rl": 0.5}


def test_missing_files_are_left_out_and_said(tmp_path):
    _write(tmp_path / "rl" / "eval.json", json.dumps({"before": {"pass_at_1": 0.5}}))
    report = write_report(tmp_path)
    assert report["pass@1"] == {"synthetic-heldout": {"planner-coder": {"sft": 0.5}}} and report["plots"] == {}
    assert not list(tmp_path.glob("*.png"))
    md = (tmp_path / "report.md").read_text()
    assert "(SFT loss of the Planner and the Coder: no metrics)" in md
    assert "(no evaluation of the RL pair with its samples)" in md


@pytest.mark.parametrize("path, stage", [
    ("runs/tiny/rl/planner/model", "rl"), ("/abs/run/sft-coder/model", "sft"), ("sft-planner/model", "sft"),
    ("/models/Qwen2.5-7B-Instruct", "base"), ("runs/rl/model", "base"),
])
def test_model_stage_reads_the_workdir_layout(path, stage):
    assert model_stage(path) == stage


def test_pick_examples_shows_a_pass_then_one_per_failure_kind():
    rows = [{"i": i, "verdict": v} for i, v in enumerate(["WA", "WA", "PASS", "CE", "RE"])]
    assert [r["i"] for r in pick_examples(rows, 3)] == [2, 0, 3]
    assert [r["i"] for r in pick_examples(rows[:2], 3)] == [0, 1]


def test_a_foreign_summary_is_a_one_line_error(run_dir, capsys):
    _write(run_dir / "eval" / "odd" / "summary.json", json.dumps({"pass@1": 0.5}))
    with pytest.raises(UserError, match=r"odd/summary.json: not an `algoforge eval` summary \(no benchmark, mode"):
        build_report(run_dir)
    assert cli.main(["report", "--workdir", str(run_dir / "nowhere")]) == 2
    assert capsys.readouterr().err.strip() == f"algoforge report: error: --workdir {run_dir / 'nowhere'}: no such " \
                                              "directory"


def test_heldout_change_counts_problems_gained_and_lost_with_a_sign_test(run_dir):
    """9 problems changed, 8 for the better: p = 2 (C(9,0) + C(9,1)) / 2^9; unchanged problems do not count."""
    before, after = [1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1], [1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1]
    ev = {when: {"pass_at_1": sum(v) / len(v), "solved_any": sum(v) / len(v), "problems": len(v),
                 "samples_per_problem": 1, "temperature": 0.0, "per_problem": v}
          for when, v in (("before", before), ("after", after))}
    (run_dir / "rl" / "eval.json").write_text(json.dumps(ev))
    report = write_report(run_dir)
    assert report["heldout_change"] == {"problems": 11, "gained": 8, "lost": 1, "sign_test_p": 20 / 512}
    assert "RL solves 8 of the 11 problems more often than the SFT pair did and 1 less often" in \
        (run_dir / "report.md").read_text()
    assert heldout_change({"a": 0.5, "b": 1.0}, {"a": 0.5, "b": 1.0, "c": 0.0}) == {
        "problems": 2, "gained": 0, "lost": 0, "sign_test_p": 1.0}


def test_without_rl_eval_the_change_comes_from_the_eval_stage_results(run_dir):
    """`algoforge run` writes no rl/eval.json: the eval stage's two held-out evaluations give pass@1 and the change
    (in the fixture the SFT pair fails both problems and the RL pair passes the first: one problem gained)."""
    (run_dir / "rl" / "eval.json").unlink()
    report = write_report(run_dir)
    assert report["pass@1"]["synthetic-heldout"]["planner-coder"] == {"sft": 0.0, "rl": 0.5}
    assert report["heldout_change"] == {"problems": 2, "gained": 1, "lost": 0, "sign_test_p": 1.0}


def test_an_rl_eval_without_per_problem_results_has_no_change_line(run_dir):
    report = write_report(run_dir)  # the fixture's eval.json predates per_problem
    assert report["heldout_change"] is None
    assert "more often than the SFT pair" not in (run_dir / "report.md").read_text()
