"""GRPO math against hand-computed values, and a toy policy that the loss must move the right way."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from algoforge_jax.rl import grpo
from algoforge_jax.rl.grpo import GRPOConfig, group_advantages, policy_loss

NO_KL = GRPOConfig(kl_coef=0.0)


# ---------------------------------------------------------------------------------------------- advantages


def test_advantages_by_hand():
    # r = [1, 0, 0, 0]: mean 1/4, deviations [3/4, -1/4, -1/4, -1/4], unbiased std sqrt((9/16 + 3/16) / 3) = 1/2.
    r = jnp.array([[1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(group_advantages(r, "grpo"), [[1.5, -0.5, -0.5, -0.5]], rtol=1e-5)
    np.testing.assert_allclose(group_advantages(r, "drgrpo"), [[0.75, -0.25, -0.25, -0.25]], rtol=1e-6)
    # rloo: 1 - mean(0, 0, 0) = 1 and 0 - mean(1, 0, 0) = -1/3.
    np.testing.assert_allclose(group_advantages(r, "rloo"), [[1.0, -1 / 3, -1 / 3, -1 / 3]], rtol=1e-6)


def test_advantages_grpo_eps():
    # Two members 0 and 2: std (ddof 1) = sqrt(2); eps enters the denominator.
    adv = group_advantages(jnp.array([[0.0, 2.0]]), "grpo", eps=0.5)
    np.testing.assert_allclose(adv, [[-1 / (math.sqrt(2) + 0.5), 1 / (math.sqrt(2) + 0.5)]], rtol=1e-6)


@pytest.mark.parametrize("estimator", grpo.ESTIMATORS)
def test_identical_rewards_and_group_of_one_get_exactly_zero(estimator):
    # 1.1 (a pass plus a 0.1 format bonus) is not exact in float32: the mean of three is off by an ulp, which
    # / (std + eps) would turn into an advantage of -0.1 for every member.
    same = group_advantages(jnp.array([[1.1, 1.1, 1.1], [0.1, 0.1, 0.1], [1.0, 0.0, 1.0]]), estimator)
    assert np.all(np.asarray(same[:2]) == 0.0)
    assert np.all(np.asarray(same[2]) != 0.0)
    lone = group_advantages(jnp.array([[5.0], [-3.0]]), estimator)
    assert np.all(np.asarray(lone) == 0.0)


def test_advantages_use_the_last_axis_of_any_shape():
    r_PGpGc = jax.random.bernoulli(jax.random.key(0), 0.5, (2, 3, 4)).astype(jnp.float32)
    expected = group_advantages(r_PGpGc.reshape(6, 4)).reshape(2, 3, 4)
    np.testing.assert_array_equal(group_advantages(r_PGpGc), expected)


def test_advantages_reject_unknown_estimator():
    with pytest.raises(ValueError, match="'ppo'"):
        group_advantages(jnp.ones((1, 2)), "ppo")


def test_group_metrics_count_zero_variance_groups():
    r = jnp.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 1e-3]])
    np.testing.assert_array_equal(grpo.zero_variance_groups(r), [True, False, True, False])
    metrics = grpo.group_metrics(r)
    assert float(metrics["zero_variance_fraction"]) == 0.5
    np.testing.assert_allclose(metrics["reward_mean"], (3 + 1 + 1.5 + 1e-3) / 12, rtol=1e-6)


# ---------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs, field", [
    ({"kl_estimator": "k4"}, "kl_estimator"), ({"loss_agg": "sum"}, "loss_agg"), ({"estimator": "ppo"}, "estimator"),
    ({"clip_eps_low": 1.0}, "clip_eps_low"), ({"clip_eps_low": -0.1}, "clip_eps_low"),
    ({"clip_eps_high": -0.1}, "clip_eps_high"), ({"clip_eps_high": math.inf}, "clip_eps_high"),
    ({"dual_clip": 1.0}, "dual_clip"), ({"dual_clip": 0.5}, "dual_clip"), ({"kl_coef": -1.0}, "kl_coef"),
    ({"kl_coef": math.nan}, "kl_coef"), ({"num_iterations": 0}, "num_iterations"),
    ({"num_iterations": 1.5}, "num_iterations"), ({"clip_eps_high": "0.2"}, "clip_eps_high"),
])
def test_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=f"GRPOConfig.{field} must be") as info:
        GRPOConfig(**kwargs)
    assert "\n" not in str(info.value)


def test_config_defaults_are_valid_and_hashable():
    cfg = GRPOConfig(dual_clip=3.0)
    assert hash(cfg) == hash(GRPOConfig(dual_clip=3.0))
    assert (cfg.clip_eps_low, cfg.clip_eps_high, cfg.num_iterations) == (0.2, 0.2, 1)


# ---------------------------------------------------------------------------------------------- KL and aggregation


def test_kl_estimators_by_hand():
    logp, ref = jnp.array([[-1.0]]), jnp.array([[-2.0]])  # logp - ref = 1
    assert float(grpo.kl_estimate(logp, ref, "k1")[0, 0]) == pytest.approx(1.0)
    assert float(grpo.kl_estimate(logp, ref, "k2")[0, 0]) == pytest.approx(0.5)
    assert float(grpo.kl_estimate(logp, ref, "k3")[0, 0]) == pytest.approx(math.exp(-1) + 1 - 1, rel=1e-6)


def test_kl_estimators_expectation_against_exact_kl():
    # Over a whole vocabulary, weighting each token by p is the exact expectation under p: k1 and k3 are unbiased
    # estimators of KL(p || q), k2 is not.
    logp = jax.nn.log_softmax(jnp.array([1.0, 0.2, -0.5, 2.0]))[None]
    logq = jax.nn.log_softmax(jnp.array([0.0, 1.0, 0.3, 1.5]))[None]
    exact = float(jnp.sum(jnp.exp(logp) * (logp - logq)))
    expect = {k: float(jnp.sum(jnp.exp(logp) * grpo.kl_estimate(logp, logq, k))) for k in grpo.KL_ESTIMATORS}
    assert expect["k1"] == pytest.approx(exact, rel=1e-5)
    assert expect["k3"] == pytest.approx(exact, rel=1e-5)
    assert abs(expect["k2"] - exact) > 1e-3


LOSS_BT = jnp.array([[1.0, 2.0, 3.0], [4.0, jnp.nan, jnp.inf], [jnp.nan, 7.0, 8.0]])  # masked-out cells are junk
MASK_BT = jnp.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # the third sequence is empty


@pytest.mark.parametrize("loss_agg, loss, denominator", [
    ("token-mean", (6 + 4) / 4, 4),  # all tokens / tokens
    ("seq-mean-token-mean", (6 / 3 + 4 / 1) / 2, 2),  # the empty sequence is not counted
    ("seq-mean-token-sum-norm", (6 + 4) / (2 * 3), 2),  # / (non-empty sequences x T)
])
def test_aggregate_by_hand(loss_agg, loss, denominator):
    got, denom = grpo.aggregate(LOSS_BT, MASK_BT, loss_agg)
    assert float(got) == pytest.approx(loss, rel=1e-6)
    assert float(denom) == denominator


@pytest.mark.parametrize("loss_agg", grpo.LOSS_AGGS)
def test_aggregate_all_empty_is_zero_without_nan(loss_agg):
    loss, denom = grpo.aggregate(LOSS_BT, jnp.zeros_like(MASK_BT), loss_agg)
    assert (float(loss), float(denom)) == (0.0, 0.0)
    grad = jax.grad(lambda x: grpo.aggregate(x, jnp.zeros_like(MASK_BT), loss_agg)[0])(jnp.ones((3, 3)))
    assert np.all(np.asarray(grad) == 0.0)


@pytest.mark.parametrize("loss_agg", grpo.LOSS_AGGS)
def test_aggregate_accumulates_over_minibatches(loss_agg):
    # The RL step's rule: sum of loss_i * denominator_i over mini-batches / sum of denominators = the whole batch.
    loss_BT = jax.random.normal(jax.random.key(1), (6, 5))
    mask_BT = jax.random.bernoulli(jax.random.key(2), 0.6, (6, 5)).at[4].set(False)
    whole = grpo.aggregate(loss_BT, mask_BT, loss_agg)[0]
    parts = [grpo.aggregate(loss_BT[s], mask_BT[s], loss_agg) for s in (slice(0, 2), slice(2, 6))]
    accumulated = sum(loss * denom for loss, denom in parts) / sum(denom for _, denom in parts)
    assert float(accumulated) == pytest.approx(float(whole), rel=1e-5)


# ---------------------------------------------------------------------------------------------- policy loss

# Two sequences of two tokens. Row 0 has A = +1 and ratios 1.5 (clipped at 1.2) and 0.9; row 1 has A = -1 and
# ratios 0.5 (clipped at 0.8) and 1.1. Per-token losses: -1.2, -0.9, 0.8, 1.1.
RHO_BT = jnp.array([[1.5, 0.9], [0.5, 1.1]])
OLD_BT = jnp.array([[-1.0, -2.0], [-0.5, -3.0]])
LOGP_BT = OLD_BT + jnp.log(RHO_BT)
ADV_B = jnp.array([1.0, -1.0])
FULL_BT = jnp.ones((2, 2))


def test_policy_loss_by_hand():
    loss, metrics = policy_loss(LOGP_BT, OLD_BT, None, ADV_B, FULL_BT, NO_KL)
    assert float(loss) == pytest.approx((-1.2 - 0.9 + 0.8 + 1.1) / 4, abs=1e-6)
    assert float(metrics["clip_fraction"]) == 0.5
    assert float(metrics["rho_min"]) == pytest.approx(0.5, rel=1e-6)
    assert float(metrics["rho_max"]) == pytest.approx(1.5, rel=1e-6)
    assert float(metrics["kl"]) == 0.0 and float(metrics["dual_clip_fraction"]) == 0.0
    assert float(metrics["loss_denominator"]) == 4


def test_policy_loss_gradient_flows_through_unclipped_ratios_only():
    grads = jax.grad(lambda *a: policy_loss(*a, NO_KL)[0], argnums=(0, 1, 2, 3))(
        LOGP_BT, OLD_BT, jnp.zeros((2, 2)), ADV_B, FULL_BT)
    # d(-A rho)/d logp = -A rho on unclipped tokens, divided by the 4 tokens; clipped tokens get nothing.
    np.testing.assert_allclose(grads[0], [[0.0, -0.9 / 4], [0.0, 1.1 / 4]], rtol=1e-5, atol=1e-7)
    for constant in grads[1:]:  # old log-probs, reference log-probs, advantages
        assert np.all(np.asarray(constant) == 0.0)


def test_clip_fraction_counts_the_clipped_branch():
    # Ratios on both sides of the range, for A > 0, A < 0 and A = 0; only (A > 0, rho high) and (A < 0, rho low)
    # select the clipped branch.
    rho_BT = jnp.array([[1.5, 0.5], [1.5, 0.5], [1.5, 0.5]])
    _, clipped_BT, _ = grpo.clipped_surrogate(rho_BT, jnp.array([[1.0], [-1.0], [0.0]]), NO_KL)
    np.testing.assert_array_equal(clipped_BT, [[True, False], [False, True], [False, False]])
    # A clipped token outside the mask is not counted.
    _, metrics = policy_loss(jnp.log(rho_BT[:2]), jnp.zeros((2, 2)), None, jnp.array([1.0, -1.0]),
                             jnp.array([[0, 1], [1, 1]]), NO_KL)
    assert float(metrics["clip_fraction"]) == pytest.approx(1 / 3)


def test_asymmetric_clip_range():
    cfg = GRPOConfig(kl_coef=0.0, clip_eps_low=0.1, clip_eps_high=0.3)
    loss_BT, clipped_BT, _ = grpo.clipped_surrogate(jnp.array([[1.25, 1.4, 0.85]]), jnp.array([[1.0]]), cfg)
    np.testing.assert_allclose(loss_BT, [[-1.25, -1.3, -0.85]], rtol=1e-6)
    np.testing.assert_array_equal(clipped_BT, [[False, True, False]])
    loss_BT, clipped_BT, _ = grpo.clipped_surrogate(jnp.array([[0.95, 0.85]]), jnp.array([[-1.0]]), cfg)
    np.testing.assert_allclose(loss_BT, [[0.95, 0.9]], rtol=1e-6)
    np.testing.assert_array_equal(clipped_BT, [[False, True]])


def test_dual_clip_caps_negative_advantages():
    # A = -1 and rho = 4: the PPO surrogate is max(4, 1.2) = 4; the dual clip at c = 3 caps it at 3, gradient 0.
    # A = +1 and rho = 4 is clipped at 1.2 either way; the dual clip does not touch A > 0.
    logp_BT, old_BT = jnp.log(jnp.array([[4.0], [4.0]])), jnp.zeros((2, 1))
    adv_B = jnp.array([-1.0, 1.0])
    mask = jnp.ones((2, 1))
    plain = jax.value_and_grad(lambda lp: policy_loss(lp, old_BT, None, adv_B, mask, NO_KL)[0])(logp_BT)
    dual_cfg = GRPOConfig(kl_coef=0.0, dual_clip=3.0)
    dual = jax.value_and_grad(lambda lp: policy_loss(lp, old_BT, None, adv_B, mask, dual_cfg)[0])(logp_BT)
    assert float(plain[0]) == pytest.approx((4.0 - 1.2) / 2, rel=1e-6)
    assert float(dual[0]) == pytest.approx((3.0 - 1.2) / 2, rel=1e-6)
    np.testing.assert_allclose(plain[1], [[4.0 / 2], [0.0]], rtol=1e-6)
    np.testing.assert_array_equal(dual[1], [[0.0], [0.0]])
    metrics = policy_loss(logp_BT, old_BT, None, adv_B, mask, dual_cfg)[1]
    assert float(metrics["dual_clip_fraction"]) == 0.5 and float(metrics["clip_fraction"]) == 0.5


@pytest.mark.parametrize("kl_estimator", grpo.KL_ESTIMATORS)
def test_kl_penalty_enters_the_loss(kl_estimator):
    ref_BT = LOGP_BT - jnp.array([[0.5, -0.2], [0.1, 0.3]])
    cfg = GRPOConfig(kl_coef=0.1, kl_estimator=kl_estimator)
    loss, metrics = policy_loss(LOGP_BT, OLD_BT, ref_BT, ADV_B, FULL_BT, cfg)
    kl = float(jnp.mean(grpo.kl_estimate(LOGP_BT, ref_BT, kl_estimator)))
    assert float(metrics["kl"]) == pytest.approx(kl, rel=1e-5)
    assert float(loss) == pytest.approx(-0.05 + 0.1 * kl, rel=1e-5)
    assert float(metrics["pg_loss"]) == pytest.approx(-0.05, abs=1e-6)


def test_reference_ignored_when_kl_coef_is_zero():
    base = policy_loss(LOGP_BT, OLD_BT, None, ADV_B, FULL_BT, NO_KL)[0]
    junk = policy_loss(LOGP_BT, OLD_BT, jnp.full((2, 2), jnp.nan), ADV_B, FULL_BT, NO_KL)[0]
    assert float(base) == float(junk)
    with pytest.raises(ValueError, match="kl_coef = 0.04 needs ref_logp_BT"):
        policy_loss(LOGP_BT, OLD_BT, None, ADV_B, FULL_BT, GRPOConfig())


@pytest.mark.parametrize("loss_agg", grpo.LOSS_AGGS)
def test_empty_rows_and_junk_padding_change_nothing(loss_agg):
    # Add an empty third row and a padding column full of -inf/NaN: loss, metrics and gradient stay those of the
    # real tokens, with no NaN anywhere.
    cfg = GRPOConfig(kl_coef=0.1, loss_agg=loss_agg)
    ref_BT = LOGP_BT - 0.3

    def pad(x_BT, junk):
        return jnp.pad(jnp.pad(x_BT, ((0, 1), (0, 0)), constant_values=junk), ((0, 0), (0, 1)), constant_values=junk)

    def loss_fn(logp_BT, old_BT, ref, adv_B, mask_BT):
        return policy_loss(logp_BT, old_BT, ref, adv_B, mask_BT, cfg)

    (loss, metrics), grad = jax.value_and_grad(loss_fn, has_aux=True)(LOGP_BT, OLD_BT, ref_BT, ADV_B, FULL_BT)
    padded_args = (pad(LOGP_BT, -jnp.inf), pad(OLD_BT, jnp.nan), pad(ref_BT, jnp.nan),
                   jnp.append(ADV_B, jnp.nan), pad(FULL_BT, 0))
    (ploss, pmetrics), pgrad = jax.value_and_grad(loss_fn, has_aux=True)(*padded_args)
    if loss_agg == "seq-mean-token-sum-norm":  # T grew from 2 to 3, and this mode divides by T
        ploss, pgrad = ploss * 3 / 2, pgrad * 3 / 2
    assert float(ploss) == pytest.approx(float(loss), rel=1e-5)
    np.testing.assert_allclose(pgrad[:2, :2], grad, rtol=1e-5)
    assert np.all(np.asarray(pgrad[2]) == 0.0) and np.all(np.asarray(pgrad[:, 2]) == 0.0)
    for name in ("kl", "clip_fraction", "rho_min", "rho_max", "loss_denominator"):
        assert float(pmetrics[name]) == pytest.approx(float(metrics[name]), rel=1e-5), name


@pytest.mark.parametrize("loss_agg", grpo.LOSS_AGGS)
def test_all_empty_batch_is_finite(loss_agg):
    cfg = GRPOConfig(kl_coef=0.1, loss_agg=loss_agg)
    (loss, metrics), grad = jax.value_and_grad(lambda lp: policy_loss(lp, OLD_BT, OLD_BT, ADV_B, jnp.zeros((2, 2)),
                                                                      cfg), has_aux=True)(LOGP_BT)
    assert float(loss) == 0.0 and np.all(np.asarray(grad) == 0.0)
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["rho_min"]) == float(metrics["rho_max"]) == 1.0


def _loop_reference(logp, old, ref, adv, mask, cfg):
    """policy_loss written as plain loops over the issue's formulas, in float64: the reference for random inputs."""
    B, T = logp.shape
    per_token, tokens = np.zeros((B, T)), mask.sum(axis=1)
    for b in range(B):
        for t in range(T):
            rho = math.exp(min(max(logp[b, t] - old[b, t], -20), 20))
            ppo = max(-adv[b] * rho, -adv[b] * min(max(rho, 1 - cfg.clip_eps_low), 1 + cfg.clip_eps_high))
            if cfg.dual_clip is not None and adv[b] < 0:
                ppo = min(ppo, -adv[b] * cfg.dual_clip)
            d = logp[b, t] - ref[b, t]
            kl = {"k1": d, "k2": d * d / 2, "k3": math.exp(-d) + d - 1}[cfg.kl_estimator]
            per_token[b, t] = (ppo + cfg.kl_coef * kl) * mask[b, t]
    nonempty = [b for b in range(B) if tokens[b] > 0]
    if cfg.loss_agg == "token-mean":
        return per_token.sum() / tokens.sum()
    if cfg.loss_agg == "seq-mean-token-mean":
        return sum(per_token[b].sum() / tokens[b] for b in nonempty) / len(nonempty)
    return per_token.sum() / (len(nonempty) * T)


