"""`algoforge run`: the whole pipeline on a shrunken embedded default, its report, and a rerun that skips."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# On one CPU device, as README command 1 runs (sharded RL runs in test_rl.py and test_multiprocess_train.py): with
# the suite's 8 fake devices on 2 busy cores the pipeline's collectives missed XLA's 40 s rendezvous in CI.
SMALL = ["--set", "train.steps=3", "--set", "train.checkpoint_every=2", "--set", "train.eval_every=2",
         "--set", "rl.steps=2", "--set", "rl.checkpoint_every=1", "--set", "rl.problems_per_step=4",
         "--set", "rl.num_plans=2", "--set", "rl.num_programs=2", "--set", "rl.eval_limit=4"]


def _run(workdir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "algoforge_jax", "run", "--config", str(REPO / "configs" / "tiny.py"),
           "--workdir", str(workdir), *SMALL, *extra]
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "").strip()
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "XLA_FLAGS": flags})


@pytest.mark.slow
def test_pipeline_writes_the_report_and_a_rerun_skips_every_stage(tmp_path):
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    for path in ("data/problems/heldout.jsonl", "sft-planner/model", "sft-coder/model", "sft-planner/metrics.jsonl",
                 "rl/planner/model", "rl/coder/model", "rl/metrics.jsonl", "report.md",
                 "eval/synthetic-heldout/planner-coder/sft/summary.json",
                 "eval/synthetic-heldout/planner-coder/rl/samples.jsonl"):
        assert (tmp_path / path).exists(), path
    assert not (tmp_path / "rl" / "eval.json").exists()  # one held-out evaluation a pair: the eval stage's
    report = json.loads((tmp_path / "report.json").read_text())
    summaries = {pair: json.loads((tmp_path / f"eval/synthetic-heldout/planner-coder/{pair}/summary.json").read_text())
                 for pair in ("sft", "rl")}
    scores = report["pass@1"]["synthetic-heldout"]["planner-coder"]
    assert scores == {pair: summary["pass@1"] for pair, summary in summaries.items()}
    change = report["heldout_change"]
    assert change["problems"] == 4 and change["gained"] - change["lost"] == round(4 * (scores["rl"] - scores["sft"]))
    stages = json.loads((tmp_path / "run.json").read_text())["stage_seconds"]
    assert set(stages) == {"data", "sft-planner", "sft-coder", "rl", "eval", "report"}
    assert report["plots"] == {"sft": "sft_loss.png", "rl": "rl_curves.png"}
    for plot in report["plots"].values():
        assert (tmp_path / plot).read_bytes()[:4] == b"\x89PNG" and f"]({plot})" in (tmp_path / "report.md").read_text()
    assert {(e["stage"], e["n_tasks"]) for e in report["evaluations"]} == {("sft", 4), ("rl", 4)}
    assert len(report["examples"]) == 3
    # the report is written before its own stage's seconds are
    assert report["wall_s"] == pytest.approx(sum(stages.values()) - stages["report"], abs=1e-2)
    assert [json.loads(l)["step"] for l in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    model_files = sorted(p.stat().st_mtime_ns for p in (tmp_path / "rl").rglob("*") if p.is_file()
                         and "model" in p.parts)
    again = _run(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("data", "sft-planner", "sft-coder", "rl", "eval"):
        assert f"{stage}: done earlier, skipped" in again.stderr
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "rl").rglob("*") if p.is_file()
                  and "model" in p.parts) == model_files
    assert json.loads((tmp_path / "report.json").read_text())["pass@1"] == report["pass@1"]


def test_run_refuses_own_data_and_bad_keys(tmp_path):
    own = _run(tmp_path, "--set", "planner.train_data=rows.jsonl")
    assert own.returncode == 2 and own.stderr.strip().count("\n") == 0 and "embedded default" in own.stderr
    bad = _run(tmp_path, "--set", "rl.stepz=3")
    assert bad.returncode == 2 and "rl.stepz" in bad.stderr
