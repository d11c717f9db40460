"""config.py: loading a config file, `--set` overrides with type coercion, and one-line errors for bad input."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from algoforge_jax import config as config_lib
from algoforge_jax.cli import main as cli_main
from algoforge_jax.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.py"


def test_tiny_config_loads_and_builds_a_small_qwen2():
    cfg = config_lib.load(TINY)
    from algoforge_jax.models.qwen2 import parameter_count

    n = parameter_count(cfg.model.qwen2())
    assert 0.5e6 < n < 3e6, n
    # two instances of one config; plans are shorter than programs, so the Planner's rows are too
    assert dataclasses.replace(cfg.planner, seq_len=0) == cfg.coder == config_lib.AgentConfig()
    assert cfg.seq_len("planner") < cfg.seq_len("coder") == cfg.data.seq_len
    # SFT trains every weight of the from-scratch models; RL trains adapters on them
    assert cfg.lora.rank == 0 and cfg.rl_lora().rank > 0


def test_set_coerces_to_the_field_type():
    cfg = config_lib.load(TINY, overrides=["train.steps=7", "train.learning_rate=3e-4", "model.tie_word_embeddings=false",
                                           "coder.train_data=/x.jsonl", "mesh.tensor=2"])
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.train.learning_rate == 3e-4
    assert cfg.model.tie_word_embeddings is False
    assert cfg.coder.train_data == "/x.jsonl" and cfg.planner.train_data == ""
    assert cfg.mesh.tensor == 2


def test_an_agent_seq_len_overrides_the_data_one():
    cfg = config_lib.load(TINY, overrides=["planner.seq_len=40", "coder.seq_len=0", "data.seq_len=90"])
    assert (cfg.seq_len("planner"), cfg.seq_len("coder")) == (40, 90)


@pytest.mark.parametrize("item, message", [
    ("train.stepz=3", "--set train.stepz: unknown key 'train.stepz'; valid: train.steps, train.learning_rate"),
    ("trian.steps=3", "--set trian.steps: unknown key 'trian'; valid: model, mesh, data, train, planner, coder"),
    ("train.steps=many", "--set train.steps=many: expected int"),
    ("model.tie_word_embeddings=maybe", "expected bool"),
    ("train=3", "'train' is a group; set one of its fields: train.steps"),
    ("train.steps.x=3", "'train.steps' is a value, not a group"),
    ("train.steps", "--set 'train.steps': expected key=value"),
    ("train.steps=0", "config train.steps: must be >= 1, got 0"),
    ("train.grad_accum=3", "data.batch_size (8) must be a multiple of train.grad_accum (3)"),
    ("model.preset=qwen9", "config model.preset: unknown 'qwen9'"),
    ("mesh.data=-1", "config mesh: sizes must be positive with at most one -1"),
    ("planner.seq_len=-2", "config planner.seq_len: must be >= 0 (0 = data.seq_len), got -2"),
    ("data.sketches=-0.5", "config data.sketches: must be >= 0 (sketch plans per problem), got -0.5"),
    ("rl.adam_eps=-1e-3", "config rl.adam_eps: must be >= 0 (0 = train.eps), got -0.001"),
])
def test_bad_overrides_are_one_line_errors(item, message):
    with pytest.raises(UserError) as e:
        config_lib.load(TINY, overrides=[item])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(UserError, match="no such config file"):
        config_lib.load(tmp_path / "missing.py")
    (tmp_path / "none.py").write_text("x = 1\n")
    with pytest.raises(UserError, match="defines no get_config"):
        config_lib.load(tmp_path / "none.py")
    (tmp_path / "wrong.py").write_text("def get_config(arg=None):\n    return {}\n")
    with pytest.raises(UserError, match="get_config returned dict"):
        config_lib.load(tmp_path / "wrong.py")
    (tmp_path / "syntax.py").write_text("def get_config(arg=None):\n    return (\n")
    with pytest.raises(UserError, match=r"syntax.py:\d+"):
        config_lib.load(tmp_path / "syntax.py")


def test_get_config_receives_its_argument(tmp_path):
    (tmp_path / "arg.py").write_text(
        "from algoforge_jax.config import Config, TrainConfig\n"
        "def get_config(arg=None):\n    return Config(train=TrainConfig(steps=int(arg or 5), warmup_steps=1))\n")
    assert config_lib.load(tmp_path / "arg.py", "9").train.steps == 9


def test_every_field_has_a_default_and_a_comment():
    for cls in (config_lib.Config, config_lib.ModelConfig, config_lib.AgentConfig, config_lib.DataConfig,
                config_lib.TrainConfig):
        source = inspect.getsource(cls)
        for field in dataclasses.fields(cls):
            assert field.default is not dataclasses.MISSING, f"{cls.__name__}.{field.name} has no default"
            line = next(line for line in source.splitlines() if line.strip().startswith(f"{field.name}:"))
            if cls is not config_lib.Config:  # Config's fields are the documented groups themselves
                assert "#" in line, f"{cls.__name__}.{field.name} has no comment"


def test_sft_cli_reports_unknown_key_in_one_line(capsys):
    code = cli_main(["sft", "--config", str(TINY), "--agent", "planner", "--set", "train.nope=1"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("algoforge sft: error: --set train.nope: unknown key 'train.nope'")
    assert len(err.splitlines()) == 1
