"""Qwen2 / Qwen2.5 decoder-only language model in Flax NNX.

One file for the family: the config (with Hugging Face conversion both ways and named presets), the layers, and
the KV cache used for incremental decoding. Parameter names mirror Hugging Face's so the conversion table in
`convert/hf.py` stays short. Every parameter carries `logical_axes` metadata; `sharding.py` maps those names to
mesh axes. Nothing here mentions devices.

The L decoder layers are one `DecoderStack`: each parameter is stored once with a leading "layers" axis and the
layers run as one `jax.lax.scan`, so a 28- or 48-layer model compiles one layer body, not L copies of it; the KV
cache is stacked the same way and is the scan's carry. `Qwen2Config.remat` picks what the backward pass
keeps of each layer (MaxText's remat policies), `scan_layers=False` unrolls the loop at trace time instead.

Left out on purpose: sliding-window attention (no Qwen2.5 checkpoint enables it; a config that does is refused),
dropout (attention_dropout is 0.0 in every release), and rope scaling (YaRN is opt-in upstream, refused here).

Shape glossary:
  B batch, T query length, S key/cache length, D embed, N query heads, K kv heads, G = N // K,
  H head dim, F mlp hidden, V vocab, L layers.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from algoforge_jax.errors import UserError
from algoforge_jax.models.lora import Adapter, LoRAConfig

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

# What a layer keeps for the backward pass (None: everything, no recomputation). Only differentiation looks at
# it: a forward pass or the sampler computes the same thing under any policy.
REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # only each layer's input; the backward reruns the layer
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # weight products' outputs; not attention
}


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
    """Architecture of a Qwen2-family model plus the dtypes it computes and stores in."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 32768
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    head_dim: int | None = None  # None: hidden_size // num_attention_heads (true for every Qwen2.5 size)
    dtype: str = "float32"  # activations and matmuls; softmax, norms and RoPE are always fp32
    param_dtype: str = "float32"  # how parameters are stored
    checkpoint_dtype: str = "bfloat16"  # dtype written to HF safetensors on export
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    # How to run, not what the model is: neither is saved with a checkpoint or exported.
    remat: str = "none"  # per-layer rematerialisation for training: none / full / dots (REMAT_POLICIES)
    scan_layers: bool = True  # False: unroll the layer scan at trace time (L copies of the layer in the program)
    # Adapters (models/lora.py): saved with an orbax checkpoint, never part of an HF config.
    lora: LoRAConfig = LoRAConfig()

    def __post_init__(self):
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        for name in ("dtype", "param_dtype", "checkpoint_dtype"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"{name} must be one of {sorted(_DTYPES)}, got {getattr(self, name)!r}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {sorted(REMAT_POLICIES)}, got {self.remat!r}")

    @property
    def head_size(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def compute_dtype(self) -> jnp.dtype:
        return _DTYPES[self.dtype]

    @property
    def weight_dtype(self) -> jnp.dtype:
        return _DTYPES[self.param_dtype]

    @property
    def base_dtype(self) -> jnp.dtype:
        """How the base weights are stored: as trained (param_dtype), or in the compute dtype when adapters train
        and the base is frozen (no master copy is needed for weights that never change)."""
        return self.compute_dtype if self.lora.rank else self.weight_dtype

    def replace(self, **changes) -> "Qwen2Config":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], source: str = "config.json", **overrides) -> "Qwen2Config":
        """Builds a config from a Hugging Face `config.json` dict (transformers 4.x or 5.x spelling)."""
        return _from_hf_config(cls, hf, source, overrides)

    def to_hf_config(self) -> dict[str, Any]:
        """The `config.json` dict that `transformers.AutoConfig` reads back as an equal Qwen2Config."""
        return _to_hf_config(self)


def _hf_field(hf: dict[str, Any], name: str, source: str):
    if name not in hf:
        raise UserError(f"{source}: missing field {name!r}")
    return hf[name]


