"""`algoforge report --workdir D`: `D/report.md`, `D/report.json` and PNG plots beside them, from the run's files.

Every number comes from a file of the run (each is optional; what is missing is left out and said so):

    run.json                           each stage's wall seconds (`algoforge run` keeps it)
    rl/eval.json                       `algoforge rl`'s own held-out pass@1 before (= SFT) and after RL, and
                                       each problem's pass fraction (`algoforge run` leaves it to its eval stage)
    eval/**/summary.json               every `algoforge eval` under D/eval (the pipeline's eval stage writes
                                       eval/synthetic-heldout/planner-coder/{sft,rl}/); the models it names tell
                                       base, SFT or RL apart; samples.jsonl + results.jsonl beside it
    sft-{planner,coder}/metrics.jsonl  SFT loss curves            -> sft_loss.png
    rl/metrics.jsonl                   RL curves of both agents   -> rl_curves.png

`report.json` holds `{"pass@1": {BENCHMARK: {MODE: {"base"|"sft"|"rl": x}}}, "wall_s": s}`, one record per
evaluation (verdicts, runtime and memory of passing programs, maintainability), the last training metrics of each
stage, the plots' file names, a few held-out examples of the RL pair, and `heldout_change`: the held-out problems
RL gained and lost against the SFT pair, with a sign test. Every cell is an eval summary's pass@1, except that
rl/eval.json, where `algoforge rl` wrote one, gives the `synthetic-heldout` / `planner-coder` cell (the numbers its
own protocol measured before and after). Not here: judging or generating anything (`algoforge eval` does).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import read_jsonl
from eval.metrics import task_counts

HELDOUT, MODE = "synthetic-heldout", "planner-coder"
AGENTS = ("planner", "coder")
STAGE_ORDER = ("base", "sft", "rl", "mixed")  # table columns; "mixed": agents of different stages
# The last metrics the report lists of each training stage (the metrics files hold every step).
REPORTED = {"sft-planner": ("step", "loss", "eval_loss"), "sft-coder": ("step", "loss", "eval_loss"),
            "rl": ("step", "pass_rate", "planner/reward_mean", "coder/reward_mean", "planner/kl", "coder/kl",
                   "planner/clip_fraction", "coder/clip_fraction")}
# rl_curves.png: (panel title, metric suffix after "planner/" or "coder/").
RL_PANELS = (("reward (mean)", "reward_mean"), ("pass rate of the rollout", "pass_rate"),
             ("KL to the reference", "kl"), ("clip fraction", "clip_fraction"))
SHOWN_EXAMPLES = 3


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workdir", required=True, type=Path, help="run directory to report on")


def main(args: argparse.Namespace) -> int:
    if not args.workdir.is_dir():
        raise UserError(f"--workdir {args.workdir}: no such directory")
    write_report(args.workdir)
    print(args.workdir / "report.md")
    return 0


# ---------------------------------------------------------------------------------------------- reading the run


def _read_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def read_metrics(path: Path) -> list[dict]:
    """Every line of a metrics.jsonl ([] when there is none)."""
    return [row for _, row in read_jsonl(path)] if path.exists() else []


def model_stage(path: str) -> str:
    """'rl' for a run's rl/AGENT/model, 'sft' for sft-AGENT/model, else 'base' (a model from outside the run)."""
    parts = Path(path).parts
    if len(parts) >= 2 and parts[-1] == "model" and parts[-2].startswith("sft-"):
        return "sft"
    if len(parts) >= 3 and parts[-3] == "rl" and parts[-1] == "model":
        return "rl"
    return "base"


def read_evaluations(workdir: Path) -> list[dict]:
    """Every eval summary under D/eval, with its `stage` (from its models) and `dir`; ordered by benchmark, mode,
    stage (STAGE_ORDER), then path, so of two evaluations of one cell the later path wins the pass@1 table."""
    found = []
    for path in sorted((workdir / "eval").rglob("summary.json")):
        summary = _read_json(path)
        missing = [k for k in ("benchmark", "mode", "models") if k not in summary]
        if missing:
            raise UserError(f"{path}: not an `algoforge eval` summary (no {', '.join(missing)})")
        stages = {model_stage(p) for p in summary["models"].values()}
        found.append({**summary, "stage": stages.pop() if len(stages) == 1 else "mixed", "dir": str(path.parent)})
    return sorted(found, key=lambda e: (e["benchmark"], e["mode"], STAGE_ORDER.index(e["stage"])))


