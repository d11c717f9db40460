"""Device mesh and the logical-axis -> mesh-axis rules that place parameters and activations on it.

Model code names logical axes only (`"embed"`, `"q_heads"`, ...). This module owns the rules type and its two
instances, one for training (FSDP over parameters plus tensor parallelism) and one for sampling (weights replicated
across the batch axes, so a decode step does no all-gather of parameters); it turns a model's abstract state into
the `NamedSharding`s that `jit`, conversion and orbax restore place arrays with, and moves a live state from one
layout to the other (`reshard`). Every function that chooses a layout takes the rules explicitly: there is no
default layout.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from algoforge_jax.errors import UserError

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Shape of the device mesh. One axis may be -1: it takes all the devices the others leave."""

    data: int = 1  # pure data parallelism (parameters replicated)
    fsdp: int = -1  # parameters and batch both sharded
    tensor: int = 1  # heads and mlp hidden sharded (Megatron-style)

    def shape(self, num_devices: int) -> tuple[int, int, int]:
        sizes = [self.data, self.fsdp, self.tensor]
        if sizes.count(-1) > 1:
            raise UserError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
        known = math.prod(s for s in sizes if s != -1)
        if -1 in sizes:
            if num_devices % known:
                raise UserError(f"mesh: {num_devices} devices do not divide into {dict(zip(MESH_AXES, sizes))}")
            sizes[sizes.index(-1)] = num_devices // known
        if math.prod(sizes) != num_devices:
            raise UserError(f"mesh: {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, have {num_devices}")
        return tuple(sizes)


def make_mesh(cfg: MeshConfig | None = None, devices=None) -> Mesh:
    """A mesh with axes (data, fsdp, tensor) in Auto mode, so GSPMD propagates shardings through jit."""
    devices = list(jax.devices() if devices is None else devices)
    shape = (cfg or MeshConfig()).shape(len(devices))
    auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


