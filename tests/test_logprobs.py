"""train/logprobs.py: the chunked log-prob function against the full [B, T, V] computation, against the sampler's
`model_logprobs` on a sampled rollout, and its memory on Qwen2.5-7B shapes from the compiled program."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algoforge_jax import sharding
from algoforge_jax.models.build import init_model
from algoforge_jax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM, preset
from algoforge_jax.sampling import Sample, SamplerConfig, make_sampler
from algoforge_jax.train.logprobs import logprobs_from_hidden, sequence_logprobs, token_logprobs
from hf_tiny import one_device_mesh

CFG = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2)


@pytest.fixture(scope="module")
def model():
    return init_model(CFG, one_device_mesh(), sharding.TRAIN_RULES, seed=3)


def full_logprobs(model, tokens_BT, valid_BT):
    """Reference: log_softmax over the whole [B, T, V] logits, position t-1 scoring token t."""
    logits_BTV, _ = model(jnp.asarray(tokens_BT), jnp.asarray(valid_BT))
    logp_BTV = jax.nn.log_softmax(logits_BTV, axis=-1)
    picked = jnp.take_along_axis(logp_BTV[:, :-1], jnp.asarray(tokens_BT)[:, 1:, None], axis=-1)[..., 0]
    return jnp.concatenate([jnp.zeros((tokens_BT.shape[0], 1)), picked], axis=1)


@pytest.mark.parametrize("chunk_len", [5, 64])  # a chunk that does not divide T, one longer than T
def test_chunked_equals_full_computation(model, chunk_len):
    rng = np.random.default_rng(0)
    tokens_BT = rng.integers(0, CFG.vocab_size, (3, 16)).astype(np.int32)
    valid_BT = np.ones((3, 16), bool)
    valid_BT[1, 11:] = False  # right padding
    valid_BT[2, :4] = False  # left padding
    got = token_logprobs(model, tokens_BT, valid_BT, chunk_len=chunk_len)
    want = full_logprobs(model, tokens_BT, valid_BT)
    np.testing.assert_allclose(np.asarray(got)[valid_BT], np.asarray(want)[valid_BT], atol=1e-5, rtol=0)
    assert np.asarray(got)[:, 0].tolist() == [0.0, 0.0, 0.0]


def test_gradient_of_chunked_equals_full(model):
    tokens_BT = np.random.default_rng(1).integers(0, CFG.vocab_size, (2, 12)).astype(np.int32)
    valid_BT = np.ones_like(tokens_BT, bool)
    graphdef, params = nnx.split(model)

    def loss(params, fn):
        return fn(nnx.merge(graphdef, params), tokens_BT, valid_BT).sum()

    chunked = jax.grad(loss)(params, lambda m, t, v: sequence_logprobs(m, t, v, chunk_len=5))
    full = jax.grad(loss)(params, full_logprobs)
    for a, b in zip(jax.tree.leaves(chunked), jax.tree.leaves(full)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_equals_sampler_model_logprobs_on_a_rollout(model):
    prompts = [[5, 17, 30, 42, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [77]]
    new = 9
    sampler, params = make_sampler(model, one_device_mesh(), SamplerConfig(max_new_tokens=new, first_segment=4),
                                   sharding.SAMPLE_RULES)
    rollout = sampler.generate(params, prompts, Sample(temperature=1.0), num_samples=2, seed=7)
    rows = [prompts[p] + rollout.row_tokens(r) for r, p in enumerate(rollout.prompt_index)]
    T = max(map(len, rows))
    tokens_BT = np.zeros((len(rows), T), np.int32)
    valid_BT = np.zeros((len(rows), T), bool)
    for r, row in enumerate(rows):
        tokens_BT[r, : len(row)], valid_BT[r, : len(row)] = row, True
    logp_BT = np.asarray(token_logprobs(model, tokens_BT, valid_BT, chunk_len=4))
    assert len(set(map(tuple, rollout.tokens.tolist()))) > 1  # sampled, not all the same row
    for r, p in enumerate(rollout.prompt_index):
        P, N = len(prompts[p]), rollout.lengths[r]
        np.testing.assert_allclose(logp_BT[r, P: P + N], rollout.model_logprobs[r, :N], atol=1e-5, rtol=0)


def test_sharded_equals_one_device(model):
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=4, tensor=2))
    graphdef, params = nnx.split(model)
    sharded = jax.device_put(params, sharding.state_shardings(params, sharding.TRAIN_RULES, mesh))
    tokens_BT = np.random.default_rng(2).integers(0, CFG.vocab_size, (8, 16)).astype(np.int32)
    valid_BT = np.ones_like(tokens_BT, bool)
    put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, sharding.TRAIN_RULES))  # noqa: E731
    with jax.set_mesh(mesh):
        got = token_logprobs((graphdef, sharded), put(tokens_BT), put(valid_BT), chunk_len=8)
    assert sharding.is_sharded(got)
    np.testing.assert_allclose(got, token_logprobs(model, tokens_BT, valid_BT, chunk_len=8), atol=1e-5)


def head_temp_bytes(chunk_len: int | None, B=8, T=4096) -> int:
    """Temporary memory of forward + backward of the log-prob head on Qwen2.5-7B shapes (fp32), compiled, never
    run: chunked, or (chunk_len None) the plain [B, T, V] log_softmax."""
    cfg = preset("qwen2.5-7b", dtype="float32", param_dtype="float32")
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0))))
    hidden = jax.ShapeDtypeStruct((B, T, cfg.hidden_size), jnp.float32)
    targets = jax.ShapeDtypeStruct((B, T), jnp.int32)

    def loss(hidden_BTD, params, targets_BT):
        m = nnx.merge(graphdef, params)
        if chunk_len is None:
            logp_BTV = jax.nn.log_softmax(m.logits(hidden_BTD), axis=-1)
            return jnp.take_along_axis(logp_BTV, targets_BT[..., None], axis=-1).sum()
        return logprobs_from_hidden(m, hidden_BTD, targets_BT, chunk_len).sum()

    compiled = jax.jit(jax.value_and_grad(loss)).lower(hidden, params, targets).compile()
    return compiled.memory_analysis().temp_size_in_bytes


FULL_LOGITS_BYTES = 8 * 4096 * 152064 * 4  # the [B, T, V] fp32 logits of B=8, T=4096 on Qwen2.5-7B: 19.9 GB


def test_head_memory_on_7b_shapes():
    """Chunks of 256 positions: about 1.2 GB of logits forward and their gradient backward, nowhere near 19.9 GB."""
    chunked = head_temp_bytes(256)
    print(f"log-prob head, fwd+bwd, qwen2.5-7b B=8 T=4096 fp32, chunk 256: {chunked / 2**30:.2f} GiB temporary")
    assert chunked < FULL_LOGITS_BYTES / 4


@pytest.mark.slow
def test_head_memory_full_computation_for_comparison():
    full = head_temp_bytes(None)
    print(f"log-prob head, fwd+bwd, qwen2.5-7b B=8 T=4096 fp32, unchunked: {full / 2**30:.2f} GiB temporary")
    assert full >= FULL_LOGITS_BYTES


def test_packed_rows_score_each_sequence_as_if_alone(model):
    # Three sequences of 5, 7 and 4 tokens packed into two rows of 12 (segment ids 1, 2, ...; 0 on padding) get the
    # log-probs they get one per row: no attention across segments, positions restarting in each.
    rng = np.random.default_rng(4)
    seqs = [rng.integers(1, CFG.vocab_size, n).astype(np.int32) for n in (5, 7, 4)]
    alone = [np.asarray(token_logprobs(model, s[None], np.ones((1, len(s)), bool), chunk_len=8))[0] for s in seqs]
    tokens_BT, segments_BT = np.zeros((2, 12), np.int32), np.zeros((2, 12), np.int32)
    tokens_BT[0, :12], segments_BT[0, :12] = np.concatenate(seqs[:2]), [1] * 5 + [2] * 7
    tokens_BT[1, :4], segments_BT[1, :4] = seqs[2], 1
    graphdef, params = nnx.split(model)
    packed = np.asarray(jax.jit(lambda p, t, v, s: sequence_logprobs(nnx.merge(graphdef, p), t, v, 8, s))(
        params, tokens_BT, segments_BT > 0, segments_BT))
    np.testing.assert_allclose(packed[0, 1:5], alone[0][1:], atol=1e-5)  # a segment's first token: not scored
    np.testing.assert_allclose(packed[0, 6:12], alone[1][1:], atol=1e-5)
    np.testing.assert_allclose(packed[1, 1:4], alone[2][1:], atol=1e-5)
    # Without the segment ids the second sequence would see the first: the test can tell the difference.
    unsegmented = np.asarray(token_logprobs(model, tokens_BT, segments_BT > 0, chunk_len=8))
    assert np.abs(unsegmented[0, 6:12] - alone[1][1:]).max() > 1e-3
    with pytest.raises(ValueError, match="segment_ids"):  # the sampler's cache holds one sequence a row
        model.hidden_states(jnp.asarray(tokens_BT), None, object(), jnp.asarray(segments_BT))
