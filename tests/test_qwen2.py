"""models/qwen2.py against transformers' Qwen2: logits, one decoder layer, KV-cache decoding, configs, presets."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from algoforge_jax.convert.hf import load_hf_model
from algoforge_jax.errors import UserError
from algoforge_jax.models import qwen2
from algoforge_jax.models.build import abstract_model
from algoforge_jax.models.qwen2 import KVCache, Qwen2Config
from algoforge_jax.sharding import SAMPLE_RULES
from hf_tiny import forward, hf_logits, left_pad_positions, one_device_mesh, save_hf_model, tokens_and_mask

PARITY_TOL = 1e-4


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{tied: (hf model, its directory, our fp32 model on one device)} for tied and untied embeddings."""
    mesh = one_device_mesh()
    out = {}
    for tied in (False, True):
        path = tmp_path_factory.mktemp(f"hf_tied{tied}")
        hf = save_hf_model(path, seed=int(tied), tie_word_embeddings=tied)
        out[tied] = (hf, path, load_hf_model(path, mesh, SAMPLE_RULES))
    return out


@pytest.mark.parametrize("padded", [False, True], ids=["no_pad", "left_pad"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_logits_match_transformers(models, tied, padded):
    hf, _, model = models[tied]
    ids, valid = tokens_and_mask(pads=(0, 4, 7) if padded else (0, 0, 0))
    ref = hf_logits(hf, ids, valid)
    logits = forward(model, ids, valid)
    assert logits.dtype == jnp.float32 and logits.shape == ref.shape
    diff = np.abs(np.asarray(logits)[valid] - ref[valid]).max()
    print(f"logits tied={tied} padded={padded}: max abs diff {diff:.2e} (logit scale {np.abs(ref).max():.2f})")
    assert diff <= PARITY_TOL
    assert model.config.tie_word_embeddings == tied and hasattr(model, "lm_head") != tied


def test_one_decoder_layer_matches_transformers(models):
    hf, _, model = models[False]
    B, T, D = 2, 10, hf.config.hidden_size
    _, valid = tokens_and_mask(batch=B, length=T, pads=(0, 3))
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    positions = torch.tensor(left_pad_positions(valid))
    mask_BTS = np.tril(np.ones((T, T), bool))[None] & valid[:, None, :]
    additive = torch.where(torch.tensor(mask_BTS), 0.0, torch.finfo(torch.float32).min)[:, None]
    with torch.no_grad():
        ref = hf.model.layers[0](
            x, attention_mask=additive, position_ids=positions,
            position_embeddings=hf.model.rotary_emb(x, positions),
        ).numpy()
    out, cache = model.layers[0](jnp.asarray(x.numpy()), jnp.asarray(positions.numpy()), jnp.asarray(mask_BTS), None, None)
    diff = np.abs(np.asarray(out)[valid] - ref[valid]).max()
    print(f"decoder layer 0: max abs diff {diff:.2e}")
    assert cache is None and diff <= 1e-5


def test_kv_cache_decoding_matches_full_forward(models):
    """Prefill a left-padded batch, then feed one token at a time: same logits as one forward over everything."""
    _, _, model = models[False]
    prompt_len, steps = 6, 4
    ids, valid = tokens_and_mask(batch=3, length=prompt_len + steps, pads=(0, 2, 5))
    full = forward(model, ids, valid)

    step = jax.jit(lambda m, t, v, c: m(t, v, c))  # one compile for the prefill shape, one for the decode shape
    cache = KVCache.init(model.config, batch=3, size=prompt_len + steps)
    logits, cache = step(model, ids[:, :prompt_len], valid[:, :prompt_len], cache)
    pieces = [logits]
    for t in range(prompt_len, prompt_len + steps):
        logits, cache = step(model, ids[:, t : t + 1], valid[:, t : t + 1], cache)
        pieces.append(logits)
    incremental = np.concatenate([np.asarray(p) for p in pieces], axis=1)
    diff = np.abs(incremental[valid] - np.asarray(full)[valid]).max()
    print(f"kv cache vs full forward: max abs diff {diff:.2e}")
    assert diff <= PARITY_TOL
    assert int(cache.end) == prompt_len + steps
    np.testing.assert_array_equal(np.asarray(cache.next_pos_B), valid.sum(1))
    np.testing.assert_array_equal(np.asarray(cache.valid_BS), valid)


@pytest.mark.parametrize("field", ["dtype", "param_dtype"])
def test_bf16_runs_and_stays_close_to_fp32(models, field):
    _, path, model32 = models[False]
    model16 = load_hf_model(path, one_device_mesh(), SAMPLE_RULES, **{field: "bfloat16"})
    if field == "param_dtype":
        assert model16.layers[0].mlp.up_proj[...].dtype == jnp.bfloat16
    ids, valid = tokens_and_mask()
    ref, out = forward(model32, ids, valid), forward(model16, ids, valid)
    ref, out = np.asarray(ref)[valid], np.asarray(out)[valid]
    diff = np.abs(out - ref).max()
    print(f"bf16 {field}: max abs diff {diff:.2e} vs fp32 (logit scale {np.abs(ref).max():.2f})")
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert 0 < diff <= 0.05 * np.abs(ref).max()  # > 0: bf16 was really used
    assert (out.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


# ------------------------------------------------------------------------------------------ scanned layers


def test_stacked_parameters_carry_a_replicated_layer_axis(models):
    _, _, model = models[False]
    params = nnx.to_flat_state(nnx.state(model.layers, nnx.Param))
    L = model.config.num_hidden_layers
    assert len(params) == 12 and len(model.layers) == L
    for path, var in params:
        assert var.logical_axes[0] == "layers" and var.shape[0] == L, path
        assert var[...].sharding.spec[0] is None, path
    q_LDNH = model.layers.stacked.self_attn.q_proj[...]
    for i in range(L):
        layer = model.layers[i]
        np.testing.assert_array_equal(np.asarray(layer.self_attn.q_proj[...]), np.asarray(q_LDNH[i]))
        assert layer.self_attn.q_proj.logical_axes == ("embed", "q_heads", "head_dim")


def _loss_and_grads(cfg, state, ids, valid):
    graphdef, _ = abstract_model(cfg, one_device_mesh(), SAMPLE_RULES)

    def loss(params):  # next-token cross-entropy over the real tokens
        logp_BTV = jax.nn.log_softmax(nnx.merge(graphdef, params)(ids, valid)[0][:, :-1])
        logp_BT = jnp.take_along_axis(logp_BTV, ids[:, 1:, None], axis=-1)[..., 0]
        return -jnp.where(valid[:, 1:], logp_BT, 0.0).sum() / valid[:, 1:].sum()

    return jax.jit(jax.value_and_grad(loss))(state)


def test_remat_policies_and_unrolled_layers_compute_the_same_gradients(models):
    _, _, model = models[False]
    state = nnx.state(model)
    ids, valid = tokens_and_mask()
    ref_loss, ref_grads = _loss_and_grads(model.config, state, ids, valid)
    for remat, scan in [("full", True), ("dots", True), ("none", False), ("full", False)]:
        loss, grads = _loss_and_grads(model.config.replace(remat=remat, scan_layers=scan), state, ids, valid)
        assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss)), (remat, scan)
        for (path, g), (_, ref) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(ref_grads)):
            g, ref = np.asarray(g[...]), np.asarray(ref[...])
            assert np.abs(g - ref).max() <= 1e-4 * np.abs(ref).max(), (remat, scan, path)


