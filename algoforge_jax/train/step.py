"""The SFT train step: token-mean cross-entropy on the loss-mask tokens, gradient accumulation, one optimizer update.

The loss is a mean over every loss-mask token of the whole (accumulated) batch, not a mean of micro-batch means:
each micro-batch contributes its *sum* of token losses and its token count, the gradients of the sums are added,
and one division by the total count follows. So 2 micro-batches of 4 rows give the same update as one batch of 8
whatever their token counts. Pure functions returning `(value, metrics)`; `make_train_step` jits one over the mesh.

`params` are the trainable parameters (`TrainState.params`); `frozen` the model's frozen base when it trains
adapters (`models.lora.split`), else None. Gradients are taken with respect to `params` alone.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from algoforge_jax import sharding
from algoforge_jax.models import lora
from algoforge_jax.train.logprobs import sequence_logprobs
from algoforge_jax.train.state import TrainState


def loss_sums(graphdef, params, batch: dict, chunk_len: int, frozen: dict | None = None):
    """(sum of -log p over loss-mask tokens, number of those tokens) for one batch."""
    model = nnx.merge(graphdef, lora.join(frozen or {}, params))
    logp_BT = sequence_logprobs(model, batch["tokens"], batch["valid"], chunk_len, batch.get("segment_ids"))
    mask_BT = batch["loss_mask"].astype(jnp.float32)
    return -(logp_BT * mask_BT).sum(), mask_BT.sum()


def micro_batches(batch: dict, n: int, mesh: Mesh, rules) -> dict:
    """Every [B, ...] array -> [n, B/n, ...] with micro-batch i = rows i, i+n, ...: each keeps the batch sharding."""
    def split(x_B):
        x_nA = x_B.reshape(x_B.shape[0] // n, n, *x_B.shape[1:]).swapaxes(0, 1)
        target = sharding.named_sharding((None, "batch") + (None,) * (x_B.ndim - 1), rules, mesh, x_nA.shape)
        return jax.lax.with_sharding_constraint(x_nA, target)
    return {k: split(v) for k, v in batch.items()}


def grads_and_sums(graphdef, params, batch: dict, *, accum: int, chunk_len: int, mesh: Mesh, rules,
                   frozen: dict | None = None):
    """Summed gradients of the token-loss sum over `accum` micro-batches, the loss sum and the token count."""
    grad_fn = jax.value_and_grad(loss_sums, argnums=1, has_aux=True)
    if accum == 1:
        (loss_sum, count), grads = grad_fn(graphdef, params, batch, chunk_len, frozen)
        return grads, loss_sum, count

    def body(carry, micro):
        grads, loss_sum, count = carry
        (l, c), g = grad_fn(graphdef, params, micro, chunk_len, frozen)
        return (jax.tree.map(jnp.add, grads, g), loss_sum + l, count + c), None

    zeros = (jax.tree.map(jnp.zeros_like, params), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
    (grads, loss_sum, count), _ = jax.lax.scan(body, zeros, micro_batches(batch, accum, mesh, rules))
    return grads, loss_sum, count


def train_step(graphdef, tx: optax.GradientTransformation, schedule, state: TrainState, batch: dict,
               frozen: dict | None = None, *, accum: int, chunk_len: int, mesh: Mesh, rules) -> tuple[TrainState, dict]:
    """One optimizer step on a [B, T] batch; metrics are scalars computed before the update (loss) or of it."""
    grads, loss_sum, count = grads_and_sums(graphdef, state.params, batch, accum=accum, chunk_len=chunk_len,
                                            mesh=mesh, rules=rules, frozen=frozen)
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss_sum / denom, "grad_norm": optax.tree.norm(grads), "lr": schedule(state.step),
               "loss_tokens": count}
    return TrainState(state.step + 1, params, opt_state, state.rng), metrics


def make_train_step(graphdef, tx, schedule, shardings: TrainState, mesh: Mesh, rules, *, accum: int,
                    chunk_len: int, frozen: dict | None = None):
    """The step `(state, batch) -> (state, metrics)`, jitted with state and batch donated (updated in place) and
    `frozen` passed to every call as it lies (never donated)."""
    batch_sh = sharding.batch_sharding(mesh, rules)  # every batch array, whichever keys the batches have
    fn = functools.partial(train_step, graphdef, tx, schedule, accum=accum, chunk_len=chunk_len, mesh=mesh,
                           rules=rules)
    jitted = jax.jit(fn, in_shardings=(shardings, batch_sh, None), out_shardings=(shardings, None),
                     donate_argnums=(0, 1))
    return lambda state, batch: jitted(state, batch, frozen)


def make_eval_step(graphdef, shardings: TrainState, mesh: Mesh, rules, *, chunk_len: int,
                   frozen: dict | None = None):
    """The `(params, batch) -> (loss sum, token count)` of a held-out batch, jitted."""
    batch_sh = sharding.batch_sharding(mesh, rules)
    jitted = jax.jit(lambda params, batch, frozen: loss_sums(graphdef, params, batch, chunk_len, frozen),
                     in_shardings=(shardings.params, batch_sh, None))
    return lambda params, batch: jitted(params, batch, frozen)
