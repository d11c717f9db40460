"""`algoforge rl --config F [--workdir D] [--set k=v ...] [--planner M --coder M]`: collaborative GRPO of both agents.

Thin: reads the config and hands it to `rl.loop.run_rl`. Starts from D/sft-planner/model and D/sft-coder/model (or
the given models), writes D/rl/ (checkpoints/, metrics.jsonl, tb/, eval.json, planner/model, coder/model);
rerunning the same command resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse

from algoforge_jax import config as config_lib


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="Python config file exposing get_config(arg=None)")
    parser.add_argument("--config-arg", default=None, help="string passed to get_config")
    parser.add_argument("--workdir", default="workdir", help="run directory; output goes to WORKDIR/rl")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config field, e.g. --set rl.steps=40 --set rl.grpo.kl_coef=0 (repeatable)")
    parser.add_argument("--planner", default=None,
                        help="Planner model to start from (default WORKDIR/sft-planner/model)")
    parser.add_argument("--coder", default=None, help="Coder model to start from (default WORKDIR/sft-coder/model)")


def main(args: argparse.Namespace) -> int:
    cfg = config_lib.load(args.config, args.config_arg, args.overrides)
    from algoforge_jax.rl.loop import run_rl

    return run_rl(cfg, args.workdir, args.planner, args.coder)
