"""`algoforge run --config F [--workdir D] [--set k=v ...]`: the whole AlgoForge recipe as one resumable pipeline.

Stages, each a plain call of the library function its own command uses, handing results on through the workdir
(the SPEC's layout) and nothing else:

    data         the embedded default's problems, datasets and tokenizer       D/data/         (data.embedded)
    sft-planner  cold-start SFT of the Planner                                 D/sft-planner/  (algoforge sft)
    sft-coder    cold-start SFT of the Coder                                   D/sft-coder/    (algoforge sft)
    rl           collaborative GRPO of both                                    D/rl/           (algoforge rl)
    eval         the SFT pair and the RL pair on the held-out split: pass@1,   D/eval/HELDOUT/ (algoforge eval)
                 samples, verdicts, runtime, memory, maintainability          planner-coder/{sft,rl}/
    report       the run's numbers and plots gathered from its files           D/report.{json,md}, D/*.png

A stage whose outputs exist is skipped; an interrupted one resumes from its own checkpoints (SFT and RL save
theirs every few steps), so rerunning the same command after Ctrl-C or SIGKILL goes on where it stopped.
`D/run.json` keeps each stage's wall seconds over every attempt; `wall_s` in the report is their sum up to the
report stage (which cannot time itself).

The eval stage is the run's one held-out evaluation, the same protocol for the SFT pair and the RL pair: it decodes
as `algoforge rl`'s own before/after evaluation would (rl.eval_temperature, eval_samples, eval_limit and the RL
response budgets), which the pipeline turns off (`rl.evaluate`) rather than evaluate each pair twice, and keeps
every sample, its verdict, and runtime, memory and maintainability. Left out here: other benchmarks and modes
(`algoforge eval --workdir D ...` writes under D/eval, and `algoforge report --workdir D` adds them to the report).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from algoforge_jax import config as config_lib
from algoforge_jax.errors import UserError
from algoforge_jax.report import HELDOUT, MODE, write_report

STAGES = ("data", "sft-planner", "sft-coder", "rl", "eval", "report")
EVALUATED = ("sft", "rl")  # the pairs the eval stage evaluates


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="Python config file exposing get_config(arg=None), "
                                                        "e.g. configs/tiny.py (the embedded default)")
    parser.add_argument("--config-arg", default=None, help="string passed to get_config")
    parser.add_argument("--workdir", default="workdir/run", help="run directory (rerun with the same one to resume)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config field for every stage, e.g. --set rl.steps=10 (repeatable)")


def _say(text: str) -> None:
    print(f"algoforge run: {text}", file=sys.stderr, flush=True)


def _done(workdir: Path, stage: str) -> bool:
    """A stage is finished when its final outputs exist (not merely its checkpoints)."""
    if stage == "data":
        return (workdir / "data" / "tokenizer" / "tokenizer.model").exists()
    if stage.startswith("sft-"):
        return (workdir / stage / "model").exists()
    if stage == "rl":
        return all((workdir / "rl" / a / "model").exists() for a in config_lib.AGENTS)
    if stage == "eval":
        return all((eval_dir(workdir, pair) / "summary.json").exists() for pair in EVALUATED)
    return (workdir / "report.json").exists()


def _run_stage(cfg: config_lib.Config, workdir: Path, stage: str) -> int:
    if stage == "data":
        from algoforge_jax.data.embedded import build_embedded

        build_embedded(workdir / "data", sketches=cfg.data.sketches)
        return 0
    if stage.startswith("sft-"):
        from algoforge_jax.sft import agent_batches
        from algoforge_jax.train.loop import train_sft

        agent = stage.removeprefix("sft-")
        batches, held_out, tokenizer_dir = agent_batches(cfg, agent, workdir)
        return train_sft(cfg, agent, workdir / stage, batches, held_out, tokenizer_dir)
    if stage == "rl":
        from algoforge_jax.rl.loop import run_rl

        return run_rl(dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, evaluate=False)), workdir)
    if stage == "eval":
        pending = [pair for pair in EVALUATED if not (eval_dir(workdir, pair) / "summary.json").exists()]
        return next((code for code in (evaluate_pair(cfg, workdir, pair) for pair in pending) if code), 0)
    write_report(workdir)
    return 0


def eval_dir(workdir: Path, pair: str) -> Path:
    return workdir / "eval" / HELDOUT / MODE / pair


def eval_flags(cfg: config_lib.Config, workdir: Path, pair: str) -> list[str]:
    """`algoforge eval` flags evaluating the `pair` ("sft" or "rl") models on the held-out split as RL's own
    evaluation does (its decoding, budgets, problems; compact prompts: the embedded default's tokenizer)."""
    rl = cfg.rl
    models = {a: workdir / "rl" / a / "model" if pair == "rl" else workdir / f"sft-{a}" / "model"
              for a in config_lib.AGENTS}
    flags = ["--benchmark", HELDOUT, "--mode", MODE, "--workdir", str(workdir), "--out", str(eval_dir(workdir, pair)),
             "--planner", str(models["planner"]), "--coder", str(models["coder"]), "--compact",
             "--temperature", str(rl.eval_temperature), "--seed", str(rl.seed), "--dtype", cfg.model.dtype,
             "--planner-max-new-tokens", str(rl.planner_max_new_tokens),
             "--coder-max-new-tokens", str(rl.coder_max_new_tokens), "--workers", str(rl.sandbox_workers)]
    flags += ["--n", str(rl.eval_samples)] if rl.eval_temperature > 0 else []
    flags += ["--limit", str(rl.eval_limit)] if rl.eval_limit else []
    return flags + (["--problems", rl.eval_problems] if rl.eval_problems else [])


def evaluate_pair(cfg: config_lib.Config, workdir: Path, pair: str) -> int:
    """`algoforge eval` (evaluate.main) with eval_flags: samples, results and summary under eval_dir."""
    from algoforge_jax import evaluate

    parser = argparse.ArgumentParser(prog="algoforge eval")
    evaluate.configure(parser)
    _say(f"eval: the {pair.upper()} pair on {HELDOUT}")
    return evaluate.main(parser.parse_args(eval_flags(cfg, workdir, pair)))


def _timings(workdir: Path) -> dict:
    path = workdir / "run.json"
    return json.loads(path.read_text()) if path.exists() else {"stage_seconds": {}}


def _add_seconds(workdir: Path, stage: str, seconds: float) -> None:
    timings = _timings(workdir)
    timings["stage_seconds"][stage] = round(timings["stage_seconds"].get(stage, 0.0) + seconds, 3)
    (workdir / "run.json").write_text(json.dumps(timings, indent=1) + "\n")


def run_pipeline(cfg: config_lib.Config, workdir: Path) -> int:
    """Runs every unfinished stage in order; returns the first non-zero exit code, or 0. With several processes
    (`--distributed`) each runs every stage's training and sampling; process 0 alone prints, keeps run.json and
    writes the report."""
    import jax

    main = jax.process_index() == 0
    say = _say if main else lambda text: None
    workdir.mkdir(parents=True, exist_ok=True)
    for i, stage in enumerate(STAGES, 1):
        if stage != "report" and _done(workdir, stage):
            say(f"[{i}/{len(STAGES)}] {stage}: done earlier, skipped")
            continue
        if stage == "report" and not main:
            return 0
        say(f"[{i}/{len(STAGES)}] {stage} ...")
        start = time.perf_counter()
        code = _run_stage(cfg, workdir, stage)
        if main:
            _add_seconds(workdir, stage, time.perf_counter() - start)
        if code:
            say(f"{stage} stopped with exit code {code}; rerun the same command to resume")
            return code
    report = json.loads((workdir / "report.json").read_text())
    scores = report["pass@1"][HELDOUT][MODE]
    say(f"held-out pass@1 of Planner->Coder: SFT {scores['sft']:.3f} -> RL {scores['rl']:.3f} "
        f"({report['wall_s']:.0f} s); report in {workdir / 'report.md'}")
    return 0


def main(args: argparse.Namespace) -> int:
    cfg = config_lib.load(args.config, args.config_arg, args.overrides)
    if cfg.planner.train_data or cfg.coder.train_data:
        raise UserError("algoforge run trains on the embedded default; for your own data run `algoforge sft` "
                        "and `algoforge rl` one by one")
    return run_pipeline(cfg, Path(args.workdir))
