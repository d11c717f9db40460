"""The embedded default's problems: deterministic, parameter-disjoint splits, references that pass in the real
sandbox, tests that catch every single-op mutant, and files the generic jsonl loader reads."""

import json
import random

import pytest

from algoforge_jax.data import synthetic
from algoforge_jax.errors import UserError
from eval.benchmarks import load_benchmark
from eval.sandbox import Sandbox


@pytest.fixture(scope="module")
def tasks():
    return synthetic.generate(seed=7, n_train=150, n_heldout=40)


def _json(split_tasks):
    return [t.to_json() for t in split_tasks]


def test_generation_is_deterministic(tasks, tmp_path):
    again = synthetic.generate(seed=7, n_train=150, n_heldout=40)
    assert {s: _json(t) for s, t in tasks.items()} == {s: _json(t) for s, t in again.items()}
    other = synthetic.generate(seed=8, n_train=150, n_heldout=40)
    assert _json(other["train"]) != _json(tasks["train"])
    a = synthetic.write_problems(tmp_path / "a", 3, 20, 5)
    b = synthetic.write_problems(tmp_path / "b", 3, 20, 5)
    assert all(a[s].read_bytes() == b[s].read_bytes() for s in synthetic.SPLITS)


def test_splits_are_disjoint_by_parameters(tasks):
    sig = {s: {synthetic.signature(t.family, t.ops) for t in ts} for s, ts in tasks.items()}
    assert sig["train"].isdisjoint(sig["heldout"])
    train_ops = {(t.family, t.ops) for t in tasks["train"]}
    train_kind_combos = {(t.family, tuple(k for k, _ in t.ops)) for t in tasks["train"]}
    for t in tasks["heldout"]:
        assert (t.family, t.ops) not in train_ops
        if len(t.ops) >= 3:  # an unseen composition of operations
            assert (t.family, tuple(k for k, _ in t.ops)) not in train_kind_combos
    assert all(t.problem.task_id.startswith(f"synthetic-{s}/") for s, ts in tasks.items() for t in ts)


def test_heldout_uses_only_operations_seen_in_training():
    # Held-out problems must be within reach: each operation kind (and family) they use occurs in training.
    tasks = synthetic.generate(seed=0, n_train=400, n_heldout=50)
    seen = {(t.family, k) for t in tasks["train"] for k, _ in t.ops}
    assert {(t.family, k) for t in tasks["heldout"] for k, _ in t.ops} <= seen


def test_families_and_difficulties_are_all_present(tasks):
    every = tasks["train"] + tasks["heldout"]
    assert {t.family for t in every} == set(synthetic.FAMILIES)
    assert {t.difficulty for t in every} == {t.difficulty for t in tasks["heldout"]} == {1, 2, 3}
    assert min(len(t.problem.tests) for t in every) >= 6


def test_plan_steps_follow_the_code_line_by_line(tasks):
    for t in tasks["train"]:
        steps = t.plan.splitlines()
        assert [s.split(". ", 1)[0] for s in steps] == [str(i) for i in range(1, len(steps) + 1)]
        if t.family in ("list", "text"):  # one statement per step
            assert len(t.code.splitlines()) - 1 == len(steps) == len(t.ops)


def test_references_pass_and_mutants_fail_in_the_sandbox(tasks):
    sample = tasks["train"][:30] + tasks["heldout"][:10]
    jobs, rng = [], random.Random(0)
    for t in sample:
        jobs.append((t.problem, t.code))
        for mutant in _distinct_mutants(t, rng)[:2]:
            jobs.append((t.problem, synthetic.FAMILIES[t.family].render(mutant, rng)[2]))
    with Sandbox(workers=2) as sb:
        judgements = sb.judge(jobs)
    is_reference = [code == problem.reference_solution for problem, code in jobs]
    assert sum(not r for r in is_reference) >= 40
    for (problem, code), ref, j in zip(jobs, is_reference, judgements):
        assert j.passed == ref, (problem.task_id, code, j.verdict)


def _distinct_mutants(task, rng):
    """Mutants that differ from the reference on some of 300 fresh random inputs (not equivalent programs)."""
    fam, ref = synthetic.FAMILIES[task.family], synthetic.compile_solution(task.code)
    inputs = [fam.random_args(random.Random(i)) for i in range(300)] + fam.edge_args()
    out = []
    for ops in synthetic.mutants(task.family, task.ops, rng):
        fn = synthetic.compile_solution(fam.render(ops, rng)[2])
        if any(synthetic._outcome(fn, a) != synthetic._outcome(ref, a) for a in inputs):
            out.append(ops)
    return out


def test_files_load_as_generic_jsonl_and_round_trip(tmp_path):
    paths = synthetic.write_problems(tmp_path, 1, 12, 4)
    problems = load_benchmark("jsonl", paths["heldout"])
    assert len(problems) == 4 and all(p.entry_point == "solve" and p.tests for p in problems)
    tasks = synthetic.read_tasks(paths["train"])
    assert [t.to_json() for t in tasks] == [json.loads(line) for line in paths["train"].read_text().splitlines()]


def test_bad_synthetic_field_names_file_line_and_field(tmp_path):
    paths = synthetic.write_problems(tmp_path, 1, 3, 1)
    lines = paths["train"].read_text().splitlines()
    row = json.loads(lines[1])
    row["family"] = "poetry"
    lines[1] = json.dumps(row)
    paths["train"].write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"^train.jsonl:2: field 'family': expected one of"):
        synthetic.read_tasks(paths["train"])
    del row["family"], row["plan"]
    lines[1] = json.dumps({**row, "family": "list"})
    paths["train"].write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"^train.jsonl:2: field 'plan': missing"):
        synthetic.read_tasks(paths["train"])


def test_asking_for_more_problems_than_exist_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(synthetic, "FAMILIES", {"dp": synthetic.FAMILIES["dp"]})
    with pytest.raises(UserError, match="could not draw 200 train"):  # dp has under 200 distinct problems
        synthetic.generate(0, 200, 10)


def test_fast_solution_computes_what_the_compiled_program_does(tasks):
    # Mutants run as chains of per-line functions: that path must agree with the real program, mutants included.
    rng, checked = random.Random(1), 0
    for t in tasks["train"][:60]:
        fam = synthetic.FAMILIES[t.family]
        for ops in [t.ops, *synthetic.mutants(t.family, t.ops, rng)[:5]]:
            code = fam.render(ops, rng)[2]
            fast, real = synthetic.fast_solution(code), synthetic.compile_solution(code)
            checked += fast is not real  # straight-line programs take the fast path
            for args in fam.edge_args() + [fam.random_args(rng) for _ in range(10)]:
                assert synthetic._outcome(fast, args) == synthetic._outcome(real, args), (code, args)
    assert checked > 50
