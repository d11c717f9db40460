"""What the paper configs (`configs/qwen2p5_*.py`) share: fine-tuning of two agents started from one
checkpoint, SFT then collaborative GRPO, in per-hardware variants. Each config file names its preset, checkpoint
and variant table and calls `full_finetune`, so the recipe lives in one place and the files differ only in what
truly differs.

Where the values come from. The AlgoForge paper (CoRe-Code, arXiv 2605.24812) names the base models, the
Planner -> Coder pipeline, the SFT cold start and the GRPO stage, but none of its training hyperparameters reached
us; so every number below is ours, chosen as common starting points for 7B/14B code models, except GRPO's KL
coefficient β = 0.04 and clip ε = 0.2 (the GRPO paper's, `rl.grpo.GRPOConfig`'s defaults). Ours: SFT lr 1e-5
(warmup 30, cosine to 10%, 300 steps); RL lr 1e-6 constant after 10 warmup updates, 200 steps, 4 plans x 4 programs
a problem, temperature 1.0, reward 1 when every test passes, one optimizer pass a rollout (on-policy), prompt and
response each half a row.

What makes RL fit: `model.remat = "full"` (every layer keeps only its input for the backward pass, then is rerun).
The Coder's micro-batch is at least `num_programs` = 4 rows a device (its rows are the Planner's times
num_programs, split into as many micro-batches as the Planner's), and without remat one row keeps 13 GiB of
activations (7B, 1024 tokens; `memory.activation_bytes_per_row`), so e.g. the 7B RL step on 8 x H100 would need
~84 GiB a device; with it, 0.7 GiB a row and 41 GiB in all. SFT runs with the same setting (it fits without).

Variants whose name ends in `-lora` train rank-64 adapters on one frozen bf16 base both agents share (`LORA`), at
ten times the learning rates; that is what fits the recipe on one GPU. The others fine-tune every weight.
"""

from __future__ import annotations

from algoforge_jax.config import AgentConfig, Config, DataConfig, ModelConfig, RLConfig, TrainConfig
from algoforge_jax.errors import UserError
from algoforge_jax.models.lora import LoRAConfig
from algoforge_jax.rl.grpo import GRPOConfig
from algoforge_jax.rl.rewards import RewardConfig
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
    AdamW moments, full rematerialisation; SFT at lr 1e-5 (1e-4 for adapters), RL at 1e-6 (1e-5 for adapters), one
    row per batch shard per micro-batch (the Planner's; the Coder's are num_programs rows)."""
    mesh, batch, seq_len, problems = variant(variants, arg)
    adapters = LORA if (arg or next(iter(variants))).endswith("-lora") else LoRAConfig()
    shards = mesh.fsdp * mesh.data
    half = seq_len // 2
    return Config(
        model=ModelConfig(preset=preset, dtype="bfloat16", param_dtype="float32", remat="full"),
        mesh=mesh,
        data=DataConfig(seq_len=seq_len, batch_size=batch, eval_batches=4),
        train=TrainConfig(steps=300, learning_rate=1e-4 if adapters.rank else 1e-5, warmup_steps=30,
                          grad_accum=batch // shards, logprob_chunk=256, checkpoint_every=50, eval_every=50),
        planner=AgentConfig(init=model),
        coder=AgentConfig(init=model),
        rl=RLConfig(steps=200, problems_per_step=problems, num_plans=4, num_programs=4, temperature=1.0,
                    planner_prompt_len=half, planner_max_new_tokens=half, coder_prompt_len=half,
                    coder_max_new_tokens=half, learning_rate=1e-5 if adapters.rank else 1e-6, warmup_steps=10,
                    grad_accum=problems * 4 // shards, grpo=GRPOConfig(kl_coef=0.04, num_iterations=1),
                    reward=RewardConfig(correctness="all"), checkpoint_every=10, sandbox_workers=16),
        lora=adapters,
    )
