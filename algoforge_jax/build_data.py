"""`algoforge build-data`: Planner and Coder datasets by rejection sampling from a teacher model.

    algoforge build-data --teacher M --problems workdir/data/problems/train.jsonl --out D   # --benchmark jsonl
    algoforge build-data --teacher M --benchmark mbpp --split train --out D

For each problem the teacher, prompted as the Planner, samples --num-plans plans; prompted as the Coder, it writes
--num-programs programs from each (problem, plan); the sandbox judges every program against the problem's tests,
and a plan is kept when one of its programs passes (`data/rejection.py`). Each chunk of --chunk-size problems is
one collaborative rollout (`rl/rollout.py`: two batched sampler calls, the teacher as both agents); the next chunk
is sampled while the sandbox judges the last, and each chunk's record is written atomically once judged.

Writes in D: `planner.jsonl` and `coder.jsonl` (the `data/datasets.py` rows, which `read_rows` reads back),
`summary.json` (tried / passed / kept per problem, and totals; also printed), `settings.json` (what the chunks were
sampled with) and `chunks/`. Rerunning the command skips every chunk already written, so a killed run loses only
the chunks in flight; the same D with other sampling settings is refused rather than mixed into one dataset.
`--limit` and `--keep` may change between runs: the first samples fewer problems, the second only filters.

Deliberately left out: several hosts (one process samples and judges), dynamic sampling (a problem nothing passes
is just not kept). The embedded default needs none of this: its generator's reference plans and code are the data
(`data/embedded.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from algoforge_jax.data import rejection
from algoforge_jax.errors import UserError
from eval.benchmarks import BENCHMARKS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Sample plans from a teacher model with the Planner prompt, then programs from plan + problem with the "
        "Coder prompt; judge the programs in the sandbox and keep the plans whose program passes. Writes "
        "planner.jsonl, coder.jsonl and summary.json in --out; rerun the same command to resume.")
    parser.add_argument("--teacher", required=True, type=Path,
                        help="teacher model: HF directory or orbax checkpoint, with its tokenizer")
    parser.add_argument("--benchmark", default="jsonl", choices=list(BENCHMARKS),
                        help="problem set with tests, as `algoforge score` takes it (default: jsonl)")
    parser.add_argument("--problems", type=Path,
                        help="problem file (required for jsonl, e.g. the synthetic train split; else overrides "
                             "the bundled data)")
    parser.add_argument("--split", help="benchmark split (mbpp: train, test, validation, prompt, all)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (resumed if it exists)")
    parser.add_argument("--num-plans", type=int, default=4, help="plans sampled per problem (default: %(default)s)")
    parser.add_argument("--num-programs", type=int, default=2, help="programs sampled per plan (default: %(default)s)")
    parser.add_argument("--max-new-tokens-plan", type=int, default=256,
                        help="token budget of a plan (default: %(default)s)")
    parser.add_argument("--max-new-tokens-code", type=int, default=512,
                        help="token budget of a program (default: %(default)s)")
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="sampling temperature, > 0 (default: %(default)s)")
    parser.add_argument("--top-p", type=float, default=0.95,
                        help="nucleus sampling mass, 1 = off (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (each chunk derives its own)")
    parser.add_argument("--chunk-size", type=int, default=32,
                        help="problems per rollout: one sampler call for their plans, one for their programs, "
                             "one file written when judged (default: %(default)s)")
    parser.add_argument("--compact", action="store_true",
                        help="the prompts' compact wording (for models trained on the embedded default)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="compute dtype (default: %(default)s)")
    parser.add_argument("--workers", type=int, help="sandbox worker processes (default: CPU count)")
    parser.add_argument("--limit", type=int, help="only the first N problems (a later run without it resumes)")
    parser.add_argument("--keep", choices=rejection.KEEP, default="all",
                        help="all (default): every distinct passing plan of a problem; first: its first passing plan; "
                             "only filters, so it may change between runs")


@dataclasses.dataclass(frozen=True)
class Settings:
    """What determines the sampled chunks. Stored in D/settings.json: a rerun must match it, so one dataset never
    mixes two teachers or two sampling setups. Field names are the flags' (`num_plans` is `--num-plans`)."""

    teacher: str
    benchmark: str
    problems: str | None
    split: str | None
    num_plans: int
    num_programs: int
    max_new_tokens_plan: int
    max_new_tokens_code: int
    temperature: float
    top_p: float
    top_k: int
    seed: int
    chunk_size: int
    compact: bool
    dtype: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        for flag in ("num_plans", "num_programs", "max_new_tokens_plan", "max_new_tokens_code", "chunk_size",
                     "workers", "limit"):
            value = getattr(args, flag)
            if value is not None and value < 1:
                raise UserError(f"{_flag(flag)}: expected a positive integer, got {value}")
        if not args.temperature > 0:
            raise UserError(f"--temperature: expected a number > 0 (each plan and program is sampled), "
                            f"got {args.temperature}")
        if not 0 < args.top_p <= 1 or args.top_k < 0:
            raise UserError(f"--top-p must be in (0, 1] and --top-k >= 0, got {args.top_p} and {args.top_k}")
        if not args.teacher.is_dir():
            raise UserError(f"--teacher: {args.teacher}: no such model directory")
        problems = str(args.problems.absolute()) if args.problems is not None else None
        return cls(str(args.teacher.absolute()), args.benchmark, problems, args.split, args.num_plans,
                   args.num_programs, args.max_new_tokens_plan, args.max_new_tokens_code, args.temperature,
                   args.top_p, args.top_k, args.seed, args.chunk_size, args.compact, args.dtype)

    def rollout_config(self):
        from algoforge_jax.rl.rollout import AgentSampling, RolloutConfig

        sampling = functools.partial(AgentSampling, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return RolloutConfig(num_plans=self.num_plans, num_programs=self.num_programs,
                             planner=sampling(self.max_new_tokens_plan), coder=sampling(self.max_new_tokens_code))


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def check_settings(out: Path, settings: Settings) -> None:
    """Records `settings` in a new D; in an existing one, fails on the first field that differs."""
    from eval.score import write_atomic

    path, mine = out / "settings.json", dataclasses.asdict(settings)
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(mine, indent=1) + "\n")
        return
    theirs = json.loads(path.read_text(encoding="utf-8"))
    for field, value in mine.items():
        if theirs.get(field) != value:
            raise UserError(f"{path}: {out} was sampled with {_flag(field)} {theirs.get(field)!r}, not {value!r}; "
                            f"rerun with the same options or choose a new --out")


