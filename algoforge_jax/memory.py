"""Per-device memory of a run, worked out from shapes alone: does a config fit the accelerators it names?

Nothing is allocated. Parameter and optimizer shards come from `models.build.abstract_model` on an `AbstractMesh`
of the hardware's device count with the training rules (fsdp and tensor split every matrix), the sampler's copy
and KV cache from the sampling rules, and activations from `jax.eval_shape` of the train loss's `jax.vjp`: its
residuals are exactly what the backward pass keeps, for whatever the model code does (remat, chunked log-probs).

The budget has three parts, because the RL loop never holds the last two at once:
  persistent    both agents' parameters and AdamW moments, and both frozen references (bf16);
  rollout phase one agent's sampler copy (the sampling layout, replicated over fsdp) and its KV cache;
  train phase   one agent's gradients (twice when micro-batches are accumulated) and one micro-batch's activations.
Peak = persistent + the larger phase. SFT trains one agent with no reference, sampler or cache.

With adapters (`cfg.lora.rank` > 0) the persistent part is one frozen base in the compute dtype, shared by both
agents (they start from one checkpoint), each agent's adapters and their AdamW moments; the references are that
base (no bytes), the sampler reads the base as it lies when the two layouts agree (one device) and keeps one
sampling-layout copy otherwise; gradients and activations are those of the adapters' backward pass. RL-only
adapters (`cfg.rl.lora`) sit on the two fully fine-tuned SFT models, so the RL budget then holds two bases.

Deliberately left out: XLA's scratch buffers and fragmentation (the capacity is cut by `Hardware.usable`
instead), the sampler's logits and the rollout's token arrays (megabytes).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import AbstractMesh, AxisType

from algoforge_jax import sharding
from algoforge_jax.config import Config
from algoforge_jax.models import lora
from algoforge_jax.models.build import abstract_model
from algoforge_jax.models.qwen2 import KVCache, Qwen2Config, Qwen2ForCausalLM
from algoforge_jax.train.state import make_optimizer
from algoforge_jax.train.step import loss_sums

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Hardware:
    """One slice of accelerators: how many devices JAX sees and the memory of each."""

    name: str
    devices: int
    hbm_bytes: int  # per device, as the vendor states it
    usable: float = 0.9  # the fraction a run may plan to fill; the rest is XLA scratch and fragmentation


HARDWARE = {
    "1xh100": Hardware("1xh100", 1, 80 * 10**9),
    "1xh200": Hardware("1xh200", 1, 141 * 10**9),
    "8xh100": Hardware("8xh100", 8, 80 * 10**9),
    "8xh200": Hardware("8xh200", 8, 141 * 10**9),
    "tpu-v5p-64": Hardware("tpu-v5p-64", 32, 95 * 10**9),  # 32 chips (64 TensorCores), 4 per host
}


@dataclasses.dataclass(frozen=True)
class RolloutShape:
    """The sizes of one collaborative RL step that memory depends on (`from_config`: those of a config's rl group)."""

    problems: int  # problems per RL step
    num_plans: int  # Gp: plans per problem
    num_programs: int  # Gc: programs per plan
    planner_prompt: int  # tokens of a planner prompt (the problem)
    planner_new_tokens: int
    coder_prompt: int  # tokens of a coder prompt (problem + plan)
    coder_new_tokens: int
    micro_batch: int  # rows per policy-gradient micro-batch (global)
    kl: bool = True  # a frozen reference per agent (GRPO's KL term)

    @classmethod
    def from_config(cls, cfg: Config) -> RolloutShape:
        """The sizes `algoforge rl` runs `cfg.rl` with. Each agent's update splits its rows into rl.grad_accum
        micro-batches, so the Coder's (num_programs times the Planner's rows) is the largest micro-batch."""
        rl = cfg.rl
        coder_rows = rl.problems_per_step * rl.num_plans * rl.num_programs
        return cls(rl.problems_per_step, rl.num_plans, rl.num_programs, rl.planner_prompt_len,
                   rl.planner_max_new_tokens, rl.coder_prompt_len, rl.coder_max_new_tokens,
                   micro_batch=coder_rows // rl.grad_accum, kl=rl.grpo.kl_coef > 0)

    @property
    def train_len(self) -> int:
        """Tokens of a policy-gradient row (prompt + response), the longer agent's."""
        return max(self.planner_prompt + self.planner_new_tokens, self.coder_prompt + self.coder_new_tokens)

    def sampler_rows(self) -> dict[str, tuple[int, int]]:
        """agent -> (rows of its one sampler call, cache length)."""
        plans = self.problems * self.num_plans
        return {"planner": (plans, self.planner_prompt + self.planner_new_tokens),
                "coder": (plans * self.num_programs, self.coder_prompt + self.coder_new_tokens)}


@dataclasses.dataclass(frozen=True)
class Budget:
    """Per-device bytes by item, grouped by phase, against one device's usable memory."""

    hardware: Hardware
    mesh: dict[str, int]
    items: tuple[tuple[str, str, int], ...]  # (phase, item, bytes per device)

    def phase(self, name: str) -> int:
        return sum(b for p, _, b in self.items if p == name)

    @property
    def peak(self) -> int:
        return self.phase("persistent") + max(self.phase("rollout"), self.phase("train"))

    @property
    def capacity(self) -> int:
        return int(self.hardware.hbm_bytes * self.hardware.usable)

    @property
    def fits(self) -> bool:
        return self.peak <= self.capacity

    def table(self) -> str:
        """A Markdown table in GiB per device, the arithmetic spelled out."""
        hw = self.hardware
        lines = [f"{hw.name}: {hw.devices} devices, mesh {self.mesh}", "", "| phase | item | GiB / device |",
                 "| --- | --- | ---: |"]
        lines += [f"| {p} | {item} | {b / GiB:.2f} |" for p, item, b in self.items]
        lines += [f"| peak | persistent + max(rollout {self.phase('rollout') / GiB:.2f}, train "
                  f"{self.phase('train') / GiB:.2f}) | **{self.peak / GiB:.2f}** |",
                  f"| capacity | {hw.usable:.0%} of {hw.hbm_bytes / GiB:.1f} | {self.capacity / GiB:.2f} |",
                  "", f"fits: {'yes' if self.fits else 'NO'}"]
        return "\n".join(lines)


def abstract_mesh(cfg: Config, hardware: Hardware) -> AbstractMesh:
    shape = cfg.mesh.shape(hardware.devices)
    return AbstractMesh(shape, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * len(shape))


def memory_budget(cfg: Config, hardware: Hardware, rollout: RolloutShape | None = None) -> Budget:
    """The per-device budget of SFT (`rollout` None: one agent) or of collaborative RL (both agents)."""
    mesh = abstract_mesh(cfg, hardware)
    model_cfg = cfg.model.qwen2().replace(lora=cfg.lora if rollout is None else cfg.rl_lora())
    frozen, params = _train_params(model_cfg, mesh)
    agents = 1 if rollout is None else 2
    # `rl.lora` adapts two fully fine-tuned SFT models: two bases. `lora` adapts one shared start in SFT and RL.
    bases = 2 if rollout is not None and cfg.rl.lora.rank else 1
    base_item = "frozen base x1, shared" if bases == 1 else "frozen bases x2 (the two SFT models)"
    items = [("persistent", f"{base_item} ({cfg.model.dtype})", bases * _shard_bytes(frozen))] if frozen else []
    items += [("persistent", f"{'adapters' if frozen else 'params'} x{agents} ({cfg.model.param_dtype})",
               agents * _shard_bytes(params)),
              ("persistent", f"AdamW moments x{agents}", agents * _optimizer_bytes(cfg, params))]
    if rollout is not None:
        items += _rl_items(cfg, model_cfg, mesh, params, rollout)
    items += _train_items(cfg, model_cfg, mesh, params, rollout)
    return Budget(hardware, dict(zip(sharding.MESH_AXES, mesh.axis_sizes)), tuple(items))


def _train_items(cfg: Config, model_cfg: Qwen2Config, mesh, params, rollout: RolloutShape | None) -> list:
    """One agent's backward pass: its gradients (twice when micro-batches are accumulated: the running sum beside
    the micro-batch's own) and the activations of one micro-batch, whole rows on each batch shard."""
    if rollout is None:
        rows, seq_len, accum = cfg.data.batch_size // cfg.train.grad_accum, cfg.data.seq_len, cfg.train.grad_accum
    else:
        rows, seq_len = rollout.micro_batch, rollout.train_len
        accum = -(-max(rows for rows, _ in rollout.sampler_rows().values()) // rollout.micro_batch)
    grads = _shard_bytes(params) * (2 if accum > 1 else 1)
    per_device = -(-rows // sharding.batch_shards(mesh, sharding.TRAIN_RULES))
    return [("train", f"gradients (one agent{', accumulated' if accum > 1 else ''})", grads),
            ("train", f"activations ({per_device} row(s) x {seq_len} tokens)",
             per_device * activation_bytes_per_row(cfg, model_cfg, seq_len))]


def _rl_items(cfg: Config, model_cfg: Qwen2Config, mesh, params, rollout: RolloutShape) -> list:
    """The references (stored in the compute dtype, laid out like the trained weights), and the rollout phase: the
    sampler's copy of one agent in the master dtype (`sharding.reshard` moves weights, it does not cast them) and
    the KV cache of the larger sampler call."""
    if model_cfg.lora.rank:
        items = _lora_rl_items(model_cfg, mesh, rollout)
    else:
        items = []
        if rollout.kl:
            ref = sum(_bytes_of(x.sharding.shard_shape(x.shape), model_cfg.compute_dtype) for x in params)
            items.append(("persistent", f"frozen references x2 ({cfg.model.dtype})", 2 * ref))
        sampler = _shard_bytes(sum(_abstract_params(model_cfg, mesh, sharding.SAMPLE_RULES), ()))
        items.append(("rollout", "sampler weights (one agent, sampling layout)", sampler))
    cache = max(kv_cache_bytes(model_cfg, mesh, rows, length) for rows, length in rollout.sampler_rows().values())
    items.append(("rollout", "KV cache (larger agent's call)", cache))
    return items


def _lora_rl_items(model_cfg: Qwen2Config, mesh, rollout: RolloutShape) -> list:
    """The references are the shared base (no bytes); the sampler's base is that base itself where both layouts
    agree, else one sampling-layout copy kept for the run; the adapters move to the sampler each step."""
    items = [("persistent", "frozen references: the base, adapters off", 0)] if rollout.kl else []
    (train_base, _), (sample_base, sample_adapters) = (_abstract_params(model_cfg, mesh, rules) for rules in
                                                       (sharding.TRAIN_RULES, sharding.SAMPLE_RULES))
    same = all(a.sharding.is_equivalent_to(b.sharding, a.ndim) for a, b in zip(train_base, sample_base))
    items.append(("persistent", "sampler base (the base itself)" if same else "sampler base (sampling layout)",
                  0 if same else _shard_bytes(sample_base)))
    items.append(("rollout", "sampler adapters (one agent, sampling layout)", _shard_bytes(sample_adapters)))
    return items


def kv_cache_bytes(model_cfg: Qwen2Config, mesh, rows: int, length: int) -> int:
    """Per-device bytes of the sampler's cache for `rows` sequences of `length` slots: the cache's own arrays, split
    as the sampling rules split its rows and kv heads (whatever the cache's layout of the other axes)."""
    cache = jax.eval_shape(lambda: KVCache.init(model_cfg, rows, length))
    spec = sharding.logical_to_spec(("batch", "kv_heads"), sharding.SAMPLE_RULES, mesh,
                                    (rows, model_cfg.num_key_value_heads))
    axes = [a for entry in spec if entry for a in (entry if isinstance(entry, tuple) else (entry,))]
    split = math.prod(mesh.shape[a] for a in axes)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache)) // split


def activation_bytes_per_row(cfg: Config, model_cfg: Qwen2Config, seq_len: int) -> int:
    """Bytes the backward pass keeps per row of `seq_len` tokens: the vjp residuals of the SFT loss (with respect
    to the trainable parameters: the adapters when `model_cfg` has them).

    Measured on 1- and 2-layer copies of the model (a full-depth trace takes a minute) and extended to its depth,
    which is exact because every decoder layer keeps the same residuals; differences over 1 and 2 rows cancel
    the weights, which the residuals hold too. Under rematerialisation (`remat` other than none) the backward pass
    reruns one layer at a time and holds that layer's full residuals meanwhile, so one layer's are added.
    """
    def per_row(layers: int, remat: str) -> int:
        small = model_cfg.replace(num_hidden_layers=layers, remat=remat)
        return (_residual_bytes(small, seq_len, 2, cfg.train.logprob_chunk)
                - _residual_bytes(small, seq_len, 1, cfg.train.logprob_chunk))

    one, two = per_row(1, model_cfg.remat), per_row(2, model_cfg.remat)
    kept = one + (model_cfg.num_hidden_layers - 1) * (two - one)
    if model_cfg.remat == "none":
        return kept
    return kept + per_row(2, "none") - per_row(1, "none")


@functools.lru_cache(maxsize=64)
def _residual_bytes(model_cfg: Qwen2Config, seq_len: int, rows: int, chunk_len: int) -> int:
    graphdef, state = nnx.split(nnx.eval_shape(lambda: _model(model_cfg)))
    frozen, params = lora.split(state)
    batch = {"tokens": jax.ShapeDtypeStruct((rows, seq_len), jnp.int32),
             "loss_mask": jax.ShapeDtypeStruct((rows, seq_len), jnp.int32),
             "valid": jax.ShapeDtypeStruct((rows, seq_len), jnp.bool_)}

    def residuals(params, frozen, batch):
        return jax.vjp(lambda p: loss_sums(graphdef, p, batch, chunk_len, frozen)[0], params)[1]

    out = jax.eval_shape(residuals, params, frozen, batch)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(out))


def _model(model_cfg: Qwen2Config) -> Qwen2ForCausalLM:
    return Qwen2ForCausalLM(model_cfg, rngs=nnx.Rngs(0))


@functools.lru_cache(maxsize=16)  # an abstract 7B model takes seconds to build; budgets ask for it repeatedly
def _abstract_params(model_cfg: Qwen2Config, mesh, rules) -> tuple[tuple[jax.ShapeDtypeStruct, ...], ...]:
    """(frozen, trainable) leaves of the abstract model (`lora.split`): frozen is empty without adapters."""
    _, abstract = abstract_model(model_cfg, mesh, rules)
    return tuple(tuple(jax.tree.leaves(half)) for half in lora.split(abstract))


def _train_params(model_cfg: Qwen2Config, mesh) -> tuple[tuple[jax.ShapeDtypeStruct, ...], ...]:
    return _abstract_params(model_cfg, mesh, sharding.TRAIN_RULES)


def _optimizer_bytes(cfg: Config, params) -> int:
    """Per-device bytes of the optimizer state: optax's own state shapes and dtypes, each moment sharded like
    the parameter it mirrors (as `train.state.state_shardings` places it)."""
    tx = make_optimizer(cfg.train)
    params = list(params)
    plain = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in params]
    state = jax.eval_shape(tx.init, plain)
    per_param = optax.tree_map_params(tx, lambda x, p: _bytes_of(p.sharding.shard_shape(p.shape), x.dtype), state,
                                      params, transform_non_params=lambda x: 0)
    return sum(jax.tree.leaves(per_param))


def _shard_bytes(arrays) -> int:
    return sum(_bytes_of(x.sharding.shard_shape(x.shape), x.dtype) for x in arrays)


def _bytes_of(shape, dtype) -> int:
    return math.prod(shape) * jnp.dtype(dtype).itemsize
