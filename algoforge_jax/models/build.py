"""Creating a model on a mesh: abstract shapes and shardings first, then random init or a restore onto them.

Nothing is ever materialised on one device and then moved: random init runs under `jit` with the target
`out_shardings`, and loaders (`convert/hf.py`, `checkpoints.py`) write each array straight onto its sharding.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh

from algoforge_jax import sharding
from algoforge_jax.models import lora
from algoforge_jax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM


def abstract_model(cfg: Qwen2Config, mesh: Mesh, rules: sharding.ShardingRules):
    """(graphdef, abstract state whose leaves are ShapeDtypeStructs carrying their target NamedSharding)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0))))
    shardings = sharding.state_shardings(state, rules, mesh)
    abstract = jax.tree.map(
        lambda var, s: var.replace(jax.ShapeDtypeStruct(var.shape, var.dtype, sharding=s)),
        state,
        shardings,
        is_leaf=lambda x: isinstance(x, nnx.Variable),
    )
    return graphdef, abstract


def init_model(cfg: Qwen2Config, mesh: Mesh, rules: sharding.ShardingRules, seed: int = 0) -> Qwen2ForCausalLM:
    """A randomly initialised model whose parameters are created already sharded."""
    graphdef, abstract = abstract_model(cfg, mesh, rules)
    out_shardings = jax.tree.map(lambda x: x.sharding, abstract)

    def create(key):
        return nnx.state(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(params=key)))

    create = jax.jit(create, out_shardings=out_shardings)
    with jax.set_mesh(mesh):
        state = create(jax.random.key(seed))
    return nnx.merge(graphdef, state)


def add_adapters(frozen: dict, cfg: Qwen2Config, mesh: Mesh, rules: sharding.ShardingRules,
                 seed: int = 0) -> Qwen2ForCausalLM:
    """The model of `cfg` (which has adapters) on the base weights `frozen` (a plain model's parameters as a pure
    dict), its adapters fresh (A random, B zero) and created already sharded. The base arrays are taken as they
    are, not copied: two models given one base share it on the device."""
    graphdef, abstract = abstract_model(cfg, mesh, rules)
    out_shardings = jax.tree.map(lambda x: x.sharding, lora.split(abstract)[1])

    def create(key):  # XLA drops the base's random init: only the adapters are outputs
        return lora.split(nnx.state(Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(params=key))))[1]

    with jax.set_mesh(mesh):
        adapters = jax.jit(create, out_shardings=out_shardings)(jax.random.key(seed))
    expected = lora.split(abstract)[0]
    if jax.tree.map(lambda x: (x.shape, x.dtype), frozen) != jax.tree.map(lambda x: (x.shape, x.dtype), expected):
        raise ValueError(f"add_adapters: the base's weights are not those of {cfg} (shapes or dtypes differ)")
    nnx.replace_by_pure_dict(abstract, lora.join(frozen, adapters))
    return nnx.merge(graphdef, abstract)


def merge_adapters(model: Qwen2ForCausalLM, mesh: Mesh, rules: sharding.ShardingRules) -> Qwen2ForCausalLM:
    """A plain model (no adapters) computing what `model` does: each adapted kernel W becomes W + scale * A B,
    summed in fp32 and stored in the base's dtype, which every other weight keeps."""
    cfg = model.config.replace(lora=lora.LoRAConfig(), param_dtype=model.config.dtype)
    graphdef, abstract = abstract_model(cfg, mesh, rules)

    def merged(model):
        frozen = lora.split(nnx.state(model))[0]
        stack = frozen["layers"]["stacked"]
        for name, module in (("self_attn", model.layers.stacked.self_attn), ("mlp", model.layers.stacked.mlp)):
            for target, adapter in (module.lora or {}).items():
                kernel = stack[name][f"{target}_proj"]
                stack[name][f"{target}_proj"] = (kernel.astype(jnp.float32) + adapter.delta()).astype(kernel.dtype)
        return frozen

    out_shardings = jax.tree.map(lambda x: x.sharding, nnx.to_pure_dict(abstract))
    with jax.set_mesh(mesh):
        params = nnx.jit(merged, out_shardings=out_shardings)(model)
    nnx.replace_by_pure_dict(abstract, params)
    return nnx.merge(graphdef, abstract)
