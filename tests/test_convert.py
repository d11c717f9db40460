"""convert/hf.py: HF -> JAX -> HF (and via orbax) bit-exact, sharded files both ways, and bad checkpoints refused."""

import gc
import json
import shutil
import tracemalloc

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.torch import load_file, save_file

from algoforge_jax import checkpoints, sharding
from algoforge_jax.convert.hf import INDEX_FILE, export_hf, hf_to_jax_key, jax_rule, load_hf_model
from algoforge_jax.errors import UserError
from algoforge_jax.models.build import abstract_model, init_model
from algoforge_jax.models.qwen2 import PRESETS, Qwen2Config
from algoforge_jax.sharding import MeshConfig, TRAIN_RULES
from hf_tiny import forward, hf_logits, one_device_mesh, save_hf_model, tokens_and_mask


@pytest.fixture(scope="module")
def mesh8():
    return sharding.make_mesh(MeshConfig(data=2, fsdp=2, tensor=2))


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """{tied: (hf model, directory)}."""
    out = {}
    for tied in (False, True):
        path = tmp_path_factory.mktemp(f"src_tied{tied}")
        out[tied] = (save_hf_model(path, seed=10 + tied, tie_word_embeddings=tied), path)
    return out


def saved_tensors(hf) -> dict[str, torch.Tensor]:
    """What `save_pretrained` writes: the state dict without the tied head."""
    state = hf.state_dict()
    if hf.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    return state


def read_dir(path) -> dict[str, torch.Tensor]:
    tensors = {}
    for f in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(f))
    return tensors


def assert_bit_exact(path, hf):
    written, expected = read_dir(path), saved_tensors(hf)
    assert written.keys() == expected.keys()
    for name, tensor in expected.items():
        assert written[name].dtype == torch.float32 and torch.equal(written[name], tensor), name


def load_with_transformers(path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def assert_same_logits(model_a, model_b):
    ids, valid = tokens_and_mask()
    np.testing.assert_array_equal(hf_logits(model_a, ids, valid), hf_logits(model_b, ids, valid))


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_hf_jax_hf_round_trip_is_bit_exact(sources, mesh8, tmp_path, tied):
    hf, src = sources[tied]
    model = load_hf_model(src, mesh8, TRAIN_RULES)
    out = export_hf(model, tmp_path / "out", dtype="float32")
    assert (out / "model.safetensors").exists() and not (out / INDEX_FILE).exists()
    assert (out / "generation_config.json").exists()
    assert_bit_exact(out, hf)
    back = load_with_transformers(out)
    assert back.config.tie_word_embeddings == tied and back.dtype == torch.float32
    assert_same_logits(back, hf)


def test_hf_orbax_hf_round_trip_onto_another_mesh_is_bit_exact(sources, mesh8, tmp_path):
    hf, src = sources[False]
    empty = tmp_path / "no_sidecars"
    empty.mkdir()
    ckpt = checkpoints.save_model(tmp_path / "ckpt", load_hf_model(src, mesh8, TRAIN_RULES), tokenizer_dir=empty)
    assert not (ckpt / "tokenizer").exists()  # nothing to carry: no empty folder either
    mesh4 = sharding.make_mesh(MeshConfig(data=1, fsdp=4, tensor=1), devices=jax.devices()[:4])
    model = checkpoints.load_model(ckpt, mesh4, TRAIN_RULES)
    up = model.layers[0].mlp.up_proj[...]
    assert up.sharding.mesh.devices.size == 4 and up.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert up.addressable_shards[0].data.shape == (16, 128)
    assert_bit_exact(export_hf(model, tmp_path / "out", dtype="float32"), hf)


def test_generation_config_and_tokenizer_travel_through_orbax(sources, mesh8, tmp_path):
    _, src = sources[False]
    hf_dir = tmp_path / "hf"
    shutil.copytree(src, hf_dir)
    generation = {"eos_token_id": [7, 8], "pad_token_id": 0, "temperature": 0.7, "top_p": 0.8, "do_sample": True}
    (hf_dir / "generation_config.json").write_text(json.dumps(generation))
    (hf_dir / "vocab.json").write_text('{"a": 0}')
    ckpt = checkpoints.save_model(tmp_path / "ckpt", load_hf_model(hf_dir, mesh8, TRAIN_RULES),
                                  tokenizer_dir=checkpoints.sidecar_dir(hf_dir))
    out = export_hf(checkpoints.load_model(ckpt, mesh8, TRAIN_RULES), tmp_path / "out",
                    tokenizer_dir=checkpoints.sidecar_dir(ckpt))
    assert json.loads((out / "generation_config.json").read_text()) == generation
    assert (out / "vocab.json").read_text() == '{"a": 0}'
    assert transformers.GenerationConfig.from_pretrained(out).top_p == 0.8
    # without a source generation_config, one is written from the model's config
    plain = export_hf(checkpoints.load_model(ckpt, mesh8, TRAIN_RULES), tmp_path / "plain")
    assert set(json.loads((plain / "generation_config.json").read_text())) == {"bos_token_id", "eos_token_id",
                                                                             "pad_token_id"}


def test_multi_file_safetensors_load(sources, tmp_path):
    hf, src = sources[False]
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / INDEX_FILE).exists() and len(list(tmp_path.glob("*.safetensors"))) >= 3
    mesh = one_device_mesh()
    ids, valid = tokens_and_mask()
    split = forward(load_hf_model(tmp_path, mesh, TRAIN_RULES), ids, valid)
    whole = forward(load_hf_model(src, mesh, TRAIN_RULES), ids, valid)
    np.testing.assert_array_equal(np.asarray(split), np.asarray(whole))


