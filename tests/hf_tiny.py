"""Tiny random Hugging Face Qwen2 models for tests: built with transformers, saved with `save_pretrained`, no download.

Shared by test_qwen2, test_sharding, test_convert and test_checkpoints (a helper module, not a conftest fixture, so
each test file stays readable on its own).
"""

from __future__ import annotations

import jax
import numpy as np
import torch
import transformers

from algoforge_jax import sharding

VOCAB = 1000


def hf_config(**overrides) -> transformers.Qwen2Config:
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, rope_theta=10_000.0, tie_word_embeddings=False,
        initializer_range=0.1,  # larger than the default so logits are O(1) and a 1e-4 tolerance means something
    )
    kwargs.update(overrides)
    return transformers.Qwen2Config(**kwargs)


def hf_model(seed: int = 0, **overrides) -> transformers.Qwen2ForCausalLM:
    """A random fp32 model whose biases and norm weights are random too (HF initialises them to 0 and 1, which
    would hide a bias or norm mapped to the wrong place)."""
    torch.manual_seed(seed)
    model = transformers.Qwen2ForCausalLM(hf_config(**overrides)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def save_hf_model(path, seed: int = 0, **overrides) -> transformers.Qwen2ForCausalLM:
    model = hf_model(seed, **overrides)
    model.save_pretrained(path)
    return model


def tokens_and_mask(batch: int = 3, length: int = 12, pads=(0, 4, 7), seed: int = 0):
    """Random token ids [B, T] and a left-padding mask (row b has pads[b] leading pad positions)."""
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, VOCAB, (batch, length)).astype(np.int32)
    valid = np.arange(length)[None, :] >= np.asarray(pads[:batch])[:, None]
    return ids, valid


def left_pad_positions(valid: np.ndarray) -> np.ndarray:
    """The position ids that transformers' `generate` gives left-padded rows (pads at 0)."""
    return np.maximum(np.cumsum(valid, axis=1) - 1, 0)


def hf_logits(model, ids: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """transformers' logits, with the position ids that `generate` uses for left-padded rows."""
    valid = np.ones(ids.shape, bool) if valid is None else valid
    positions = left_pad_positions(valid)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(valid, dtype=torch.long),
            position_ids=torch.tensor(positions, dtype=torch.long),
        )
    return out.logits.float().numpy()


def one_device_mesh():
    return sharding.make_mesh(sharding.MeshConfig(), devices=jax.devices()[:1])


@jax.jit
def forward(model, ids, valid):
    """Our model's logits; jitted so each (config, mesh) compiles once instead of op by op."""
    return model(ids, valid)[0]
