"""Log-probabilities of given tokens under a model: the one function SFT, GRPO and the tests share.

Alignment: `out_BT[b, t] = log p(tokens_BT[b, t] | tokens_BT[b, :t])`, the log-prob of the token *at* position t
given the ones before it, and 0 at t = 0 (nothing predicts the first token). A loss mask over "the tokens to
predict" (the assistant's tokens) and the sampler's `Rollout.model_logprobs` of completion tokens both index the
same positions as the tokens themselves, so no caller shifts anything. Padding (`valid_BT` False) may sit on
either side; its log-probs are meaningless and callers mask them.

Memory contract: the [B, T, V] logits are never built. The final hidden states are cut into chunks of
`chunk_len` positions along T and a `lax.map` projects one chunk at a time to fp32 logits, takes their logsumexp
and picks the target's logit, so the largest vocabulary-sized buffer is [B, chunk_len, V]. Each chunk is
rematerialised (`jax.checkpoint`), so the backward pass too keeps only the hidden states, not every chunk's
logits. For B=8, T=4096, V=152k in fp32 that is 1.2 GB of logits per chunk of 256 instead of 20 GB
(`tests/test_logprobs.py::test_head_memory_on_7b_shapes` measures it on the compiled program). The model's own
attention, which builds [B, heads, T, T] fp32 scores, is then the larger cost (see the README).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

DEFAULT_CHUNK = 256


def sequence_logprobs(model, tokens_BT: jax.Array, valid_BT: jax.Array, chunk_len: int = DEFAULT_CHUNK,
                      segment_ids_BT: jax.Array | None = None) -> jax.Array:
    """Traceable form, for use inside a loss: per-token log-probs [B, T] (fp32) of `tokens_BT` under `model`.
    With `segment_ids_BT` (packed rows) the first token of each sequence gets a meaningless value (it is
    "predicted" from the sequence before it), as the first position's 0 is: the loss mask excludes both."""
    hidden_BTD, _ = model.hidden_states(tokens_BT, valid_BT, None, segment_ids_BT)
    # Position t predicts token t + 1; the last position predicts nothing (its target is a dummy 0).
    targets_BT = jnp.concatenate([tokens_BT[:, 1:], jnp.zeros_like(tokens_BT[:, :1])], axis=1)
    next_BT = logprobs_from_hidden(model, hidden_BTD, targets_BT, chunk_len)
    return jnp.concatenate([jnp.zeros_like(next_BT[:, :1]), next_BT[:, :-1]], axis=1)


def logprobs_from_hidden(model, hidden_BTD: jax.Array, targets_BT: jax.Array, chunk_len: int) -> jax.Array:
    """log softmax(model.logits(hidden))[b, t, targets[b, t]], computed `chunk_len` positions at a time."""
    B, T, D = hidden_BTD.shape
    C = min(chunk_len, T)
    pad = -T % C
    hidden_NBCD = jnp.pad(hidden_BTD, ((0, 0), (0, pad), (0, 0))).reshape(B, -1, C, D).swapaxes(0, 1)
    targets_NBC = jnp.pad(targets_BT, ((0, 0), (0, pad))).reshape(B, -1, C).swapaxes(0, 1)

    @jax.checkpoint
    def chunk(args):
        hidden_BCD, targets_BC = args
        logits_BCV = model.logits(hidden_BCD)  # fp32
        picked_BC = jnp.take_along_axis(logits_BCV, targets_BC[..., None], axis=-1)[..., 0]
        return picked_BC - jax.nn.logsumexp(logits_BCV, axis=-1)

    out_NBC = jax.lax.map(chunk, (hidden_NBCD, targets_NBC))
    return out_NBC.swapaxes(0, 1).reshape(B, -1)[:, :T]


@functools.partial(jax.jit, static_argnums=0, static_argnames="chunk_len")
def _jitted(graphdef, params, tokens_BT, valid_BT, chunk_len: int) -> jax.Array:
    return sequence_logprobs(nnx.merge(graphdef, params), tokens_BT, valid_BT, chunk_len)


def token_logprobs(model_or_split, tokens_BT, valid_BT, chunk_len: int = DEFAULT_CHUNK) -> jax.Array:
    """Jitted per-token log-probs [B, T] of `tokens_BT` under a model, given as an nnx module or as
    `(graphdef, params)` (the form GRPO keeps its policy and frozen reference in, so one compiled program serves
    every weight update). Arrays keep the shardings they come with: put `tokens_BT` on the batch sharding of the
    rules the parameters use and call under `jax.set_mesh(mesh)`.
    """
    graphdef, params = nnx.split(model_or_split) if isinstance(model_or_split, nnx.Module) else model_or_split
    return _jitted(graphdef, params, tokens_BT, valid_BT, chunk_len=chunk_len)
