"""The embedded default: a ~1M-parameter Qwen2-architecture model trained from scratch on CPU in minutes.

    algoforge sft --config configs/tiny.py --agent planner --workdir runs/tiny
    algoforge sft --config configs/tiny.py --agent coder --workdir runs/tiny
    algoforge rl --config configs/tiny.py --workdir runs/tiny

With `planner.train_data` / `coder.train_data` empty (the default) SFT trains on the embedded default's synthetic
data, built once under WORKDIR/data; set them to JSONL rows to train on your own. RL starts from the two SFT models
and trains on the synthetic train split, evaluating greedy pass@1 of the pair on the held-out split before and after.

Sizes: 4 layers of width 128 (4 query / 2 kv heads, mlp 384) over the corpus's 1024-piece sentencepiece vocabulary,
168-token rows (the longest Coder example has 162), 16 rows a step, 120 SFT steps at a peak learning rate of 3e-3
(kept short so that SFT leaves the pair room to improve). Measured: ~7.5 s a step on 2 CPU cores shared with
other jobs (load ~10); far less on an idle machine. RL: 20 steps of 8 problems, 4 plans each, 4 programs per plan,
sampled at temperature 0.8 (the SFT models' samples at 1.0 almost never pass), rewarded by the fraction of tests
passed (the all-pass reward left ~95% of groups without variance on these models), no KL term (β = 0 skips the
reference), learning rate 3e-4; ~45 s a step on the same loaded machine.
"""

from algoforge_jax.config import Config, DataConfig, ModelConfig, RLConfig, TrainConfig
from algoforge_jax.rl.grpo import GRPOConfig
from algoforge_jax.rl.rewards import RewardConfig


def get_config(arg: str | None = None) -> Config:
    del arg  # one variant
    return Config(
        model=ModelConfig(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                          num_kv_heads=2, max_position_embeddings=2048),
        data=DataConfig(seq_len=168, batch_size=16, eval_batches=2),
        train=TrainConfig(steps=120, learning_rate=3e-3, warmup_steps=10, checkpoint_every=40, eval_every=40),
        rl=RLConfig(steps=20, problems_per_step=8, num_plans=4, num_programs=4, temperature=0.8,
                    planner_prompt_len=64, planner_max_new_tokens=64, coder_prompt_len=128, coder_max_new_tokens=96,
                    learning_rate=3e-4, grpo=GRPOConfig(kl_coef=0.0, num_iterations=1),
                    reward=RewardConfig(correctness="fraction"), checkpoint_every=5, eval_temperature=0.0),
    )
