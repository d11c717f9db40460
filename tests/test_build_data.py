"""`algoforge build-data` end to end with real parts: a tiny random Qwen2 teacher saved as an orbax checkpoint with
the bundled Qwen2.5 tokenizer, the jitted sampler, a real sandbox, three problems in the SPEC's jsonl format.

A random teacher writes no working code, so most tests judge through `KnownPrograms` (as tests/test_rollout.py
does): the real sandbox runs, for each job, a right or a wrong program for that job's problem, chosen by a hash of
the program the teacher wrote; `sq` always gets the sampled program itself, so nothing passes there. Which plans
must be kept then follows from the sampled text alone, and the test recomputes it from the chunk records.
"""

import json
import shutil
import zlib

import pytest

from algoforge_jax import build_data, cli, sharding
from algoforge_jax.checkpoints import save_model
from algoforge_jax.data import rejection
from algoforge_jax.data.datasets import read_rows
from algoforge_jax.models.build import init_model
from algoforge_jax.models.qwen2 import PRESETS
from algoforge_jax.tokenizer import BUNDLED_QWEN25
from eval.sandbox import Sandbox
import tiny_agents
from hf_tiny import one_device_mesh

GP, GC = 2, 2
PROBLEMS = [*tiny_agents.PROBLEMS[:2],  # add, rev: a right and a wrong program exist for each
            {"task_id": "sq", "prompt": "Return n squared.", "entry_point": "sq",
             "tests": [{"type": "assert", "code": "assert sq(3) == 9"}]}]
RIGHT = tiny_agents.RIGHT
WRONG = {"add": "def add(a, b):\n    return a - b", "rev": "def rev(s):\n    return s"}


def passes(task_id: str, program: str) -> bool:
    """The hidden rule of KnownPrograms: whether the slot that wrote `program` gets a right program."""
    return task_id in RIGHT and bool(program.strip()) and zlib.crc32(program.encode()) % 2 == 0


class KnownPrograms:
    """A judge: the real sandbox runs RIGHT or WRONG of the job's problem by `passes`, or the sampled program
    itself for a problem without a RIGHT one. Records every batch of jobs it is given."""

    def __init__(self, sandbox):
        self.sandbox, self.calls = sandbox, []

    def __call__(self, jobs):
        self.calls.append([(problem.task_id, program) for problem, program in jobs])
        return self.sandbox.judge([
            (p, program if p.task_id not in RIGHT else (RIGHT if passes(p.task_id, program) else WRONG)[p.task_id])
            for p, program in jobs])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    model = init_model(PRESETS["tiny"], one_device_mesh(), sharding.SAMPLE_RULES, seed=0)
    return save_model(tmp_path_factory.mktemp("teacher") / "model", model, tokenizer_dir=BUNDLED_QWEN25)


@pytest.fixture(scope="module")
def problems(tmp_path_factory):
    path = tmp_path_factory.mktemp("problems") / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PROBLEMS))
    return path


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as sb:
        yield sb


def argv(teacher, problems, out, *extra):
    return ["build-data", "--teacher", str(teacher), "--problems", str(problems), "--out", str(out),
            "--num-plans", str(GP), "--num-programs", str(GC), "--max-new-tokens-plan", "8",
            "--max-new-tokens-code", "12", "--chunk-size", "2", "--seed", "3",
            "--top-p", "1", *extra]  # top-p sorts the 152k vocabulary each step: slow on CPU


def run(judge, *args):
    """The command's main with an injected judge, on parsed flags (as `algoforge build-data` parses them)."""
    parsed = cli.build_parser("build-data").parse_args(argv(*args))
    return build_data.main(parsed, judge=judge)


def chunk_records(out):
    return [json.loads(p.read_text()) for p in sorted((out / "chunks").glob("chunk-*.json"))]


def expected_rows(records, keep):
    """Kept rows recomputed from the records by the judge's rule: each distinct non-empty plan with a program that
    `passes`, paired with its first such program."""
    rows = []
    for record in records:
        for problem in record["problems"]:
            kept = {}
            for plan in problem["plans"]:
                good = [p["code"] for p in plan["programs"] if passes(problem["task_id"], p["code"])]
                if plan["plan"].strip() and good:
                    kept.setdefault(plan["plan"].strip(), good[0])
            items = list(kept.items())[: 1 if keep == "first" else None]
            rows += [(problem["task_id"], plan, code) for plan, code in items]
    return rows


@pytest.fixture(scope="module")
def uninterrupted(teacher, problems, sandbox, tmp_path_factory):
    """(out dir, judge) of one whole run."""
    out = tmp_path_factory.mktemp("whole") / "data"
    judge = KnownPrograms(sandbox)
    assert run(judge, teacher, problems, out) == 0
    return out, judge


def test_every_try_is_judged_and_counted(uninterrupted):
    out, judge = uninterrupted
    jobs = [job for call in judge.calls for job in call]
    assert len(judge.calls) == 2  # one judging batch per chunk: [add, rev], [sq]
    assert [t for t, _ in jobs] == ["add"] * GP * GC + ["rev"] * GP * GC + ["sq"] * GP * GC
    summary = json.loads((out / "summary.json").read_text())
    assert summary["problems"] == 3
    assert summary["plans_tried"] == 3 * GP and summary["programs_tried"] == 3 * GP * GC
    assert sum(summary["verdicts"].values()) == 3 * GP * GC
    assert [(p["task_id"], p["plans_tried"], p["programs_tried"]) for p in summary["per_problem"]] == [
        (t, GP, GP * GC) for t in ("add", "rev", "sq")]
    # Every program's recorded verdict is the sandbox's: PASS exactly where the judge ran the right program.
    records = chunk_records(out)
    for problem in (p for r in records for p in r["problems"]):
        for plan in problem["plans"]:
            for program in plan["programs"]:
                assert (program["verdict"] == "PASS") == passes(problem["task_id"], program["code"])
    assert summary["programs_passed"] == sum(passes(t, code) for t, code in jobs)


