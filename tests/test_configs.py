"""The paper configs: every variant loads, and its two agents, optimizer states, references, sampler copy, KV cache
and activations, for SFT and for the RL step its `rl` group runs, fit the memory of the hardware it names (printed
as a table, `pytest -s`); the `-lora` variants put both 7B agents on one 80 GB GPU and both Coder-14B agents on one
141 GB (or 80 GB) GPU. Plus the memory arithmetic itself, against hand counts and against the shards a real
training state puts on a device."""

import dataclasses
import runpy
from pathlib import Path

import jax
import pytest

from algoforge_jax import config as config_lib
from algoforge_jax import memory, sharding
from algoforge_jax.config import Config, DataConfig, ModelConfig, TrainConfig
from algoforge_jax.errors import UserError
from algoforge_jax.models.qwen2 import preset
from algoforge_jax.sharding import MeshConfig
from algoforge_jax.models.build import init_model
from algoforge_jax.rl.loop import check_batch_split
from algoforge_jax.train.loop import make_trainer
from algoforge_jax.train.state import init_state

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PAPER = ["qwen2p5_7b_instruct.py", "qwen2p5_coder_7b_instruct.py", "qwen2p5_coder_14b_instruct.py"]
VARIANTS = [(name, variant) for name in PAPER for variant in runpy.run_path(str(CONFIGS / name))["VARIANTS"]]


@pytest.mark.slow  # a minute a 7B/14B variant on 2 busy cores (abstract models and residual traces)
@pytest.mark.parametrize("name,variant", VARIANTS)
def test_paper_config_fits_its_hardware(name, variant):
    cfg = config_lib.load(CONFIGS / name, variant)
    hardware = memory.HARDWARE[variant.removesuffix("-lora")]
    rollout = memory.RolloutShape.from_config(cfg)
    mesh = memory.abstract_mesh(cfg, hardware)
    shards = sharding.batch_shards(mesh, sharding.TRAIN_RULES)
    assert cfg.data.batch_size % (cfg.train.grad_accum * shards) == 0  # whole rows on every device
    check_batch_split(cfg.rl, shards)  # what `algoforge rl` checks before its first step
    assert rollout.micro_batch % shards == 0 and rollout.kl and cfg.rl.grpo.kl_coef > 0
    assert rollout.train_len <= cfg.model.qwen2().max_position_embeddings and cfg.model.remat == "full"
    model = cfg.model.qwen2()
    assert model.num_key_value_heads % cfg.mesh.tensor == 0 and model.num_attention_heads % cfg.mesh.tensor == 0
    assert cfg.lora.rank == (64 if variant.endswith("-lora") else 0)
    for stage, budget in (("SFT", memory.memory_budget(cfg, hardware)),
                          ("RL", memory.memory_budget(cfg, hardware, rollout))):
        print(f"\n{name} {variant} {stage}\n{budget.table()}")
        assert budget.fits, f"{name} {variant} {stage}: {budget.peak / memory.GiB:.1f} GiB a device"


def test_unknown_variant_names_the_valid_ones():
    with pytest.raises(UserError, match="'8xa100'.*8xh100, 8xh200, tpu-v5p-64"):
        config_lib.load(CONFIGS / "qwen2p5_coder_7b_instruct.py", "8xa100")


def _tiny(**mesh) -> Config:
    return Config(model=ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
                                    num_heads=4, num_kv_heads=2),
                  mesh=MeshConfig(**mesh), data=DataConfig(seq_len=32, batch_size=8),
                  train=TrainConfig(grad_accum=1, logprob_chunk=16))


def test_parameters_and_moments_match_a_real_training_state_shard():
    """The budget's bytes for params and AdamW moments equal what device 0 holds of a real initialised state."""
    cfg = _tiny(fsdp=4, tensor=2)
    mesh = sharding.make_mesh(cfg.mesh)
    model = init_model(cfg.model.qwen2(), mesh, sharding.TRAIN_RULES)
    trainer = make_trainer(cfg, model.config, mesh)
    state = init_state(model, trainer.tx, trainer.shardings, seed=0)
    items = {item: b for _, item, b in memory.memory_budget(cfg, memory.Hardware("cpu", 8, 10**9)).items}
    assert items["params x1 (float32)"] == on_device(state.params)
    assert items["AdamW moments x1"] == on_device(state.opt_state)


def on_device(tree) -> int:
    """Bytes of `tree`'s array shards on device 0 (scalars, replicated bookkeeping, left out)."""
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
               if s.device == jax.devices()[0] and x.ndim > 0)


