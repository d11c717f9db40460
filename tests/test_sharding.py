"""sharding.py: mesh shapes, the logical-axis rules, and a model that really is sharded yet computes the same."""

import contextlib
import dataclasses
import gc
import tracemalloc

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from algoforge_jax import sharding
from algoforge_jax.convert.hf import load_hf_model
from algoforge_jax.errors import UserError
from algoforge_jax.models.build import init_model
from algoforge_jax.models.qwen2 import PRESETS
from algoforge_jax.sampling import SamplerConfig, make_sampler
from algoforge_jax.sharding import MeshConfig, SAMPLE_RULES, ShardingRules, TRAIN_RULES
from hf_tiny import forward, one_device_mesh, save_hf_model, tokens_and_mask


@pytest.mark.parametrize(
    "cfg,n,shape",
    [(MeshConfig(), 8, (1, 8, 1)), (MeshConfig(2, 2, 2), 8, (2, 2, 2)), (MeshConfig(data=-1, fsdp=1, tensor=2), 8, (4, 1, 2)),
     (MeshConfig(data=2, fsdp=1, tensor=-1), 4, (2, 1, 2)), (MeshConfig(), 1, (1, 1, 1))],
)
def test_mesh_shape(cfg, n, shape):
    assert cfg.shape(n) == shape
    mesh = sharding.make_mesh(cfg, devices=jax.devices()[:n])
    assert mesh.axis_names == sharding.MESH_AXES and tuple(mesh.shape.values()) == shape
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
    "cfg,n,match",
    [(MeshConfig(data=-1, fsdp=-1), 8, "at most one"), (MeshConfig(fsdp=-1, tensor=3), 8, "do not divide"),
     (MeshConfig(data=2, fsdp=2, tensor=1), 8, "needs 4 devices, have 8")],
)
def test_mesh_shape_errors(cfg, n, match):
    with pytest.raises(UserError, match=match):
        sharding.make_mesh(cfg, devices=jax.devices()[:n])


@pytest.fixture(scope="module")
def mesh8():
    return sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))


def test_logical_to_spec(mesh8):
    assert sharding.logical_to_spec(("embed", "q_heads", "head_dim"), TRAIN_RULES, mesh8) == P("fsdp", "tensor", None)
    assert sharding.logical_to_spec(("batch", None), TRAIN_RULES, mesh8) == P(("data", "fsdp"), None)
    # A mesh axis that does not divide the dimension is dropped (replicated), not an error.
    assert sharding.logical_to_spec(("kv_heads",), TRAIN_RULES, mesh8, shape=(3,)) == P(None)
    assert sharding.logical_to_spec(("batch",), TRAIN_RULES, mesh8, shape=(2,)) == P("data")
    with pytest.raises(UserError, match="'nonsense'"):
        sharding.logical_to_spec(("embed", "nonsense"), TRAIN_RULES, mesh8)


@pytest.mark.parametrize(
    "rules,axes",
    [(ShardingRules(embed="fsdp", mlp="fsdp"), ("embed", "mlp")), (TRAIN_RULES, ("batch", "embed")),
     (ShardingRules(q_heads=("data", "tensor"), mlp="tensor"), ("q_heads", "mlp"))],
)
def test_logical_to_spec_collision_raises(mesh8, rules, axes):
    with pytest.raises(ValueError, match="both map to mesh axis"):
        sharding.logical_to_spec(axes, rules, mesh8)


@pytest.mark.parametrize(
    "fields,match",
    [({"embed": "fsbp"}, r"embed='fsbp': unknown mesh axis 'fsbp'"),
     ({"batch": ("data", "model")}, r"batch=\('data', 'model'\): unknown mesh axis 'model'"),
     ({"mlp": ("tensor", "tensor")}, r"mlp=\('tensor', 'tensor'\) names a mesh axis twice")],
)
def test_rules_refuse_unknown_and_repeated_mesh_axes(fields, match):
    with pytest.raises(ValueError, match=match):
        ShardingRules(**fields)