def _compiled(cfg, fn):
    """`fn(graphdef, params, tokens)` compiled for abstract weights and a [4, 256] token block."""
    graphdef, params = abstract_model(cfg, one_device_mesh(), SAMPLE_RULES)
    tokens = jax.ShapeDtypeStruct((4, 256), jnp.int32)
    return jax.jit(functools.partial(fn, graphdef)).lower(params, tokens).compile()


def test_scanned_program_holds_one_layer_body():
    def dots(layers, scan):
        cfg = qwen2.preset("tiny", vocab_size=256, num_hidden_layers=layers, scan_layers=scan)
        return _compiled(cfg, lambda g, p, t: nnx.merge(g, p)(t)[0]).as_text().count(" dot(")

    assert dots(2, True) == dots(4, True)  # 7 products per layer body, plus the head: whatever L is
    assert dots(4, False) > dots(2, False) > dots(2, True)


def test_remat_policy_bounds_training_memory():
    """Compiled temporary memory of a gradient: full remat keeps least, saving dots keeps more, none most."""

    def temp_bytes(remat):
        cfg = qwen2.preset("tiny", vocab_size=256, num_hidden_layers=4, remat=remat)
        grad = lambda g, p, t: jax.grad(lambda p: nnx.merge(g, p)(t)[0].mean())(p)  # noqa: E731
        return _compiled(cfg, grad).memory_analysis().temp_size_in_bytes

    full, dots, none = temp_bytes("full"), temp_bytes("dots"), temp_bytes("none")
    print(f"grad temp bytes: full {full:,}, dots {dots:,}, none {none:,}")
    assert full < dots < none and 2 * full < none