def _rope_theta(hf: dict[str, Any], source: str) -> float:
    # transformers 5 writes rope_parameters={"rope_theta":..., "rope_type":...}; hub files have rope_theta.
    params = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ("default", None):
        raise UserError(f"{source}: field 'rope_parameters.rope_type' = {rope_type!r} is not supported (only 'default')")
    theta = hf.get("rope_theta", params.get("rope_theta"))
    if theta is None:
        raise UserError(f"{source}: missing field 'rope_theta' (or 'rope_parameters.rope_theta')")
    return float(theta)


def _from_hf_config(cls, hf: dict[str, Any], source: str, overrides: dict[str, Any]) -> Qwen2Config:
    model_type = hf.get("model_type")
    if model_type not in ("qwen2", None):
        raise UserError(f"{source}: field 'model_type' = {model_type!r}, expected 'qwen2'")
    if hf.get("use_sliding_window", False):
        raise UserError(f"{source}: field 'use_sliding_window' is true; sliding-window attention is not implemented")
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(f"{source}: field 'hidden_act' = {hf['hidden_act']!r}, expected 'silu'")
    stored = hf.get("dtype", hf.get("torch_dtype")) or "bfloat16"
    fields = dict(
        vocab_size=_hf_field(hf, "vocab_size", source),
        hidden_size=_hf_field(hf, "hidden_size", source),
        intermediate_size=_hf_field(hf, "intermediate_size", source),
        num_hidden_layers=_hf_field(hf, "num_hidden_layers", source),
        num_attention_heads=_hf_field(hf, "num_attention_heads", source),
        num_key_value_heads=hf.get("num_key_value_heads", hf.get("num_attention_heads")),
        max_position_embeddings=hf.get("max_position_embeddings", 32768),
        rope_theta=_rope_theta(hf, source),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        head_dim=hf.get("head_dim"),
        checkpoint_dtype=stored if stored in _DTYPES else "bfloat16",
        bos_token_id=hf.get("bos_token_id"),
        eos_token_id=hf.get("eos_token_id"),
        pad_token_id=hf.get("pad_token_id"),
    )
    sizes = [n for n in fields if n.endswith("_size") or n.startswith("num_") or n == "max_position_embeddings"]
    for name in sizes:
        value = fields[name]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise UserError(f"{source}: field {name!r} must be a positive integer, got {value!r}")
    try:
        return cls(**{**fields, **overrides})
    except ValueError as e:
        raise UserError(f"{source}: {e}") from None


def _to_hf_config(cfg: Qwen2Config) -> dict[str, Any]:
    hf = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "torch_dtype": cfg.checkpoint_dtype,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        # sliding_window / max_window_layers only matter with use_sliding_window, which is refused on import.
        "sliding_window": None,
        "max_window_layers": cfg.num_hidden_layers,
    }
    if cfg.head_dim is not None:
        hf["head_dim"] = cfg.head_dim
    return hf


def load_hf_config(path, **overrides) -> Qwen2Config:
    """Reads `config.json` from a file path, naming the file in any error."""
    try:
        with open(path) as f:
            hf = json.load(f)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    return Qwen2Config.from_hf_config(hf, source=str(path), **overrides)


# Published architectures (the `config.json` of each Hugging Face release).
_QWEN25 = dict(rope_theta=1_000_000.0, max_position_embeddings=32768, bos_token_id=151643, eos_token_id=151645)
PRESETS: dict[str, Qwen2Config] = {
    "qwen2.5-0.5b": Qwen2Config(151936, 896, 4864, 24, 14, 2, tie_word_embeddings=True, **_QWEN25),
    "qwen2.5-1.5b": Qwen2Config(151936, 1536, 8960, 28, 12, 2, tie_word_embeddings=True, **_QWEN25),
    "qwen2.5-3b": Qwen2Config(151936, 2048, 11008, 36, 16, 2, tie_word_embeddings=True, **_QWEN25),
    "qwen2.5-7b": Qwen2Config(152064, 3584, 18944, 28, 28, 4, **_QWEN25),
    "qwen2.5-14b": Qwen2Config(152064, 5120, 13824, 48, 40, 8, rms_norm_eps=1e-5, **_QWEN25),
    "qwen2.5-32b": Qwen2Config(152064, 5120, 27648, 64, 40, 8, rms_norm_eps=1e-5, **_QWEN25),
    # Small random models for tests and the CPU demo: the Qwen2.5 tokenizer's vocabulary, tiny everything else.
    "tiny": Qwen2Config(151936, 64, 128, 2, 4, 2, max_position_embeddings=2048, tie_word_embeddings=True, **{
        k: v for k, v in _QWEN25.items() if k != "max_position_embeddings"}),
}
# The Instruct and Coder releases of a size share its architecture.
for _size in ("0.5b", "1.5b", "3b", "7b", "14b", "32b"):
    PRESETS[f"qwen2.5-{_size}-instruct"] = PRESETS[f"qwen2.5-{_size}"]
    PRESETS[f"qwen2.5-coder-{_size}-instruct"] = PRESETS[f"qwen2.5-{_size}"]


