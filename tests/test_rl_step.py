"""The RL update (`rl/step.py`): ρ = 1 on the first pass over a real rollout, accumulation and μ passes equal to the
big-batch computation, new weights reaching the sampler without a recompile, and one-line errors for bad keys.

Real parts throughout: a tiny random Qwen2 per agent over the embedded default's sentencepiece tokenizer (built
small), the real sampler, the real sandbox judging the programs of real synthetic problems.
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from algoforge_jax import sharding
from algoforge_jax.cli import main as cli_main
from algoforge_jax.config import Config, ModelConfig, RLConfig
from algoforge_jax.data import synthetic
from algoforge_jax.data.embedded import build_embedded
from algoforge_jax.models.build import abstract_model, init_model
from algoforge_jax.rl import grpo
from algoforge_jax.errors import UserError
from algoforge_jax.rl.loop import check_batch_split, make_chat, rl_train_config, rollout_config
from algoforge_jax.rl.rollout import Policy, rollout
from algoforge_jax.rl.step import make_update, reference_logprobs, rl_update, sampler_params, update_batch
from algoforge_jax.sampling import Sampler, SamplerConfig
from algoforge_jax.tokenizer import SENTENCEPIECE_FILE, SentencePieceTokenizer
from algoforge_jax.train.state import init_state, make_optimizer, state_shardings
from eval.sandbox import Sandbox

VOCAB = 400
MODEL = ModelConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1)
RL = RLConfig(problems_per_step=2, num_plans=2, num_programs=2, planner_prompt_len=64, planner_max_new_tokens=12,
              coder_prompt_len=128, coder_max_new_tokens=12, learning_rate=1e-2,
              grpo=grpo.GRPOConfig(kl_coef=0.04, num_iterations=2))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return build_embedded(tmp_path_factory.mktemp("embedded"), seed=3, n_train=30, n_heldout=6, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def tokenizer(data):
    return SentencePieceTokenizer(data.tokenizer_dir / SENTENCEPIECE_FILE)


@pytest.fixture(scope="module")
def mesh():
    return sharding.make_mesh(sharding.MeshConfig(fsdp=2, tensor=2), devices=jax.devices()[:4])


def _agent(cfg: Config, mesh, seed: int):
    """(update, abstract state, initial TrainState, reference params) of a random agent: the RL loop's pieces."""
    model = init_model(cfg.model.qwen2(), mesh, sharding.TRAIN_RULES, seed=seed)
    graphdef, abstract = abstract_model(model.config, mesh, sharding.TRAIN_RULES)
    tx = make_optimizer(rl_train_config(cfg))
    shardings = state_shardings(abstract, tx, mesh)
    update = make_update(graphdef, tx, shardings, cfg.rl.grpo, mesh, sharding.TRAIN_RULES, accum=cfg.rl.grad_accum,
                         chunk_len=cfg.train.logprob_chunk)
    reference = jax.tree.map(lambda x: x + 0, nnx.to_pure_dict(nnx.state(model, nnx.Param)))  # its own buffers
    return update, abstract, init_state(model, tx, shardings, 0), reference


def _sampler(update, model_cfg, mesh, tokenizer, prompt_len, max_new):
    cfg = SamplerConfig(max_new_tokens=max_new, stop_token_ids=(tokenizer.eos_id,), pad_token_id=tokenizer.pad_id,
                        min_prompt_bucket=prompt_len, first_segment=0)
    return Sampler(update.graphdef, model_cfg, mesh, cfg, sharding.SAMPLE_RULES)


@pytest.mark.slow  # compiles two samplers and two updates: ~4 min on the loaded 2-core machine
def test_first_pass_is_on_policy_and_weights_reach_the_sampler_without_recompiling(data, tokenizer, mesh):
    """On a real rollout the first inner pass has ρ = 1 (≤ 1e-5) for both agents, the reference (equal to the
    starting weights) gives KL 0, the second pass moves ρ; then the updated weights sample through the same
    compiled programs and give different log-probs."""
    cfg = Config(model=MODEL, rl=RL)
    problems = [t.problem for t in synthetic.read_tasks(data.problems["train"])][:2]
    pieces = {name: _agent(cfg, mesh, seed) for seed, name in enumerate(("planner", "coder"))}
    samplers = {name: _sampler(pieces[name][0], cfg.model.qwen2(), mesh, tokenizer, prompt_len, max_new)
                for name, prompt_len, max_new in (("planner", 64, 12), ("coder", 128, 12))}
    policies = {n: Policy(samplers[n], sampler_params(pieces[n][1], pieces[n][2].params, mesh)) for n in samplers}
    with Sandbox(workers=2, stop_at_first_failure=False) as sandbox:
        result = rollout(problems, policies["planner"], policies["coder"], make_chat(tokenizer), sandbox.judge,
                         rollout_config(cfg.rl), seed=5)
    for name, batch in (("planner", result.planner), ("coder", result.coder)):
        update, abstract, state, reference = pieces[name]
        assert batch.response_mask_BT.any(axis=1).all()
        batch = dataclasses.replace(batch, advantages_B=np.linspace(-1, 1, len(batch.advantages_B), dtype=np.float32))
        ref = reference_logprobs(update.graphdef, reference, batch, mesh, sharding.TRAIN_RULES, 128)
        np.testing.assert_allclose(np.where(batch.response_mask_BT, ref, 0), batch.old_logprobs_BT, atol=1e-5)
        state, metrics = update.step(state, update_batch(batch, ref))
        metrics = jax.device_get(metrics)
        assert abs(metrics["rho_min"][0] - 1) <= 1e-5 and abs(metrics["rho_max"][0] - 1) <= 1e-5, name
        assert abs(metrics["kl"][0]) <= 1e-6 and metrics["clip_fraction"][0] == 0, name
        assert metrics["rho_max"][1] - metrics["rho_min"][1] > 1e-3, name  # the second pass is off-policy
        new = sampler_params(abstract, state.params, mesh)
        prompt = [list(batch.prompt_ids_BL[0][batch.prompt_mask_BL[0]])]
        before = samplers[name].generate(policies[name].params, prompt)
        compiled = samplers[name].traces
        after = samplers[name].generate(new, prompt)
        assert samplers[name].traces == compiled, name  # new weights of the same layout: no new program
        assert not np.allclose(before.model_logprobs[0, :2], after.model_logprobs[0, :2]), name


