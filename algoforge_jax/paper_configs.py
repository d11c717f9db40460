"""What the paper configs (`configs/qwen2p5_*.py`) share: fine-tuning of two agents started from one checkpoint,
in per-hardware variants. Each config file names its preset, checkpoint and variant table and calls these two
functions, so the recipe lives in one place and the files differ only in what truly differs. Variants whose name
ends in `-lora` train rank-64 adapters on one frozen bf16 base both agents share (`LORA`), which is what fits the
recipe on one GPU; the others fine-tune every weight."""

from __future__ import annotations

from algoforge_jax.config import AgentConfig, Config, DataConfig, ModelConfig, TrainConfig
from algoforge_jax.errors import UserError
from algoforge_jax.memory import RolloutShape
from algoforge_jax.models.lora import LoRAConfig
from algoforge_jax.sharding import MeshConfig

# A variant: (mesh, SFT rows a step, tokens a row, RL problems a step).
Variant = tuple[MeshConfig, int, int, int]
LORA = LoRAConfig(rank=64, alpha=128.0)  # the adapters of the `-lora` variants, on every projection


def variant(variants: dict[str, Variant], arg: str | None) -> Variant:
    """The variant `arg` names (the table's first when None); an unknown name is a one-line error."""
    name = arg or next(iter(variants))
    if name not in variants:
        raise UserError(f"config arg {name!r}: unknown variant; valid: {', '.join(variants)}")
    return variants[name]


def full_finetune(preset: str, model: str, variants: dict[str, Variant], arg: str | None) -> Config:
    """Both agents start from `model`; bf16 compute over fp32 master weights (the adapters' with `-lora`) and
    AdamW moments; SFT at lr 1e-5, 1e-4 for adapters (warmup 30, cosine), one row per batch shard per
    micro-batch."""
    mesh, batch, seq_len, _ = variant(variants, arg)
    adapters = LORA if (arg or next(iter(variants))).endswith("-lora") else LoRAConfig()
    micro = mesh.fsdp * mesh.data
    return Config(
        model=ModelConfig(preset=preset, dtype="bfloat16", param_dtype="float32"),
        mesh=mesh,
        data=DataConfig(seq_len=seq_len, batch_size=batch, eval_batches=4),
        train=TrainConfig(steps=300, learning_rate=1e-4 if adapters.rank else 1e-5, warmup_steps=30,
                          grad_accum=batch // micro, logprob_chunk=256, checkpoint_every=50, eval_every=50),
        planner=AgentConfig(init=model),
        coder=AgentConfig(init=model),
        lora=adapters,
    )


def rollout_shape(variants: dict[str, Variant], arg: str | None) -> RolloutShape:
    """The RL step's sizes for a variant: 4 plans x 4 programs, half of each row for the prompt, half for the
    response."""
    mesh, _, seq_len, problems = variant(variants, arg)
    half = seq_len // 2
    return RolloutShape(problems=problems, num_plans=4, num_programs=4, planner_prompt=half,
                        planner_new_tokens=half, coder_prompt=half, coder_new_tokens=half,
                        micro_batch=mesh.fsdp * mesh.data)
