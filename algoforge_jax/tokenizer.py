"""Tokenizers: the one stored with a model, or the bundled Qwen2.5 tokenizer for random test models."""

from __future__ import annotations

import os
from pathlib import Path

from algoforge_jax.errors import UserError

BUNDLED_QWEN25 = Path(__file__).parent / "assets" / "qwen2.5-tokenizer"


def load_tokenizer(path, vocab_size: int | None = None):
    """`transformers.AutoTokenizer` from a tokenizer folder, or from the tokenizer of a model directory.

    With the model's `vocab_size`, a tokenizer with more tokens than the model has embeddings is refused: its
    ids would index past the table. (Fewer is normal: Qwen2.5 pads its embedding table past the tokenizer's
    151665 tokens to 151936 or 152064.)"""
    # Only tokenizers are used: no advice that models need PyTorch (which an install without the test extras lacks).
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import AutoTokenizer

    from algoforge_jax.checkpoints import tokenizer_dir

    found = tokenizer_dir(path)
    if found is None:
        raise UserError(f"{path}: no tokenizer files (tokenizer.json, vocab.json or tokenizer_config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(found))
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise UserError(f"{found}: the tokenizer has {len(tokenizer)} tokens, more than the model's vocab_size "
                        f"{vocab_size}; the tokenizer is not this model's")
    return tokenizer


def stop_token_ids(tokenizer, model_eos=None) -> tuple[int, ...]:
    """EOS ids to stop on: the model's generation eos (int or list) plus, with a tokenizer, its eos and
    <|im_end|>."""
    ids = [model_eos] if isinstance(model_eos, int) else list(model_eos or [])
    for token in (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>") if tokenizer else ():
        tid = tokenizer.convert_tokens_to_ids(token) if token else None
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.append(tid)
    return tuple(dict.fromkeys(ids))


def pad_token_id(tokenizer, model_pad: int | None = None) -> int:
    """The id that left-pads prompts and fills finished rows: the model config's, else the tokenizer's, else 0."""
    if model_pad is not None:
        return model_pad
    return (tokenizer.pad_token_id if tokenizer is not None else None) or 0


def encode(tokenizer, prompt: str | list[dict], chat: bool = False) -> list[int]:
    """Token ids of a prompt: a text as it stands (no special tokens added), or a chat, given as a list of
    messages or as a text with chat=True (one user turn), through the tokenizer's chat template with the
    assistant's turn opened."""
    if isinstance(prompt, str) and not chat:
        return tokenizer.encode(prompt, add_special_tokens=False)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