def test_export_with_small_max_shard_bytes_writes_an_index(sources, mesh8, tmp_path):
    hf, src = sources[False]
    out = export_hf(load_hf_model(src, mesh8, TRAIN_RULES), tmp_path / "out", dtype="float32", max_shard_bytes=300_000)
    files = sorted(out.glob("*.safetensors"))
    index = json.loads((out / INDEX_FILE).read_text())
    assert len(files) >= 3 and not (out / "model.safetensors").exists()
    assert set(index["weight_map"].values()) == {f.name for f in files}
    assert index["weight_map"].keys() == saved_tensors(hf).keys()
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in saved_tensors(hf).values())
    assert all(f.stat().st_size <= 300_000 + 10_000 for f in files)  # one tensor fits in 300 kB here
    assert_bit_exact(out, hf)
    assert_same_logits(load_with_transformers(out), hf)


def test_export_streams_with_about_one_shard_in_host_memory(mesh8, tmp_path):
    """Holding every shard until the end (as export once did) would peak above 7 shards here; streaming stays
    under 2 (one tensor at a time, plus jax's bookkeeping)."""
    hf = save_hf_model(tmp_path / "src", hidden_size=32, intermediate_size=256, num_hidden_layers=12,
                       tie_word_embeddings=True)  # largest tensor: the 128 kB embedding
    model = load_hf_model(tmp_path / "src", mesh8, TRAIN_RULES)
    export_hf(model, tmp_path / "warm", dtype="float32")  # jax's one-time caches for these shardings
    shard = 200_000
    tracemalloc.start()
    try:
        out = export_hf(model, tmp_path / "out", dtype="float32", max_shard_bytes=shard)
        gc.collect()
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = json.loads((out / INDEX_FILE).read_text())["metadata"]["total_size"]
    print(f"export of {total} bytes in shards of {shard}: peak {peak} bytes of host memory, {held} held after")
    assert total > 7 * shard and len(list(out.glob("*.safetensors"))) > 7
    # Held after: jax's own caches (tens of kB, varying by run); a single leaked tensor (the 128 kB embedding)
    # would exceed half a shard.
    assert peak < 2 * shard and held < shard / 2
    assert_bit_exact(out, hf)
    assert_same_logits(load_with_transformers(out), hf)


