"""The RL update of one agent: μ optimizer updates on one rollout's batch, each a GRPO loss over the whole batch.

Both agents run this same code (two `AgentUpdate` instances). Per step and agent:

    batch = update_batch(agent_batch, ref_logprobs_BT)      # host arrays -> the update's inputs
    state, metrics_I = update(state, batch)                 # jitted; state and batch donated

Inside, `num_iterations` (μ) passes each compute the gradient of the GRPO loss (`rl.grpo.policy_loss`) over the
whole batch and apply one optax update. A pass may split the batch into `accum` micro-batches: each contributes
its loss times its `loss_denominator` (a *sum*), the gradients of the sums are added, and one division by the
summed denominators follows, so the update equals the one of the whole batch in one piece, for every `loss_agg`
(the SFT step accumulates the same way). The first pass sees the weights that sampled the rollout, so its ρ is 1
up to the sampler/trainer log-prob agreement (≤ 1e-5); later passes are off-policy and clipped.

Old log-probs are the sampler's untempered `model_logprobs`; reference log-probs come from the agent's frozen
reference through the shared `train.logprobs.token_logprobs` (`reference_logprobs`), and are neither computed
nor passed when β = 0. With adapters (`models/lora.py`) the state holds the adapters alone and the frozen base is
an argument of the update that is never donated (two agents may share it); the reference is then the base itself.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from algoforge_jax import sharding
from algoforge_jax.models import lora
from algoforge_jax.rl import grpo
from algoforge_jax.rl.rollout import AgentBatch
from algoforge_jax.train.logprobs import sequence_logprobs, token_logprobs
from algoforge_jax.train.state import TrainState
from algoforge_jax.train.step import micro_batches

# Metrics that are means over tokens: combined over micro-batches weighted by their token counts.
_TOKEN_MEANS = ("kl", "clip_fraction", "dual_clip_fraction")


def update_batch(batch: AgentBatch, ref_logprobs_BT: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The update's inputs: `tokens` / `valid` [B, L + T] (prompt, then response), and over the response [B, T]:
    `mask`, `old_logp`, `ref_logp` (only when given: β > 0), plus `advantages` [B]."""
    tokens_BS, valid_BS = batch.sequences()
    out = {"tokens": tokens_BS, "valid": valid_BS, "mask": batch.response_mask_BT,
           "old_logp": batch.old_logprobs_BT, "advantages": batch.advantages_B}
    if ref_logprobs_BT is not None:
        out["ref_logp"] = np.asarray(ref_logprobs_BT, np.float32)
    return out


def reference_logprobs(graphdef, ref_params, batch: AgentBatch, mesh: Mesh, rules, chunk_len: int) -> np.ndarray:
    """[B, T] log-probs of the responses under the frozen reference (weights laid out by `rules` on `mesh`)."""
    tokens_BS, valid_BS = batch.sequences()
    put = lambda x: sharding.from_host(x, sharding.batch_sharding(mesh, rules))  # noqa: E731
    with jax.set_mesh(mesh):
        logp_BS = token_logprobs((graphdef, ref_params), put(tokens_BS), put(valid_BS), chunk_len)
    return sharding.to_host(logp_BS)[:, -batch.response_ids_BT.shape[1]:]


def loss_sums(graphdef, params, batch: dict, cfg: grpo.GRPOConfig, chunk_len: int, frozen: dict | None = None):
    """(loss × its denominator, metrics with token-weighted sums) of one (micro-)batch: the terms that add up over
    micro-batches. The denominator depends only on the mask, so scaling by it scales the gradient alike."""
    T = batch["mask"].shape[1]
    model = nnx.merge(graphdef, lora.join(frozen or {}, params))
    logp_BT = sequence_logprobs(model, batch["tokens"], batch["valid"], chunk_len)[:, -T:]
    loss, metrics = grpo.policy_loss(logp_BT, batch["old_logp"], batch.get("ref_logp"), batch["advantages"],
                                     batch["mask"], cfg)
    denominator = metrics["loss_denominator"]
    tokens = jnp.sum(batch["mask"]).astype(jnp.float32)
    sums = {"loss": loss * denominator, "pg_loss": metrics["pg_loss"] * denominator, "denominator": denominator,
            "tokens": tokens, "rho_min": metrics["rho_min"], "rho_max": metrics["rho_max"],
            **{k: metrics[k] * tokens for k in _TOKEN_MEANS}}
    return sums["loss"], sums


def _combine(a: dict, b: dict) -> dict:
    """Sums of two micro-batches' `loss_sums` metrics (min / max for the ρ range)."""
    out = {k: a[k] + b[k] for k in a}
    out["rho_min"], out["rho_max"] = jnp.minimum(a["rho_min"], b["rho_min"]), jnp.maximum(a["rho_max"], b["rho_max"])
    return out