def pass_at_1_table(rl_eval: dict | None, evaluations: list[dict]) -> dict:
    """{benchmark: {mode: {stage: pass@1}}}: the summaries' pass@1, then rl/eval.json's held-out cell on top when
    it holds both numbers (before and after RL) or the summaries have no such cell: one protocol per cell."""
    table: dict = {}
    for e in evaluations:
        if "pass@1" in e:
            table.setdefault(e["benchmark"], {}).setdefault(e["mode"], {})[e["stage"]] = e["pass@1"]
    cell = table.setdefault(HELDOUT, {}).setdefault(MODE, {}) if rl_eval else None
    if rl_eval and ("after" in rl_eval or not cell):  # a lone "before" (RL cut short) never sits beside eval's
        cell.update({stage: rl_eval[when]["pass_at_1"] for stage, when in (("sft", "before"), ("rl", "after"))
                     if when in rl_eval})
    return table


# ---------------------------------------------------------------------------------------------- examples


def _heldout_statements(workdir: Path) -> dict[str, str]:
    """task_id -> statement of the embedded default's held-out problems ({} when the run has no such file)."""
    from algoforge_jax.data.synthetic import EVAL_BENCHMARKS

    path = workdir / "data" / "problems" / f"{EVAL_BENCHMARKS[HELDOUT]}.jsonl"
    return {p["task_id"]: p["prompt"] for _, p in read_jsonl(path)} if path.exists() else {}


def _judged(evaluation: dict) -> dict[tuple[str, int], dict]:
    """(task_id, sample_index) -> the sample line with its verdict, from the evaluation's directory."""
    folder = Path(evaluation["dir"])
    samples = {(s["task_id"], s["sample_index"]): s for _, s in read_jsonl(folder / "samples.jsonl")}
    return {(r["task_id"], r["sample_index"]): {**samples[(r["task_id"], r["sample_index"])], "verdict": r["verdict"]}
            for _, r in read_jsonl(folder / "results.jsonl") if (r["task_id"], r["sample_index"]) in samples}


def pick_examples(rows: list[dict], k: int) -> list[dict]:
    """Up to k rows, one per verdict first (a passing one before the failures, in file order), then the rest."""
    firsts = {}
    for row in sorted(rows, key=lambda r: r["verdict"] != "PASS"):
        firsts.setdefault(row["verdict"], row)
    chosen = list(firsts.values())[:k]
    return chosen + [r for r in rows if r not in chosen][:k - len(chosen)]


def examples(workdir: Path, evaluations: list[dict], k: int = SHOWN_EXAMPLES) -> list[dict]:
    """k held-out problems as the RL pair solved them (the last synthetic-heldout planner-coder evaluation of the
    RL models): statement, plan, program, verdict, and the SFT pair's verdict on the same sample where evaluated."""
    def last(stage):
        return next((e for e in reversed(evaluations) if (e["benchmark"], e["mode"], e["stage"]) ==
                     (HELDOUT, MODE, stage) and (Path(e["dir"]) / "samples.jsonl").exists()), None)

    rl, sft = last("rl"), last("sft")
    if rl is None:
        return []
    statements = _heldout_statements(workdir)
    sft_judged = _judged(sft) if sft else {}
    judged = _judged(rl)
    chosen = pick_examples(list(judged.values()), k)
    return [{"task_id": s["task_id"], "sample_index": s["sample_index"], "problem": statements.get(s["task_id"]),
             "plan": s.get("plan"), "completion": s["completion"], "verdict": s["verdict"],
             "sft_verdict": sft_judged.get((s["task_id"], s["sample_index"]), {}).get("verdict")} for s in chosen]


# ---------------------------------------------------------------------------------------------- plots


def _figure(rows: int, cols: int, size: tuple[float, float]):
    """A figure on the Agg canvas, without pyplot (no global figure state; works with no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    points = [(r["step"], r[key]) for r in rows if key in r]
    return [s for s, _ in points], [v for _, v in points]


def plot_sft(curves: dict[str, list[dict]], path: Path) -> bool:
    """Training loss (and held-out loss where measured) of each agent's SFT against step; False if no metrics."""
    if not any(curves.values()):
        return False
    fig, axes = _figure(1, 1, (6.4, 4.0))
    ax = axes[0, 0]
    for color, (agent, rows) in zip(("tab:blue", "tab:orange"), curves.items()):
        ax.plot(*_series(rows, "loss"), color=color, label=f"{agent} train")
        ax.plot(*_series(rows, "eval_loss"), "o--", color=color, label=f"{agent} held-out")
    ax.set(xlabel="SFT step", ylabel="loss (nats / token)", yscale="log", title="Cold-start SFT")
    ax.legend()
    fig.savefig(path, dpi=100)
    return True


