"""`algoforge solve`: the Planner writes a plan for one problem, the Coder a program from it; with tests, verdicts.

    algoforge solve --planner P --coder C "Return the sum of a and b." --entry-point add --tests tests.json

`--tests FILE` is a JSON list of the SPEC's generic tests (`[{"type": "assert", "code": "..."}]`) or a generic
problem file holding one problem (its tests, entry point and limits are used; the text given is what the agents
see). Generation is inference.py's planner-coder mode with n = 1; the sandbox judges every test (no early stop),
so each test's verdict is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from algoforge_jax.errors import UserError
from eval.benchmarks import generic_test, load_benchmark
from eval.problems import Judgement, Problem
from eval.records import Record


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("problem", help="the problem statement, as the agents will read it")
    parser.add_argument("--planner", required=True, type=Path, help="Planner model (HF directory or orbax)")
    parser.add_argument("--coder", required=True, type=Path, help="Coder model (HF directory or orbax)")
    parser.add_argument("--tests", type=Path, help="JSON list of generic tests, or a generic problem file")
    parser.add_argument("--entry-point", help="the function the program must define (shown to the agents)")
    parser.add_argument("--temperature", type=float, default=0.0, help="both agents' temperature (0 = greedy)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--planner-max-new-tokens", type=int, help="the Planner's response budget (default 256)")
    parser.add_argument("--coder-max-new-tokens", type=int, help="the Coder's response budget (default 512)")
    parser.add_argument("--compact", action="store_true", help="the embedded default's short prompts")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the one stored with the models)")
    parser.add_argument("--dtype", default="float32", help="compute dtype: float32 (default) or bfloat16")


def read_problem(text: str, tests: Path | None, entry_point: str | None) -> Problem:
    """The problem the agents solve: `text`, with the tests (and limits) of `tests` when given."""
    if not text.strip():
        raise UserError("the problem text is empty")
    if tests is None:
        return Problem("solve", text, (), entry_point=entry_point)
    if not tests.is_file():
        raise UserError(f"--tests {tests}: no such file")
    try:
        data = json.loads(tests.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        data = None  # several lines: a problem file
    if isinstance(data, list) and all(isinstance(t, dict) and "type" in t for t in data):
        if not data:
            raise UserError(f"--tests {tests}: the list of tests is empty")
        record = Record({"tests": data}, tests.name)
        return Problem("solve", text, tuple(generic_test(record, i, t) for i, t in enumerate(data)),
                       entry_point=entry_point)
    problems = load_benchmark("jsonl", tests)
    if len(problems) != 1:
        raise UserError(f"--tests {tests}: holds {len(problems)} problems; give one (or a JSON list of tests)")
    return dataclasses.replace(problems[0], prompt=text, entry_point=entry_point or problems[0].entry_point)


def verdict_lines(judgement: Judgement) -> list[str]:
    """The program's verdict, then one line per test."""
    lines = [f"{judgement.verdict.value} ({judgement.tests_passed}/{judgement.n_tests} tests passed)"]
    for i, t in enumerate(judgement.tests):
        detail = f"  {t.detail}" if t.detail else ""
        lines.append(f"test {i}: {t.verdict.value}  {t.time_s:.3f} s  {t.peak_mem_mb:.1f} MB{detail}")
    return lines


def judge(problem: Problem, program: str) -> Judgement:
    from eval.sandbox import Sandbox, SandboxError

    try:
        with Sandbox(workers=1, stop_at_first_failure=False) as sandbox:
            return sandbox.judge([(problem, program)])[0]
    except SandboxError as e:
        raise UserError(f"the sandbox failed: {e}".splitlines()[0]) from None


def main(args: argparse.Namespace) -> int:
    problem = read_problem(args.problem, args.tests, args.entry_point)
    for agent in ("planner", "coder"):
        if not getattr(args, agent).exists():
            raise UserError(f"--{agent} {getattr(args, agent)}: no such model directory")
    from algoforge_jax.inference import EvalConfig  # imports JAX: not at the top, so `--help` is quick

    try:
        base = EvalConfig()
        decoding = {agent: dataclasses.replace(getattr(base, agent), temperature=args.temperature, **(
            {} if budget is None else {"max_new_tokens": budget}))
            for agent, budget in (("planner", args.planner_max_new_tokens), ("coder", args.coder_max_new_tokens))}
        cfg = dataclasses.replace(base, mode="planner-coder", n=1, seed=args.seed, compact_prompts=args.compact,
                                  dtype=args.dtype, **decoding)
    except ValueError as e:
        raise UserError(str(e)) from None
    from algoforge_jax import sharding
    from algoforge_jax.inference import generate_solutions, load_agents

    agents = load_agents({"planner": args.planner, "coder": args.coder}, cfg, sharding.make_mesh(), args.tokenizer)
    print("algoforge solve: planning, then coding", file=sys.stderr)
    (solution,), _ = generate_solutions([problem], agents, cfg)
    print(f"== plan ==\n{solution.plan}\n\n== program ==\n{solution.program or '(no code in the answer)'}")
    if problem.tests:
        print("\n== verdicts ==\n" + "\n".join(verdict_lines(judge(problem, solution.program))))
    return 0
