"""Every upstream reference solution passes in our sandbox (MBPP but its two broken tasks, sanitized MBPP,
HumanEval, the fixture formats), and fails once one expected output of its problem is changed."""

from __future__ import annotations

import pathlib

import pytest

from eval.benchmarks import load_benchmark
from eval.problems import Verdict
from eval.sandbox import Sandbox
from perturb import perturb_problem

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
MBPP_BROKEN = {"Mbpp/367", "Mbpp/927"}  # test_setup_code builds trees from a Node class only the solution defines


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as sb:
        yield sb


def _judge(sandbox, problems):
    judgements = sandbox.judge([(p, p.reference_solution) for p in problems])
    return {p.task_id: j for p, j in zip(problems, judgements, strict=True)}


def _failures(verdicts):
    return {task: (j.verdict.value, [t.detail for t in j.tests if t.verdict is not Verdict.PASS][:1])
            for task, j in verdicts.items() if not j.passed}


def test_mbpp_references_pass_except_the_two_broken_tasks(sandbox):
    verdicts = _judge(sandbox, load_benchmark("mbpp", split="all"))
    assert len(verdicts) == 974
    assert set(_failures(verdicts)) == MBPP_BROKEN, _failures(verdicts)


@pytest.mark.parametrize("benchmark", ["mbpp-sanitized", "humaneval"])
def test_all_references_pass(sandbox, benchmark):
    problems = load_benchmark(benchmark, split="all" if benchmark == "mbpp-sanitized" else None)
    verdicts = _judge(sandbox, problems)
    assert len(verdicts) == {"mbpp-sanitized": 427, "humaneval": 164}[benchmark]
    assert _failures(verdicts) == {}


@pytest.mark.filterwarnings("ignore:.*APPS problem without tests skipped")
@pytest.mark.parametrize("benchmark,file", [("apps", "apps_upstream.jsonl"), ("codecontests", "codecontests.jsonl"),
                                            ("jsonl", "problems.jsonl")])
def test_fixture_references_pass(sandbox, benchmark, file):
    problems = [p for p in load_benchmark(benchmark, FIXTURES / file) if p.reference_solution]
    assert problems
    assert _failures(_judge(sandbox, problems)) == {}
    perturbed = _judge(sandbox, [perturb_problem(p) for p in problems])
    assert {t: j.verdict for t, j in perturbed.items()} == {p.task_id: Verdict.WA for p in problems}


@pytest.mark.parametrize("benchmark", ["mbpp", "mbpp-sanitized", "humaneval"])
def test_references_fail_with_one_output_perturbed(sandbox, benchmark):
    problems = [p for p in load_benchmark(benchmark, split=None if benchmark == "humaneval" else "all")
                if p.task_id not in MBPP_BROKEN]
    perturbed = [q for q in map(perturb_problem, problems) if q is not None]
    assert len(perturbed) >= len(problems) - 4  # HumanEval has a few whole-check-only problems
    verdicts = _judge(sandbox, perturbed)
    wrong = {t: j.verdict.value for t, j in verdicts.items() if j.verdict is not Verdict.WA}
    assert wrong == {}