def grads_and_sums(graphdef, params, batch: dict, cfg: grpo.GRPOConfig, *, accum: int, chunk_len: int, mesh: Mesh,
                   rules, frozen: dict | None = None):
    """(summed gradients of loss × denominator over `accum` micro-batches, summed metrics)."""
    grad_fn = jax.grad(loss_sums, argnums=1, has_aux=True)
    if accum == 1:
        return grad_fn(graphdef, params, batch, cfg, chunk_len, frozen)

    def body(carry, micro):
        grads, sums = carry
        g, s = grad_fn(graphdef, params, micro, cfg, chunk_len, frozen)
        return (jax.tree.map(jnp.add, grads, g), _combine(sums, s)), None

    micro = micro_batches(batch, accum, mesh, rules)
    first = jax.tree.map(lambda x: x[0], micro)
    zero_sums = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: loss_sums(graphdef, params, first, cfg,
                                                                              chunk_len, frozen)[1]))
    zero_sums.update(rho_min=jnp.array(jnp.inf, jnp.float32), rho_max=jnp.array(-jnp.inf, jnp.float32))
    (grads, sums), _ = jax.lax.scan(body, (jax.tree.map(jnp.zeros_like, params), zero_sums), micro)
    return grads, sums


def rl_update(graphdef, tx: optax.GradientTransformation, cfg: grpo.GRPOConfig, state: TrainState, batch: dict,
              frozen: dict | None = None, *, accum: int, chunk_len: int, mesh: Mesh, rules) -> tuple[TrainState, dict]:
    """μ = cfg.num_iterations optimizer updates on one batch; metrics are stacked per pass ([μ] each): loss,
    pg_loss, kl, clip fractions (token means over the whole batch), ρ range, gradient norm."""

    def one_pass(state: TrainState, _):
        grads, sums = grads_and_sums(graphdef, state.params, batch, cfg, accum=accum, chunk_len=chunk_len,
                                     mesh=mesh, rules=rules, frozen=frozen)
        denominator, tokens = jnp.maximum(sums["denominator"], 1.0), jnp.maximum(sums["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / denominator, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        metrics = {"loss": sums["loss"] / denominator, "pg_loss": sums["pg_loss"] / denominator,
                   **{k: sums[k] / tokens for k in _TOKEN_MEANS}, "rho_min": sums["rho_min"],
                   "rho_max": sums["rho_max"], "grad_norm": optax.tree.norm(grads)}
        new = TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state, state.rng)
        return new, metrics

    return jax.lax.scan(one_pass, state, None, length=cfg.num_iterations)


@dataclasses.dataclass(frozen=True)
class AgentUpdate:
    """One agent's compiled update (the Planner and the Coder each have one; same code, their own shapes)."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    shardings: TrainState
    step: Callable  # (state, batch dict of host arrays) -> (state, metrics [μ]); state donated
    frozen: dict | None = None  # the frozen base the adapters train on (models.lora.split); None: full fine-tuning

    def params(self, trainable: dict) -> dict:
        """The model's whole parameter dict from the state's trainable half."""
        return lora.join(self.frozen or {}, trainable)


def make_update(graphdef, tx, shardings: TrainState, cfg: grpo.GRPOConfig, mesh: Mesh, rules, *, accum: int,
                chunk_len: int, frozen: dict | None = None) -> AgentUpdate:
    """The jitted `rl_update` over the mesh; batches go in on the batch sharding of `rules`, `frozen` as it lies."""
    fn = jax.jit(functools.partial(rl_update, graphdef, tx, cfg, accum=accum, chunk_len=chunk_len, mesh=mesh,
                                   rules=rules),
                 in_shardings=(shardings, None, None), out_shardings=(shardings, None), donate_argnums=(0,))

    def step(state: TrainState, batch: dict[str, np.ndarray]):
        on_mesh = {k: sharding.from_host(v, sharding.batch_sharding(mesh, rules, v.ndim)) for k, v in batch.items()}
        with jax.set_mesh(mesh):
            return fn(state, on_mesh, frozen)

    return AgentUpdate(graphdef, tx, shardings, step, frozen)


def sampler_params(abstract: nnx.State, params: dict, mesh: Mesh, frozen: dict | None = None) -> nnx.State:
    """The trainer's parameters (a pure dict, TRAIN_RULES) as the sampler takes them: an nnx.State laid out by
    SAMPLE_RULES, moved device to device. Same shapes and shardings every time, so the sampler reuses its compiled
    programs. With adapters, `params` are the adapters and `frozen` the base already in the sampling layout
    (`sampler_base`): only the adapters move, and the sampler runs base + adapters unmerged."""
    state = jax.tree.map(lambda x: x, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))
    if frozen is None:
        nnx.replace_by_pure_dict(state, params)
        return sharding.reshard(state, sharding.SAMPLE_RULES, mesh)
    adapters = nnx.filter_state(state, lora.LoRAParam)
    nnx.replace_by_pure_dict(adapters, params)
    moved = nnx.to_pure_dict(sharding.reshard(adapters, sharding.SAMPLE_RULES, mesh))
    nnx.replace_by_pure_dict(state, lora.join(frozen, moved))
    return state


def sampler_base(abstract: nnx.State, frozen: dict, mesh: Mesh) -> dict:
    """The frozen base in the sampling layout, made once per run: the trainer's arrays themselves where the two
    layouts agree (one device: no second copy), else a resharded copy."""
    base = nnx.filter_state(jax.tree.map(lambda x: x, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable)),
                            nnx.Not(lora.LoRAParam))
    nnx.replace_by_pure_dict(base, frozen)
    targets = jax.tree.leaves(sharding.state_shardings(base, sharding.SAMPLE_RULES, mesh))
    if all(x.sharding.is_equivalent_to(t, x.ndim) for x, t in zip(jax.tree.leaves(frozen), targets)):
        return frozen
    return nnx.to_pure_dict(sharding.reshard(base, sharding.SAMPLE_RULES, mesh))