def preset(name: str, **overrides) -> Qwen2Config:
    key = name.lower().removeprefix("qwen/")
    if key not in PRESETS:
        raise UserError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[key].replace(**overrides)


# ----------------------------------------------------------------------------------------------- layers


def _param(rngs: nnx.Rngs, shape, axes, cfg: Qwen2Config, init=None) -> nnx.Param:
    init = init or nnx.initializers.normal(0.02)
    return nnx.Param(init(rngs.params(), shape, cfg.base_dtype), logical_axes=axes)


def _adapters(cfg: Qwen2Config, rngs: nnx.Rngs, shapes: dict) -> nnx.Dict | None:
    """{target: Adapter} for the targets among `shapes` ({target: (in shape, in axes, out shape, out axes)}) that
    cfg.lora adapts; None without any, so a model without adapters has exactly the parameters it always had."""
    adapters = {t: Adapter(t, *shape, cfg.lora, cfg.weight_dtype, rngs) for t, shape in shapes.items()
                if cfg.lora.adapts(t)}
    return nnx.Dict(adapters) if adapters else None


def _adapted(x, out, adapters: nnx.Dict | None, target: str, dtype):
    """`out` (x through the base kernel of `target`) plus the target's adapter output, if it has one."""
    return out + adapters[target](x, dtype) if adapters is not None and target in adapters else out


class RMSNorm(nnx.Module):
    def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs):
        self.weight = _param(rngs, (cfg.hidden_size,), ("norm",), cfg, nnx.initializers.ones_init())
        self.eps = cfg.rms_norm_eps

    def __call__(self, x: jax.Array) -> jax.Array:
        # As in HF: normalise in fp32, cast back to the input dtype, then scale.
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(x.dtype) * x32.astype(x.dtype)