# What one logical axis maps to: a mesh axis, a tuple of mesh axes (split over their product), or None (replicated).
MeshAxes = str | tuple[str, ...] | None


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis -> mesh axes, one field per logical axis that model or sampler code names.

    Training and sampling use two instances of this one type, so every function that places arrays takes either.
    A new logical axis is one more field; its default None replicates it until a rule table says otherwise.
    Mesh-axis names are checked here; two logical axes of one array that map to the same mesh axis are refused
    when a spec is built (`logical_to_spec`), since only the array says which axes meet.
    """

    batch: MeshAxes = None  # rows of activations, rollouts and caches
    vocab: MeshAxes = None
    embed: MeshAxes = None  # the model width D
    q_heads: MeshAxes = None
    kv_heads: MeshAxes = None
    head_dim: MeshAxes = None
    mlp: MeshAxes = None  # the mlp hidden width F
    norm: MeshAxes = None  # norm weights (length D)
    cache_len: MeshAxes = None  # KV-cache positions
    layers: MeshAxes = None  # the stacked decoder layers (scanned over, so never split)
    lora_rank: MeshAxes = None  # the rank axis of LoRA adapters (a few dozen wide: replicated)

    def __post_init__(self):
        for field in dataclasses.fields(self):
            axes = _as_tuple(getattr(self, field.name))
            unknown = [a for a in axes if a not in MESH_AXES]
            if unknown:
                raise ValueError(f"sharding rule {field.name}={getattr(self, field.name)!r}: unknown mesh axis "
                                 f"{unknown[0]!r} (mesh axes are {', '.join(MESH_AXES)})")
            if len(set(axes)) < len(axes):
                raise ValueError(f"sharding rule {field.name}={axes!r} names a mesh axis twice")

    def mesh_axes(self, logical: str) -> tuple[str, ...]:
        """The mesh axes that logical axis `logical` is split over (empty: replicated)."""
        if logical not in _LOGICAL_AXES:
            raise UserError(f"sharding rules have no entry for logical axis {logical!r}")
        return _as_tuple(getattr(self, logical))


def _as_tuple(rule: MeshAxes) -> tuple[str, ...]:
    return () if rule is None else (rule,) if isinstance(rule, str) else tuple(rule)


_LOGICAL_AXES = frozenset(f.name for f in dataclasses.fields(ShardingRules))

# Training: parameters split over fsdp (embed) and tensor (heads, mlp, vocab); the batch over data and fsdp.
TRAIN_RULES = ShardingRules(batch=("data", "fsdp"), vocab="tensor", embed="fsdp", q_heads="tensor",
                            kv_heads="tensor", mlp="tensor")
# Sampling: the same but weights replicated over data and fsdp, so a decode step gathers no parameters.
SAMPLE_RULES = dataclasses.replace(TRAIN_RULES, embed=None)


def logical_to_spec(axes: tuple[str | None, ...], rules: ShardingRules, mesh: Mesh, shape=None) -> P:
    """PartitionSpec for an array with these logical axes. Raises if a mesh axis would be used twice.

    A mesh axis that does not divide its dimension is dropped (that dimension is replicated over it) and logged:
    the 2 kv heads of Qwen2.5-0.5B cannot be split 4 ways, and replicating them is the right call there.
    """
    used: dict[str, str] = {}
    spec = []
    for i, name in enumerate(axes):
        chosen = []
        for mesh_axis in rules.mesh_axes(name) if name else ():
            if mesh_axis in used:
                raise ValueError(f"logical axes {used[mesh_axis]!r} and {name!r} both map to mesh axis {mesh_axis!r}")
            used[mesh_axis] = name
            size = mesh.shape[mesh_axis]
            if shape is not None and shape[i] % (size * math.prod(mesh.shape[a] for a in chosen)):
                if size > 1:
                    log.info("replicating dim %d (%s, size %d) over mesh axis %s", i, name, shape[i], mesh_axis)
                continue
            chosen.append(mesh_axis)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return P(*spec)


def named_sharding(axes, rules: ShardingRules, mesh: Mesh, shape=None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(tuple(axes), rules, mesh, shape))


def state_shardings(state: nnx.State, rules: ShardingRules, mesh: Mesh):
    """The NamedSharding of every variable in an (abstract) nnx.State, from its `logical_axes` metadata."""

    def one(var):
        axes = getattr(var, "logical_axes", None)
        if axes is None:
            return NamedSharding(mesh, P())
        return named_sharding(axes, rules, mesh, var.shape)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def reshard(state: nnx.State, rules: ShardingRules, mesh: Mesh) -> nnx.State:
    """`state` laid out by `rules` on `mesh`, moved device to device, never through host memory.

    This is the weight handoff of RL: the trainer's parameters (TRAIN_RULES, split over fsdp and tensor) become
    the sampler's (SAMPLE_RULES, split over tensor only) and back. The result's shardings equal those that a
    load with the same rules gives, so compiled sampler programs are reused rather than recompiled. `state` is
    left intact: the trainer keeps its copy.
    """
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    variables, treedef = jax.tree.flatten(state, is_leaf=is_var)
    targets = treedef.flatten_up_to(state_shardings(state, rules, mesh))
    values = _copy_to(tuple(targets))(*(var.get_value() for var in variables))
    return jax.tree.unflatten(treedef, [var.replace(value) for var, value in zip(variables, values)])


@functools.lru_cache(maxsize=16)
def _copy_to(shardings: tuple[NamedSharding, ...]):
    """A compiled identity whose outputs lie on `shardings`: XLA moves the data with collectives. (jax.device_put
    would do, except that on one host it builds a shard the source does not hold through host memory.)"""
    return jax.jit(lambda *values: values, out_shardings=shardings)


def batch_shards(mesh: Mesh, rules: ShardingRules) -> int:
    """How many ways the batch axis is split: batch sizes must be multiples of it."""
    return math.prod(mesh.shape[a] for a in _as_tuple(logical_to_spec(("batch",), rules, mesh)[0]))


def batch_sharding(mesh: Mesh, rules: ShardingRules, ndim: int = 2) -> NamedSharding:
    """Sharding of a [batch, ...] array: batch over the rules' batch axes, other dims replicated."""
    return named_sharding(("batch",) + (None,) * (ndim - 1), rules, mesh)


def from_host(value: np.ndarray, target: NamedSharding, dtype=None) -> jax.Array:
    """A global array from a host value that every process holds in full (a memory map will do); each device
    reads only its own slice, cast to `dtype` there, so no full-size converted copy is ever made.

    Works the same on one host and on many (where `jax.device_put` cannot reach other hosts' devices).
    """
    dtype = dtype or value.dtype
    return jax.make_array_from_callback(value.shape, target, lambda index: np.asarray(value[index], dtype=dtype))


def to_host(array: jax.Array) -> np.ndarray:
    """The whole array as numpy on this host; on a multi-host mesh every process must call it (a collective).

    Read through a new jax.Array over the same device buffers, dropped on return: `np.asarray` keeps the host copy
    cached on the array it reads, so reading a live model's parameters directly would leave all of them in host
    memory (an export of a 32B model would end holding it whole).
    """
    if not array.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))  # reads a temporary array too
    shards = [shard.data for shard in array.addressable_shards]
    return np.asarray(jax.make_array_from_single_device_arrays(array.shape, array.sharding, shards))


def is_sharded(array: jax.Array) -> bool:
    """True when some device holds less than the whole array."""
    shard = array.addressable_shards[0].data
    return np.prod(shard.shape) < np.prod(array.shape)
