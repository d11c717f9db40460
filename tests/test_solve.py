"""`algoforge solve` with real parts (two tiny random agents, the bundled Qwen2.5 tokenizer, the sandbox): it prints
the plan and program the library generates for that problem and the sandbox's verdict of every test; its tests
file is a list of tests or a one-problem file; bad input fails with one line."""

from __future__ import annotations

import json

import pytest

from algoforge_jax import cli, sharding
from algoforge_jax.errors import UserError
from algoforge_jax.inference import EvalConfig, generate_solutions, load_agents
from algoforge_jax.jsonl import jsonl_text
from algoforge_jax.rl.rollout import Decoding
from algoforge_jax.solve import judge, read_problem, verdict_lines
from tiny_agents import PROBLEMS, RIGHT, save_agents

ADD = PROBLEMS[0]
TEXT = ADD["prompt"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("solve")
    tests = tmp / "tests.json"
    tests.write_text(json.dumps(ADD["tests"]))
    return tmp, save_agents(tmp / "models", agents=("coder",))["coder"], tests


def test_solve_prints_plan_program_and_verdicts(setup, capsys):
    _, model, tests = setup  # one model as both agents: loaded once, which keeps this test short
    rc = cli.main(["solve", "--planner", model, "--coder", model, TEXT, "--entry-point", "add",
                   "--tests", str(tests), "--planner-max-new-tokens", "8", "--coder-max-new-tokens", "8"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    # Greedy decoding: the library gives the same plan and program for the same problem.
    problem = read_problem(TEXT, tests, "add")
    cfg = EvalConfig(planner=Decoding(8, 0.0), coder=Decoding(8, 0.0))
    agents = load_agents({"planner": model, "coder": model}, cfg, sharding.make_mesh())
    (solution,), _ = generate_solutions([problem], agents, cfg)
    plan_part, rest = out.split("\n\n== program ==\n")
    program_part, verdict_part = rest.split("\n\n== verdicts ==\n")
    assert plan_part == f"== plan ==\n{solution.plan}"
    assert program_part == (solution.program or "(no code in the answer)")
    judgement = judge(problem, solution.program)
    printed = verdict_part.strip().splitlines()
    assert printed[0] == verdict_lines(judgement)[0] and len(printed) == len(judgement.tests) + 1
    assert [line.split()[2] for line in printed[1:]] == [t.verdict.value for t in judgement.tests]


def test_verdicts_of_a_right_and_a_wrong_program(setup):
    problem = read_problem(TEXT, setup[2], "add")
    right = verdict_lines(judge(problem, RIGHT["add"]))
    assert right[0] == "PASS (2/2 tests passed)" and [line.split()[:3] for line in right[1:]] == [
        ["test", "0:", "PASS"], ["test", "1:", "PASS"]]
    wrong = verdict_lines(judge(problem, "def add(a, b):\n    return abs(a) + b"))
    assert wrong[0] == "WA (1/2 tests passed)" and [line.split()[2] for line in wrong[1:]] == ["PASS", "WA"]


def test_tests_file_is_a_test_list_or_one_problem(tmp_path):
    problem_file = tmp_path / "one.jsonl"
    problem_file.write_text(jsonl_text([{**ADD, "time_limit_s": 1.5}]))
    from_problem = read_problem("Add them.", problem_file, None)
    assert (from_problem.prompt, from_problem.entry_point, from_problem.time_limit_s) == ("Add them.", "add", 1.5)
    tests = tmp_path / "tests.json"
    tests.write_text(json.dumps(ADD["tests"]))
    assert read_problem("Add them.", tests, "add").tests == from_problem.tests
    assert read_problem("Add them.", None, None).tests == ()
    two = tmp_path / "two.jsonl"
    two.write_text(jsonl_text(PROBLEMS[:2]))
    with pytest.raises(UserError, match="holds 2 problems; give one"):
        read_problem("x", two, None)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"type": "assert"}]))
    with pytest.raises(UserError, match=r"bad.json: field 'tests\[0\].code': missing"):
        read_problem("x", bad, None)


@pytest.mark.parametrize("argv, message", [
    (["   "], "the problem text is empty"),
    (["x", "--tests", "/nonexistent.json"], "--tests /nonexistent.json: no such file"),
    (["x", "--coder-max-new-tokens", "0"], "max_new_tokens must be an integer >= 1"),
    (["x", "--temperature", "-1"], "temperature must be >= 0"),
])
def test_bad_input_fails_with_one_line(setup, capsys, argv, message):
    _, model, _ = setup
    rc = cli.main(["solve", "--planner", model, "--coder", model, *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
