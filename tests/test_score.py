"""`algoforge score` end to end, as a user runs it: a small MBPP file with reference, wrong, perturbed and empty
samples; the results file, the summary, resuming, and one-line errors."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import jsonl_text
from eval.benchmarks import load_benchmark
from eval.judging import Sample, judge_samples, program_for, result_line
from eval.sandbox import Sandbox
from eval.score import parse_ks, read_done, read_samples
from perturb import perturb_assert

ROOT = pathlib.Path(__file__).parents[1]
MBPP = ROOT / "eval" / "data" / "mbpp" / "mbpp.jsonl"
RESULT_FIELDS = {"task_id", "sample_index", "verdict", "passed", "tests", "time_s", "peak_mem_mb"}


def _score(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "algoforge_jax", "score", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Tasks 11-14 of MBPP; task 12's first expected output is changed; samples as listed below."""
    tmp = tmp_path_factory.mktemp("score")
    rows = {r["task_id"]: r for r in map(json.loads, MBPP.read_text().splitlines()) if 11 <= r["task_id"] <= 14}
    rows[12]["test_list"][0] = perturb_assert(rows[12]["test_list"][0])
    (tmp / "mbpp.jsonl").write_text(jsonl_text(rows.values()))
    samples = [
        {"task_id": "Mbpp/11", "completion": f"Here you go:\n```python\n{rows[11]['code']}\n```\n"},
        {"task_id": "Mbpp/11", "completion": "```python\ndef remove_Occ(s, ch):\n    return s\n```"},
        {"task_id": "Mbpp/12", "completion": rows[12]["code"]},
        {"task_id": 13, "completion": rows[13]["code"]},  # a bare number, as other harnesses write MBPP ids
        {"task_id": "Mbpp/14", "completion": "```python\n\n```"},
    ]
    (tmp / "samples.jsonl").write_text(jsonl_text(samples))
    args = ["--benchmark", "mbpp", "--problems", str(tmp / "mbpp.jsonl"), "--samples", str(tmp / "samples.jsonl"),
            "--out", str(tmp / "results.jsonl"), "--k", "1,2,5", "--workers", "2"]
    return tmp, args, _score(*args)


def test_results_file_has_the_spec_fields_and_verdicts(run):
    tmp, _, proc = run
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in (tmp / "results.jsonl").read_text().splitlines()]
    assert all(set(r) == RESULT_FIELDS for r in results)
    assert [(r["task_id"], r["sample_index"], r["verdict"], r["passed"]) for r in results] == [
        ("Mbpp/11", 0, "PASS", True), ("Mbpp/11", 1, "WA", False), ("Mbpp/12", 0, "WA", False),
        ("Mbpp/13", 0, "PASS", True), ("Mbpp/14", 0, "NO_CODE", False),
    ]
    passed = results[0]
    assert len(passed["tests"]) == 3 and all(set(t) == {"verdict", "time_s", "peak_mem_mb"} for t in passed["tests"])
    assert all(t["verdict"] == "PASS" for t in passed["tests"])
    assert passed["time_s"] >= 0 and passed["peak_mem_mb"] > 0
    assert results[4]["tests"] == []
    assert "judging" in proc.stderr  # the progress bar


def test_summary_on_stdout_and_next_to_the_results(run):
    tmp, _, proc = run
    summary = json.loads(proc.stdout)
    assert summary == json.loads((tmp / "results.summary.json").read_text())
    assert summary["pass@1"] == pytest.approx((0.5 + 0 + 1 + 0) / 4)
    assert "pass@2" not in summary and "pass@5" not in summary  # task 12-14 have one sample each
    assert summary["verdicts"]["PASS"] == 2 and summary["verdicts"]["WA"] == 2 and summary["verdicts"]["NO_CODE"] == 1
    assert summary["n_tasks"] == 4 and summary["n_samples"] == 5 and summary["benchmark_tasks"] == 4
    assert summary["passing_mean_time_s"] >= 0 and summary["passing_mean_peak_mem_mb"] > 0
    assert 0 < summary["maintainability_index"] <= 100


def test_rerun_resumes_without_judging_again(run):
    tmp, args, first = run
    proc = _score(*args)
    assert proc.returncode == 0, proc.stderr
    assert "resuming, 5 of 5 samples" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["judged_now"] == 0 and summary["verdicts"] == json.loads(first.stdout)["verdicts"]
    assert len((tmp / "results.jsonl").read_text().splitlines()) == 5


def test_bad_input_is_a_one_line_error(run, tmp_path):
    tmp, args, _ = run
    (tmp_path / "s.jsonl").write_text('{"task_id": "Mbpp/11", "completion": "x"}\n\n{"task_id": "Mbpp/99", "completion": "x"}\n')
    bad = [*args[:5], str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "r.jsonl")]
    proc = _score(*bad)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("algoforge score: error: s.jsonl:3: field 'task_id': 'Mbpp/99' is not a task of "
                                   "mbpp (wrong --benchmark, --split or --problems?)")
    proc = _score("--benchmark", "jsonl", "--samples", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "r.jsonl"))
    assert proc.returncode == 2 and "give its file with --problems" in proc.stderr


LIVEBENCH_SOLUTIONS = [
    {"task_id": "lb-stdin-1", "completion": "```python\nprint(int(input()) + 1)\n```"},
    {"task_id": "lb-fn-1", "completion": "```python\nfrom typing import List\nclass Solution:\n"
                                          "    def topKSum(self, nums: List[int], k: int) -> int:\n"
                                          "        return sum(sorted(nums)[-k:])\n```"},
    # a completion task: the answer continues the given partial solution, which score puts in front
    {"task_id": "lb-completion-1", "completion": "```python\n    print(2 * int(sys.stdin.readline()))\nmain()\n```"},
]


