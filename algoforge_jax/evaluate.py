"""`algoforge eval`: generate with the agents (one sampler call per agent) and score in the sandbox.

    algoforge eval --benchmark mbpp --mode planner-coder --n 5 --temperature 0.8 --planner P --coder C --out DIR

writes under DIR: `samples.jsonl` (the SPEC's samples, plus sample_index, plan, prompt and finish_reason; it is
also what `algoforge score --samples` reads), `results.jsonl` (one SPEC results line per sample) and
`summary.json` (pass@k for every k <= n, verdict counts, runtime and memory of passing programs,
maintainability, generation and judging seconds), and prints the summary. Generation is in inference.py;
judging and the summary are eval/score.py's and eval/metrics.py's, as for `algoforge score`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

from algoforge_jax.data.synthetic import EVAL_BENCHMARKS as SYNTHETIC
from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import jsonl_text
from eval.benchmarks import BENCHMARKS
from eval.prompts import MODES
from eval.score import judge_all, write_atomic


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="Python config file whose get_config() gives an EvalConfig "
                                                    "(or a config with one as .eval); flags override it")
    parser.add_argument("--benchmark", required=True, choices=[*BENCHMARKS, *SYNTHETIC], help="problems to solve")
    parser.add_argument("--mode", choices=MODES, help="direct | cot | planner-coder (default)")
    parser.add_argument("--n", type=int, help="samples per problem (default 1); pass@k for every k <= n")
    parser.add_argument("--planner", type=Path, help="Planner model (default: the workdir's RL, else SFT model)")
    parser.add_argument("--coder", type=Path, help="Coder model (default: the workdir's RL, else SFT model)")
    parser.add_argument("--out", type=Path, help="output directory (default: WORKDIR/eval/BENCHMARK/MODE)")
    parser.add_argument("--workdir", type=Path, help="run directory: default models, synthetic-* problems")
    parser.add_argument("--limit", type=int, help="evaluate the first K problems only")
    parser.add_argument("--temperature", type=float, help="both agents' sampling temperature (0 = greedy)")
    parser.add_argument("--seed", type=int, help="sampling seed")
    parser.add_argument("--planner-max-new-tokens", type=int, help="the Planner's response budget")
    parser.add_argument("--coder-max-new-tokens", type=int, help="the Coder's response budget")
    parser.add_argument("--compact", action="store_true", default=None,
                        help="the embedded default's short Planner/Coder prompts")
    parser.add_argument("--problems", type=Path, help="problem file (jsonl benchmark; else overrides bundled data)")
    parser.add_argument("--split", help="benchmark split (mbpp: test (default), train, validation, prompt, all)")
    parser.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: the one stored with the models)")
    parser.add_argument("--dtype", help="compute dtype: float32 (default) or bfloat16")
    parser.add_argument("--workers", type=int, help="sandbox worker processes (default: CPU count)")


def config_from_file(path: Path):
    """The EvalConfig of a config file: `get_config()` itself, or its `.eval` field."""
    from algoforge_jax.inference import EvalConfig  # imports JAX: not at the top, so `--help` is quick

    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"algoforge_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"--config {path}: defines no get_config()")
    found = module.get_config()
    found = getattr(found, "eval", found)
    if not isinstance(found, EvalConfig):
        raise UserError(f"--config {path}: get_config() gave {type(found).__name__}, not an EvalConfig "
                        "(or a config holding one as .eval)")
    return found


def eval_config(args: argparse.Namespace):
    """The config file's EvalConfig (or the defaults) with the flags given on top; a bad value is one line."""
    from algoforge_jax.inference import EvalConfig

    cfg = config_from_file(args.config) if args.config else EvalConfig()
    fields = {k: getattr(args, k) for k in ("mode", "n", "seed", "dtype", "workers") if getattr(args, k) is not None}
    if args.compact:
        fields["compact_prompts"] = True
    if args.workdir is not None:
        fields["workdir"] = str(args.workdir)
    try:
        agents = {}
        for agent in ("planner", "coder"):
            decoding = {"temperature": args.temperature, "max_new_tokens": getattr(args, f"{agent}_max_new_tokens")}
            agents[agent] = dataclasses.replace(getattr(cfg, agent), **{k: v for k, v in decoding.items()
                                                                       if v is not None})
        return dataclasses.replace(cfg, **fields, **agents)
    except ValueError as e:
        raise UserError(str(e)) from None


