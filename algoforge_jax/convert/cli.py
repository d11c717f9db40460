"""`algoforge convert`: Hugging Face directory <-> orbax checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from algoforge_jax.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="direction", metavar="DIRECTION", required=True)
    a = sub.add_parser("hf-to-orbax", help="HF directory (config.json + safetensors) -> orbax checkpoint")
    a.add_argument("--hf", required=True, type=Path, help="Hugging Face model directory")
    a.add_argument("--out", required=True, type=Path, help="new orbax checkpoint directory")
    a.add_argument("--param-dtype", choices=("float32", "bfloat16"), default=None,
                   help="dtype to store parameters in (default: float32)")
    b = sub.add_parser("orbax-to-hf", help="orbax checkpoint -> HF directory loadable by transformers")
    b.add_argument("--ckpt", required=True, type=Path, help="orbax checkpoint directory written by this project")
    b.add_argument("--out", required=True, type=Path, help="output directory")
    b.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="safetensors dtype (default: the dtype of the checkpoint the model came from)")
    b.add_argument("--max-shard-size", default="4GB", help="split safetensors above this size, e.g. 500MB, 4GB")
    adapters = b.add_mutually_exclusive_group()
    adapters.add_argument("--merge-lora", action="store_true",
                          help="LoRA checkpoint: write a plain HF model with the adapters merged into the weights")
    adapters.add_argument("--adapter-only", action="store_true",
                          help="LoRA checkpoint: write only the adapters, as a PEFT directory (adapter_config.json + "
                               "adapter_model.safetensors) for peft.PeftModel.from_pretrained(base, OUT)")
    b.add_argument("--base-model", default="",
                   help="with --adapter-only: base_model_name_or_path to record (the HF export of the base)")


def parse_size(text: str) -> int:
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "B": 1}
    for unit, factor in units.items():
        if text.upper().endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise UserError(f"--max-shard-size: cannot read {text!r}; write e.g. 500MB or 4GB")


def _check_adapters(args: argparse.Namespace, rank: int) -> None:
    """An adapted checkpoint needs one of the two LoRA exports; a plain one takes neither."""
    if rank and not (args.merge_lora or args.adapter_only):
        raise UserError(f"{args.ckpt}: has LoRA adapters (rank {rank}); pass --merge-lora (a plain HF model) or "
                        f"--adapter-only (a PEFT adapter directory)")
    if not rank and (args.merge_lora or args.adapter_only):
        flag = "--merge-lora" if args.merge_lora else "--adapter-only"
        raise UserError(f"{args.ckpt}: has no LoRA adapters; {flag} needs a checkpoint trained with lora.rank > 0")


def main(args: argparse.Namespace) -> int:
    import jax

    from algoforge_jax import checkpoints, sharding
    from algoforge_jax.convert.hf import export_hf, load_hf_model

    mesh = sharding.make_mesh()
    if args.direction == "hf-to-orbax":
        if not (args.hf / "config.json").exists():
            raise UserError(f"{args.hf}: no config.json; not a Hugging Face model directory")
        overrides = {"param_dtype": args.param_dtype} if args.param_dtype else {}
        model = load_hf_model(args.hf, mesh, sharding.TRAIN_RULES, **overrides)
        out = checkpoints.save_model(args.out, model, tokenizer_dir=checkpoints.sidecar_dir(args.hf))
    else:
        max_shard = parse_size(args.max_shard_size)
        model = checkpoints.load_model(args.ckpt, mesh, sharding.TRAIN_RULES)
        _check_adapters(args, model.config.lora.rank)
        if args.adapter_only:
            from algoforge_jax.convert.peft import export_peft

            out = export_peft(model, args.out, base_model=args.base_model, dtype=args.dtype)
        else:
            if args.merge_lora:
                from algoforge_jax.models.build import merge_adapters

                model = merge_adapters(model, mesh, sharding.TRAIN_RULES)
            out = export_hf(model, args.out, tokenizer_dir=checkpoints.sidecar_dir(args.ckpt), dtype=args.dtype,
                            max_shard_bytes=max_shard)
    if jax.process_index() == 0:
        print(json.dumps({"out": str(out), "config": model.config.to_hf_config()["architectures"][0],
                          "layers": model.config.num_hidden_layers}))
    return 0
