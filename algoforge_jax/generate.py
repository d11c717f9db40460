"""`algoforge generate`: sample from a model (HF directory or orbax checkpoint) and print one JSON line per sample.

Prompts come from `--prompt TEXT`, `--prompt-ids 1,2,3`, or `--prompts-file F` (JSON lines, each with "prompt",
"prompt_ids" or chat "messages"); all of them run as one batch through the jitted sampler in `sampling.py`.
Token ids are checked against the model's config before its weights load. Throughput (generated tokens per second,
compile time apart) goes to stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import read_jsonl
from algoforge_jax.tokenizer import encode, load_tokenizer, pad_token_id, stop_token_ids


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="HF model directory or orbax checkpoint")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="prompt text")
    src.add_argument("--prompt-ids", help="prompt token ids, comma-separated (no tokenizer needed)")
    src.add_argument("--prompts-file", type=Path,
                     help='JSON lines with "prompt" (text), "prompt_ids" (list) or "messages" (chat)')
    parser.add_argument("--chat", action="store_true", help="wrap text prompts in the tokenizer's chat template")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="generation budget per sample")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    parser.add_argument("--num-samples", type=int, default=1, help="samples per prompt (G)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="compute dtype")
    parser.add_argument("--stop-ids", help="comma-separated stop token ids (default: the model's and tokenizer's EOS)")


def _int_list(text: str, flag: str) -> list[int]:
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not ids:
        raise UserError(f"{flag}: no token ids given")
    return ids


def _read_prompts_file(path: Path) -> list[dict]:
    rows = []
    for where, row in read_jsonl(path):
        if not isinstance(row, dict) or not ({"prompt", "prompt_ids", "messages"} & row.keys()):
            raise UserError(f"{where}: needs a field 'prompt', 'prompt_ids' or 'messages'")
        ids = row.get("prompt_ids", [])
        if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
            raise UserError(f"{where}: field 'prompt_ids' must be a list of integers")
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no prompts")
    return rows


def _prompt_ids(rows: list[dict], tokenizer, chat: bool, model: Path) -> list[list[int]]:
    if tokenizer is None and any("prompt_ids" not in r for r in rows):
        raise UserError(f"{model}: text prompts need a tokenizer, and the model directory has none")
    return [r["prompt_ids"] if "prompt_ids" in r else encode(tokenizer, r.get("messages") or r["prompt"], chat)
            for r in rows]


def main(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise UserError("--max-new-tokens and --num-samples must be at least 1")
    # Flags and inputs are checked before anything slow runs, so a typo fails at once.
    stop_ids = _int_list(args.stop_ids, "--stop-ids") if args.stop_ids else None
    if args.prompt_ids is not None:
        rows = [{"prompt_ids": _int_list(args.prompt_ids, "--prompt-ids")}]
    else:
        rows = [{"prompt": args.prompt}] if args.prompt is not None else _read_prompts_file(args.prompts_file)
    if not args.model.exists():
        raise UserError(f"{args.model}: no such model directory")
    import jax

    from algoforge_jax import checkpoints, sharding
    from algoforge_jax.sampling import SamplerConfig, check_config, check_prompts, make_sampler, sampling_method

    cfg = checkpoints.read_pretrained_config(args.model)
    tokenizer = load_tokenizer(args.model, cfg.vocab_size) if checkpoints.tokenizer_dir(args.model) else None
    prompts = _prompt_ids(rows, tokenizer, args.chat, args.model)
    stops = stop_ids or stop_token_ids(tokenizer, cfg.eos_token_id)
    sampler_cfg = SamplerConfig(args.max_new_tokens, tuple(stops), pad_token_id(tokenizer, cfg.pad_token_id))
    try:
        method = sampling_method(args.temperature, args.top_k, args.top_p)
        check_config(cfg, sampler_cfg)
        check_prompts(cfg, sampler_cfg, prompts)
    except ValueError as e:
        raise UserError(str(e)) from None
    mesh = sharding.make_mesh()
    model = checkpoints.load_pretrained(args.model, mesh, sharding.SAMPLE_RULES, dtype=args.dtype)
    sampler, params = make_sampler(model, mesh, sampler_cfg, sharding.SAMPLE_RULES)
    rollout = sampler.generate(params, prompts, method, num_samples=args.num_samples, seed=args.seed)
    if jax.process_index() != 0:
        return 0  # every host sampled its part of the batch; one prints the whole of it
    for r in range(len(rollout.lengths)):
        ids = rollout.row_tokens(r)
        print(json.dumps({
            "prompt_index": int(rollout.prompt_index[r]),
            "sample_index": int(rollout.sample_index[r]),
            "token_ids": ids,
            "text": tokenizer.decode(ids, skip_special_tokens=True) if tokenizer else None,
            "logprobs": [round(float(x), 6) for x in rollout.model_logprobs[r, : len(ids)]],
            "finish_reason": rollout.finish_reason[r],
        }))
    stats = rollout.stats
    print(f"generated {rollout.new_tokens} tokens in {stats.generate_seconds:.2f} s "
          f"({rollout.new_tokens / max(stats.generate_seconds, 1e-9):.1f} tokens/s), "
          f"plus {stats.compile_seconds:.2f} s compiling {stats.programs_compiled} programs", file=sys.stderr)
    return 0
