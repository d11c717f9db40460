"""Training as two cooperating processes (two "hosts" of two CPU devices each, joined by `jax.distributed`) gives
what one process with the same four devices gives: the same losses step by step and the same final parameters.

Each process reads only its share of every batch, writes its part of every checkpoint, and only process 0 writes
the logs. `STAGES` holds one entry per training command; the RL command adds its own (arguments and the files its
result lives in) and the same test runs it.
"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from algoforge_jax import checkpoints, sharding
from algoforge_jax.jsonl import jsonl_text
from hf_tiny import one_device_mesh
from test_multihost import ROOT, _env, _two_processes

STEPS = 6
CONFIG_FILE = f'''
from algoforge_jax.config import AgentConfig, Config, DataConfig, ModelConfig, TrainConfig
def get_config(arg=None):
    return Config(model=ModelConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_layers=2,
                                    num_heads=4, num_kv_heads=2),
                  data=DataConfig(seq_len=512, batch_size=8),
                  train=TrainConfig(steps={STEPS}, learning_rate=3e-3, warmup_steps=2, checkpoint_every=3,
                                    logprob_chunk=16),
                  planner=AgentConfig(train_data=%r))
'''


@dataclasses.dataclass(frozen=True)
class Stage:
    """How to run one training command on a workdir and where its result lands."""

    args: tuple[str, ...]  # after the command's --config and --workdir
    out: str  # the stage's directory under the workdir: checkpoints/, metrics.jsonl, model/


STAGES = {"sft": Stage(("sft", "--agent", "planner"), "sft-planner")}


def _workdir_inputs(tmp_path: Path) -> Path:
    rows = [{"task_id": f"t{i}", "problem": f"sum the list number {i}", "plan": f"add the {i} items one by one"}
            for i in range(24)]
    (tmp_path / "rows.jsonl").write_text(jsonl_text(rows))
    (tmp_path / "cfg.py").write_text(CONFIG_FILE % str(tmp_path / "rows.jsonl"))
    return tmp_path / "cfg.py"


def _command(stage: Stage, config: Path, workdir: Path) -> list[str]:
    return [stage.args[0], "--config", str(config), "--workdir", str(workdir), *stage.args[1:]]


def _losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))  # one writer: no step logged twice
    return [r["loss"] for r in rows]


def _params(out: Path) -> list[np.ndarray]:
    model = checkpoints.load_model(out / "model", one_device_mesh(), sharding.SAMPLE_RULES)
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STAGES))
def test_two_processes_train_what_one_does(tmp_path, name):
    stage, config = STAGES[name], _workdir_inputs(tmp_path)
    single = subprocess.run([sys.executable, "-m", "algoforge_jax", *_command(stage, config, tmp_path / "one")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=_env(4))
    assert single.returncode == 0, single.stderr[-3000:]
    _two_processes(*_command(stage, config, tmp_path / "two"))

    one, two = tmp_path / "one" / stage.out, tmp_path / "two" / stage.out
    assert sorted(p.name for p in (two / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "6"]
    np.testing.assert_allclose(_losses(two), _losses(one), rtol=1e-6)
    for a, b in zip(_params(two), _params(one), strict=True):  # weights ~1e-2: atol is 1e-4 of their scale
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
