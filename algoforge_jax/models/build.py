"""Creating a model on a mesh: abstract shapes and shardings first, then random init or a restore onto them.

Nothing is ever materialised on one device and then moved: random init runs under `jit` with the target
`out_shardings`, and loaders (`convert/hf.py`, `checkpoints.py`) write each array straight onto its sharding.
"""

from __future__ import annotations

import jax
from flax import nnx
from jax.sharding import Mesh

from algoforge_jax import sharding
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