# ---------------------------------------------------------------------------------------------- teacher and judge


@dataclasses.dataclass(frozen=True)
class Teacher:
    """The teacher as the rollout sees it: one set of weights behind both agents, a sampler per response budget."""

    planner: Any  # rollout.Policy
    coder: Any  # rollout.Policy
    chat: Any  # rollout.Chat
    max_positions: int


def load_teacher(settings: Settings) -> Teacher:
    from algoforge_jax import checkpoints, sharding
    from algoforge_jax.data.chat import render_chat
    from algoforge_jax.rl.rollout import Chat, Policy
    from algoforge_jax.sampling import SamplerConfig, make_sampler
    from algoforge_jax.tokenizer import open_tokenizer
    from eval.prompts import coder_messages, planner_messages

    tokenizer = open_tokenizer(settings.teacher)
    mesh = sharding.make_mesh()
    model = checkpoints.load_pretrained(settings.teacher, mesh, sharding.SAMPLE_RULES, dtype=settings.dtype)
    eos = model.config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    stops = tuple(dict.fromkeys([tokenizer.eos_id, tokenizer.pad_id, *eos_ids]))  # <|im_end|>, <|endoftext|>
    samplers = [make_sampler(model, mesh, SamplerConfig(budget, stops, tokenizer.pad_id), sharding.SAMPLE_RULES)
                for budget in (settings.max_new_tokens_plan, settings.max_new_tokens_code)]  # one per budget
    chat = Chat(tokenizer, lambda messages: render_chat(tokenizer, messages, add_generation_prompt=True)[0],
                functools.partial(planner_messages, compact=settings.compact),
                functools.partial(coder_messages, compact=settings.compact))
    return Teacher(*(Policy(*s) for s in samplers), chat, model.config.max_position_embeddings)


def check_lengths(problems: Sequence, teacher: Teacher, settings: Settings) -> None:
    """Fails on a problem whose Planner prompt plus both budgets exceeds the model's positions (the Coder's prompt
    is about the Planner's plus the plan)."""
    budget = settings.max_new_tokens_plan + settings.max_new_tokens_code
    for problem in problems:
        n = len(teacher.chat.prompt_ids(teacher.chat.planner_messages(problem)))
        if n + budget > teacher.max_positions:
            raise UserError(f"task {problem.task_id}: its prompt ({n} tokens) + --max-new-tokens-plan + "
                            f"--max-new-tokens-code exceeds the teacher's max_position_embeddings "
                            f"({teacher.max_positions})")


def one_at_a_time(judge: Callable) -> Callable:
    """`judge` behind a lock: the next chunk's judging thread waits for the last one's to end."""
    lock = threading.Lock()

    def judged(jobs):
        with lock:
            return judge(jobs)

    return judged


# ---------------------------------------------------------------------------------------------- chunks


def chunk_seed(seed: int, k: int) -> int:
    """Chunk k's rollout seed: fixed by (--seed, k), so a chunk redone after a crash samples the same."""
    return int(np.random.SeedSequence((seed, k)).generate_state(1)[0] & 0x7FFFFFFF)


