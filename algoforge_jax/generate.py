"""`algoforge generate`: sample from a model (HF directory or orbax checkpoint) and print one JSON line per sample.

Prompts come from `--prompt TEXT`, `--prompt-ids 1,2,3`, or `--prompts-file F` (JSON lines, each with "prompt",
"prompt_ids" or chat "messages"); all of them run as one batch through the jitted sampler in `sampling.py`.
Throughput (generated tokens per second) goes to stderr so stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import read_jsonl


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
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no prompts")
    return rows


def encode_prompts(args, tokenizer, prompt_ids: list[int] | None = None) -> list[list[int]]:
    if prompt_ids is not None:
        return [prompt_ids]
    rows = [{"prompt": args.prompt}] if args.prompt is not None else _read_prompts_file(args.prompts_file)
    if tokenizer is None and any("prompt_ids" not in r for r in rows):
        raise UserError(f"{args.model}: text prompts need a tokenizer, and the model directory has none")
    out = []
    for row in rows:
        if "prompt_ids" in row:
            out.append([int(t) for t in row["prompt_ids"]])
        elif "messages" in row or args.chat:
            messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
            out.append(list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                          return_dict=False)))
        else:
            out.append(tokenizer.encode(row["prompt"], add_special_tokens=False))
    return out


def main(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1 or args.num_samples < 1:
        raise UserError("--max-new-tokens and --num-samples must be at least 1")
    # Flags parsed before anything slow is loaded, so a typo fails at once.
    prompt_ids = _int_list(args.prompt_ids, "--prompt-ids") if args.prompt_ids is not None else None
    stop_ids = _int_list(args.stop_ids, "--stop-ids") if args.stop_ids else None
    if not args.model.exists():
        raise UserError(f"{args.model}: no such model directory")
    import jax

    from algoforge_jax.sampling import SamplerConfig, make_sampler, sampling_method

    try:
        method = sampling_method(args.temperature, args.top_k, args.top_p)
    except ValueError as e:
        raise UserError(str(e)) from None
    from algoforge_jax import checkpoints, sharding
    from algoforge_jax.tokenizer import load_tokenizer, stop_token_ids

    tokenizer = load_tokenizer(args.model) if checkpoints.tokenizer_dir(args.model) else None
    prompts = encode_prompts(args, tokenizer, prompt_ids)
    mesh = sharding.make_mesh()
    model = checkpoints.load_pretrained(args.model, mesh, sharding.SAMPLE_RULES, dtype=args.dtype)
    cfg = model.config
    too_long = [i for i, p in enumerate(prompts) if len(p) + args.max_new_tokens > cfg.max_position_embeddings]
    if too_long:
        raise UserError(f"prompt {too_long[0]}: prompt + --max-new-tokens exceeds the model's "
                        f"max_position_embeddings ({cfg.max_position_embeddings})")
    stops = stop_ids or stop_token_ids(tokenizer, cfg.eos_token_id)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (tokenizer.pad_token_id if tokenizer else 0) or 0
    sampler, params = make_sampler(model, mesh, SamplerConfig(args.max_new_tokens, tuple(stops), pad),
                                   sharding.SAMPLE_RULES)
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
    stats = sampler.last_stats
    print(f"generated {int(stats['new_tokens'])} tokens in {stats['seconds']:.2f} s "
          f"({stats['new_tokens'] / max(stats['seconds'], 1e-9):.1f} tokens/s, compile included)", file=sys.stderr)
    return 0

