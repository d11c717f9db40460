"""The embedded default: a ~1M-parameter Qwen2-architecture model trained from scratch on CPU in minutes.

    algoforge run --config configs/tiny.py --workdir runs/tiny      # data, SFT of both agents, RL, eval, report
    # or stage by stage:
    algoforge sft --config configs/tiny.py --agent planner --workdir runs/tiny
    algoforge sft --config configs/tiny.py --agent coder --workdir runs/tiny
    algoforge rl --config configs/tiny.py --workdir runs/tiny

With `planner.train_data` / `coder.train_data` empty (the default) SFT trains on the embedded default's synthetic
data, built once under WORKDIR/data; set them to JSONL rows to train on your own. RL starts from the two SFT models
and trains on the synthetic train split, evaluating greedy pass@1 of the pair on the held-out split before and after.

Data: the Planner's dataset mixes in 1.5 constant-free sketch plans per problem (`data.sketches`; every problem
keeps its detailed reference plan too), as if its teacher often wrote sketches; the Coder's dataset pairs each
problem with the detailed plan only. Each agent imitates its own data, so after SFT the greedy Planner writes
sketches its Coder cannot use: the two agents disagree in a way that supervised training of each alone does not
fix and collaborative RL can (the README's "Collaborative GRPO" section has the measurements; `--set
data.sketches=0` gives matched datasets).

Sizes: 4 layers of width 128 (4 query / 2 kv heads, mlp 384) over the corpus's 1024-piece sentencepiece vocabulary;
packed rows (`data.pack`): 8 a step, Coder rows of 336 tokens and Planner rows of 208, each holding ~2.7 whole
examples (the longest Coder example has 162 tokens, the longest Planner one 98), so a step sees ~21 examples where
16 padded rows of 168 / 104 saw 16, in less time (benchmarks/sft_packing.py); 300 SFT steps at a peak learning rate
of 3e-3 (with padded rows: 120 steps left the pair at 0.02 held-out pass@1, 300 at 0.155, 400 at 0.18-0.235: the
models must copy constants from the statement, which they learn late). RL: 20 steps of 8 problems, 4 plans each,
2 programs per plan, sampled at temperature 0.8, reward 1 when every test passes (the fraction of tests passed
also rewards detailed plans with wrong constants, and RL then spread those), no KL term, AdamW at 1e-3 on rank-16
adapters that RL alone trains on the fully fine-tuned SFT models (`rl.lora`): full-weight RL updates wrecked the
copying the models had learned (see the README's measured runs). README command 1 stays under 15 minutes on 2
cores.
"""

from algoforge_jax.config import AgentConfig, Config, DataConfig, ModelConfig, RLConfig, TrainConfig
from algoforge_jax.models.lora import LoRAConfig
from algoforge_jax.rl.grpo import GRPOConfig
from algoforge_jax.rl.rewards import RewardConfig


def get_config(arg: str | None = None) -> Config:
    del arg  # one variant
    return Config(
        model=ModelConfig(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                          num_kv_heads=2, max_position_embeddings=2048),
        data=DataConfig(seq_len=336, batch_size=8, eval_batches=2, pack=True, sketches=1.5),
        train=TrainConfig(steps=300, learning_rate=3e-3, warmup_steps=10, checkpoint_every=100, eval_every=100),
        planner=AgentConfig(seq_len=208),
        rl=RLConfig(steps=20, problems_per_step=8, num_plans=4, num_programs=2, temperature=0.8,
                    planner_prompt_len=64, planner_max_new_tokens=64, coder_prompt_len=128, coder_max_new_tokens=96,
                    learning_rate=1e-3, lora=LoRAConfig(rank=16), grpo=GRPOConfig(kl_coef=0.0, num_iterations=1),
                    reward=RewardConfig(correctness="all"), checkpoint_every=5, eval_temperature=0.0),
    )