def test_unknown_remat_policy_is_refused():
    with pytest.raises(ValueError, match="remat must be one of .* got 'some'"):
        qwen2.preset("tiny", remat="some")


@pytest.mark.parametrize(
    "name,total", [("qwen2.5-0.5b", 494_032_768), ("qwen2.5-7b", 7_615_616_512), ("qwen2.5-14b", 14_770_033_664)]
)
def test_preset_parameter_counts_match_published_totals(name, total):
    assert qwen2.parameter_count(qwen2.preset(name)) == total


def test_preset_lookup():
    assert qwen2.preset("Qwen/Qwen2.5-Coder-7B-Instruct") == qwen2.PRESETS["qwen2.5-7b"]
    assert qwen2.preset("qwen2.5-0.5b", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(UserError, match="qwen2.5-9b"):
        qwen2.preset("qwen2.5-9b")


# ------------------------------------------------------------------------------------------------ configs

ODD = Qwen2Config(
    vocab_size=1000, hidden_size=96, intermediate_size=160, num_hidden_layers=3, num_attention_heads=6,
    num_key_value_heads=2, max_position_embeddings=512, rope_theta=12345.0, rms_norm_eps=1e-5,
    tie_word_embeddings=True, head_dim=32, checkpoint_dtype="float16", bos_token_id=1, eos_token_id=[2, 3],
    pad_token_id=0,
)


@pytest.mark.parametrize("cfg", [ODD, qwen2.PRESETS["qwen2.5-0.5b"], qwen2.PRESETS["qwen2.5-14b"]],
                         ids=["odd", "0.5b", "14b"])
def test_config_round_trip(cfg):
    assert Qwen2Config.from_hf_config(cfg.to_hf_config()) == cfg
    # transformers accepts what we write and reads the same architecture back.
    hf = transformers.Qwen2Config(**cfg.to_hf_config())
    assert Qwen2Config.from_hf_config(hf.to_dict()) == cfg
    assert hf.rope_parameters["rope_theta"] == cfg.rope_theta
    assert (hf.hidden_size, hf.num_key_value_heads, hf.tie_word_embeddings) == (
        cfg.hidden_size, cfg.num_key_value_heads, cfg.tie_word_embeddings)


# Qwen2.5-0.5B-Instruct's config.json as published (written by transformers 4.x).
HUB_4X = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
    "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14,
    "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "transformers_version": "4.43.1",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}


def test_hub_4x_and_transformers_5x_configs_agree(tmp_path):
    (tmp_path / "v4").mkdir()
    (tmp_path / "v4" / "config.json").write_text(json.dumps(HUB_4X))
    transformers.AutoConfig.from_pretrained(tmp_path / "v4").save_pretrained(tmp_path / "v5")
    v5 = json.loads((tmp_path / "v5" / "config.json").read_text())
    assert "rope_parameters" in v5 and "rope_theta" not in v5 and v5["dtype"] == "bfloat16"  # really 5.x style

    seen = []
    for d in ("v4", "v5"):
        seen.append(qwen2.load_hf_config(tmp_path / d / "config.json"))  # our raw-JSON reader
        seen.append(Qwen2Config.from_hf_config(transformers.AutoConfig.from_pretrained(tmp_path / d).to_dict()))
    assert all(c == seen[0] for c in seen), seen
    expected = qwen2.PRESETS["qwen2.5-0.5b"]
    assert seen[0] == expected


def test_sliding_window_is_refused(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**HUB_4X, "use_sliding_window": True}))
    with pytest.raises(UserError, match="use_sliding_window") as e:
        qwen2.load_hf_config(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    "change,field",
    [({"rope_scaling": {"type": "yarn", "factor": 4.0}}, "rope_type"), ({"hidden_act": "gelu"}, "hidden_act"),
     ({"num_attention_heads": 5}, "num_attention_heads"), ({"hidden_size": "896"}, "hidden_size")],
)
def test_unsupported_config_values_are_refused(change, field):
    with pytest.raises(UserError, match=field):
        Qwen2Config.from_hf_config({**HUB_4X, **change})