def rope(x_BTNH: jax.Array, positions_BT: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding, HF's rotate-half layout, computed in fp32."""
    H = x_BTNH.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, H, 2, dtype=jnp.float32) / H))
    angles_BTh = positions_BT.astype(jnp.float32)[..., None] * inv_freq
    cos = jnp.cos(jnp.concatenate([angles_BTh, angles_BTh], -1))[:, :, None, :]
    sin = jnp.sin(jnp.concatenate([angles_BTh, angles_BTh], -1))[:, :, None, :]
    x = x_BTNH.astype(jnp.float32)
    rotated = jnp.concatenate([-x[..., H // 2 :], x[..., : H // 2]], axis=-1)
    return (x * cos + rotated * sin).astype(x_BTNH.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class LayerCache:
    """The stacked cache as one layer of the scan sees it. The whole stack is the scan's carry and each layer
    writes its new keys and values into its own slice of it, so XLA updates the cache in place; scanning the
    stack as per-layer inputs and outputs instead made a CPU decode step 5x slower still (a copy of the cache)."""

    k_LBKHS: jax.Array
    v_LBKSH: jax.Array
    layer: jax.Array

    def update(self, k_BKHS, v_BKSH, end) -> tuple["LayerCache", jax.Array, jax.Array]:
        """Writes this layer's new keys and values at slot `end`: (the cache, this layer's keys, its values)."""
        i = self.layer
        k_LBKHS = jax.lax.dynamic_update_slice(self.k_LBKHS, k_BKHS[None].astype(self.k_LBKHS.dtype), (i, 0, 0, 0, end))
        v_LBKSH = jax.lax.dynamic_update_slice(self.v_LBKSH, v_BKSH[None].astype(self.v_LBKSH.dtype), (i, 0, 0, end, 0))
        layer_k = jax.lax.dynamic_index_in_dim(k_LBKHS, i, keepdims=False)
        layer_v = jax.lax.dynamic_index_in_dim(v_LBKSH, i, keepdims=False)
        return LayerCache(k_LBKHS, v_LBKSH, i), layer_k, layer_v


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Decoding state of all layers. Slots [0, end) are filled; `valid_BS` marks which hold real tokens.

    Keys and values of all layers are stacked on a leading layer axis and scanned together with the weights.
    Rows are left-padded, so every row writes its next token at the same slot `end`; pad slots stay invalid and
    are never attended to. `next_pos_B` is each row's next RoPE position (its count of real tokens so far).
    """

    k_LBKHS: jax.Array
    v_LBKSH: jax.Array
    valid_BS: jax.Array
    next_pos_B: jax.Array
    end: jax.Array

    @classmethod
    def init(cls, cfg: Qwen2Config, batch: int, size: int, dtype=None) -> "KVCache":
        dtype = dtype or cfg.compute_dtype
        L, B, K, S, H = cfg.num_hidden_layers, batch, cfg.num_key_value_heads, size, cfg.head_size
        return cls(jnp.zeros((L, B, K, H, S), dtype), jnp.zeros((L, B, K, S, H), dtype),
                   jnp.zeros((B, S), bool), jnp.zeros((B,), jnp.int32), jnp.zeros((), jnp.int32))

    @property
    def size(self) -> int:
        return self.valid_BS.shape[1]

    def grow(self, size: int) -> "KVCache":
        """The same cache with `size` slots: the new slots are empty (invalid, never attended to)."""
        extra = size - self.size
        if extra < 0:
            raise ValueError(f"cannot shrink a cache of {self.size} slots to {size}")

        def pad(x, axis):
            return jnp.pad(x, [(0, extra if a == axis else 0) for a in range(x.ndim)])

        return dataclasses.replace(self, k_LBKHS=pad(self.k_LBKHS, 4), v_LBKSH=pad(self.v_LBKSH, 3),
                                   valid_BS=pad(self.valid_BS, 1))


class Attention(nnx.Module):
    def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs):
        D, N, K, H = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_size
        zeros = nnx.initializers.zeros_init()
        self.q_proj = _param(rngs, (D, N, H), ("embed", "q_heads", "head_dim"), cfg)
        self.q_bias = _param(rngs, (N, H), ("q_heads", "head_dim"), cfg, zeros)
        self.k_proj = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), cfg)
        self.k_bias = _param(rngs, (K, H), ("kv_heads", "head_dim"), cfg, zeros)
        self.v_proj = _param(rngs, (D, K, H), ("embed", "kv_heads", "head_dim"), cfg)
        self.v_bias = _param(rngs, (K, H), ("kv_heads", "head_dim"), cfg, zeros)
        self.o_proj = _param(rngs, (N, H, D), ("q_heads", "head_dim", "embed"), cfg)
        embed, q, kv = ((D,), ("embed",)), ((N, H), ("q_heads", "head_dim")), ((K, H), ("kv_heads", "head_dim"))
        self.lora = _adapters(cfg, rngs, {"q": (*embed, *q), "k": (*embed, *kv), "v": (*embed, *kv),
                                                   "o": (*q, *embed)})
        self.cfg = cfg

    def _project(self, x_BTD, kernel, bias, target):
        dt = self.cfg.compute_dtype
        out_BTNH = jnp.einsum("BTD,DNH->BTNH", x_BTD, kernel[...].astype(dt)) + bias[...].astype(dt)
        return _adapted(x_BTD, out_BTNH, self.lora, target, dt)

    def __call__(self, x_BTD, positions_BT, mask_BTS, cache: LayerCache | None, end):
        cfg = self.cfg
        q_BTNH = rope(self._project(x_BTD, self.q_proj, self.q_bias, "q"), positions_BT, cfg.rope_theta)
        k_BTKH = rope(self._project(x_BTD, self.k_proj, self.k_bias, "k"), positions_BT, cfg.rope_theta)
        v_BTKH = self._project(x_BTD, self.v_proj, self.v_bias, "v")
        # Heads-major layouts, keys stored transposed: both attention matmuls are then plain batched
        # [rows, contract] x [contract, cols] products over (B, K), with no per-step re-layout of the cache.
        k_BKHS, v_BKSH = k_BTKH.transpose(0, 2, 3, 1), v_BTKH.transpose(0, 2, 1, 3)
        if cache is not None:
            cache, k_BKHS, v_BKSH = cache.update(k_BKHS, v_BKSH, end)
            k_BKHS, v_BKSH = k_BKHS.astype(x_BTD.dtype), v_BKSH.astype(x_BTD.dtype)
        out_BTNH = attend(q_BTNH, k_BKHS, v_BKSH, mask_BTS)
        out_BTD = jnp.einsum("BTNH,NHD->BTD", out_BTNH, self.o_proj[...].astype(cfg.compute_dtype))
        return _adapted(out_BTNH, out_BTD, self.lora, "o", cfg.compute_dtype), cache


def attend(q_BTNH, k_BKHS, v_BKSH, mask_BTS):
    """Grouped-query attention with an fp32 softmax. Rows whose mask is all False return zeros."""
    B, T, N, H = q_BTNH.shape
    K = k_BKHS.shape[1]
    q_BKGTH = q_BTNH.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)
    scores = jnp.einsum("BKGTH,BKHS->BKGTS", q_BKGTH, k_BKHS, preferred_element_type=jnp.float32)
    scores = scores * (H**-0.5)
    mask = mask_BTS[:, None, None, :, :]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = jnp.where(mask, probs, 0.0).astype(v_BKSH.dtype)
    out_BKGTH = jnp.einsum("BKGTS,BKSH->BKGTH", probs, v_BKSH)
    return out_BKGTH.transpose(0, 3, 1, 2, 4).reshape(B, T, N, H)


class MLP(nnx.Module):
    def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs):
        D, F = cfg.hidden_size, cfg.intermediate_size
        self.gate_proj = _param(rngs, (D, F), ("embed", "mlp"), cfg)
        self.up_proj = _param(rngs, (D, F), ("embed", "mlp"), cfg)
        self.down_proj = _param(rngs, (F, D), ("mlp", "embed"), cfg)
        embed, mlp = ((D,), ("embed",)), ((F,), ("mlp",))
        self.lora = _adapters(cfg, rngs, {"gate": (*embed, *mlp), "up": (*embed, *mlp),
                                                   "down": (*mlp, *embed)})
        self.dtype = cfg.compute_dtype

    def __call__(self, x_BTD):
        dt, lora = self.dtype, self.lora
        gate_BTF = _adapted(x_BTD, jnp.einsum("BTD,DF->BTF", x_BTD, self.gate_proj[...].astype(dt)), lora, "gate", dt)
        up_BTF = _adapted(x_BTD, jnp.einsum("BTD,DF->BTF", x_BTD, self.up_proj[...].astype(dt)), lora, "up", dt)
        h_BTF = jax.nn.silu(gate_BTF) * up_BTF
        return _adapted(h_BTF, jnp.einsum("BTF,FD->BTD", h_BTF, self.down_proj[...].astype(dt)), lora, "down", dt)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg, rngs)
        self.self_attn = Attention(cfg, rngs)
        self.post_attention_layernorm = RMSNorm(cfg, rngs)
        self.mlp = MLP(cfg, rngs)

    def __call__(self, x_BTD, positions_BT, mask_BTS, cache, end):
        attn_BTD, cache = self.self_attn(self.input_layernorm(x_BTD), positions_BT, mask_BTS, cache, end)
        x_BTD = x_BTD + attn_BTD
        return x_BTD + self.mlp(self.post_attention_layernorm(x_BTD)), cache


class DecoderStack(nnx.Module):
    """The L decoder layers as one `DecoderLayer` whose parameters carry a leading "layers" axis, run by one scan.

    `stack[i]` is layer i as a plain `DecoderLayer` (its parameters sliced out of the stack), for inspection.
    """

    def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs):
        keys = jax.random.split(rngs.params(), cfg.num_hidden_layers)
        stacked = jax.vmap(lambda key: nnx.state(DecoderLayer(cfg, nnx.Rngs(params=key))))(keys)
        graphdef = nnx.graphdef(nnx.eval_shape(lambda: DecoderLayer(cfg, nnx.Rngs(0))))
        stacked = _map_variables(lambda v: v.replace(logical_axes=("layers", *v.logical_axes)), stacked)
        self.stacked = nnx.merge(graphdef, stacked)
        self.cfg = cfg

    def __len__(self) -> int:
        return self.cfg.num_hidden_layers

    def __getitem__(self, i: int) -> DecoderLayer:
        graphdef, stacked = nnx.split(self.stacked)
        return nnx.merge(graphdef, _map_variables(lambda v: _unstack(v, i), stacked))

    def __call__(self, x_BTD, positions_BT, mask_BTS, cache: KVCache | None):
        """Runs every layer: (x_BTD, the cache's new keys and values as (k_LBKHS, v_LBKSH), or None)."""
        graphdef, stacked = nnx.split(self.stacked)
        end = None if cache is None else cache.end

        def one_layer(carry, params_and_layer):
            x_BTD, kv = carry
            params, layer = params_and_layer
            cache = None if kv is None else LayerCache(*kv, layer)
            x_BTD, cache = nnx.merge(graphdef, params)(x_BTD, positions_BT, mask_BTS, cache, end)
            return (x_BTD, None if cache is None else (cache.k_LBKHS, cache.v_LBKSH)), None

        policy = REMAT_POLICIES[self.cfg.remat]
        if policy is not None:
            # Inside a rolled scan XLA cannot merge the recomputation back into the forward pass, so no extra
            # barrier is needed (JAX's advice); unrolled, it is.
            one_layer = jax.checkpoint(one_layer, policy=policy, prevent_cse=not self.cfg.scan_layers)
        kv = None if cache is None else (cache.k_LBKHS, cache.v_LBKSH)
        layers = jnp.arange(self.cfg.num_hidden_layers)
        carry, _ = jax.lax.scan(one_layer, (x_BTD, kv), (stacked, layers), unroll=not self.cfg.scan_layers)
        return carry


def _map_variables(fn, state: nnx.State) -> nnx.State:
    return jax.tree.map(fn, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _unstack(var: nnx.Variable, i: int) -> nnx.Variable:
    """Slice i of a stacked variable, placed as the stack's sharding minus its leading layer axis."""
    value = var[...][i]
    stacked_sharding = getattr(var[...], "sharding", None)
    if isinstance(stacked_sharding, jax.sharding.NamedSharding):
        spec = jax.sharding.PartitionSpec(*stacked_sharding.spec[1:])
        value = jax.device_put(value, jax.sharding.NamedSharding(stacked_sharding.mesh, spec))
    return var.replace(value, logical_axes=var.logical_axes[1:])


class Qwen2ForCausalLM(nnx.Module):
    """The causal LM. `__call__` runs a full sequence (training, scoring); with a cache it extends the cache."""

    def __init__(self, cfg: Qwen2Config, *, rngs: nnx.Rngs):
        self.config = cfg
        self.embed_tokens = _param(rngs, (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"), cfg)
        self.layers = DecoderStack(cfg, rngs)
        self.norm = RMSNorm(cfg, rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = _param(rngs, (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"), cfg)

    def __call__(self, tokens_BT, valid_BT=None, cache: KVCache | None = None, segment_ids_BT=None):
        """Returns (logits_BTV in fp32, cache). `valid_BT` is False on padding (left or right). `segment_ids_BT`
        (training forwards only, no cache): rows packed with several sequences, numbered 1, 2, ... in order with
        0 on padding; each attends only within itself and its positions restart at 0."""
        hidden_BTD, cache = self.hidden_states(tokens_BT, valid_BT, cache, segment_ids_BT)
        return self.logits(hidden_BTD), cache

    def hidden_states(self, tokens_BT, valid_BT=None, cache: KVCache | None = None, segment_ids_BT=None):
        """Final-norm hidden states; callers that only need some positions' logits project those alone."""
        if valid_BT is None:
            valid_BT = jnp.ones(tokens_BT.shape, bool) if segment_ids_BT is None else segment_ids_BT > 0
        valid_BT = valid_BT.astype(bool)
        positions_BT, mask_BTS, cache = _positions_and_mask(valid_BT, cache, segment_ids_BT)
        # Padding must not reach a real token, whatever id it holds: an out-of-range id is clipped (jnp.take would
        # fill its row with NaN) and padded positions start from zeros, so their keys and values stay finite even
        # if the pad token's own embedding is not (attention weighs them by 0, and 0 x NaN is NaN).
        x_BTD = jnp.take(self.embed_tokens[...], tokens_BT, axis=0, mode="clip").astype(self.config.compute_dtype)
        x_BTD = jnp.where(valid_BT[..., None], x_BTD, 0)
        x_BTD, kv = self.layers(x_BTD, positions_BT, mask_BTS, cache)
        if cache is not None:
            cache = dataclasses.replace(cache, k_LBKHS=kv[0], v_LBKSH=kv[1], end=cache.end + tokens_BT.shape[1])
        return self.norm(x_BTD), cache

    def logits(self, hidden_BTD):
        dt = self.config.compute_dtype
        if self.config.tie_word_embeddings:
            return jnp.einsum("BTD,VD->BTV", hidden_BTD, self.embed_tokens[...].astype(dt)).astype(jnp.float32)
        return jnp.einsum("BTD,DV->BTV", hidden_BTD, self.lm_head[...].astype(dt)).astype(jnp.float32)


def _positions_and_mask(valid_BT, cache: KVCache | None, segment_ids_BT=None):
    """RoPE positions of the new tokens and which keys each may attend to (causal, never padding, and with
    `segment_ids_BT` never another packed sequence of the row)."""
    T = valid_BT.shape[1]
    if segment_ids_BT is not None:
        if cache is not None:
            raise ValueError("segment_ids (packed rows) are for training forwards; a KV cache row holds one sequence")
        seg_BT = segment_ids_BT.astype(jnp.int32)
        t_T = jnp.arange(T, dtype=jnp.int32)
        starts_BT = jnp.concatenate([jnp.ones_like(seg_BT[:, :1], bool), seg_BT[:, 1:] != seg_BT[:, :-1]], axis=1)
        positions_BT = t_T - jax.lax.cummax(jnp.where(starts_BT, t_T, 0), axis=1)  # steps since the segment began
        same_BTS = seg_BT[:, :, None] == seg_BT[:, None, :]
        causal_TS = jnp.tril(jnp.ones((T, T), bool))
        return positions_BT, causal_TS[None] & same_BTS & valid_BT[:, None, :], None
    offsets_BT = jnp.cumsum(valid_BT, axis=1, dtype=jnp.int32) - 1
    if cache is None:
        positions_BT = jnp.maximum(offsets_BT, 0)
        causal_TS = jnp.tril(jnp.ones((T, T), bool))
        return positions_BT, causal_TS[None] & valid_BT[:, None, :], None
    positions_BT = jnp.maximum(cache.next_pos_B[:, None] + offsets_BT, 0)
    valid_BS = jax.lax.dynamic_update_slice(cache.valid_BS, valid_BT, (0, cache.end))
    slots_S = jnp.arange(cache.size)
    causal_TS = slots_S[None, :] <= (cache.end + jnp.arange(T))[:, None]
    cache = dataclasses.replace(cache, valid_BS=valid_BS, next_pos_B=cache.next_pos_B + valid_BT.sum(1, dtype=jnp.int32))
    return positions_BT, causal_TS[None] & valid_BS[:, None, :], cache


def parameter_count(cfg: Qwen2Config) -> int:
    """Number of parameters, from shapes alone (nothing is allocated)."""
    model = nnx.eval_shape(lambda: Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
