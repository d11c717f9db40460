"""Tokenizers: the one stored with a model, or the bundled Qwen2.5 tokenizer for random test models."""

from __future__ import annotations

import os
from pathlib import Path

from algoforge_jax.errors import UserError

BUNDLED_QWEN25 = Path(__file__).parent / "assets" / "qwen2.5-tokenizer"


def load_tokenizer(path):
    """`transformers.AutoTokenizer` from a tokenizer folder, or from the tokenizer of a model directory."""
    # Only tokenizers are used: no advice that models need PyTorch (which an install without the test extras lacks).
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import AutoTokenizer

    from algoforge_jax.checkpoints import tokenizer_dir

    found = tokenizer_dir(path)
    if found is None:
        raise UserError(f"{path}: no tokenizer files (tokenizer.json, vocab.json or tokenizer_config.json)")
    return AutoTokenizer.from_pretrained(str(found))


def stop_token_ids(tokenizer, model_eos=None) -> tuple[int, ...]:
    """EOS ids to stop on: the model's generation eos (int or list) plus, with a tokenizer, its eos and
    <|im_end|>."""
    ids = [model_eos] if isinstance(model_eos, int) else list(model_eos or [])
    for token in (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>") if tokenizer else ():
        tid = tokenizer.convert_tokens_to_ids(token) if token else None
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.append(tid)
    return tuple(dict.fromkeys(ids))