def test_livebench_fixture_end_to_end(tmp_path):
    (tmp_path / "s.jsonl").write_text(jsonl_text(LIVEBENCH_SOLUTIONS))
    proc = _score("--benchmark", "livebench", "--problems", str(ROOT / "tests" / "fixtures" / "livebench_coding.jsonl"),
                  "--samples", str(tmp_path / "s.jsonl"), "--out", str(tmp_path / "r.jsonl"))
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert [(r["task_id"], r["verdict"]) for r in results] == [(s["task_id"], "PASS") for s in LIVEBENCH_SOLUTIONS]


def test_a_sandbox_that_cannot_start_is_a_one_line_error(run, tmp_path):
    """A copy of eval/ whose workers cannot set up their namespaces: one line naming the cause, no traceback."""
    tmp, args, _ = run
    shutil.copytree(ROOT / "eval", tmp_path / "eval", ignore=shutil.ignore_patterns("data"))
    with open(tmp_path / "eval" / "_jail.py", "a") as f:
        f.write("\n\ndef enter_namespaces(visible, hidden):\n    raise OSError('no namespaces here (test)')\n")
    out = [*args[:-4], "--out", str(tmp_path / "r.jsonl"), "--k", "1", "--workers", "1"]
    proc = subprocess.run([sys.executable, "-m", "algoforge_jax", "score", *out], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == ("algoforge score: error: the sandbox failed: sandbox worker 0 could not start: "
                         "OSError: no namespaces here (test)")
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- the pieces, without the sandbox


def test_program_for_extracts_and_prefixes_completion_tasks():
    problems = {p.task_id: p for p in load_benchmark("livebench", ROOT / "tests" / "fixtures" / "livebench_coding.jsonl")}
    completion = problems["lb-completion-1"]
    assert program_for(completion, "```python\n    pass\n```") == "import sys\ndef main():\n    pass\n"
    whole = "import sys\ndef main():\n    pass\n"
    assert program_for(completion, whole) == whole  # already starts with the partial solution
    assert program_for(problems["lb-stdin-1"], "no fence, whole text") == "no fence, whole text"
    assert program_for(completion, "   ") == ""  # NO_CODE, not the prefix alone


def test_judge_samples_in_batches_in_order():
    """The library half of `score`, as the Planner->Coder loop and GRPO call it: no files, no flags."""
    problem = load_benchmark("livebench", ROOT / "tests" / "fixtures" / "livebench_coding.jsonl")[0]
    completions = ["```python\nprint(int(input()) + 1)\n```", "print(0)", "no code at all: ```python\n```",
                   "```python\nprint(int(input()) + 1)\n```", "```python\nwhile True: pass\n```"]
    samples = [Sample(problem, i, program_for(problem, c)) for i, c in enumerate(completions)]
    seen: list = []
    with Sandbox(workers=1) as sandbox:
        judgements = judge_samples(sandbox, samples, batch=2, on_batch=lambda b, j: seen.append(
            ([s.sample_index for s in b], [x.verdict.value for x in j])))
    assert seen == [([0, 1], ["PASS", "WA"]), ([2, 3], ["NO_CODE", "PASS"]), ([4], ["TLE"])]
    assert [result_line(s, j)["verdict"] for s, j in zip(samples, judgements)] == ["PASS", "WA", "NO_CODE",
                                                                                   "PASS", "TLE"]


def test_parse_ks():
    assert parse_ks("1,5, 10") == (1, 5, 10)
    for bad in ("", "1,x", "0,1"):
        with pytest.raises(UserError, match="--k"):
            parse_ks(bad)


def test_read_samples_indices_aliases_and_errors(tmp_path):
    problems = load_benchmark("mbpp")
    path = tmp_path / "s.jsonl"
    path.write_text('{"task_id": 11, "completion": "a"}\n{"task_id": "Mbpp/11", "completion": "b"}\n'
                    '{"task_id": "12", "completion": "c"}\n')
    samples = read_samples(path, problems, "mbpp")
    assert [(s.problem.task_id, s.sample_index, s.program) for s in samples] == [
        ("Mbpp/11", 0, "a"), ("Mbpp/11", 1, "b"), ("Mbpp/12", 0, "c")]
    for line, message in [('{"task_id": 11}', "s.jsonl:1: field 'completion': missing"),
                          ('{"task_id": 11, "completion": null}', "s.jsonl:1: field 'completion': expected a string"),
                          ('{"task_id": true, "completion": "x"}', "s.jsonl:1: field 'task_id': expected a string or an integer, got bool"),
                          ("[1]", "s.jsonl:1: expected a JSON object"), ("", "s.jsonl: no samples")]:
        path.write_text(line + "\n")
        with pytest.raises(UserError, match=message.replace("(", "\\(")):
            read_samples(path, problems, "mbpp")


def test_read_done_drops_a_line_cut_by_a_crash_and_unknown_samples(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text('{"task_id": "Mbpp/11", "sample_index": 0, "verdict": "PASS"}\n'
                   '{"task_id": "Mbpp/11", "sample_index": 9, "verdict": "PASS"}\n'
                   '{"task_id": "Mbpp/12", "sample_index": 0, "verd')
    done = read_done(out, {("Mbpp/11", 0), ("Mbpp/12", 0)})
    assert list(done) == [("Mbpp/11", 0)]
