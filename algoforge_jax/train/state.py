"""Training state and the optimizer: what a train step carries from one step to the next, and where it lives.

`TrainState` is a plain pytree (parameters as a nested dict, optax state, step, raw RNG key data) so orbax saves
and restores it as is, onto any mesh, and one jitted step program serves every step. The model's graph
(`graphdef`) stays outside it: it is static structure, not state. GRPO keeps one TrainState per agent.

Its parameters are the *trainable* ones (`models.lora.split`): every weight without adapters, only the adapters
with them. A frozen base lives outside the state (steps take it as an argument they never donate), so it has no
optimizer moments, is not written with every checkpoint, and two agents may share it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from algoforge_jax.config import TrainConfig
from algoforge_jax.models import lora
from algoforge_jax.models.qwen2 import Qwen2ForCausalLM


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
    """Everything that changes from one optimizer step to the next."""

    step: jax.Array  # optimizer steps taken (int32 scalar)
    params: dict  # the model's trainable parameters (pure dict): all of them, or its adapters
    opt_state: optax.OptState
    rng: jax.Array  # raw key data (uint32), so orbax can store it; jax.random.wrap_key_data to use


def learning_rate(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine decay to `end_lr_ratio` of it at the last step. A run shorter
    than its warmup (`--set train.steps=3` for a smoke test) warms up over all but its last step."""
    warmup = min(cfg.warmup_steps, cfg.steps - 1)
    return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
                                              decay_steps=cfg.steps, end_value=cfg.learning_rate * cfg.end_lr_ratio)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW; weight decay on matrices only (norm scales and biases are exempt)."""
    adamw = optax.adamw(learning_rate(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                        mask=lambda params: jax.tree.map(lambda x: x.ndim >= 2, params))
    if cfg.max_grad_norm <= 0:
        return adamw
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw)


def state_shardings(abstract: nnx.State, tx: optax.GradientTransformation, mesh: Mesh) -> TrainState:
    """Where every leaf of the TrainState lives: trainable parameters (and the Adam moments that mirror them) as in
    the abstract model state (`models.build.abstract_model`), counters and RNG replicated."""
    trainable = lora.split(abstract)[1]
    param_sh = jax.tree.map(lambda x: x.sharding, trainable)
    replicated = NamedSharding(mesh, P())
    abstract_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), trainable)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, jax.eval_shape(tx.init, abstract_params), param_sh,
                                   transform_non_params=lambda _: replicated)
    return TrainState(step=replicated, params=param_sh, opt_state=opt_sh, rng=replicated)


def init_state(model: Qwen2ForCausalLM, tx: optax.GradientTransformation, shardings: TrainState,
               seed: int) -> TrainState:
    """Step 0 around the model's current (already sharded) trainable parameters."""
    params = lora.split(nnx.state(model))[1]

    def init(params):
        return TrainState(jnp.zeros((), jnp.int32), params, tx.init(params), jax.random.key_data(jax.random.key(seed)))

    return jax.jit(init, out_shardings=shardings)(params)