def test_bf16_export_loads_in_transformers(sources, tmp_path):
    hf, src = sources[True]
    model = load_hf_model(src, one_device_mesh(), TRAIN_RULES, checkpoint_dtype="bfloat16")
    out = export_hf(model, tmp_path / "out")  # the config's checkpoint_dtype
    written = read_dir(out)
    for name, tensor in saved_tensors(hf).items():  # round to nearest even, as torch does
        assert written[name].dtype == torch.bfloat16 and torch.equal(written[name], tensor.to(torch.bfloat16)), name
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    back = load_with_transformers(out)
    assert back.dtype == torch.bfloat16
    ids, valid = tokens_and_mask()
    ref, got = hf_logits(hf, ids, valid)[valid], hf_logits(back.float(), ids, valid)[valid]
    assert np.abs(ref - got).max() <= 0.05 * np.abs(ref).max()


def test_default_checkpoint_dtype_is_bf16(mesh8, tmp_path):
    model = init_model(PRESETS["tiny"].replace(vocab_size=512), mesh8, TRAIN_RULES)
    out = export_hf(model, tmp_path / "out")
    assert {t.dtype for t in read_dir(out).values()} == {torch.bfloat16}
    back = load_with_transformers(out)
    assert back.config.tie_word_embeddings and back.config.vocab_size == 512


def test_key_table_maps_each_hf_tensor_to_one_layer_slice_of_one_parameter(sources):
    hf, _ = sources[False]
    cfg = Qwen2Config.from_hf_config(hf.config.to_dict())
    _, abstract = abstract_model(cfg, one_device_mesh(), TRAIN_RULES)
    covered = []
    for path, var in nnx.to_flat_state(abstract):
        rule = jax_rule(".".join(path))
        names = rule.hf_names(var.shape)
        assert len(names) == (cfg.num_hidden_layers if rule.per_layer else 1), path
        for i, name in enumerate(names):
            assert hf_to_jax_key(name) == (rule, i if rule.per_layer else None), name
        covered += names
    assert sorted(covered) == sorted(hf.state_dict())  # every HF tensor exactly once


def test_key_table_imports_are_views_so_stacked_layers_stay_memory_mapped():
    """Import holds a stacked parameter's per-layer tensors until all are read: copies would add up to the model."""
    cfg = PRESETS["tiny"].replace(vocab_size=512)
    _, abstract = abstract_model(cfg, one_device_mesh(), TRAIN_RULES)
    for path, var in nnx.to_flat_state(abstract):
        rule = jax_rule(".".join(path))
        hf = np.zeros(rule.hf_shape(var.shape, cfg), np.float32)
        assert np.shares_memory(rule.to_jax(hf, cfg), hf), rule.hf


# ------------------------------------------------------------------------------------------ bad checkpoints


def rewrite(path, drop=(), add=None, replace=None):
    tensors = load_file(path / "model.safetensors")
    for name in drop:
        del tensors[name]
    tensors.update(add or {})
    tensors.update(replace or {})
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            del cfg[key]
        else:
            cfg[key] = value
    (path / "config.json").write_text(json.dumps(cfg))


def t(*shape):
    return torch.zeros(shape)