def test_param_bytes_by_hand_on_7b():
    """7B over fsdp 8 x tensor 4: every matrix splits 32 ways, biases 4 (tensor only), norm scales not at all."""
    cfg = Config(model=ModelConfig(preset="qwen2.5-7b", param_dtype="float32"), mesh=MeshConfig(fsdp=8, tensor=4))
    m = preset("qwen2.5-7b")
    D, F, L, N, K, H, V = (m.hidden_size, m.intermediate_size, m.num_hidden_layers, m.num_attention_heads,
                           m.num_key_value_heads, m.head_size, m.vocab_size)
    matrices = 2 * V * D + L * (2 * D * N * H + 2 * D * K * H + 3 * D * F)
    norms, biases = (2 * L + 1) * D, L * (N + 2 * K) * H
    expected = 4 * (matrices // 32 + norms + biases // 4)
    budget = memory.memory_budget(cfg, memory.HARDWARE["tpu-v5p-64"])
    assert dict((item, b) for _, item, b in budget.items)["params x1 (float32)"] == expected


def test_kv_cache_bytes_by_hand():
    m = preset("qwen2.5-7b", dtype="bfloat16")
    mesh = memory.abstract_mesh(Config(mesh=MeshConfig(fsdp=4, tensor=2)), memory.HARDWARE["8xh100"])
    rows, length = 256, 2048
    whole = 2 * m.num_hidden_layers * rows * m.num_key_value_heads * m.head_size * length * 2  # K and V, bf16
    kv = memory.kv_cache_bytes(m, mesh, rows, length)
    assert whole // (4 * 2) <= kv <= whole // (4 * 2) * 1.01  # rows over fsdp, kv heads over tensor; + slot masks


def test_activations_extended_from_two_layers_equal_a_full_depth_trace():
    cfg = _tiny()
    deep = cfg.model.qwen2().replace(num_hidden_layers=5)
    full = memory._residual_bytes(deep, 32, 2, 16) - memory._residual_bytes(deep, 32, 1, 16)
    assert memory.activation_bytes_per_row(cfg, deep, 32) == full > 0


def test_fits_compares_the_peak_with_the_usable_memory():
    cfg = _tiny(fsdp=4, tensor=2)
    rollout = memory.RolloutShape(2, 2, 2, 16, 16, 16, 16, micro_batch=4)
    peak = memory.memory_budget(cfg, memory.Hardware("x", 8, 10**12), rollout).peak
    exact = memory.memory_budget(cfg, memory.Hardware("x", 8, peak, usable=1.0), rollout)
    short = memory.memory_budget(cfg, memory.Hardware("x", 8, peak - 1, usable=1.0), rollout)
    assert exact.fits and "fits: yes" in exact.table() and exact.peak > exact.phase("persistent") > 0
    assert not short.fits and "fits: NO" in short.table()
    assert exact.peak == exact.phase("persistent") + max(exact.phase("rollout"), exact.phase("train"))


def test_rollout_shape_reads_the_rl_group():
    cfg = config_lib.load(CONFIGS / "qwen2p5_coder_7b_instruct.py", "8xh100")
    rl, rollout = cfg.rl, memory.RolloutShape.from_config(cfg)
    assert (rollout.problems, rollout.num_plans, rollout.num_programs) == (rl.problems_per_step, rl.num_plans,
                                                                          rl.num_programs)
    assert rollout.sampler_rows()["coder"] == (rl.problems_per_step * rl.num_plans * rl.num_programs,
                                               rl.coder_prompt_len + rl.coder_max_new_tokens)
    assert rollout.micro_batch * rl.grad_accum == rollout.sampler_rows()["coder"][0] and rollout.kl


def test_remat_keeps_the_layer_inputs_and_one_rerun_layer():
    """Under full remat a row keeps each layer's input, plus one layer's full residuals while it is rerun."""
    cfg = _tiny()
    plain = cfg.model.qwen2()
    full = dataclasses.replace(cfg.model, remat="full").qwen2()
    assert full.remat == "full"

    def per_layer(model_cfg) -> int:  # what one more layer adds to a row's residuals
        two, one = (memory._residual_bytes(model_cfg.replace(num_hidden_layers=n), 32, 2, 16)
                    - memory._residual_bytes(model_cfg.replace(num_hidden_layers=n), 32, 1, 16) for n in (2, 1))
        return two - one

    rows = {m.remat: memory.activation_bytes_per_row(cfg, m, 32) for m in (plain, full)}
    assert per_layer(full) < per_layer(plain) and rows["full"] < rows["none"]
    deep = full.replace(num_hidden_layers=5)
    assert memory.activation_bytes_per_row(cfg, deep, 32) - rows["full"] == 3 * per_layer(full)


def test_a_bad_remat_is_a_one_line_error():
    with pytest.raises(UserError, match="config model: remat must be one of"):
        ModelConfig(remat="some").qwen2()