def roll_chunks(todo: Sequence[tuple[int, tuple]], teacher: Teacher, judge: Callable, settings: Settings,
                store: rejection.ChunkStore, done: Callable[[int, dict], None]) -> None:
    """Rolls out each (k, problems) chunk of `todo` and saves its record as soon as it is judged; chunk k+1 is
    sampled while chunk k is judged. `done(k, record)` follows each save."""
    from algoforge_jax.rl.rollout import start_rollout

    cfg, in_flight = settings.rollout_config(), None
    for k, problems in todo:
        pending = start_rollout(problems, teacher.planner, teacher.coder, teacher.chat, judge, cfg,
                                chunk_seed(settings.seed, k))
        if in_flight is not None:
            done(in_flight[0], _save(*in_flight, store))
        in_flight = (k, pending)
    if in_flight is not None:
        done(in_flight[0], _save(*in_flight, store))


def _save(k: int, pending, store: rejection.ChunkStore) -> dict:
    result = pending.finish()
    record = rejection.chunk_record(result.problems, result.plans, result.programs, result.judgements)
    record["metrics"] = {name: float(value) for name, value in result.metrics.items()}
    store.save(k, record)
    return record


def write_outputs(out: Path, records: Sequence[dict], settings: Settings, keep: str) -> dict:
    """planner.jsonl, coder.jsonl and summary.json from the chunk records; returns the summary."""
    from algoforge_jax.data.datasets import write_rows
    from eval.score import write_atomic

    rows = rejection.kept_rows(records, keep)
    for agent in ("planner", "coder"):
        write_rows(out / f"{agent}.jsonl", rows, agent)
    summary = {**rejection.summary(records, keep), "keep": keep, "settings": dataclasses.asdict(settings)}
    write_atomic(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    return summary


# ---------------------------------------------------------------------------------------------- command


def main(args: argparse.Namespace, judge: Callable | None = None) -> int:
    """The command. `judge` (a list of (problem, program) -> judgements) replaces the sandbox, for tests."""
    from eval.benchmarks import load_benchmark

    settings = Settings.from_args(args)
    problems = load_benchmark(args.benchmark, args.problems, args.split)[: args.limit]
    if not problems:
        raise UserError(f"benchmark {args.benchmark}: no problems")
    check_settings(args.out, settings)
    store = rejection.ChunkStore(args.out / "chunks")
    size = settings.chunk_size
    chunks = [(k, tuple(problems[k * size:(k + 1) * size])) for k in range(-(-len(problems) // size))]
    records = {k: store.load(k, [p.task_id for p in chunk]) for k, chunk in chunks}
    todo = [(k, chunk) for k, chunk in chunks if records[k] is None]
    if len(todo) < len(chunks):
        print(f"algoforge build-data: resuming, {len(chunks) - len(todo)} of {len(chunks)} chunks already in "
              f"{store.root}", file=sys.stderr)
    if todo:
        _sample(todo, records, len(problems), settings, store, judge, args.workers)
    summary = write_outputs(args.out, [records[k] for k, _ in chunks], settings, args.keep)
    print(json.dumps({k: v for k, v in summary.items() if k not in ("per_problem", "settings")}))
    if not summary["kept"]:
        print(f"algoforge build-data: no plan passed, so {args.out}/planner.jsonl and coder.jsonl are empty",
              file=sys.stderr)
    return 0


def _sample(todo, records: dict[int, dict | None], total: int, settings: Settings, store: rejection.ChunkStore,
            judge: Callable | None, workers: int | None) -> None:
    """Rolls out the chunks of `todo` into `records`, with a progress bar over all `total` problems."""
    from tqdm import tqdm

    teacher = load_teacher(settings)
    check_lengths([p for _, chunk in todo for p in chunk], teacher, settings)
    solved = sum(bool(rejection.passing_plans(p)) for r in records.values() if r for p in r["problems"])
    with tqdm(total=total, initial=total - sum(len(chunk) for _, chunk in todo), file=sys.stderr,
              desc="build-data", unit="problem", dynamic_ncols=True) as bar, open_judge(judge, workers) as run:
        bar.set_postfix(solved=solved)

        def done(k: int, record: dict) -> None:
            nonlocal solved
            records[k] = record
            solved += sum(bool(rejection.passing_plans(p)) for p in record["problems"])
            bar.update(len(record["task_ids"]))
            bar.set_postfix(solved=solved)

        roll_chunks(todo, teacher, run, settings, store, done)


@contextlib.contextmanager
def open_judge(judge: Callable | None, workers: int | None) -> Iterator[Callable]:
    """The judge, one call at a time: `judge` if given, else a sandbox of `workers` processes, closed on exit."""
    if judge is not None:
        yield one_at_a_time(judge)
        return
    from eval.sandbox import Sandbox

    with Sandbox(workers=workers) as sandbox:
        yield one_at_a_time(sandbox.judge)