def plot_rl(rows: list[dict], rl_eval: dict | None, path: Path) -> bool:
    """rl_curves.png: reward, rollout pass rate, KL and clip fraction of both agents per step (held-out pass@1
    before and after RL marked on the pass-rate panel); False if no metrics."""
    if not rows:
        return False
    fig, axes = _figure(2, 2, (10.0, 7.0))
    for ax, (title, suffix) in zip(axes.flat, RL_PANELS):
        for agent, style in zip(AGENTS, ("-", "--")):
            ax.plot(*_series(rows, f"{agent}/{suffix}"), style, label=agent)
        ax.set(xlabel="RL step", title=title)
    if rl_eval:
        ax = axes[0, 1]
        for (when, step), marker in zip((("before", 0), ("after", rows[-1]["step"])), ("s", "D")):
            if when in rl_eval:
                ax.plot([step], [rl_eval[when]["pass_at_1"]], marker, color="black",
                        label=f"held-out pass@1 {when} RL")
    for ax in axes.flat:
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=100)
    return True


# ---------------------------------------------------------------------------------------------- the report


def _detail(e: dict) -> dict:
    keys = ("benchmark", "mode", "stage", "n", "n_tasks", "pass@1", "verdicts", "passing_mean_time_s",
            "passing_mean_peak_mem_mb", "maintainability_index", "maintainability_index_passing", "truncated", "dir")
    return {k: e.get(k) for k in keys}


def heldout_change(before: dict[str, float], after: dict[str, float]) -> dict:
    """Problem by problem, what RL changed ({problem: pass fraction} of the SFT pair and of the RL pair, over the
    problems both were evaluated on): how many the RL pair solves more often, how many less, and the exact
    two-sided sign test's p-value of that split (the chance of one at least as lopsided if RL had only changed
    which problems pass, not how many)."""
    common = [k for k in before if k in after]
    gained, lost = sum(after[k] > before[k] for k in common), sum(after[k] < before[k] for k in common)
    n, k = gained + lost, min(gained, lost)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    return {"problems": len(common), "gained": gained, "lost": lost, "sign_test_p": p}


def _per_problem(evaluation: dict) -> dict[str, float]:
    """task_id -> fraction of its samples that pass, from an evaluation's results.jsonl."""
    counts = task_counts(row for _, row in read_jsonl(Path(evaluation["dir"]) / "results.jsonl"))
    return {task: c / n for task, (n, c) in counts.items()}


def heldout_change_of_run(rl_eval: dict | None, evaluations: list[dict]) -> dict | None:
    """`heldout_change` from the source of the pass@1 table's held-out cell: rl/eval.json's `per_problem` lists
    when it has them, else the last SFT-pair and RL-pair evaluations of that cell (their results.jsonl)."""
    if rl_eval and "after" in rl_eval:
        if any("per_problem" not in rl_eval.get(when, {}) for when in ("before", "after")):
            return None
        before, after = (dict(enumerate(rl_eval[when]["per_problem"])) for when in ("before", "after"))
        return heldout_change(before, after)
    last = {e["stage"]: e for e in evaluations if (e["benchmark"], e["mode"]) == (HELDOUT, MODE)
            and (Path(e["dir"]) / "results.jsonl").exists()}
    if not {"sft", "rl"} <= set(last):
        return None
    return heldout_change(_per_problem(last["sft"]), _per_problem(last["rl"]))


def build_report(workdir: Path) -> dict:
    """report.json's content, and the plots written next to it."""
    rl_eval = _read_json(workdir / "rl" / "eval.json")
    evaluations = read_evaluations(workdir)
    timings = (_read_json(workdir / "run.json") or {}).get("stage_seconds", {})
    sft = {agent: read_metrics(workdir / f"sft-{agent}" / "metrics.jsonl") for agent in AGENTS}
    rl = read_metrics(workdir / "rl" / "metrics.jsonl")
    plots = {name: file for name, file, drawn in (
        ("sft", "sft_loss.png", plot_sft(sft, workdir / "sft_loss.png")),
        ("rl", "rl_curves.png", plot_rl(rl, rl_eval, workdir / "rl_curves.png"))) if drawn}
    final = {f"sft-{a}": rows[-1] for a, rows in sft.items() if rows} | ({"rl": rl[-1]} if rl else {})
    return {"pass@1": pass_at_1_table(rl_eval, evaluations), "wall_s": round(sum(timings.values()), 3),
            "stage_seconds": timings, "evaluation": rl_eval,
            "heldout_change": heldout_change_of_run(rl_eval, evaluations),
            "evaluations": [_detail(e) for e in evaluations], "final_metrics": final, "plots": plots,
            "examples": examples(workdir, evaluations)}