@pytest.mark.parametrize("loss_agg, kl_estimator, dual_clip", [
    ("token-mean", "k3", None), ("token-mean", "k1", 1.25), ("seq-mean-token-mean", "k2", None),
    ("seq-mean-token-mean", "k3", 1.5), ("seq-mean-token-sum-norm", "k1", None), ("seq-mean-token-sum-norm", "k2", 3.0),
])
def test_policy_loss_matches_a_loop_reference(loss_agg, kl_estimator, dual_clip):
    rng = np.random.default_rng(0)
    old = rng.normal(-1.5, 0.5, (5, 6))
    logp = old + rng.normal(0, 0.4, (5, 6))  # ratios well outside [0.8, 1.2] on both sides
    ref = old + rng.normal(0, 0.3, (5, 6))
    adv = rng.normal(0, 1, 5)
    mask = (rng.random((5, 6)) < 0.7).astype(np.float64)
    mask[3] = 0  # an empty sequence
    cfg = GRPOConfig(kl_coef=0.05, kl_estimator=kl_estimator, loss_agg=loss_agg, dual_clip=dual_clip)
    loss, metrics = policy_loss(*(jnp.asarray(x, jnp.float32) for x in (logp, old, ref, adv, mask)), cfg)
    assert float(loss) == pytest.approx(_loop_reference(logp, old, ref, adv, mask, cfg), rel=1e-4)
    assert 0 < float(metrics["clip_fraction"]) < 1
    assert (float(metrics["dual_clip_fraction"]) > 0) == (dual_clip is not None and dual_clip < 3)  # c = 3: unused

