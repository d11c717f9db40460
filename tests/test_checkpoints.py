"""checkpoints.py: orbax save/restore onto a different mesh, refusal to overwrite, and load_pretrained's dispatch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algoforge_jax import checkpoints, sharding
from algoforge_jax.convert.hf import load_hf_model
from algoforge_jax.errors import UserError
from algoforge_jax.models.build import abstract_model
from algoforge_jax.sharding import MeshConfig, SAMPLE_RULES, TRAIN_RULES
from hf_tiny import forward, save_hf_model, tokens_and_mask


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(HF directory, orbax checkpoint of the same model saved from an 8-device (2,2,2) mesh, the saved model)."""
    hf_dir = tmp_path_factory.mktemp("hf")
    save_hf_model(hf_dir, seed=5)
    (hf_dir / "tokenizer.json").write_text('{"stand-in": true}')  # only copied, never parsed, here
    model = load_hf_model(hf_dir, sharding.make_mesh(MeshConfig(2, 2, 2)), TRAIN_RULES, dtype="bfloat16")
    ckpt = checkpoints.save_model(tmp_path_factory.mktemp("ckpt") / "step_1", model, tokenizer_dir=hf_dir)
    return hf_dir, ckpt, model


def flat_params(model):
    return {path: var[...] for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_restore_onto_fewer_devices(saved):
    _, ckpt, model = saved
    mesh4 = sharding.make_mesh(MeshConfig(1, 4, 1), devices=jax.devices()[:4])
    restored = checkpoints.load_model(ckpt, mesh4, TRAIN_RULES)
    assert restored.config == model.config  # dtype fields included, not just the HF ones
    _, abstract = abstract_model(restored.config, mesh4, TRAIN_RULES)
    targets = {path: var.get_value() for path, var in nnx.to_flat_state(abstract)}
    before, after = flat_params(model), flat_params(restored)
    assert before.keys() == after.keys() == targets.keys()
    for path, array in after.items():
        assert array.sharding == targets[path].sharding, path
        assert {d.id for d in array.sharding.device_set} == {0, 1, 2, 3}, path
        assert array.dtype == before[path].dtype
        np.testing.assert_array_equal(np.asarray(array), np.asarray(before[path]), err_msg=str(path))
    q = restored.layers[0].self_attn.q_proj[...]
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None) and sharding.is_sharded(q)


def test_save_refuses_an_existing_path(saved, tmp_path):
    _, ckpt, model = saved
    with pytest.raises(UserError, match="already exists"):
        checkpoints.save_model(ckpt, model)
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match=str(tmp_path / "x")):
        checkpoints.save_model(tmp_path / "x", model)


def test_tokenizer_files_travel_with_the_checkpoint(saved):
    hf_dir, ckpt, _ = saved
    assert (ckpt / "tokenizer" / "tokenizer.json").read_text() == '{"stand-in": true}'
    assert checkpoints.tokenizer_dir(ckpt) == ckpt / "tokenizer"
    assert checkpoints.tokenizer_dir(hf_dir) == hf_dir


def test_load_pretrained_dispatches_both_formats(saved, tmp_path):
    hf_dir, ckpt, _ = saved
    mesh = sharding.make_mesh(MeshConfig(data=1, fsdp=2, tensor=2), devices=jax.devices()[:4])
    from_hf = checkpoints.load_pretrained(hf_dir, mesh, SAMPLE_RULES, dtype="bfloat16")
    from_orbax = checkpoints.load_pretrained(ckpt, mesh, SAMPLE_RULES)
    ids, valid = tokens_and_mask()
    a, b = forward(from_hf, ids, valid), forward(from_orbax, ids, valid)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert from_orbax.embed_tokens[...].sharding.spec == sharding.logical_to_spec(("vocab", "embed"), SAMPLE_RULES, mesh)
    # Overrides reach the orbax path too.
    bf16 = checkpoints.load_pretrained(ckpt, mesh, SAMPLE_RULES, param_dtype="bfloat16")
    assert bf16.norm.weight[...].dtype == jnp.bfloat16
    with pytest.raises(UserError, match="neither a Hugging Face model directory"):
        checkpoints.load_pretrained(tmp_path, mesh, SAMPLE_RULES)
    with pytest.raises(UserError, match="not an orbax model checkpoint"):
        checkpoints.load_model(hf_dir, mesh, SAMPLE_RULES)
