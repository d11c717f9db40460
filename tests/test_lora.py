"""LoRA (`models/lora.py` and its uses): a fresh adapter changes nothing, an adapted model equals its merged form,
only adapters train, checkpoints round-trip, both exports load in transformers / peft and match, the sampler takes
new adapter weights without recompiling, and SFT and GRPO run with adapters on a frozen (shared) base.

Everything is tiny, random and real: real orbax, real transformers and peft models, the real sampler and sandbox.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algoforge_jax import checkpoints, sharding
from algoforge_jax import config as config_lib
from algoforge_jax.errors import UserError
from algoforge_jax.models import lora
from algoforge_jax.models.build import add_adapters, init_model, merge_adapters
from algoforge_jax.models.lora import LoRAConfig, LoRAParam
from algoforge_jax.models.qwen2 import Qwen2Config

CFG = Qwen2Config(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
LORA = LoRAConfig(rank=4, alpha=8.0)


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(sharding.MeshConfig(fsdp=2, tensor=2), devices=jax.devices()[:4])


def _tokens(batch=2, length=10, seed=0):
    ids = np.random.RandomState(seed).randint(0, CFG.vocab_size, (batch, length)).astype(np.int32)
    valid = np.arange(length)[None, :] >= np.array([0, 3])[:batch, None]  # row 1 left-padded
    return jnp.asarray(ids), jnp.asarray(valid)


def _perturbed(model, seed=1, scale=0.3):
    """`model` with random nonzero B matrices (a fresh adapter's B is zero, which would hide mistakes)."""
    graphdef, state = nnx.split(model)
    frozen, adapters = lora.split(state)
    keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(adapters))))
    adapters = jax.tree.map(lambda x: x + scale * jax.random.normal(next(keys), x.shape, x.dtype), adapters)
    return nnx.merge(graphdef, lora.join(frozen, adapters))


@pytest.fixture(scope="module")
def models(mesh):
    """(plain model, the same weights with fresh adapters, and with trained-looking adapters)."""
    base = init_model(CFG, mesh, sharding.TRAIN_RULES, seed=0)
    fresh = add_adapters(base, CFG.replace(lora=LORA), mesh, sharding.TRAIN_RULES, seed=3)
    return base, fresh, _perturbed(fresh)


def test_adapters_are_their_own_parameters_with_logical_axes(models):
    base, fresh, _ = models
    adapters = nnx.state(fresh, LoRAParam)
    paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(adapters)}
    assert len(paths) == 2 * 7 and "layers.stacked.self_attn.lora.q.a" in paths  # A and B on q k v o gate up down
    q = fresh.layers.stacked.self_attn.lora["q"]
    assert q.a.shape == (2, 32, 4) and q.b.shape == (2, 4, 4, 8)
    assert q.a.logical_axes == ("layers", "embed", "lora_rank")
    assert q.a[...].sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)  # by the training rules
    assert not np.any(np.asarray(q.b[...]))  # B starts at zero
    frozen, trainable = lora.split(nnx.state(fresh))
    assert jax.tree.structure(frozen) == jax.tree.structure(nnx.to_pure_dict(nnx.state(base, nnx.Param)))
    assert all(a is b for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(nnx.state(base, nnx.Param))))
    assert lora.split(nnx.state(base)) == ({}, nnx.to_pure_dict(nnx.state(base, nnx.Param)))


def test_fresh_adapters_leave_the_model_exactly_unchanged(models):
    base, fresh, _ = models
    tokens, valid = _tokens()
    np.testing.assert_array_equal(np.asarray(fresh(tokens, valid)[0]), np.asarray(base(tokens, valid)[0]))


def test_adapted_logits_equal_the_merged_model(models, mesh):
    base, _, adapted = models
    tokens, valid = _tokens()
    merged = merge_adapters(adapted, mesh, sharding.TRAIN_RULES)
    assert merged.config.lora.rank == 0 and not lora.has_adapters(nnx.state(merged))
    want, got = np.asarray(merged(tokens, valid)[0]), np.asarray(adapted(tokens, valid)[0])
    assert np.abs(want - np.asarray(base(tokens, valid)[0])).max() > 1e-2  # the adapters do change the output
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_only_some_targets(mesh):
    cfg = CFG.replace(lora=LoRAConfig(rank=2, targets="q,down"))
    model = init_model(cfg, mesh, sharding.TRAIN_RULES)
    assert set(model.layers.stacked.self_attn.lora) == {"q"} and set(model.layers.stacked.mlp.lora) == {"down"}