def model_paths(args: argparse.Namespace, cfg) -> dict[str, Path]:
    """agent -> model directory for the agents of the mode: the flag, else the workdir's model."""
    from algoforge_jax.inference import default_model

    paths = {}
    for agent in cfg.agents:
        path = getattr(args, agent)
        if path is None and cfg.workdir is None:
            raise UserError(f"mode {cfg.mode} needs --{agent} (or --workdir holding its model)")
        path = path if path is not None else default_model(cfg.workdir, agent)
        if not path.exists():
            raise UserError(f"--{agent} {path}: no such model directory")
        paths[agent] = path
    return paths


def output_dir(args: argparse.Namespace, cfg) -> Path:
    if args.out is not None:
        return args.out
    if cfg.workdir is None:
        raise UserError("give --out (or --workdir, to write under WORKDIR/eval/BENCHMARK/MODE)")
    return Path(cfg.workdir) / "eval" / args.benchmark / cfg.mode


def sample_line(solution, chat) -> dict:
    """A samples-file line: the SPEC's task_id and completion, and what produced it."""
    return {"task_id": solution.problem.task_id, "completion": solution.completion,
            "sample_index": solution.sample_index, "plan": solution.plan, "prompt": chat.text(solution.prompt_ids),
            "finish_reason": "length" if solution.truncated else "eos"}


def main(args: argparse.Namespace) -> int:
    # Flags, problems and paths are checked before anything slow is loaded, so a typo fails at once.
    cfg = eval_config(args)
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit: expected a positive integer, got {args.limit}")
    if cfg.workers is not None and cfg.workers < 1:
        raise UserError(f"--workers: expected a positive integer, got {cfg.workers}")
    from algoforge_jax.inference import benchmark_problems

    problems, split = benchmark_problems(args.benchmark, args.problems, args.split, cfg.workdir)
    chosen = problems[:args.limit]
    paths, out = model_paths(args, cfg), output_dir(args, cfg)

    import jax

    from algoforge_jax import sharding
    from algoforge_jax.inference import generate_solutions, load_agents

    agents = load_agents(paths, cfg, sharding.make_mesh(), args.tokenizer)
    print(f"algoforge eval: {args.benchmark} ({len(chosen)} problems x {cfg.n}), mode {cfg.mode}: generating",
          file=sys.stderr)
    solutions, generate_s = generate_solutions(chosen, agents, cfg)
    if jax.process_index() != 0:
        return 0  # every host sampled its part of the batch; one judges and writes
    summary = judge_and_summarize(solutions, agents.chat, out, cfg)
    summary = {"benchmark": args.benchmark, "split": split, "mode": cfg.mode, "n": cfg.n,
               "models": {a: str(p) for a, p in paths.items()}, "config": dataclasses.asdict(cfg),
               "benchmark_tasks": len(problems), **summary,
               "generate_seconds": {k.split("/")[0]: round(v, 3) for k, v in generate_s.items()}}
    write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


def judge_and_summarize(solutions, chat, out: Path, cfg) -> dict:
    """Writes samples.jsonl, judges the programs into results.jsonl (eval/score.py's judge_all) and returns
    eval/metrics.py's summary of them, with pass@k for every k <= n."""
    from eval.judging import Sample
    from eval.metrics import summarize

    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "samples.jsonl", jsonl_text(sample_line(s, chat) for s in solutions))
    write_atomic(out / "results.jsonl", "")  # judge_all appends
    samples = [Sample(s.problem, s.sample_index, s.program) for s in solutions]
    start = time.perf_counter()
    results = judge_all(samples, out / "results.jsonl", cfg.workers)
    wall_s = time.perf_counter() - start
    with_programs = [{**r, "program": s.program} for r, s in zip(results, samples, strict=True)]
    return {**summarize(with_programs, range(1, cfg.n + 1)),
            "truncated": sum(s.truncated for s in solutions), "judge_wall_s": round(wall_s, 3)}
