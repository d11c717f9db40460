"""`algoforge run --config F [--workdir D] [--set k=v ...]`: the whole AlgoForge recipe as one resumable pipeline.

Stages, each a plain call of the library function its own command uses, handing results on through the workdir
(the SPEC's layout) and nothing else:

    data         the embedded default's problems, datasets and tokenizer      D/data/        (data.embedded)
    sft-planner  cold-start SFT of the Planner                                D/sft-planner/ (algoforge sft)
    sft-coder    cold-start SFT of the Coder                                  D/sft-coder/   (algoforge sft)
    rl           collaborative GRPO of both, held-out pass@1 before and after D/rl/          (algoforge rl)
    report       the run's numbers gathered from its files                    D/report.{json,md}

A stage whose outputs exist is skipped; an interrupted one resumes from its own checkpoints (SFT and RL save
theirs every few steps), so rerunning the same command after Ctrl-C or SIGKILL goes on where it stopped.
`D/run.json` keeps each finished stage's wall seconds; `wall_s` in the report is their sum over every attempt.

Left out here (see the README's status): plots in the report, and evaluation of other benchmarks and modes
inside the pipeline (`algoforge eval` does those).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from algoforge_jax import config as config_lib
from algoforge_jax.errors import UserError

# The metrics the report shows of each stage's last step (the metrics files hold every one).
REPORTED = {"sft-planner": ("step", "loss", "eval_loss"), "sft-coder": ("step", "loss", "eval_loss"),
            "rl": ("step", "pass_rate", "planner/reward_mean", "coder/reward_mean", "planner/kl", "coder/kl",
                   "planner/clip_fraction", "coder/clip_fraction")}
STAGES = ("data", "sft-planner", "sft-coder", "rl", "report")
HELDOUT = "synthetic-heldout"
MODE = "planner-coder"


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
        eval_json = workdir / "rl" / "eval.json"
        return all((workdir / "rl" / a / "model").exists() for a in config_lib.AGENTS) and eval_json.exists() \
            and "after" in json.loads(eval_json.read_text())
    return (workdir / "report.json").exists()


def _run_stage(cfg: config_lib.Config, workdir: Path, stage: str) -> int:
    if stage == "data":
        from algoforge_jax.data.embedded import build_embedded

        build_embedded(workdir / "data")
        return 0
    if stage.startswith("sft-"):
        from algoforge_jax.sft import agent_batches
        from algoforge_jax.train.loop import train_sft

        agent = stage.removeprefix("sft-")
        batches, held_out, tokenizer_dir = agent_batches(cfg, agent, workdir)
        return train_sft(cfg, agent, workdir / stage, batches, held_out, tokenizer_dir)
    if stage == "rl":
        from algoforge_jax.rl.loop import run_rl

        return run_rl(cfg, workdir)
    write_report(workdir)
    return 0


def _timings(workdir: Path) -> dict:
    path = workdir / "run.json"
    return json.loads(path.read_text()) if path.exists() else {"stage_seconds": {}}


def _add_seconds(workdir: Path, stage: str, seconds: float) -> None:
    timings = _timings(workdir)
    timings["stage_seconds"][stage] = round(timings["stage_seconds"].get(stage, 0.0) + seconds, 3)
    (workdir / "run.json").write_text(json.dumps(timings, indent=1) + "\n")


def run_pipeline(cfg: config_lib.Config, workdir: Path) -> int:
    """Runs every unfinished stage in order; returns the first non-zero exit code, or 0."""
    workdir.mkdir(parents=True, exist_ok=True)
    for i, stage in enumerate(STAGES, 1):
        if stage != "report" and _done(workdir, stage):
            _say(f"[{i}/{len(STAGES)}] {stage}: done earlier, skipped")
            continue
        _say(f"[{i}/{len(STAGES)}] {stage} ...")
        start = time.perf_counter()
        code = _run_stage(cfg, workdir, stage)
        _add_seconds(workdir, stage, time.perf_counter() - start)
        if code:
            _say(f"{stage} stopped with exit code {code}; rerun the same command to resume")
            return code
    report = json.loads((workdir / "report.json").read_text())
    scores = report["pass@1"][HELDOUT][MODE]
    _say(f"held-out pass@1 of Planner->Coder: SFT {scores['sft']:.3f} -> RL {scores['rl']:.3f} "
         f"({report['wall_s']:.0f} s); report in {workdir / 'report.md'}")
    return 0


def _last_metrics(path: Path) -> dict:
    """The last line of a metrics.jsonl (its final step), or {}."""
    if not path.exists():
        return {}
    lines = path.read_text().splitlines()
    return json.loads(lines[-1]) if lines else {}


def write_report(workdir: Path) -> dict:
    """`report.json` and `report.md` from the run's own files: RL's before/after held-out evaluation, the last
    training metrics of each stage, and the stage timings."""
    evaluation = json.loads((workdir / "rl" / "eval.json").read_text())
    before, after = evaluation["before"], evaluation["after"]
    timings = _timings(workdir)["stage_seconds"]
    report = {
        "pass@1": {HELDOUT: {MODE: {"sft": before["pass_at_1"], "rl": after["pass_at_1"]}}},
        "evaluation": evaluation,
        "final_metrics": {name: _last_metrics(workdir / name / "metrics.jsonl")
                          for name in ("sft-planner", "sft-coder", "rl")},
        "stage_seconds": timings,
        "wall_s": round(sum(timings.values()), 3),
    }
    (workdir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (workdir / "report.md").write_text(_markdown(report))
    return report


def _markdown(report: dict) -> str:
    scores = report["pass@1"][HELDOUT][MODE]
    ev = report["evaluation"]["after"]
    lines = ["# AlgoForge run report", "",
             f"Held-out pass@1 of the Planner->Coder pair on `{HELDOUT}` ({ev['problems']} problems, "
             f"temperature {ev['temperature']}):", "",
             "| stage | pass@1 |", "| --- | --- |",
             f"| after SFT | {scores['sft']:.3f} |", f"| after RL | {scores['rl']:.3f} |", "",
             "## Final training metrics", ""]
    for name, metrics in report["final_metrics"].items():
        shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in REPORTED[name] if k in metrics)
        lines.append(f"- `{name}`: {shown or 'none'}")
    lines += ["", "## Wall time", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in report["stage_seconds"].items()]
    lines += [f"| total | {report['wall_s']:.1f} |", ""]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    cfg = config_lib.load(args.config, args.config_arg, args.overrides)
    if cfg.planner.train_data or cfg.coder.train_data:
        raise UserError("algoforge run trains on the embedded default; for your own data run `algoforge sft` "
                        "and `algoforge rl` one by one")
    return run_pipeline(cfg, Path(args.workdir))