@pytest.mark.parametrize("key,value,match", [("lora.rank", "-1", "rank >= 0"),
                                             ("lora.targets", "q,w", "unknown projection 'w'.*q,k,v,o,gate,up,down"),
                                             ("lora.alpha", "0", "alpha > 0")])
def test_bad_lora_settings_are_one_line_errors(key, value, match):
    with pytest.raises(UserError, match=match):
        config_lib.override(config_lib.Config(), key, value)


def test_gradients_reach_only_the_adapters(models, mesh):
    """The trainable half is the adapters; a step's gradient flows into both A and B (B alone at step 0, when A's
    gradient is zero through B = 0, so the check uses nonzero B) and the frozen base is not an argument of it."""
    from algoforge_jax.train.step import loss_sums

    _, _, adapted = models
    graphdef, state = nnx.split(adapted)
    frozen, trainable = lora.split(state)
    tokens, valid = _tokens()
    batch = {"tokens": tokens, "valid": valid, "loss_mask": valid}
    grads = jax.grad(lambda p: loss_sums(graphdef, p, batch, 8, frozen)[0])(trainable)
    assert jax.tree.structure(grads) == jax.tree.structure(trainable)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))
    full = jax.grad(lambda p: loss_sums(graphdef, p, batch, 8)[0])(lora.join(frozen, trainable))
    for g, f in zip(jax.tree.leaves(grads), jax.tree.leaves(lora.split_like(full, trainable))):
        np.testing.assert_allclose(np.asarray(g), np.asarray(f), rtol=1e-5, atol=1e-7)


def test_adapted_checkpoint_round_trips_and_records_its_base(models, mesh, tmp_path):
    base, _, adapted = models
    path = checkpoints.save_model(tmp_path / "m", adapted)
    meta = checkpoints._read_json(path)
    assert meta["lora"] == {"rank": 4, "alpha": 8.0, "targets": lora.ALL_TARGETS}
    assert checkpoints.base_fingerprint(path) == lora.fingerprint(nnx.to_pure_dict(nnx.state(base, nnx.Param)))
    loaded = checkpoints.load_pretrained(path, mesh, sharding.SAMPLE_RULES)  # onto the other layout
    assert loaded.config.lora == LORA
    want, got = nnx.to_pure_dict(nnx.state(adapted)), nnx.to_pure_dict(nnx.state(loaded))
    assert jax.tree.structure(got) == jax.tree.structure(want)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))
    with pytest.raises(UserError, match="its adapters are .*rank=4.*asks for .*rank=8"):
        checkpoints.load_pretrained(path, mesh, sharding.SAMPLE_RULES, lora=LoRAConfig(rank=8))


def test_a_plain_checkpoint_loads_as_a_frozen_base_with_fresh_adapters(models, mesh, tmp_path):
    base, _, _ = models
    path = checkpoints.save_model(tmp_path / "plain", base)
    assert "lora" not in checkpoints._read_json(path) and checkpoints.base_fingerprint(path) is None
    adapted = checkpoints.load_pretrained(path, mesh, sharding.TRAIN_RULES, lora=LORA, dtype="bfloat16")
    frozen, trainable = lora.split(nnx.state(adapted))
    assert {x.dtype for x in jax.tree.leaves(frozen)} == {jnp.dtype(jnp.bfloat16)}  # the base in the compute dtype
    assert {x.dtype for x in jax.tree.leaves(trainable)} == {jnp.dtype(jnp.float32)}  # adapters in param_dtype


def test_the_shared_base_is_read_once(models, mesh, tmp_path):
    """A second adapted checkpoint with the same base restores only its adapters onto the first one's base."""
    _, fresh, adapted = models
    first = checkpoints.save_model(tmp_path / "a", adapted)
    second = checkpoints.save_model(tmp_path / "b", _perturbed(fresh, seed=7))
    assert checkpoints.base_fingerprint(first) == checkpoints.base_fingerprint(second)
    a = checkpoints.load_pretrained(first, mesh, sharding.TRAIN_RULES)
    base = lora.split(nnx.state(a))[0]
    b = checkpoints.load_model(second, mesh, sharding.TRAIN_RULES, base=base)
    assert all(x is y for x, y in zip(jax.tree.leaves(lora.split(nnx.state(b))[0]), jax.tree.leaves(base)))
    want = checkpoints.load_pretrained(second, mesh, sharding.TRAIN_RULES)
    tokens, valid = _tokens()
    np.testing.assert_array_equal(np.asarray(b(tokens, valid)[0]), np.asarray(want(tokens, valid)[0]))