BAD = {
    "missing_tensor": (lambda p: rewrite(p, drop=["model.layers.1.mlp.up_proj.weight"]),
                       r"missing tensor\(s\) model\.layers\.1\.mlp\.up_proj\.weight"),
    "missing_bias": (lambda p: rewrite(p, drop=["model.layers.0.self_attn.k_proj.bias"]),
                     r"missing .*model\.layers\.0\.self_attn\.k_proj\.bias"),
    "extra_layer_tensor": (lambda p: rewrite(p, add={"model.layers.2.mlp.up_proj.weight": t(128, 64)}),
                           r"unexpected tensor 'model\.layers\.2\.mlp\.up_proj\.weight'"),
    "extra_unknown_tensor": (lambda p: rewrite(p, add={"model.rotary_emb.inv_freq": t(8)}),
                             r"unexpected tensor 'model\.rotary_emb\.inv_freq'"),
    "reshaped_same_size": (lambda p: rewrite(p, replace={"model.layers.0.self_attn.q_proj.weight": t(32, 128)}),
                           r"'model\.layers\.0\.self_attn\.q_proj\.weight' has shape \[32, 128\].*\[64, 64\]"),
    "wrong_size": (lambda p: rewrite(p, replace={"model.layers.1.self_attn.k_proj.weight": t(48, 64)}),
                   r"'model\.layers\.1\.self_attn\.k_proj\.weight' has shape \[48, 64\].*\[32, 64\]"),
    "wrong_bias_size": (lambda p: rewrite(p, replace={"model.layers.1.self_attn.v_proj.bias": t(48)}),
                        r"'model\.layers\.1\.self_attn\.v_proj\.bias' has shape \[48\].*\[32\]"),
    "config_hidden_size": (lambda p: edit_config(p, hidden_size=32), r"tensor '[a-z_.0-9]+' has shape \[.*config\.json implies \[.*32"),
    "config_vocab_size": (lambda p: edit_config(p, vocab_size=999), r"'(lm_head|model\.embed_tokens)\.weight' has shape \[1000, 64\], config\.json implies \[999, 64\]"),
    "config_more_layers": (lambda p: edit_config(p, num_hidden_layers=3), r"missing tensor\(s\) model\.layers\.2\."),
    "config_fewer_layers": (lambda p: edit_config(p, num_hidden_layers=1), r"unexpected tensor 'model\.layers\.1\."),
    "config_missing_field": (lambda p: edit_config(p, num_hidden_layers=None), r"missing field 'num_hidden_layers'"),
    "config_model_type": (lambda p: edit_config(p, model_type="llama"), r"'model_type' = 'llama'"),
    "config_not_json": (lambda p: (p / "config.json").write_text('{"model_type": "qwen2",\n}'), r"config\.json:2: not valid JSON"),
    "no_weights": (lambda p: (p / "model.safetensors").unlink(), r"no \*\.safetensors"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_checkpoint_names_the_problem(sources, tmp_path, case):
    _, src = sources[False]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    corrupt, pattern = BAD[case]
    corrupt(bad)
    with pytest.raises(UserError, match=pattern):
        load_hf_model(bad, one_device_mesh(), TRAIN_RULES)


def split_with_index(src, dst, duplicate=False):
    """Writes src's tensors as two files plus an index; with `duplicate` the second file repeats one tensor."""
    tensors = load_file(src / "model.safetensors")
    names = sorted(tensors)
    a, b = names[: len(names) // 2], names[len(names) // 2 :]
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    save_file({n: tensors[n] for n in a}, dst / "a.safetensors", metadata={"format": "pt"})
    save_file({n: tensors[n] for n in b + a[:1] * duplicate}, dst / "b.safetensors", metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {**{n: "a.safetensors" for n in a}, **{n: "b.safetensors" for n in b}}}
    (dst / INDEX_FILE).write_text(json.dumps(index))
    return a[0]


def test_own_index_loads_and_bad_index_names_the_problem(sources, tmp_path):
    hf, src = sources[False]
    split_with_index(src, tmp_path / "ok")
    ids, valid = tokens_and_mask()
    logits = forward(load_hf_model(tmp_path / "ok", one_device_mesh(), TRAIN_RULES), ids, valid)
    assert np.abs(np.asarray(logits)[valid] - hf_logits(hf, ids, valid)[valid]).max() <= 1e-4

    name = split_with_index(src, tmp_path / "dup", duplicate=True)
    with pytest.raises(UserError, match=f"b.safetensors: tensor '{name}' is set twice"):
        load_hf_model(tmp_path / "dup", one_device_mesh(), TRAIN_RULES)

    index = json.loads((tmp_path / "ok" / INDEX_FILE).read_text())
    index["weight_map"]["model.norm.weight"] = "model-00099-of-00099.safetensors"
    (tmp_path / "ok" / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(UserError, match="lists model-00099-of-00099.safetensors, which does not exist"):
        load_hf_model(tmp_path / "ok", one_device_mesh(), TRAIN_RULES)
    (tmp_path / "ok" / INDEX_FILE).write_text(json.dumps({"metadata": {}}))
    with pytest.raises(UserError, match="'weight_map'"):
        load_hf_model(tmp_path / "ok", one_device_mesh(), TRAIN_RULES)
