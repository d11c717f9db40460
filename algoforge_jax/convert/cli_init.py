"""`algoforge init-model`: a randomly initialised model of a preset architecture, written as an HF directory.

Used by the CPU demo and the tests (there are no real Qwen weights on a fresh machine). The bundled Qwen2.5
tokenizer is written beside it, so the directory works with `algoforge generate` and transformers alike.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    from algoforge_jax.models.qwen2 import PRESETS

    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), metavar="NAME",
                        help=f"architecture (default: tiny); one of {', '.join(sorted(PRESETS))}")
    parser.add_argument("--out", required=True, type=Path, help="output directory (HF format)")
    parser.add_argument("--seed", type=int, default=0, help="random init seed")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="safetensors dtype")


def main(args: argparse.Namespace) -> int:
    from algoforge_jax import sharding
    from algoforge_jax.convert.hf import export_hf
    from algoforge_jax.models.build import init_model
    from algoforge_jax.models.qwen2 import preset
    from algoforge_jax.tokenizer import BUNDLED_QWEN25

    cfg = preset(args.preset)
    mesh = sharding.make_mesh()
    model = init_model(cfg, mesh, sharding.TRAIN_RULES, seed=args.seed)
    export_hf(model, args.out, tokenizer_dir=BUNDLED_QWEN25, dtype=args.dtype)
    print(json.dumps({"out": str(args.out), "preset": args.preset}))
    return 0
