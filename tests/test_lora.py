"""LoRA (`models/lora.py` and its uses): a fresh adapter changes nothing, an adapted model equals its merged form,
only adapters train, checkpoints round-trip, both exports load in transformers / peft and match, the sampler takes
new adapter weights without recompiling, and SFT and GRPO run with adapters on a frozen (shared) base.

Everything is tiny, random and real: real orbax, real transformers and peft models, the real sampler and sandbox.
"""

import dataclasses
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
from hf_tiny import one_device_mesh

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


def _at_paths_of(params: dict, like: dict) -> dict:
    """The entries of `params` at the paths of `like` (a full gradient's adapter half)."""
    return {k: _at_paths_of(params[k], v) if isinstance(v, dict) else params[k] for k, v in like.items()}


@pytest.fixture(scope="module")
def models(mesh):
    """(plain model, the same weights with fresh adapters, and with trained-looking adapters)."""
    base = init_model(CFG, mesh, sharding.TRAIN_RULES, seed=0)
    frozen = nnx.to_pure_dict(nnx.state(base, nnx.Param))
    fresh = add_adapters(frozen, CFG.replace(lora=LORA), mesh, sharding.TRAIN_RULES, seed=3)
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


def test_rl_lora_adapts_rl_alone():
    """`rl.lora` is RL's own adapters: SFT trains every weight, RL adapters; `lora` adapts both; not both at once."""
    cfg = config_lib.override(config_lib.Config(), "rl.lora.rank", "8")
    assert cfg.lora.rank == 0 and cfg.rl_lora().rank == 8
    both = config_lib.override(config_lib.Config(), "lora.rank", "4")
    assert both.rl_lora().rank == 4
    with pytest.raises(UserError, match="rl.lora.rank .8. and lora.rank .4. are both set"):
        config_lib.validate(config_lib.override(cfg, "lora.rank", "4"))


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
    for g, f in zip(jax.tree.leaves(grads), jax.tree.leaves(_at_paths_of(full, trainable))):
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
    pair = checkpoints.load_sharing_base({"planner": first, "coder": second}, mesh, sharding.TRAIN_RULES, LORA)
    bases = [jax.tree.leaves(lora.split(nnx.state(m))[0]) for m in pair.values()]
    assert all(x is y for x, y in zip(*bases))  # found by the fingerprint: one copy on the device


# ------------------------------------------------------------------------------------------------ training


@pytest.mark.slow  # ~30 s of compiling and 30 steps on 2 busy cores
def test_sft_with_adapters_lowers_the_loss_and_trains_only_them(tmp_path):
    """SFT on a frozen random base: the loss falls, the TrainState (and its checkpoints) hold only the adapters,
    and the saved model is the untouched base plus trained adapters."""
    from test_sft import random_examples, read_metrics, tiny_config

    from algoforge_jax.train.input import ArrayBatches
    from algoforge_jax.train.loop import train_sft

    examples = random_examples(8)
    cfg = tiny_config(steps=30, checkpoint_every=30, learning_rate=3e-2)
    cfg = config_lib.override(cfg, "lora.rank", "8")
    assert train_sft(cfg, "planner", tmp_path, ArrayBatches(examples, 8, seed=0), []) == 0
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    # A rank-8 update of a frozen random base memorises slower than full fine-tuning (test_sft's 0.3x in 40 steps):
    # measured 4.20 -> 3.79 in 30 steps.
    assert metrics[-1]["loss"] < 0.93 * metrics[0]["loss"], (metrics[0]["loss"], metrics[-1]["loss"])
    mesh = one_device_mesh()
    saved = checkpoints.load_model(tmp_path / "model", mesh, sharding.SAMPLE_RULES)
    start = init_model(cfg.model.qwen2().replace(lora=cfg.lora), mesh, sharding.SAMPLE_RULES, seed=cfg.model.seed)
    (base0, adapters0), (base1, adapters1) = (lora.split(nnx.state(m)) for m in (start, saved))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(base0), jax.tree.leaves(base1)))
    assert not any(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(adapters0), jax.tree.leaves(adapters1)))
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as ckptr:
        stored = ckptr.metadata(tmp_path / "checkpoints" / "30" / "state").item_metadata.tree
    assert jax.tree.structure(stored["params"]) == jax.tree.structure(adapters1)  # no base in the training state