def test_one_rules_type_for_training_and_sampling(mesh8):
    names = [f.name for f in dataclasses.fields(ShardingRules)]
    # Every logical axis left unset is replicated: adding one is a field with default None.
    assert sharding.logical_to_spec(tuple(names), ShardingRules(), mesh8) == P(*[None] * len(names))
    assert type(TRAIN_RULES) is type(SAMPLE_RULES) is ShardingRules
    assert [n for n in names if getattr(TRAIN_RULES, n) != getattr(SAMPLE_RULES, n)] == ["embed"]


def test_sample_rules_replicate_embed(mesh8):
    assert SAMPLE_RULES.embed is None and TRAIN_RULES.embed == "fsdp"
    assert sharding.logical_to_spec(("vocab", "embed"), SAMPLE_RULES, mesh8) == P("tensor", None)
    assert sharding.logical_to_spec(("embed", "mlp"), SAMPLE_RULES, mesh8) == P(None, "tensor")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    save_hf_model(path)
    return path


def test_sharded_model_matches_one_device(hf_dir, mesh8):
    one = load_hf_model(hf_dir, one_device_mesh(), TRAIN_RULES)
    many = load_hf_model(hf_dir, mesh8, TRAIN_RULES)

    attn, mlp = many.layers[0].self_attn, many.layers[0].mlp
    expected = [
        (attn.q_proj, P("fsdp", "tensor", None)), (attn.k_proj, P("fsdp", "tensor", None)),
        (attn.o_proj, P("tensor", None, "fsdp")), (mlp.gate_proj, P("fsdp", "tensor")),
        (mlp.down_proj, P("tensor", "fsdp")), (many.embed_tokens, P("tensor", "fsdp")), (many.lm_head, P("fsdp", "tensor")),
    ]
    for var, spec in expected:
        array = var[...]
        assert array.sharding.spec == spec and array.sharding.mesh.devices.size == 8
        assert sharding.is_sharded(array)
        assert array.addressable_shards[0].data.size == array.size // 4  # split over fsdp (2) x tensor (2)
    assert not sharding.is_sharded(many.norm.weight[...])
    assert not sharding.is_sharded(one.layers[0].self_attn.q_proj[...])

    ids, valid = tokens_and_mask(batch=4, pads=(0, 4, 7, 1))
    batch = sharding.batch_sharding(mesh8, TRAIN_RULES)
    ids8, valid8 = jax.device_put(ids, batch), jax.device_put(valid, batch)
    out8, out1 = forward(many, ids8, valid8), forward(one, ids, valid)
    assert out8.sharding.mesh.devices.size == 8
    diff = np.abs(np.asarray(out8)[valid] - np.asarray(out1)[valid]).max()
    print(f"8-device (2,2,2) vs 1 device: max abs diff {diff:.2e}")
    assert diff <= 1e-5


def test_sample_rules_model_is_sharded_over_tensor_only(hf_dir, mesh8):
    model = load_hf_model(hf_dir, mesh8, SAMPLE_RULES)
    q = model.layers[1].self_attn.q_proj[...]
    assert q.sharding.spec == P(None, "tensor", None) and sharding.is_sharded(q)
    assert q.addressable_shards[0].data.size == q.size // 2
    assert model.embed_tokens[...].sharding.spec == P("tensor", None)


def test_init_model_is_created_sharded(mesh8):
    model = init_model(PRESETS["tiny"].replace(vocab_size=512), mesh8, TRAIN_RULES)  # same as in test_convert
    up, bias = model.layers[0].mlp.up_proj[...], model.layers[0].self_attn.q_bias[...]
    assert up.sharding.spec == P("fsdp", "tensor") and sharding.is_sharded(up)
    assert bias.sharding.spec == P("tensor", None) and sharding.is_sharded(bias)
    assert 0.015 < float(np.asarray(up).std()) < 0.025  # normal(0.02)
    assert not np.asarray(bias).any() and (np.asarray(model.norm.weight[...]) == 1).all()


