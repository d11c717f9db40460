"""Device mesh and the logical-axis -> mesh-axis rules that place parameters and activations on it.

Model code names logical axes only (`"embed"`, `"q_heads"`, ...). This module owns the two rule tables, one for
training (FSDP over parameters plus tensor parallelism) and one for sampling (weights replicated across the
batch axes, so a decode step does no all-gather of parameters), and turns a model's abstract state into the
`NamedSharding`s that `jit`, conversion and orbax restore place arrays with.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Mapping

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


# A rule maps a logical axis to a mesh axis, a tuple of mesh axes, or None (replicated).
Rules = Mapping[str, str | tuple[str, ...] | None]

TRAIN_RULES: Rules = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "layers": None,
}

SAMPLE_RULES: Rules = {
    "batch": ("data", "fsdp"),
    "vocab": "tensor",
    "embed": None,
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "mlp": "tensor",
    "norm": None,
    "layers": None,
    "cache_len": None,
}


def _mesh_axes(rule) -> tuple[str, ...]:
    return () if rule is None else (rule,) if isinstance(rule, str) else tuple(rule)


def logical_to_spec(axes: tuple[str | None, ...], rules: Rules, mesh: Mesh, shape=None) -> P:
    """PartitionSpec for an array with these logical axes. Raises if a mesh axis would be used twice.

    A mesh axis that does not divide its dimension is dropped (that dimension is replicated over it) and logged:
    the 2 kv heads of Qwen2.5-0.5B cannot be split 4 ways, and replicating them is the right call there.
    """
    used: dict[str, str] = {}
    spec = []
    for i, name in enumerate(axes):
        if name is not None and name not in rules:
            raise UserError(f"sharding rules have no entry for logical axis {name!r}")
        chosen = []
        for mesh_axis in _mesh_axes(rules.get(name) if name else None):
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


def named_sharding(axes, rules: Rules, mesh: Mesh, shape=None) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(tuple(axes), rules, mesh, shape))


def state_shardings(state: nnx.State, rules: Rules, mesh: Mesh):
    """The NamedSharding of every variable in an (abstract) nnx.State, from its `logical_axes` metadata."""

    def one(var):
        axes = getattr(var, "logical_axes", None)
        if axes is None:
            return NamedSharding(mesh, P())
        return named_sharding(axes, rules, mesh, var.shape)

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_shards(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch axis is split: batch sizes must be multiples of it."""
    return math.prod(mesh.shape[a] for a in _mesh_axes(logical_to_spec(("batch",), rules, mesh)[0]))


def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
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
    """The whole array as numpy on this host; on a multi-host mesh every process must call it (a collective)."""
    if array.is_fully_addressable:
        return np.asarray(jax.device_get(array))
    return np.asarray(multihost_utils.process_allgather(array, tiled=True))


def is_sharded(array: jax.Array) -> bool:
    """True when some device holds less than the whole array."""
    shard = array.addressable_shards[0].data
    return np.prod(shard.shape) < np.prod(array.shape)
