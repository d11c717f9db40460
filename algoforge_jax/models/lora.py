"""Low-rank adapters (LoRA) on a frozen base: the config, the adapter layer, and how a model's parameters split.

An adapted projection computes `x W + scale * (x A) B` with A [in..., R] and B [R, out...], B initialised to zero
(so a fresh adapter leaves the model unchanged) and scale = alpha / R, as in PEFT. Adapter weights are
`LoRAParam`s, a subclass of `nnx.Param`: code that wants every parameter still gets them, and the optimizer,
checkpoints and the RL loop tell them apart with the `LoRAParam` filter. They carry `logical_axes` like every
parameter (the rank axis is "lora_rank", replicated), so the same sharding rules place them.

Which parameters train: all of them without adapters (full fine-tuning), only the adapters with them. `split`
gives (frozen, trainable) pure dicts accordingly and `join` puts them back together; the base of an adapted model
is the same tree as the plain model's, so (plain graphdef, frozen) *is* the base model, with no extra weights:
that is the frozen reference of GRPO.

Left out: dropout on the adapter input (PEFT's lora_dropout; 0 here), rsLoRA and DoRA.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

# Projection name -> (the kernel's input axes, its output axes) as einsum letters; see the glossary in qwen2.py.
TARGETS = {"q": ("D", "NH"), "k": ("D", "KH"), "v": ("D", "KH"), "o": ("NH", "D"),
           "gate": ("D", "F"), "up": ("D", "F"), "down": ("F", "D")}
ALL_TARGETS = ",".join(TARGETS)


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Rank-r adapters on the chosen projections of every decoder layer; rank 0 = none (full fine-tuning)."""

    rank: int = 0  # R; 0 trains every weight, > 0 trains only the adapters (base frozen, stored in the compute dtype)
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    targets: str = ALL_TARGETS  # comma-separated projections to adapt, from q,k,v,o,gate,up,down

    def __post_init__(self):
        if self.rank < 0 or self.alpha <= 0:
            raise ValueError(f"lora: need rank >= 0 and alpha > 0, got rank={self.rank}, alpha={self.alpha}")
        unknown = [t for t in self.target_names if t not in TARGETS]
        if unknown or not self.target_names:
            raise ValueError(f"lora.targets: unknown projection {unknown[0] if unknown else '(none given)'!r}; "
                             f"valid: {ALL_TARGETS}")

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.targets.split(",") if t.strip())

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def adapts(self, target: str) -> bool:
        return self.rank > 0 and target in self.target_names


class LoRAParam(nnx.Param):
    """An adapter weight: trained while the rest of the model stays frozen."""


class Adapter(nnx.Module):
    """The low-rank update of one projection: `scale * (x A) B`, computed without forming A B."""

    def __init__(self, target: str, in_shape, in_axes, out_shape, out_axes, lora: LoRAConfig, dtype, rngs):
        R = lora.rank
        fan_in = tuple(range(len(in_shape)))
        # PEFT's default: kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        init_a = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=fan_in, out_axis=-1)
        self.a = LoRAParam(init_a(rngs.params(), (*in_shape, R), dtype), logical_axes=(*in_axes, "lora_rank"))
        self.b = LoRAParam(jnp.zeros((R, *out_shape), dtype), logical_axes=("lora_rank", *out_axes))
        self.ins, self.outs = TARGETS[target]
        self.scale = lora.scale

    def __call__(self, x, dtype):
        x_BTR = jnp.einsum(f"BT{self.ins},{self.ins}R->BTR", x, self.a[...].astype(dtype))
        return jnp.einsum(f"BTR,R{self.outs}->BT{self.outs}", x_BTR, self.b[...].astype(dtype)) * self.scale

    def delta(self) -> jax.Array:
        """scale * A B in the kernel's layout ([L, in..., out...] for a stacked adapter), fp32: what merging adds."""
        a, b = self.a[...].astype(jnp.float32), self.b[...].astype(jnp.float32)
        return jnp.einsum(f"...{self.ins}R,...R{self.outs}->...{self.ins}{self.outs}", a, b) * self.scale


def has_adapters(state: nnx.State) -> bool:
    return bool(jax.tree.leaves(nnx.filter_state(state, LoRAParam)))


def split(state: nnx.State) -> tuple[dict, dict]:
    """(frozen, trainable) pure dicts of a model's parameters: (base, adapters) when it has adapters, else
    ({}, everything)."""
    params = nnx.filter_state(state, nnx.Param)
    if not has_adapters(params):
        return {}, nnx.to_pure_dict(params)
    base, adapters = nnx.split_state(params, nnx.Not(LoRAParam), LoRAParam)
    return nnx.to_pure_dict(base), nnx.to_pure_dict(adapters)


def join(frozen: dict, trainable: dict) -> dict:
    """The whole parameter dict from `split`'s two halves (they share no leaf)."""
    out = dict(frozen)
    for key, value in trainable.items():
        out[key] = join(out[key], value) if key in out and isinstance(value, dict) else value
    return out


def fingerprint(params: dict) -> str:
    """A position-sensitive checksum of the arrays' bits (hex): two checkpoints with equal fingerprints hold the
    same frozen base, so it can be loaded once for both. Computed on the devices, one pass over the weights."""
    leaves = jax.tree.leaves(params)
    return f"{int(_checksum(leaves)):08x}-{sum(x.size for x in leaves)}"


@jax.jit
def _checksum(leaves) -> jax.Array:
    uint = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}
    total = jnp.uint32(0)
    for k, x in enumerate(leaves):
        bits = jax.lax.bitcast_convert_type(x, uint[x.dtype.itemsize]).astype(jnp.uint32).reshape(-1)
        weights = jnp.arange(1, bits.size + 1, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(k)
        total = total * jnp.uint32(31) + jnp.sum(bits * weights, dtype=jnp.uint32)
    return total