def test_policy_loss_jits_with_static_config():
    cfg = GRPOConfig(kl_coef=0.1, dual_clip=3.0, loss_agg="seq-mean-token-mean")
    ref_BT = OLD_BT - 0.2
    eager = policy_loss(LOGP_BT, OLD_BT, ref_BT, ADV_B, FULL_BT, cfg)
    jitted = jax.jit(policy_loss, static_argnames="cfg")(LOGP_BT, OLD_BT, ref_BT, ADV_B, FULL_BT, cfg=cfg)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted)


def test_policy_loss_names_mismatched_shapes():
    with pytest.raises(ValueError, match=r"mask_BT has shape \(2, 3\), logp_BT has \(2, 2\)"):
        policy_loss(LOGP_BT, OLD_BT, None, ADV_B, jnp.ones((2, 3)), NO_KL)
    with pytest.raises(ValueError, match=r"advantages_B has shape \(2, 1\)"):
        policy_loss(LOGP_BT, OLD_BT, None, ADV_B[:, None], FULL_BT, NO_KL)


# ---------------------------------------------------------------------------------------------- a toy policy


def _toy_step(cfg, steps, lr):
    """A 2-token categorical policy: a group of 4 samples (tokens 0, 1, 0, 1) where token 0 earns reward 1.

    The old and reference policies are the starting one, as at the start of an RL step; every step is an optax
    update of the logits on the same rollout. Returns p(token 0) after each step."""
    tokens_B = jnp.array([0, 1, 0, 1])
    advantages_B = group_advantages(jnp.array([[1.0, 0.0, 1.0, 0.0]]), cfg.estimator)[0]
    logits = jnp.zeros(2)
    old_BT = jax.nn.log_softmax(logits)[tokens_B][:, None]
    opt = optax.sgd(lr)
    opt_state = opt.init(logits)

    def loss_fn(logits):
        logp_BT = jax.nn.log_softmax(logits)[tokens_B][:, None]
        return policy_loss(logp_BT, old_BT, old_BT, advantages_B, jnp.ones((4, 1)), cfg)[0]

    grad_fn = jax.jit(jax.grad(loss_fn))
    probs = []
    for _ in range(steps):
        updates, opt_state = opt.update(grad_fn(logits), opt_state)
        logits = optax.apply_updates(logits, updates)
        probs.append(float(jax.nn.softmax(logits)[0]))
    return probs


@pytest.mark.parametrize("cfg", [GRPOConfig(), GRPOConfig(estimator="rloo", kl_estimator="k1"),
                                 GRPOConfig(estimator="drgrpo", loss_agg="seq-mean-token-sum-norm", kl_coef=0.0)])
def test_toy_policy_moves_toward_the_rewarded_token(cfg):
    probs = _toy_step(cfg, steps=3, lr=0.1)
    assert 0.5 < probs[0] < probs[1] < probs[2]


def test_clipping_bounds_how_far_one_rollout_moves_the_policy():
    # With the same rollout reused many times (mu large), p(token 0) / 0.5 stops at 1 + eps_high = 1.2 and
    # p(token 1) / 0.5 at 1 - eps_low = 0.8: both clipped, no gradient left. Without clipping it would go to 1.
    probs = _toy_step(GRPOConfig(kl_coef=0.0), steps=300, lr=0.05)
    assert 0.59 < probs[-1] < 0.62
    assert probs[-1] == pytest.approx(probs[-50], abs=1e-6)