def _toy_batch(rng, B=8, L=8, T=6, empty_row=2):
    """A random update batch with ragged responses and one empty row (no tokens)."""
    lengths = rng.integers(1, T + 1, B)
    lengths[empty_row] = 0
    mask = np.arange(T) < lengths[:, None]
    return {"tokens": rng.integers(3, VOCAB, (B, L + T)).astype(np.int32),
            "valid": np.concatenate([np.ones((B, L), bool), mask], axis=1), "mask": mask,
            "old_logp": np.where(mask, rng.normal(-6, 0.3, (B, T)), 0).astype(np.float32),
            "ref_logp": np.where(mask, rng.normal(-6, 0.3, (B, T)), 0).astype(np.float32),
            "advantages": rng.normal(0, 1, B).astype(np.float32)}


@pytest.mark.slow  # compiles three update variants
def test_accumulation_and_passes_equal_the_whole_batch(mesh, loss_agg="seq-mean-token-mean"):
    """Two micro-batches give the whole batch's update (normalised over the whole batch, so a micro-batch holding
    the empty row weighs what it should: with seq-mean-token-mean a mean of the micro-batches' means would not);
    μ = 2 equals two μ = 1 updates against the same old log-probs. Parameters agree to Adam's amplification of
    float rounding in near-zero gradients (updates are ~1e-2)."""
    rng = np.random.default_rng(0)
    batch = _toy_batch(rng)
    grpo_cfg = grpo.GRPOConfig(kl_coef=0.1, loss_agg=loss_agg, num_iterations=2)
    results = {}
    for accum, mu in ((1, 2), (2, 2), (1, 1)):
        cfg = Config(model=MODEL, rl=dataclasses.replace(RL, grad_accum=accum,
                                                        grpo=dataclasses.replace(grpo_cfg, num_iterations=mu)))
        update, _, state, _ = _agent(cfg, mesh, seed=7)
        state, metrics = update.step(state, batch)
        if mu == 1:
            state, second = update.step(state, batch)
            metrics = jax.tree.map(lambda a, b: np.concatenate([a, b]), jax.device_get(metrics), jax.device_get(second))
        results[(accum, mu)] = jax.device_get((state.params, metrics))
    whole_params, whole = results[(1, 2)]
    for key in ((2, 2), (1, 1)):
        params, metrics = results[key]
        for k in ("loss", "kl", "clip_fraction", "rho_min", "rho_max", "grad_norm"):
            np.testing.assert_allclose(metrics[k], whole[k], rtol=2e-5, atol=1e-6, err_msg=f"{key} {k}")
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), params, whole_params)
    assert whole["rho_max"][1] != whole["rho_max"][0]  # the second pass saw the first one's weights


def test_update_matches_policy_loss_gradient_by_hand(mesh):
    """One pass with μ = 1 applies exactly the optimizer to grad(policy_loss) of the whole batch."""
    rng = np.random.default_rng(1)
    batch = _toy_batch(rng)
    cfg = Config(model=MODEL, rl=dataclasses.replace(RL, grpo=grpo.GRPOConfig(kl_coef=0.1, num_iterations=1)))
    update, _, state, _ = _agent(cfg, mesh, seed=3)
    params0 = jax.device_get(state.params)

    def loss(params):
        from algoforge_jax.train.logprobs import sequence_logprobs
        logp = sequence_logprobs(nnx.merge(update.graphdef, params), batch["tokens"], batch["valid"])[:, -6:]
        return grpo.policy_loss(logp, batch["old_logp"], batch["ref_logp"], batch["advantages"], batch["mask"],
                                cfg.rl.grpo)[0]

    grads = jax.grad(loss)(params0)
    updates, _ = update.tx.update(grads, update.tx.init(params0), params0)
    expected = jax.tree.map(lambda p, u: p + u, params0, updates)
    state, metrics = update.step(state, batch)
    metrics = jax.device_get(metrics)
    np.testing.assert_allclose(metrics["loss"][0], loss(params0), rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"][0], optax.tree.norm(grads), rtol=1e-5)
    # Adam divides by sqrt(v): on near-zero gradients (rare vocabulary rows) float rounding moves a step by a few
    # thousandths of the learning rate (1e-2), hence atol 1e-4 on the parameters.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), jax.device_get(state.params),
                 expected)


def test_bad_set_keys_fail_with_one_line(capsys):
    for bad in ("rl.grpo.kl_coeff=0", "rl.grpo.loss_agg=mean", "rl.num_plans=0", "rl.grad_accum=3"):
        assert cli_main(["rl", "--config", "configs/tiny.py", "--set", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("algoforge rl: error: ") and "\n" not in err, err


def test_rows_that_do_not_split_over_the_mesh_fail_with_one_line():
    check_batch_split(RL, 4)  # 4 plans and 8 programs a step over 4 batch shards
    with pytest.raises(UserError, match="planner's 4 rows per step"):
        check_batch_split(RL, 8)
    with pytest.raises(UserError, match="planner's 8 rows per step .* grad_accum 2"):
        check_batch_split(dataclasses.replace(RL, num_plans=4, grad_accum=2), 8)
