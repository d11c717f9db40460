"""`algoforge` command line: one subcommand per module, imported only when that subcommand runs.

Each command module exposes `configure(parser)` (adds its flags) and `main(args) -> int`. Keeping imports lazy
means `algoforge --help` answers in well under a second, without importing JAX.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from algoforge_jax.errors import UserError

# name -> (module, one-line help). Modules are imported on use.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("algoforge_jax.generate", "sample from a model (HF directory or orbax checkpoint); JSON lines out"),
    "convert": ("algoforge_jax.convert.cli", "convert checkpoints between Hugging Face and orbax"),
    "init-model": ("algoforge_jax.convert.cli_init", "write a randomly initialised HF-format model from a preset"),
    "sft": ("algoforge_jax.sft", "cold-start supervised fine-tuning of one agent (planner or coder)"),
    "rl": ("algoforge_jax.rl.cli", "collaborative GRPO of the Planner and the Coder on sandbox rewards"),
    "run": ("algoforge_jax.run", "the whole recipe on the embedded default: data, SFT of both agents, GRPO, report"),
    "report": ("algoforge_jax.report", "a run's report.md, report.json and plots, from the files in its workdir"),
    "score": ("eval.score", "run completions in the sandbox against a benchmark's tests"),
    "build-data": ("algoforge_jax.build_data", "Planner/Coder datasets by rejection sampling from a teacher model"),
    "eval": ("algoforge_jax.evaluate", "generate with the agents (direct, cot or planner-coder) and score; pass@k out"),
    "solve": ("algoforge_jax.solve", "plan, then code, for one problem given as text; with --tests, its verdicts"),
}


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="algoforge",
        description="Train and evaluate Planner/Coder code agents (AlgoForge) in JAX.",
    )
    parser.add_argument("--distributed", action="store_true",
                        help="join a multi-process JAX run (one process per host) before the command: "
                             "jax.distributed.initialize(), auto-detected on Cloud TPU and SLURM, else from "
                             "ALGOFORGE_COORDINATOR_ADDRESS, ALGOFORGE_NUM_PROCESSES and ALGOFORGE_PROCESS_ID")
    parser.add_argument("--no-compilation-cache", action="store_true",
                        help="compile every program afresh (as does JAX_ENABLE_COMPILATION_CACHE=false). By "
                             "default compiled programs are kept in $JAX_COMPILATION_CACHE_DIR, else "
                             "$XDG_CACHE_HOME/algoforge_jax/jax (~/.cache/algoforge_jax/jax), so a repeated command "
                             "loads them instead of compiling")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:  # only the chosen command's module is imported
            importlib.import_module(module).configure(p)
    return parser


def use_compilation_cache(enabled: bool = True) -> None:
    """Turns on JAX's persistent compilation cache for this process and the ones it starts, in
    $JAX_COMPILATION_CACHE_DIR if the user set it, else under the user's cache dir.

    Done through JAX's own environment variables, which JAX reads when it is imported (command modules import it
    lazily, after this runs), so JAX_ENABLE_COMPILATION_CACHE=false turns it off as well as the flag does.
    Programs that compile in under JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS (JAX's default: 1 s) are not stored.
    """
    if not enabled:
        os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(base, "algoforge_jax", "jax"))


def initialize_distributed() -> None:
    """One process per host: every process runs the same command and sees the devices of all hosts."""
    import jax

    # The CPU/GPU collectives library (gloo) announces its connections on the process's stdout, which must stay
    # machine-readable (generate prints JSON lines): native writes to fd 1 go to stderr from here on, and Python's
    # sys.stdout keeps the original stdout.
    stdout_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = open(stdout_fd, "w", buffering=1, encoding="utf-8", closefd=True)
    env = {k: os.environ.get(f"ALGOFORGE_{k.upper()}") for k in ("coordinator_address", "num_processes", "process_id")}
    if any(v is None for v in env.values()):
        jax.distributed.initialize()  # cluster auto-detection (Cloud TPU, SLURM, Open MPI, ...)
        return
    try:
        jax.distributed.initialize(env["coordinator_address"], int(env["num_processes"]), int(env["process_id"]))
    except ValueError as e:
        raise UserError(f"--distributed: ALGOFORGE_NUM_PROCESSES / ALGOFORGE_PROCESS_ID: {e}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected is not None and selected not in COMMANDS:
        selected = None
    parser = build_parser(selected)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    use_compilation_cache(enabled=not args.no_compilation_cache)
    try:
        if args.distributed:
            initialize_distributed()
        return int(module.main(args) or 0)
    except UserError as e:
        print(f"algoforge {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"algoforge {args.command}: interrupted", file=sys.stderr)
        return 130
