"""`algoforge score`: judge given completions in the sandbox against a benchmark's tests; results and a summary out.

    algoforge score --benchmark mbpp --samples S.jsonl --out R.jsonl

Reads samples (`{"task_id", "completion"}` per line, several per task for pass@k), extracts each program, judges
them all in the sandbox with a progress bar on stderr, writes one result line per sample (the SPEC's fields) and
prints the summary JSON, also saved as `R.summary.json`. Results are appended as they come and fsync'd, so a crash
loses at most the batch in flight; rerunning the same command skips samples already in `R.jsonl` (`--restart`
ignores them). Generation is not here: `algoforge eval` produces samples and calls the same functions
(eval/judging.py: `program_for`, `judge_samples`, `result_line`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import jsonl_text
from eval.benchmarks import BENCHMARKS, load_benchmark
from eval.judging import Sample, judge_samples, program_for, result_line
from eval.metrics import summarize
from eval.problems import Problem
from eval.records import read_records


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", required=True, choices=list(BENCHMARKS), help="benchmark whose tests to run")
    parser.add_argument("--samples", required=True, type=pathlib.Path, help='JSONL of {"task_id", "completion"}')
    parser.add_argument("--out", required=True, type=pathlib.Path, help="JSONL of results, one line per sample")
    parser.add_argument("--problems", type=pathlib.Path,
                        help="problem file (required for jsonl; else overrides the bundled data)")
    parser.add_argument("--split", help="benchmark split (mbpp: test (default), train, validation, prompt, all)")
    parser.add_argument("--workers", type=int, help="sandbox worker processes (default: CPU count)")
    parser.add_argument("--k", default="1,5,10",
                        help="pass@k values, comma-separated; a k above the samples per task is left out")
    parser.add_argument("--restart", action="store_true",
                        help="judge every sample again, ignoring results already in --out")


def parse_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise UserError(f"--k: expected comma-separated integers like 1,5,10, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise UserError(f"--k: expected positive integers, got {text!r}")
    return ks


def _task_index(problems: Sequence[Problem]) -> dict[str, Problem]:
    """task_id -> problem; "Mbpp/11" is also found as 11 or "11" (other harnesses write bare numbers)."""
    index = {p.task_id: p for p in problems}
    for p in problems:
        short = p.task_id.rsplit("/", 1)[-1]
        if short != p.task_id:
            index.setdefault(short, p)
    return index


def read_samples(path: pathlib.Path, problems: Sequence[Problem], benchmark: str) -> list[Sample]:
    index, counts, samples = _task_index(problems), {}, []
    for rec in read_records(path):
        task_id, completion = rec.get("task_id", (str, int)), rec.get("completion", str)
        problem = index.get(str(task_id))
        if problem is None:
            raise rec.error("task_id", f"{task_id!r} is not a task of {benchmark} "
                            "(wrong --benchmark, --split or --problems?)")
        counts[problem.task_id] = counts.get(problem.task_id, -1) + 1
        samples.append(Sample(problem, counts[problem.task_id], program_for(problem, completion)))
    if not samples:
        raise UserError(f"{path}: no samples")
    return samples


def read_done(out: pathlib.Path, wanted: set[tuple[str, int]]) -> dict[tuple[str, int], dict]:
    """Results already in `out` for the samples we have; a line cut short by a crash is dropped."""
    done = {}
    if not out.is_file():
        return done
    with open(out, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
                key = (row["task_id"], row["sample_index"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
            if key in wanted:
                done[key] = row
    return done


def write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def judge_all(samples: Sequence[Sample], out: pathlib.Path, workers: int | None) -> list[dict]:
    """Judge `samples` with a progress bar, appending each batch's results to `out` (flushed, fsync'd) as it
    completes; a sandbox that cannot start is a one-line error."""
    from tqdm import tqdm

    from eval.sandbox import Sandbox, SandboxError  # imported on use: `algoforge score --help` stays fast

    def append(batch: Sequence[Sample], judgements: list) -> None:
        f.write(jsonl_text(result_line(s, j) for s, j in zip(batch, judgements, strict=True)))
        f.flush()
        os.fsync(f.fileno())

    try:
        with Sandbox(workers=workers) as sandbox, open(out, "a", encoding="utf-8") as f, \
                tqdm(total=len(samples), file=sys.stderr, desc="judging", unit="sample", dynamic_ncols=True) as bar:
            judgements = judge_samples(sandbox, samples, on_batch=append, progress=bar.update)
    except SandboxError as e:
        raise UserError(f"the sandbox failed: {e}".splitlines()[0]) from None
    return [result_line(s, j) for s, j in zip(samples, judgements, strict=True)]


def main(args: argparse.Namespace) -> int:
    ks = parse_ks(args.k)
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers: expected a positive integer, got {args.workers}")
    problems = load_benchmark(args.benchmark, args.problems, args.split)
    samples = read_samples(args.samples, problems, args.benchmark)
    done = {} if args.restart else read_done(args.out, {s.key for s in samples})
    if done:
        print(f"algoforge score: resuming, {len(done)} of {len(samples)} samples already in {args.out}",
              file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, jsonl_text(done.values()))  # drops stale lines and a half-written last line
    start = time.perf_counter()
    todo = [s for s in samples if s.key not in done]
    if todo:  # judge_all keeps the order of `todo`
        done.update(zip((s.key for s in todo), judge_all(todo, args.out, args.workers), strict=True))
    wall_s = time.perf_counter() - start
    results = [done[s.key] for s in samples]
    write_atomic(args.out, jsonl_text(results))  # final file in sample order
    summary = _summary(args, problems, samples, results, len(todo), wall_s, ks)
    write_atomic(args.out.with_suffix(".summary.json"), json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def _summary(args, problems, samples, results, n_judged, wall_s, ks) -> dict[str, Any]:
    with_programs = [{**r, "program": s.program} for r, s in zip(results, samples, strict=True)]
    return {
        "benchmark": args.benchmark, "split": args.split or BENCHMARKS[args.benchmark].default_split,
        "benchmark_tasks": len(problems),
        **summarize(with_programs, ks),
        "judged_now": n_judged, "judge_wall_s": round(wall_s, 3),
        "samples_per_s": round(n_judged / wall_s, 2) if n_judged and wall_s > 0 else None,
    }
