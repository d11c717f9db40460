"""Write a samples file of a benchmark's reference solutions, to check the judge end to end with `algoforge score`.

    python -m eval.reference_samples --benchmark mbpp --out refs.jsonl
    algoforge score --benchmark mbpp --samples refs.jsonl --out refs.results.jsonl

Each completion is the raw reference program (no fence, so `extract_program` takes the whole text). Problems
without a reference (xCodeEval, LiveBench, MapCoder's APPS subset) are left out, and the count says so.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import jsonl_text
from eval.benchmarks import BENCHMARKS, load_benchmark


def reference_samples(benchmark: str, path: str | None = None, split: str | None = None) -> list[dict[str, str]]:
    problems = load_benchmark(benchmark, path, split)
    return [{"task_id": p.task_id, "completion": p.reference_solution} for p in problems if p.reference_solution]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.reference_samples", description=__doc__.split("\n")[0])
    parser.add_argument("--benchmark", required=True, choices=list(BENCHMARKS))
    parser.add_argument("--out", required=True, type=pathlib.Path, help="samples JSONL to write")
    parser.add_argument("--problems", help="problem file (required for jsonl; else overrides the bundled data)")
    parser.add_argument("--split")
    args = parser.parse_args(argv)
    try:
        rows = reference_samples(args.benchmark, args.problems, args.split)
    except UserError as e:
        print(f"reference_samples: error: {e}", file=sys.stderr)
        return 2
    args.out.write_text(jsonl_text(rows), encoding="utf-8")
    print(f"wrote {len(rows)} reference samples to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