def write_report(workdir: Path) -> dict:
    """Writes D/report.json, D/report.md and the plots; returns the report."""
    workdir = Path(workdir)
    report = build_report(workdir)
    (workdir / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (workdir / "report.md").write_text(markdown(report))
    return report


def _number(x, fmt: str = ".3f") -> str:
    return "-" if x is None else format(x, fmt)


def _pass_table(report: dict) -> list[str]:
    table = report["pass@1"]
    stages = [s for s in STAGE_ORDER if any(s in cell for modes in table.values() for cell in modes.values())]
    lines = ["| benchmark | mode | " + " | ".join(stages) + " |", "| --- | --- |" + " --- |" * len(stages)]
    for benchmark, modes in table.items():
        for mode, cell in modes.items():
            lines.append(f"| {benchmark} | {mode} | " + " | ".join(_number(cell.get(s)) for s in stages) + " |")
    return lines


def _details_table(report: dict) -> list[str]:
    rows = report["evaluations"]
    counts = [r["verdicts"] or {} for r in rows]
    verdicts = [v for v in dict.fromkeys(v for c in counts for v in c) if any(c.get(v) for c in counts)]
    lines = ["| benchmark | mode | models | problems x n | pass@1 | " + " | ".join(verdicts) +
             " | CPU s (passing) | peak MB (passing) | maintainability (all / passing) | truncated |",
             "| --- " * (9 + len(verdicts)) + "|"]
    for r, c in zip(rows, counts):
        mi = f"{_number(r['maintainability_index'], '.1f')} / {_number(r['maintainability_index_passing'], '.1f')}"
        lines.append(f"| {r['benchmark']} | {r['mode']} | {r['stage']} | {r['n_tasks']} x {r['n']} | "
                     f"{_number(r['pass@1'])} | " + " | ".join(str(c.get(v, 0)) for v in verdicts) +
                     f" | {_number(r['passing_mean_time_s'], '.4f')} | {_number(r['passing_mean_peak_mem_mb'], '.1f')}"
                     f" | {mi} | {_number(r['truncated'], 'd')} |")
    return lines


def _curves(report: dict) -> list[str]:
    lines = ["## Training curves", ""]
    for name, alt in (("sft", "SFT loss of the Planner and the Coder"),
                      ("rl", "RL: reward, pass rate, KL and clip fraction of both agents")):
        lines.append(f"![{alt}]({report['plots'][name]})" if name in report["plots"] else f"({alt}: no metrics)")
        lines.append("")
    lines += ["Last step of each stage:", ""]
    for name, metrics in report["final_metrics"].items():
        shown = ", ".join(f"{k} {metrics[k]:.4g}" for k in REPORTED[name] if k in metrics)
        lines.append(f"- `{name}`: {shown or 'none'}")
    return lines + [""]


def _examples(report: dict) -> list[str]:
    lines = [f"## Examples: held-out problems solved by the RL pair (`{HELDOUT}`, `{MODE}`)", ""]
    for ex in report["examples"]:
        sft = f"; the SFT pair: {ex['sft_verdict']}" if ex["sft_verdict"] else ""
        lines += [f"### `{ex['task_id']}` (sample {ex['sample_index']}): {ex['verdict']}{sft}", "",
                  f"**Problem.** {ex['problem'] or '(statement not found)'}", "", "**Plan.**", "", "```text",
                  (ex["plan"] or "").rstrip(), "```", "", "**Coder's answer.**", "", "````text",
                  ex["completion"].rstrip(), "````", ""]
    return lines if report["examples"] else lines + ["(no evaluation of the RL pair with its samples)", ""]


def markdown(report: dict) -> str:
    ev = report["evaluation"]
    lines = ["# AlgoForge run report", "", "## Pass@1", ""]
    if ev and "after" in ev:
        lines += [f"`{HELDOUT}` / `{MODE}`: RL's own held-out protocol ({ev['after']['problems']} problems, "
                  f"temperature {ev['after']['temperature']}, {ev['after']['samples_per_problem']} chain(s) each, "
                  "`rl/eval.json`); other cells: the `algoforge eval` summaries under `eval/`.", ""]
    lines += _pass_table(report) + [""]
    change = report.get("heldout_change")
    if change:
        lines += [f"Problem by problem on `{HELDOUT}`: RL solves {change['gained']} of the {change['problems']} "
                  f"problems more often than the SFT pair did and {change['lost']} less often (exact two-sided sign "
                  f"test: p = {change['sign_test_p']:.3g}).", ""]
    if report["evaluations"]:
        lines += ["## Evaluations: verdicts, runtime, memory, maintainability", "",
                  "Counts of samples by verdict; CPU time and peak memory are means over passing programs; "
                  "maintainability is radon's index (0-100).", ""] + _details_table(report) + [""]
    lines += _curves(report) + _examples(report)
    if not report["stage_seconds"]:
        return "\n".join(lines)
    lines += ["## Wall time", "", "| stage | seconds |", "| --- | --- |"]
    lines += [f"| {stage} | {seconds:.1f} |" for stage, seconds in report["stage_seconds"].items()]
    return "\n".join(lines + [f"| total | {report['wall_s']:.1f} |", ""])
