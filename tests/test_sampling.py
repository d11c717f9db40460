"""sampling.py against references: transformers' greedy generate, a full forward pass for the logprobs, exact
distributions for the sampling methods, and compile counting for the shape buckets. Plus `algoforge generate`."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from algoforge_jax import sharding
from algoforge_jax.convert.hf import load_hf_model
from algoforge_jax.sampling import (Greedy, Sample, SamplerConfig, blocked_argmax, blocked_categorical, check_prompts,
                                    make_sampler, sampling_method)
from algoforge_jax.sharding import SAMPLE_RULES
from algoforge_jax.tokenizer import BUNDLED_QWEN25
from hf_tiny import forward, one_device_mesh, save_hf_model, tokens_and_mask

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [[5, 17, 300, 42, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [777], [64, 128, 256, 512, 999, 0, 3, 8, 1]]
NEW = 10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """{tied: (hf model, directory, our model on one device)}."""
    out = {}
    for tied in (False, True):
        path = tmp_path_factory.mktemp(f"hf_tied{tied}")
        hf = save_hf_model(path, seed=int(tied), tie_word_embeddings=tied)
        out[tied] = (hf, path, load_hf_model(path, one_device_mesh(), SAMPLE_RULES))
    return out


@pytest.fixture(scope="module")
def samplers(models):
    """{tied: (sampler with no stop tokens, params, model)}, shared so compiled programs are reused across tests
    (they use batches of 4 and 8 rows with prompts of at most 16 tokens: one bucket pair per method). Decoding
    runs in two segments (room for 5, then 10 new tokens), so every test below also covers cache growth."""
    out = {}
    for tied, (_, _, model) in models.items():
        cfg = SamplerConfig(max_new_tokens=NEW, stop_token_ids=(), first_segment=5)
        sampler, params = make_sampler(model, one_device_mesh(), cfg, SAMPLE_RULES)
        out[tied] = (sampler, params, model)
    return out


@pytest.fixture(scope="module")
def untied(samplers):
    return samplers[False]


def hf_greedy(hf, prompt, new_tokens=NEW) -> list[int]:
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    return out[0, len(prompt):].tolist()


# ------------------------------------------------------------------------------------------------- greedy


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_greedy_matches_transformers_with_mixed_prompt_lengths(models, samplers, tied):
    hf = models[tied][0]
    sampler, params, _ = samplers[tied]
    rollout = sampler.generate(params, PROMPTS)  # one left-padded batch of lengths 5, 12, 1, 9
    for r, prompt in enumerate(PROMPTS):
        assert rollout.row_tokens(r) == hf_greedy(hf, prompt), f"row {r}"
    assert rollout.finish_reason == ["length"] * len(PROMPTS)
    assert rollout.lengths.tolist() == [NEW] * len(PROMPTS)
    np.testing.assert_array_equal(rollout.logprobs, 0.0)  # greedy: each choice is certain


# ------------------------------------------------------------------------------------------------ logprobs


def _full_forward_logits(model, rows) -> list[np.ndarray]:
    """For each (prompt, generated) row, the logits [len(generated), V] predicting each generated token, from
    one uncached forward pass over prompt + generated (rows right-padded to one length: a single compile)."""
    T = 32
    tokens_BT, valid_BT = np.zeros((len(rows), T), np.int32), np.zeros((len(rows), T), bool)
    for i, (prompt, generated) in enumerate(rows):
        seq = list(prompt) + list(generated)
        tokens_BT[i, : len(seq)], valid_BT[i, : len(seq)] = seq, True
    logits = np.asarray(forward(model, tokens_BT, valid_BT))
    return [logits[i, len(p) - 1 : len(p) + len(g) - 1] for i, (p, g) in enumerate(rows)]


@pytest.mark.parametrize("method", [Greedy(), Sample(0.7, top_k=50, top_p=0.9), Sample(1.3)],
                         ids=["greedy", "t0.7_k50_p0.9", "t1.3"])
def test_logprobs_equal_a_full_forward_pass(untied, method):
    sampler, params, model = untied
    rollout = sampler.generate(params, PROMPTS, method, num_samples=2, seed=3)
    rows = [(PROMPTS[rollout.prompt_index[r]], rollout.row_tokens(r)) for r in range(len(rollout.lengths))]
    for r, ((prompt, generated), logits) in enumerate(zip(rows, _full_forward_logits(model, rows))):
        steps = np.arange(len(generated))
        model_ref = np.asarray(jax.nn.log_softmax(logits, -1))[steps, generated]
        np.testing.assert_allclose(rollout.model_logprobs[r, : len(generated)], model_ref, atol=1e-4, rtol=0)
        if isinstance(method, Sample):
            sample_ref = np.asarray(method.log_probs(jnp.asarray(logits)))[steps, generated]
            assert np.isfinite(sample_ref).all()  # every sampled token was inside the kept set
            np.testing.assert_allclose(rollout.logprobs[r, : len(generated)], sample_ref, atol=1e-4, rtol=0)
        else:
            np.testing.assert_array_equal(logits.argmax(-1), generated)
    if isinstance(method, Sample) and method.temperature != 1.0:
        assert np.abs(rollout.logprobs - rollout.model_logprobs).max() > 1e-2  # two different distributions


# ------------------------------------------------------------------------------------- sampling statistics

LOGITS8 = np.array([2.0, 1.2, 0.9, 0.3, 0.0, -0.4, -1.1, -2.5], np.float32)
DRAWS = 200_000


def intended(logits, temperature=1.0, top_k=0, top_p=1.0) -> np.ndarray:
    """The distribution each method should sample from, computed independently in float64 numpy."""
    p = np.exp(logits.astype(np.float64) / temperature)
    p /= p.sum()
    order = np.argsort(-p)
    keep = np.zeros(len(p), bool)
    keep[order[: top_k or len(p)]] = True
    if top_p < 1.0:
        q = np.where(keep, p, 0.0) / p[keep].sum()
        mass_before = np.cumsum(q[order]) - q[order]
        keep[order[mass_before >= top_p]] = False
    p = np.where(keep, p, 0.0)
    return p / p.sum()


@pytest.mark.parametrize("kwargs", [dict(temperature=1.0), dict(temperature=0.5), dict(temperature=2.0),
                                    dict(top_k=3), dict(top_p=0.8), dict(temperature=0.7, top_k=5, top_p=0.9)],
                         ids=["t1", "t0.5", "t2", "k3", "p0.8", "t0.7_k5_p0.9"])
def test_empirical_distribution_matches_the_intended_one(kwargs):
    method = Sample(**kwargs)
    want = intended(LOGITS8, **kwargs)
    assert 0 < (want > 0).sum() <= 8

    @jax.jit
    def draw(keys):
        return jax.vmap(lambda k: method.get_next_tokens(jnp.asarray(LOGITS8)[None], k))(keys)

    tokens, logp = draw(jax.random.split(jax.random.key(1234), DRAWS))
    tokens, logp = np.asarray(tokens[:, 0]), np.asarray(logp[:, 0])
    freq = np.bincount(tokens, minlength=8) / DRAWS
    assert freq[want == 0].sum() == 0, "a token outside top-k/top-p was sampled"
    # 5 standard errors per category: a false alarm has probability ~1e-6 per category.
    bound = 5 * np.sqrt(want * (1 - want) / DRAWS) + 1e-12
    assert np.all(np.abs(freq - want) <= bound), (freq, want)
    np.testing.assert_allclose(logp, np.log(want[tokens]), atol=1e-5)  # the reported logprob is that of `want`
    np.testing.assert_allclose(np.exp(np.asarray(method.log_probs(jnp.asarray(LOGITS8)[None])))[0], want, atol=1e-6)


def test_blocked_argmax_equals_argmax_including_ties():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 1024)).astype(np.float32)
    x[3, [5, 700]] = 50.0  # a tie across blocks: the first index wins, as in jnp.argmax
    x[4, [130, 131]] = 50.0  # a tie inside a block
    x[5] = 0.0  # all equal
    np.testing.assert_array_equal(blocked_argmax(jnp.asarray(x)), np.argmax(x, axis=-1))
    odd = rng.standard_normal((4, 1000)).astype(np.float32)  # not a multiple of the block: plain argmax
    np.testing.assert_array_equal(blocked_argmax(jnp.asarray(odd)), np.argmax(odd, axis=-1))


def test_blocked_categorical_over_several_blocks():
    # 384 = 3 blocks; mass spread over all of them, with zero-probability tokens inside the kept blocks.
    logits = np.full(384, -np.inf, np.float32)
    kept = np.array([0, 1, 127, 128, 200, 383])
    logits[kept] = [0.5, -1.0, 1.5, 0.0, 1.0, -0.5]
    want = np.zeros(384)
    want[kept] = np.exp(logits[kept].astype(np.float64)) / np.exp(logits[kept].astype(np.float64)).sum()
    draws = 100_000
    tokens = jax.jit(jax.vmap(lambda k: blocked_categorical(jnp.asarray(logits)[None], k)))(
        jax.random.split(jax.random.key(7), draws))
    freq = np.bincount(np.asarray(tokens[:, 0]), minlength=384) / draws
    assert freq[want == 0].sum() == 0
    assert np.all(np.abs(freq - want) <= 5 * np.sqrt(want * (1 - want) / draws) + 1e-12), (freq[kept], want[kept])


def test_sampling_method_and_validation():
    assert sampling_method(0.0, top_k=5) == Greedy()
    assert sampling_method(0.8, 5, 0.9) == Sample(0.8, 5, 0.9)
    for bad in (dict(temperature=0.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            Sample(**bad)
    big_k = Sample(top_k=10_000).log_probs(jnp.asarray(LOGITS8)[None])  # k beyond the vocabulary keeps all
    np.testing.assert_allclose(np.exp(np.asarray(big_k))[0], intended(LOGITS8), atol=1e-6)


# ----------------------------------------------------------------------------------- stops and length limit


def test_stop_tokens_end_rows_at_different_steps(untied):
    free_sampler, params, model = untied
    free = free_sampler.generate(params, PROMPTS)  # greedy without stops: what each row would generate
    # Stop on row 0's 3rd token and row 1's 6th; every row then ends at its first occurrence of either.
    stops = (free.tokens[0, 2], free.tokens[1, 5])
    expected = []
    for r in range(len(PROMPTS)):
        hits = np.flatnonzero(np.isin(free.tokens[r], stops))
        expected.append((hits[0] + 1, "eos") if len(hits) else (NEW, "length"))
    assert {reason for _, reason in expected} == {"eos", "length"}, "test setup: need rows of both kinds"
    assert len({n for n, reason in expected if reason == "eos"}) > 1, "test setup: need different stop steps"

    sampler, _ = make_sampler(model, one_device_mesh(), SamplerConfig(NEW, tuple(map(int, stops)), pad_token_id=0),
                              SAMPLE_RULES)
    rollout = sampler.generate(params, PROMPTS)
    assert [(int(n), f) for n, f in zip(rollout.lengths, rollout.finish_reason)] == expected
    for r, (n, reason) in enumerate(expected):
        assert rollout.row_tokens(r) == free.row_tokens(r)[:n]
        if reason == "eos":
            assert rollout.tokens[r, n - 1] in stops  # the stop token is part of the output
        assert (rollout.tokens[r, n:] == 0).all() and (rollout.model_logprobs[r, n:] == 0).all()
        assert (rollout.model_logprobs[r, :n] < 0).all()


@pytest.mark.parametrize("budget", [1, 3])
def test_max_new_tokens_limits_every_row(untied, budget):
    _, params, model = untied
    sampler, _ = make_sampler(model, one_device_mesh(), SamplerConfig(max_new_tokens=budget, stop_token_ids=()),
                              SAMPLE_RULES)
    rollout = sampler.generate(params, PROMPTS, Sample(1.0), seed=0)
    assert rollout.tokens.shape == (len(PROMPTS), budget)
    assert rollout.lengths.tolist() == [budget] * len(PROMPTS)
    assert rollout.finish_reason == ["length"] * len(PROMPTS)
    assert rollout.stats.decode_steps == budget - 1


# ------------------------------------------------------------------------------------ padding and bad ids


@pytest.mark.parametrize("poison", [np.nan, np.inf], ids=["nan", "inf"])
def test_padding_cannot_reach_real_rows_even_if_its_embedding_is_not_finite(untied, poison):
    sampler, params, model = untied  # pads with id 0
    clean = sampler.generate(params, PROMPTS[:3])  # lengths 5, 12, 1: left-padded to 16 (and a filler row)
    assert 0 not in sum(PROMPTS[:3], []) and 0 not in clean.tokens, "test setup: id 0 must occur as padding only"
    bad = nnx.clone(model)
    table = bad.embed_tokens[...]
    bad.embed_tokens[...] = jax.device_put(table.at[0].set(poison), table.sharding)  # the pad id's row
    poisoned = sampler.generate(nnx.state(bad), PROMPTS[:3])
    assert poisoned.stats.programs_compiled == 0  # the same programs, only the weights differ
    np.testing.assert_array_equal(poisoned.tokens, clean.tokens)
    np.testing.assert_array_equal(poisoned.model_logprobs, clean.model_logprobs)
    # The uncached forward pass (training, scoring) as well: left padding with id 0, real tokens never 0.
    ids, valid = tokens_and_mask()
    ids = np.where(valid, np.maximum(ids, 1), 0)
    want, got = np.asarray(forward(model, ids, valid)), np.asarray(forward(bad, ids, valid))
    assert np.isfinite(got[valid]).all()
    np.testing.assert_array_equal(got[valid], want[valid])


def test_ids_outside_the_vocabulary_and_overlong_prompts_are_refused(untied):
    _, params, model = untied
    V, P = model.config.vocab_size, model.config.max_position_embeddings
    for bad in (dict(stop_token_ids=(3, V)), dict(pad_token_id=-1)):
        name, value = ("stop token", V) if "stop_token_ids" in bad else ("pad token", -1)
        message = rf"^{name} id {value} is outside the model's vocabulary \(vocab_size {V}\)$"
        with pytest.raises(ValueError, match=message):
            make_sampler(model, one_device_mesh(), SamplerConfig(NEW, **bad), sharding.SAMPLE_RULES)
    sampler, _ = make_sampler(model, one_device_mesh(), SamplerConfig(NEW, stop_token_ids=()), sharding.SAMPLE_RULES)
    cases = [([[5], [7, V + 5]], rf"^prompt 1: token id {V + 5} is outside the model's vocabulary \(vocab_size {V}\)$"),
             ([[1] * (P - NEW + 1)], rf"^prompt 0: {P - NEW + 1} tokens \+ max_new_tokens {NEW} exceed the model's "
                                     rf"max_position_embeddings \({P}\)$"),
             ([[1], []], "^prompt 1: needs at least one token$"), ([], "^no prompts$")]
    for prompts, message in cases:
        with pytest.raises(ValueError, match=message):
            sampler.generate(params, prompts)
    assert sampler.traces == 0  # refused before anything was compiled
    check_prompts(model.config, sampler.cfg, [[1] * (P - NEW)])  # the longest prompt that fits


# ---------------------------------------------------------------------------------------- seeds and groups


def test_same_seed_same_samples_other_seed_other_samples(untied):
    sampler, params, _ = untied
    a = sampler.generate(params, PROMPTS, Sample(1.0), num_samples=2, seed=7)
    b = sampler.generate(params, PROMPTS, Sample(1.0), num_samples=2, seed=7)
    c = sampler.generate(params, PROMPTS, Sample(1.0), num_samples=2, seed=8)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.logprobs, b.logprobs)
    assert (a.tokens != c.tokens).mean() > 0.5


def test_groups_are_independent_and_recovered_by_reshape(untied):
    sampler, params, _ = untied
    P, G = 2, 4
    rollout = sampler.generate(params, PROMPTS[:P], Sample(1.0), num_samples=G, seed=0)
    np.testing.assert_array_equal(rollout.prompt_index.reshape(P, G), np.repeat(np.arange(P)[:, None], G, 1))
    np.testing.assert_array_equal(rollout.sample_index.reshape(P, G), np.tile(np.arange(G), (P, 1)))
    groups = rollout.tokens.reshape(P, G, NEW)
    for p in range(P):
        assert len({tuple(s) for s in groups[p]}) == G, "samples of one prompt must differ at temperature 1"
        assert len(set(groups[p][:, 0].tolist())) > 1, "even the first token (drawn in prefill) must vary"
    grouped = sampler.generate(params, PROMPTS[:P], Greedy(), num_samples=G).tokens.reshape(P, G, NEW)
    alone = sampler.generate(params, PROMPTS, Greedy()).tokens
    for p in range(P):  # prompt-major rows: group p is prompt p's greedy continuation G times
        assert (grouped[p] == alone[p]).all()
    assert (grouped[0] != grouped[1]).any()


# ------------------------------------------------------------------------------------- compilation buckets


def test_no_recompile_within_a_bucket_and_none_for_new_weights(models):
    model = models[False][2]
    sampler, params = make_sampler(model, one_device_mesh(), SamplerConfig(max_new_tokens=4, stop_token_ids=()),
                                   SAMPLE_RULES)
    stats = sampler.generate(params, [[1, 2, 3], [4] * 9, [5] * 16]).stats  # batch 3 -> 4, length 16 -> 16
    assert sampler.traces == 2 and stats.programs_compiled == 2  # one prefill and one decode program
    assert stats.compile_seconds > 0 and stats.prefill_seconds > 0 and stats.decode_seconds > 0
    first = sampler.generate(params, [[1] * 2, [2] * 15, [3] * 7, [4] * 11])  # batch 4, lengths <= 16
    assert first.stats.programs_compiled == 0 and first.stats.compile_seconds == 0
    sampler.generate(params, [[9]])  # batch 1 -> 1: a new batch bucket
    assert sampler.traces == 4
    sampler.generate(params, [[9, 8]])
    assert sampler.traces == 4
    sampler.generate(params, [[1] * 17, [2], [3], [4]])  # batch 4, length 17 -> 32: a new length bucket
    assert sampler.traces == 6
    sampler.generate(params, [[1] * 30, [2] * 20, [3]])
    assert sampler.traces == 6

    scaled = jax.tree.map(lambda x: x * 1.01, params)  # an RL step's new weights: same structure and shardings
    second = sampler.generate(scaled, [[1] * 2, [2] * 15, [3] * 7, [4] * 11])
    assert sampler.traces == 6
    assert np.abs(second.model_logprobs - first.model_logprobs).max() > 1e-4  # the new weights were used


# ------------------------------------------------------------------------------------------ decode segments


def test_segmented_decode_equals_one_segment_and_stops_growing_when_done(untied):
    sampler, params, model = untied
    assert sampler.cfg.segments == (5, 10)
    whole, _ = make_sampler(model, one_device_mesh(), SamplerConfig(NEW, stop_token_ids=(), first_segment=0),
                            SAMPLE_RULES)
    assert whole.cfg.segments == (NEW,)
    for method in (Greedy(), Sample(1.0, top_k=20)):
        a = sampler.generate(params, PROMPTS, method, num_samples=2, seed=1)
        b = whole.generate(params, PROMPTS, method, num_samples=2, seed=1)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        np.testing.assert_allclose(a.model_logprobs, b.model_logprobs, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5, rtol=0)
    state, _ = sampler.run(params, PROMPTS)
    assert state.cache.size == 16 + NEW  # prompt bucket + the last segment's room

    # Every row stops at its 3rd token: the first segment (room for 5) ends the run, nothing grows or compiles.
    free = whole.generate(params, PROMPTS)
    stops = tuple(sorted({int(t) for t in free.tokens[:, 2]} - {int(t) for t in free.tokens[:, :2].ravel()}))
    assert len(stops) == len(PROMPTS), "test setup: each row's 3rd token must be new to every row's first two"
    early, _ = make_sampler(model, one_device_mesh(), SamplerConfig(NEW, stops, first_segment=5), SAMPLE_RULES)
    state, _ = early.run(params, PROMPTS)
    assert early.traces == 2  # prefill and the first decode segment only
    assert state.cache.size == 16 + 5 and int(state.step) == 3
    assert early.generate(params, PROMPTS).lengths.tolist() == [3] * len(PROMPTS)


def test_sampler_config_rejects_bad_budgets():
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplerConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="first_segment"):
        SamplerConfig(first_segment=-1)
    with pytest.raises(ValueError, match="max_segments"):
        SamplerConfig(max_segments=0)
    assert SamplerConfig(max_new_tokens=100, first_segment=32).segments == (32, 64, 100)
    assert SamplerConfig(max_new_tokens=16, first_segment=32).segments == (16,)
    # A long budget starts bigger, so it still compiles at most max_segments decode programs.
    assert SamplerConfig(max_new_tokens=1000, first_segment=32).segments == (125, 250, 500, 1000)
    assert SamplerConfig(max_new_tokens=1000, first_segment=32, max_segments=1).segments == (1000,)


# ------------------------------------------------------------------------------------------------ sharding


def test_sharded_greedy_equals_one_device(models):
    _, path, model1 = models[True]
    mesh8 = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2))
    model8 = load_hf_model(path, mesh8, SAMPLE_RULES)
    cfg = SamplerConfig(max_new_tokens=NEW, stop_token_ids=(), first_segment=4)  # the cache grows twice
    s1, p1 = make_sampler(model1, one_device_mesh(), cfg, SAMPLE_RULES)
    s8, p8 = make_sampler(model8, mesh8, cfg, SAMPLE_RULES)
    prompts = PROMPTS + PROMPTS[:2]  # 6 rows -> a batch of 8, two rows per (data, fsdp) shard
    np.testing.assert_array_equal(s8.generate(p8, prompts).tokens, s1.generate(p1, prompts).tokens)

    state, stats = s8.run(p8, prompts)
    assert state.tokens_BN.shape[0] == 8 and stats.decode_steps == NEW - 1
    k = state.cache.k_LBKHS
    L, B, K, H, S = k.shape
    assert k.sharding.shard_shape(k.shape) == (L, B // 4, K // 2, H, S)  # rows over data x fsdp, kv heads over tensor
    assert state.tokens_BN.sharding.shard_shape(state.tokens_BN.shape) == (B // 4, NEW)


# --------------------------------------------------------------------------------------- algoforge generate


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    """A tiny HF model with the Qwen2.5 vocabulary (so text prompts work) and the bundled tokenizer beside it."""
    path = tmp_path_factory.mktemp("cli_model")
    hf = save_hf_model(path, seed=5, vocab_size=151936, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                   num_key_value_heads=1, tie_word_embeddings=True)
    for f in BUNDLED_QWEN25.iterdir():
        if f.name != "SOURCE.md":
            shutil.copyfile(f, path / f.name)
    return hf, path


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=os.environ.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", ""))
    return subprocess.run([sys.executable, "-m", "algoforge_jax", "generate", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


FIELDS = {"prompt_index", "sample_index", "token_ids", "text", "logprobs", "finish_reason"}


def test_cli_greedy_equals_transformers(cli_model):
    hf, path = cli_model
    prompt = [9707, 11, 1879, 0, 25, 330]
    proc = _cli("--model", path, "--prompt-ids", ",".join(map(str, prompt)), "--temperature", "0",
                "--max-new-tokens", 8)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    row = json.loads(line)
    assert set(row) == FIELDS
    assert row["token_ids"] == hf_greedy(hf, prompt, 8)
    assert row["finish_reason"] == "length" and len(row["logprobs"]) == 8 and isinstance(row["text"], str)
    assert re.search(r"generated 8 tokens in [\d.]+ s \([\d.]+ tokens/s\), plus [\d.]+ s compiling 2 programs",
                     proc.stderr), proc.stderr


def test_cli_prompts_file_with_samples(cli_model, tmp_path):
    _, path = cli_model
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "def add(a, b):"}, {"prompt_ids": [1, 2, 3]}, {"messages": [{"role": "user", "content": "hi"}]},
    ]) + "\n")
    proc = _cli("--model", path, "--prompts-file", prompts, "--num-samples", 3, "--temperature", 1.0,
                "--max-new-tokens", 5, "--seed", 1)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["prompt_index"], r["sample_index"]) for r in rows] == [(p, g) for p in range(3) for g in range(3)]
    for r in rows:
        assert set(r) == FIELDS and r["finish_reason"] in ("eos", "length")
        assert 1 <= len(r["token_ids"]) <= 5 and len(r["logprobs"]) == len(r["token_ids"])
        assert all(lp <= 0 for lp in r["logprobs"])
    assert len({tuple(r["token_ids"]) for r in rows}) > 3  # samples differ
    assert "tokens/s" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--prompt-ids", "1,x"], "--prompt-ids: expected comma-separated integers"),
    (["--prompt-ids", "1", "--max-new-tokens", "0"], "--max-new-tokens and --num-samples must be at least 1"),
    (["--prompt-ids", "1", "--temperature", "-1"], "temperature must be > 0"),
    (["--prompt-ids", "5,151936"], "prompt 0: token id 151936 is outside the model's vocabulary (vocab_size 151936)"),
    (["--prompt-ids", "5", "--stop-ids", "7,200000"], "stop token id 200000 is outside the model's vocabulary"),
], ids=["bad_ids", "zero_budget", "negative_temperature", "prompt_id_past_vocab", "stop_id_past_vocab"])
def test_cli_bad_input_exits_2_with_one_line(cli_model, args, message):
    proc = _cli("--model", cli_model[1], *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr


def test_cli_refuses_a_tokenizer_larger_than_the_model(tmp_path):
    # The case: a 300-token model beside the Qwen2.5 tokenizer, whose pad id 151643 used to embed as NaN.
    save_hf_model(tmp_path, vocab_size=300)
    for f in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copyfile(BUNDLED_QWEN25 / f, tmp_path / f)
    proc = _cli("--model", tmp_path, "--prompt-ids", "5,17,42,7")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"algoforge generate: error: {tmp_path}: the tokenizer has 151665 tokens, more than the model's "
        "vocab_size 300; the tokenizer is not this model's"]