@pytest.mark.slow  # compiles two samplers, two updates and the reference: minutes on 2 busy cores
def test_grpo_with_adapters_on_one_shared_base(tmp_path):
    """`algoforge rl` with --set rl.lora.rank (adapters for RL alone): both agents start from one plain checkpoint,
    so they share its base;
    the KL reference is that base. Two steps run with finite losses and KL, and each agent's saved model is the
    untouched base plus its own changed adapters."""
    from test_rl import MODEL

    from algoforge_jax.config import Config, ModelConfig, RLConfig
    from algoforge_jax.data.embedded import build_embedded
    from algoforge_jax.rl import grpo
    from algoforge_jax.rl.loop import run_rl

    data = build_embedded(tmp_path / "data", seed=3, n_train=30, n_heldout=6, vocab_size=400)
    mesh = one_device_mesh()
    start = init_model(ModelConfig(**MODEL).qwen2(), mesh, sharding.TRAIN_RULES, seed=0)
    path = checkpoints.save_model(tmp_path / "start", start, tokenizer_dir=data.tokenizer_dir)
    rl = RLConfig(steps=2, problems_per_step=2, num_plans=2, num_programs=2, planner_prompt_len=64,
                  planner_max_new_tokens=8, coder_prompt_len=256, coder_max_new_tokens=8, learning_rate=1e-2,
                  grpo=grpo.GRPOConfig(kl_coef=0.04, num_iterations=2), problems=str(data.problems["train"]),
                  eval_problems=str(data.problems["heldout"]), eval_limit=1, checkpoint_every=2)
    cfg = Config(model=ModelConfig(**MODEL), mesh=sharding.MeshConfig(fsdp=2, tensor=4), rl=rl)
    cfg = config_lib.override(cfg, "rl.lora.rank", "4")
    assert run_rl(cfg, tmp_path / "w", planner=str(path), coder=str(path)) == 0
    rows = [json.loads(line) for line in (tmp_path / "w" / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for key in ("planner/loss", "coder/loss", "planner/kl", "coder/kl", "planner/grad_norm", "coder/grad_norm"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert rows[0]["coder/kl"] == pytest.approx(0, abs=1e-6)  # first pass: adapters still zero, policy = base
    base0 = jax.tree.leaves(nnx.state(start, nnx.Param))
    adapters = {}
    for agent in ("planner", "coder"):
        model = checkpoints.load_model(tmp_path / "w" / "rl" / agent / "model", mesh, sharding.TRAIN_RULES)
        frozen, adapters[agent] = lora.split(nnx.state(model))
        assert all(np.array_equal(a, b) for a, b in zip(base0, jax.tree.leaves(frozen))), agent
        assert any(np.abs(np.asarray(x)).max() > 0 for x in jax.tree.leaves(adapters[agent]["layers"]))
    assert not np.array_equal(*(jax.tree.leaves(adapters[a])[1] for a in ("planner", "coder")))


def test_agents_from_one_base_share_it_on_the_device(models, mesh, tmp_path):
    base, fresh, adapted = models
    plain = checkpoints.save_model(tmp_path / "plain", base)
    loaded = checkpoints.load_sharing_base({"planner": plain, "coder": plain}, mesh, sharding.TRAIN_RULES, LORA)
    (fp, ap), (fc, ac) = (lora.split(nnx.state(m)) for m in loaded.values())
    assert all(x is y for x, y in zip(jax.tree.leaves(fp), jax.tree.leaves(fc)))  # one copy of the base
    assert not np.array_equal(jax.tree.leaves(ap)[0], jax.tree.leaves(ac)[0])  # each its own adapters (seeds)
    other = checkpoints.save_model(tmp_path / "other", init_model(CFG, mesh, sharding.TRAIN_RULES, seed=5))
    apart = checkpoints.load_sharing_base({"planner": plain, "coder": other}, mesh, sharding.TRAIN_RULES, LORA)
    (fp, _), (fc, _) = (lora.split(nnx.state(m)) for m in apart.values())
    assert not any(x is y for x, y in zip(jax.tree.leaves(fp), jax.tree.leaves(fc)))


@pytest.mark.slow  # compiles two samplers: ~35 s on 2 busy cores
def test_sampler_takes_new_adapters_without_recompiling(models, mesh):
    """The sampler runs base + adapters unmerged; new adapter weights reuse its compiled programs and give what
    the merged model gives."""
    from algoforge_jax.models.build import abstract_model
    from algoforge_jax.rl.step import sampler_base, sampler_params
    from algoforge_jax.sampling import Sampler, SamplerConfig

    _, fresh, adapted = models
    graphdef, abstract = abstract_model(fresh.config, mesh, sharding.TRAIN_RULES)
    frozen, adapters = lora.split(nnx.state(fresh))
    base = sampler_base(abstract, frozen, mesh)
    sampler = Sampler(graphdef, fresh.config, mesh, SamplerConfig(max_new_tokens=6, first_segment=0),
                      sharding.SAMPLE_RULES)
    prompts = [[5, 6, 7], [8, 9, 10, 11]]
    sampler.generate(sampler_params(abstract, adapters, mesh, base), prompts)
    compiled = sampler.traces
    new = lora.split(nnx.state(adapted))[1]
    out = sampler.generate(sampler_params(abstract, new, mesh, base), prompts)
    assert sampler.traces == compiled
    merged = merge_adapters(adapted, mesh, sharding.SAMPLE_RULES)
    plain = Sampler(nnx.graphdef(merged), merged.config, mesh, SamplerConfig(max_new_tokens=6, first_segment=0),
                    sharding.SAMPLE_RULES)
    want = plain.generate(nnx.state(merged), prompts)
    np.testing.assert_array_equal(out.tokens, want.tokens)
    np.testing.assert_allclose(out.model_logprobs, want.model_logprobs, atol=1e-5)


# ------------------------------------------------------------------------------------------------ exports


@pytest.fixture(scope="module")
def hf_adapted(tmp_path_factory):
    """(a random HF base directory, the transformers model, our adapted checkpoint on that base with nonzero
    adapters, our adapted model)."""
    from hf_tiny import save_hf_model

    root = tmp_path_factory.mktemp("hf")
    hf = save_hf_model(root / "base")
    mesh = one_device_mesh()
    model = checkpoints.load_pretrained(root / "base", mesh, sharding.TRAIN_RULES, lora=LORA, seed=2)
    model = _perturbed(model, scale=0.05)  # the HF model's weights are ~0.1: adapters of the same order
    return root / "base", hf, checkpoints.save_model(root / "adapted", model), model


def _convert(*args):
    from algoforge_jax.cli import main as cli_main

    return cli_main(["convert", "orbax-to-hf", *map(str, args)])


def test_merged_export_loads_in_transformers_and_matches(hf_adapted, tmp_path):
    import transformers
    from hf_tiny import forward, hf_logits, tokens_and_mask

    _, _, ckpt, model = hf_adapted
    assert _convert("--ckpt", ckpt, "--out", tmp_path / "merged", "--merge-lora", "--dtype", "float32") == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids, valid = tokens_and_mask()
    ours = np.asarray(forward(model, ids, valid))
    np.testing.assert_allclose(hf_logits(hf, ids, valid)[valid], ours[valid], atol=1e-4, rtol=1e-4)


def test_adapter_only_export_loads_with_peft_onto_the_base_and_matches(hf_adapted, tmp_path):
    import peft
    from hf_tiny import forward, hf_logits, tokens_and_mask

    base_dir, hf, ckpt, model = hf_adapted
    out = tmp_path / "adapter"
    assert _convert("--ckpt", ckpt, "--out", out, "--adapter-only", "--base-model", base_dir, "--dtype",
                    "float32") == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["base_model_name_or_path"] == str(base_dir)
    adapted = peft.PeftModel.from_pretrained(hf, out).eval()
    assert sum(n.endswith("lora_A.default.weight") for n, _ in adapted.named_parameters()) == 2 * 7
    ids, valid = tokens_and_mask()
    ours = np.asarray(forward(model, ids, valid))
    np.testing.assert_allclose(hf_logits(adapted, ids, valid)[valid], ours[valid], atol=1e-4, rtol=1e-4)
    with adapted.disable_adapter():  # and the base alone is our base alone, which the adapters do change
        base = np.asarray(forward(nnx.merge(*_plain(model)), ids, valid))
        np.testing.assert_allclose(hf_logits(adapted, ids, valid)[valid], base[valid], atol=1e-4, rtol=1e-4)
    assert np.abs(base - ours)[valid].max() > 1e-2


def _plain(model):
    """(graphdef, params) of `model`'s base: the plain model's graph with the adapted model's frozen half."""
    plain = nnx.eval_shape(lambda: type(model)(model.config.replace(lora=LoRAConfig()), rngs=nnx.Rngs(0)))
    return nnx.graphdef(plain), lora.split(nnx.state(model))[0]


def test_lora_checkpoints_need_a_lora_export_flag(hf_adapted, tmp_path, capsys):
    base_dir, _, ckpt, _ = hf_adapted
    assert _convert("--ckpt", ckpt, "--out", tmp_path / "x") == 2
    assert "has LoRA adapters (rank 4); pass --merge-lora" in capsys.readouterr().err
    plain = checkpoints.save_model(tmp_path / "plain", checkpoints.load_pretrained(base_dir, one_device_mesh(),
                                                                                   sharding.TRAIN_RULES))
    assert _convert("--ckpt", plain, "--out", tmp_path / "y", "--merge-lora") == 2
    assert "has no LoRA adapters; --merge-lora needs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ memory


@pytest.mark.slow  # the budget traces the activations too: ~40 s on 2 busy cores
def test_lora_budget_matches_a_real_training_state_shard():
    """memory_budget's base, adapter and AdamW bytes equal what device 0 holds of a real adapted TrainState."""
    from test_configs import _tiny, on_device

    from algoforge_jax import memory
    from algoforge_jax.train.loop import build_model, make_trainer
    from algoforge_jax.train.state import init_state

    cfg = config_lib.override(_tiny(fsdp=4, tensor=2), "lora.rank", "4")
    mesh = sharding.make_mesh(cfg.mesh)
    model = build_model(cfg, "", mesh)
    frozen = lora.split(nnx.state(model))[0]
    trainer = make_trainer(cfg, model.config, mesh, frozen=frozen)
    state = init_state(model, trainer.tx, trainer.shardings, seed=0)
    items = {item: b for _, item, b in memory.memory_budget(cfg, memory.Hardware("cpu", 8, 10**9)).items}
    assert items["frozen base x1, shared (float32)"] == on_device(frozen)
    assert items["adapters x1 (float32)"] == on_device(state.params)
    assert items["AdamW moments x1"] == on_device(state.opt_state)


@pytest.mark.slow  # abstract 7B models and 1- and 2-layer residual traces: ~20 s
def test_adapter_bytes_by_hand_on_7b():
    """Rank r on all seven projections of Qwen2.5-7B, fp32 on one device: r (in + out) per projection and layer."""
    from algoforge_jax import memory
    from algoforge_jax.config import Config, ModelConfig
    from algoforge_jax.models.qwen2 import preset

    cfg = Config(model=ModelConfig(preset="qwen2.5-7b", dtype="bfloat16"), mesh=sharding.MeshConfig(fsdp=1),
                 lora=LoRAConfig(rank=16))
    m = preset("qwen2.5-7b")
    D, F, L, NH, KH = (m.hidden_size, m.intermediate_size, m.num_hidden_layers, m.num_attention_heads * m.head_size,
                       m.num_key_value_heads * m.head_size)
    per_layer = 16 * (2 * (D + NH) + 2 * (D + KH) + 3 * (D + F))
    items = {item: b for _, item, b in memory.memory_budget(cfg, memory.HARDWARE["1xh100"]).items}
    assert items["adapters x1 (float32)"] == 4 * L * per_layer
    full = memory.memory_budget(dataclasses.replace(cfg, lora=LoRAConfig()), memory.HARDWARE["1xh100"])
    full_params = dict((i, b) for _, i, b in full.items)["params x1 (float32)"]
    assert items["frozen base x1, shared (bfloat16)"] * 2 == full_params


@pytest.mark.slow  # residual traces of two models: ~30 s
def test_memory_benchmark_prints_the_ratio(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "lora_memory.py"
    spec = importlib.util.spec_from_file_location("bench_lora_memory", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--configs", "tiny", "--rank", "4"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("| tiny"))
    full, adapted, ratio = (cell.strip("* x") for cell in row.split("|")[3:6])
    assert float(full) > float(adapted) > 0 and float(ratio) == pytest.approx(float(full) / float(adapted), 0.01)


def test_rl_only_adapters_budget_two_bases_in_rl_and_none_in_sft():
    """With `rl.lora` SFT trains every weight (no base item) and RL holds both SFT models as frozen bases."""
    from test_configs import _tiny

    from algoforge_jax import memory

    cfg = config_lib.override(_tiny(fsdp=4, tensor=2), "rl.lora.rank", "4")
    hardware = memory.Hardware("cpu", 8, 10**9)
    sft = {item: b for _, item, b in memory.memory_budget(cfg, hardware).items}
    shape = memory.RolloutShape.from_config(cfg)
    rl = {item: b for _, item, b in memory.memory_budget(cfg, hardware, shape).items}
    both = config_lib.override(_tiny(fsdp=4, tensor=2), "lora.rank", "4")
    shared = {item: b for _, item, b in memory.memory_budget(both, hardware, shape).items}
    assert not any("base" in item for item in sft) and "params x1 (float32)" in sft
    assert rl["frozen bases x2 (the two SFT models) (float32)"] == 2 * shared["frozen base x1, shared (float32)"]
    assert rl["adapters x2 (float32)"] == shared["adapters x2 (float32)"]
