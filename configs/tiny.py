"""The embedded default: a ~1M-parameter Qwen2-architecture model trained from scratch on CPU in minutes.

    algoforge sft --config configs/tiny.py --agent planner --workdir runs/tiny \\
        --set planner.train_data=PLANNER.jsonl --set planner.eval_data=PLANNER_HELDOUT.jsonl
    algoforge sft --config configs/tiny.py --agent coder --workdir runs/tiny \\
        --set coder.train_data=CODER.jsonl --set coder.eval_data=CODER_HELDOUT.jsonl

Sizes: 4 layers of width 128 (4 query / 2 kv heads, mlp 384) over a 1024-piece vocabulary (room for the synthetic
corpus's sentencepiece model; the byte-level fallback uses 257 of it), 256-token rows, 16 rows a step, 200 steps
at a peak learning rate of 2e-3. Measured: 2.0 s a step on 2 CPU cores shared with other jobs (load ~10), so at
most ~7 minutes per agent; less on an idle machine.
"""

from algoforge_jax.config import Config, DataConfig, ModelConfig, TrainConfig


def get_config(arg: str | None = None) -> Config:
    del arg  # one variant
    return Config(
        model=ModelConfig(vocab_size=1024, hidden_size=128, intermediate_size=384, num_layers=4, num_heads=4,
                          num_kv_heads=2, max_position_embeddings=2048),
        data=DataConfig(seq_len=256, batch_size=16, eval_batches=2),
        train=TrainConfig(steps=200, learning_rate=2e-3, warmup_steps=20, checkpoint_every=50, eval_every=50),
    )