def test_kept_rows_are_exactly_the_passing_plans(uninterrupted):
    out, _ = uninterrupted
    expected = expected_rows(chunk_records(out), "all")
    assert 0 < len(expected) < 2 * GP  # something kept, not everything: the filter is tested both ways
    assert "sq" not in {t for t, _, _ in expected}
    coder = read_rows(out / "coder.jsonl", "coder")
    planner = read_rows(out / "planner.jsonl", "planner")
    assert [(r["task_id"], r["plan"], r["code"]) for r in coder] == expected
    assert [(r["task_id"], r["plan"]) for r in planner] == [(t, plan) for t, plan, _ in expected]
    assert all(r["problem"] == PROBLEMS[["add", "rev"].index(r["task_id"])]["prompt"] for r in coder)
    assert {r["entry_point"] for r in coder} <= {"add", "rev"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kept"] == len(expected) == sum(p["kept"] for p in summary["per_problem"])


def test_rerun_with_keep_first_only_refilters(uninterrupted, teacher, problems, sandbox, tmp_path):
    out = tmp_path / "data"
    shutil.copytree(uninterrupted[0], out)
    judge = KnownPrograms(sandbox)
    assert run(judge, teacher, problems, out, "--keep", "first") == 0
    assert judge.calls == []  # every chunk was on disk: nothing sampled or judged again
    coder = read_rows(out / "coder.jsonl", "coder")
    assert [(r["task_id"], r["plan"], r["code"]) for r in coder] == expected_rows(chunk_records(out), "first")
    assert len({r["task_id"] for r in coder}) == len(coder)


def test_resume_skips_finished_chunks_and_ends_like_an_uninterrupted_run(uninterrupted, teacher, problems,
                                                                         sandbox, tmp_path):
    whole, _ = uninterrupted
    out = tmp_path / "data"
    first = KnownPrograms(sandbox)
    assert run(first, teacher, problems, out, "--limit", "2") == 0  # stops after chunk 0: [add, rev]
    assert [{t for t, _ in call} for call in first.calls] == [{"add", "rev"}]
    second = KnownPrograms(sandbox)
    assert run(second, teacher, problems, out) == 0  # chunk 0 on disk: only chunk 1 is sampled and judged
    assert [{t for t, _ in call} for call in second.calls] == [{"sq"}]
    for name in ("planner.jsonl", "coder.jsonl", "summary.json"):
        assert (out / name).read_text() == (whole / name).read_text(), name


def test_command_with_the_real_sandbox(teacher, problems, tmp_path, capsys):
    out = tmp_path / "data"
    assert cli.main([*argv(teacher, problems, out), "--workers", "2"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["programs_tried"] == 3 * GP * GC and sum(printed["verdicts"].values()) == 3 * GP * GC
    records = chunk_records(out)
    assert [r["task_ids"] for r in records] == [["add", "rev"], ["sq"]]
    # Whatever a random teacher writes, the rows are the plans the sandbox passed (most likely none).
    lines = (out / "coder.jsonl").read_text().splitlines()
    assert len(lines) == printed["kept"] == len(rejection.kept_rows(records, "all"))


def test_bad_input_fails_with_one_line_naming_it(teacher, problems, uninterrupted, tmp_path, capsys):
    out, _ = uninterrupted
    cases = [
        (argv(teacher, problems, tmp_path / "a", "--num-plans", "0"), "--num-plans: expected a positive integer"),
        (argv(teacher, problems, tmp_path / "b", "--temperature", "0"), "--temperature: expected a number > 0"),
        (argv(tmp_path / "nope", problems, tmp_path / "c"), f"--teacher: {tmp_path / 'nope'}: no such model"),
        (argv(teacher, tmp_path / "none.jsonl", tmp_path / "d"), f"{tmp_path / 'none.jsonl'}: no such file"),
        (argv(teacher, problems, out, "--seed", "4"), "was sampled with --seed 3, not 4"),
    ]
    for args, message in cases:
        assert cli.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("algoforge build-data: error: ") and message in err[0], err


def test_chunk_store_and_filter(tmp_path):
    plan = lambda text, *verdicts: {"plan": text, "programs": [  # noqa: E731
        {"code": f"code {i}", "verdict": v} for i, v in enumerate(verdicts)]}
    record = {"task_ids": ["t"], "problems": [{"task_id": "t", "problem": "p", "entry_point": None, "plans": [
        plan("A", "WA", "PASS"), plan("  ", "PASS", "PASS"), plan("A", "PASS", "WA"), plan("B", "PASS", "RE")]}]}
    assert rejection.passing_plans(record["problems"][0]) == [("A", "code 1"), ("B", "code 0")]
    assert [r["plan"] for r in rejection.kept_rows([record], "first")] == ["A"]
    assert rejection.summary([record], "all")["per_problem"][0] == {
        "task_id": "t", "plans_tried": 4, "programs_tried": 8, "programs_passed": 5, "plans_passed": 2, "kept": 2}
    store = rejection.ChunkStore(tmp_path)
    store.save(0, record)
    assert store.load(0, ["t"]) == record
    assert store.load(0, ["t", "u"]) is None and store.load(1, ["t"]) is None
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file behind
