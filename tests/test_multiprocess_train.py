"""Training as two cooperating processes (two "hosts" of two CPU devices each, joined by `jax.distributed`) gives
what one process with the same four devices gives: the same losses step by step and the same final parameters.

Each process reads only its share of every batch, writes its part of every checkpoint, and only process 0 writes
the logs. `STAGES` holds one entry per training command (arguments, inputs and the files its result lives in):
SFT of one agent, and two RL steps of both agents from models where SFT leaves them (a frozen reference each).
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import pytest
from flax import nnx

from algoforge_jax import checkpoints, sharding
from algoforge_jax.config import ModelConfig
from algoforge_jax.data.embedded import build_embedded
from algoforge_jax.jsonl import jsonl_text
from algoforge_jax.models.build import init_model
from hf_tiny import one_device_mesh
from test_multihost import ROOT, _env, _two_processes

SFT_STEPS, RL_STEPS = 6, 2
SFT_CONFIG = f'''
from algoforge_jax.config import AgentConfig, Config, DataConfig, ModelConfig, TrainConfig
def get_config(arg=None):
    return Config(model=ModelConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_layers=2,
                                    num_heads=4, num_kv_heads=2),
                  data=DataConfig(seq_len=512, batch_size=8),  # the full prompts, byte-level
                  train=TrainConfig(steps={SFT_STEPS}, learning_rate=3e-3, warmup_steps=2, checkpoint_every=3,
                                    logprob_chunk=16),
                  planner=AgentConfig(train_data=%r))
'''
RL_MODEL = dict(vocab_size=400, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
# 4 problems x 2 plans = 8 planner rows a step: 2 micro-batches of 4 rows, one a device of the 4-device mesh.
# Random agents never pass a test; a 2-token program often compiles (e.g. a bare name), and the format reward for
# compiling gives the groups reward variance, so both agents get real policy gradients.
RL_CONFIG = f'''
from algoforge_jax.config import Config, ModelConfig, RLConfig
from algoforge_jax.rl.grpo import GRPOConfig
from algoforge_jax.rl.rewards import RewardConfig
def get_config(arg=None):
    return Config(model=ModelConfig(**{RL_MODEL!r}),
                  rl=RLConfig(steps={RL_STEPS}, problems_per_step=4, num_plans=2, num_programs=2,
                              planner_prompt_len=64, planner_max_new_tokens=12, coder_prompt_len=256,
                              coder_max_new_tokens=2, learning_rate=1e-3, checkpoint_every=1, grad_accum=2,
                              grpo=GRPOConfig(kl_coef=0.04), reward=RewardConfig(format_coef=1.0),
                              problems=%r, eval_problems=%r, eval_limit=2))
'''


def _sft_inputs(tmp_path: Path) -> Path:
    rows = [{"task_id": f"t{i}", "problem": f"sum the list number {i}", "plan": f"add the {i} items one by one"}
            for i in range(24)]
    (tmp_path / "rows.jsonl").write_text(jsonl_text(rows))
    (tmp_path / "cfg.py").write_text(SFT_CONFIG % str(tmp_path / "rows.jsonl"))
    return tmp_path / "cfg.py"


def _rl_inputs(tmp_path: Path) -> Path:
    """Small synthetic problems and their tokenizer, and two tiny random agents saved where `algoforge sft` leaves
    its models (D/sft-<agent>/model) in both workdirs."""
    data = build_embedded(tmp_path / "data", seed=3, n_train=30, n_heldout=6, vocab_size=400)
    for seed, agent in enumerate(("planner", "coder")):
        model = init_model(ModelConfig(**RL_MODEL).qwen2(), one_device_mesh(), sharding.TRAIN_RULES, seed=seed)
        for workdir in ("one", "two"):
            checkpoints.save_model(tmp_path / workdir / f"sft-{agent}" / "model", model,
                                   tokenizer_dir=data.tokenizer_dir)
    (tmp_path / "cfg.py").write_text(RL_CONFIG % (str(data.problems["train"]), str(data.problems["heldout"])))
    return tmp_path / "cfg.py"


@dataclasses.dataclass(frozen=True)
class Stage:
    """How to run one training command on a workdir and where its result lands."""

    args: tuple[str, ...]  # after the command's --config and --workdir
    inputs: Callable[[Path], Path]  # writes the stage's config (returned) and data under the test's directory
    out: str  # the stage's directory under the workdir: checkpoints/, metrics.jsonl
    steps: int
    kept: tuple[str, ...]  # the checkpoint steps left under out/checkpoints
    losses: tuple[str, ...]  # metrics compared step by step
    models: tuple[str, ...]  # final models under out
    atol: float = 0.0  # absolute tolerance of the metrics (besides rtol 1e-6)
    param_atol: float = 1e-7  # absolute tolerance of the final parameters (besides rtol 1e-5)


STAGES = {
    # Weights ~1e-2: 512-token rows accumulate rounding differently across processes, ~1e-7 apart.
    "sft": Stage(("sft", "--agent", "planner"), _sft_inputs, "sft-planner", SFT_STEPS, ("3", "6"), ("loss",),
                 ("model",), param_atol=1e-6),
    # What each step sampled and earned must match exactly; the losses are group-centred, so near 0 on the first
    # (on-policy) step, where only rounding differs between the collectives of one and two processes: the atol.
    # Adam turns a gradient near its eps (embedding rows of tokens hardly sampled, ~1e-10) into a step of up to the
    # learning rate (1e-3) whose size rounding decides: a few such parameters differ by ~1e-6, hence param_atol.
    "rl": Stage(("rl",), _rl_inputs, "rl", RL_STEPS, ("1", "2"),
                ("planner/response_len_mean", "coder/reward_mean", "planner/reward_mean", "planner/grad_norm",
                 "coder/grad_norm", "planner/loss", "coder/loss", "coder/kl"),
                ("planner/model", "coder/model"), atol=1e-6, param_atol=1e-5),
}


def _command(stage: Stage, config: Path, workdir: Path) -> list[str]:
    return [stage.args[0], "--config", str(config), "--workdir", str(workdir), *stage.args[1:]]


def _losses(stage: Stage, out: Path) -> list[list[float]]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, stage.steps + 1))  # one writer: no step logged twice
    return [[r[key] for key in stage.losses] for r in rows]


def _params(model_dir: Path) -> list[np.ndarray]:
    model = checkpoints.load_model(model_dir, one_device_mesh(), sharding.SAMPLE_RULES)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


def _checkpoint_writers(stage_out: Path) -> set[str]:
    """The processes whose parameter shards an orbax checkpoint holds (its per-process array files)."""
    return {p.name for p in stage_out.glob("checkpoints/*/**/ocdbt.process_*")}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STAGES))
def test_two_processes_train_what_one_does(tmp_path, name):
    stage = STAGES[name]
    config = stage.inputs(tmp_path)
    single = subprocess.run([sys.executable, "-m", "algoforge_jax", *_command(stage, config, tmp_path / "one")],
                            capture_output=True, text=True, timeout=600, cwd=ROOT, env=_env(4))
    assert single.returncode == 0, single.stderr[-3000:]
    runs = _two_processes(*_command(stage, config, tmp_path / "two"))

    one, two = tmp_path / "one" / stage.out, tmp_path / "two" / stage.out
    assert sorted(p.name for p in (two / "checkpoints").iterdir() if p.name.isdigit()) == list(stage.kept)
    assert _checkpoint_writers(two) >= {"ocdbt.process_0", "ocdbt.process_1"}  # both processes wrote shards
    np.testing.assert_allclose(_losses(stage, two), _losses(stage, one), rtol=1e-6, atol=stage.atol)
    for model in stage.models:
        for a, b in zip(_params(two / model), _params(one / model), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=stage.param_atol)
    if name == "rl":  # the held-out evaluation is printed by process 0 only
        assert [r.stdout.count("held-out pass@1 after RL") for r in runs] == [1, 0]