# --------------------------------------------------------------------------------------- train <-> sample handoff

PROMPTS = [[5, 17, 300, 42, 9], [1, 2, 3, 4, 5, 6, 7, 8], [777], [64, 128, 256, 512, 999, 0, 3, 8, 1], [3, 1, 4]]


@contextlib.contextmanager
def count_lowerings():
    """Counts programs lowered for compilation while inside: a jit call that reuses its compiled program lowers
    none, while new input shardings (or shapes) lower again even when the Python function is not re-traced."""
    events = []

    def listen(event, duration_secs, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def leaves(state):
    return jax.tree.leaves(state)


def test_reshard_hands_training_weights_to_the_sampler_without_recompiling(hf_dir, mesh8):
    cfg = SamplerConfig(max_new_tokens=6, stop_token_ids=(), first_segment=4)  # the cache grows once
    train_state = nnx.state(load_hf_model(hf_dir, mesh8, TRAIN_RULES))
    sampler, loaded = make_sampler(load_hf_model(hf_dir, mesh8, SAMPLE_RULES), mesh8, cfg, SAMPLE_RULES)
    with count_lowerings() as first:
        expected = sampler.generate(loaded, PROMPTS)
    assert len(first) >= 2 and sampler.traces >= 2  # prefill and decode were compiled: the counter sees them

    # Device to device only: any copy through host memory would trip these guards.
    with jax.transfer_guard_device_to_host("disallow_explicit"), jax.transfer_guard_host_to_device("disallow_explicit"):
        handed = sharding.reshard(train_state, SAMPLE_RULES, mesh8)
    assert [x.sharding for x in leaves(handed)] == [x.sharding for x in leaves(loaded)]
    assert [x.sharding for x in leaves(train_state)] != [x.sharding for x in leaves(loaded)]  # it did move
    traces = sampler.traces
    with count_lowerings() as handoff:
        got = sampler.generate(handed, PROMPTS)
    assert not handoff and sampler.traces == traces
    np.testing.assert_array_equal(got.tokens, expected.tokens)
    np.testing.assert_array_equal(got.model_logprobs, expected.model_logprobs)

    back = sharding.reshard(handed, TRAIN_RULES, mesh8)
    for a, b in zip(leaves(back), leaves(train_state), strict=True):
        assert a.sharding == b.sharding and a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sampler_runs_on_training_rules(hf_dir, mesh8):
    """One rules type: a sampler laid out by TRAIN_RULES (weights split over fsdp too) gives the same tokens."""
    cfg = SamplerConfig(max_new_tokens=4, stop_token_ids=(), first_segment=0)
    train, train_params = make_sampler(load_hf_model(hf_dir, mesh8, TRAIN_RULES), mesh8, cfg, TRAIN_RULES)
    mesh1 = one_device_mesh()
    one, one_params = make_sampler(load_hf_model(hf_dir, mesh1, SAMPLE_RULES), mesh1, cfg, SAMPLE_RULES)
    assert sharding.is_sharded(train_params["embed_tokens"][...])
    np.testing.assert_array_equal(train.generate(train_params, PROMPTS).tokens,
                                  one.generate(one_params, PROMPTS).tokens)


def test_to_host_keeps_no_host_copy_on_the_array(mesh8):
    """np.asarray(array) caches its result on the array: reading a live model's weights that way (an export)
    would leave the whole model in host memory."""
    x = jax.device_put(np.ones((512, 512), np.float32), sharding.named_sharding(("embed", "mlp"), TRAIN_RULES, mesh8))
    sharding.to_host(x)  # jax's one-time index caches for this sharding
    y = x + 1  # a fresh array, never read
    tracemalloc.start()
    try:
        assert (sharding.to_host(y) == 2).all()
        gc.collect()
        held = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert held < y.nbytes / 10
