"""The GRPO math: group-relative advantages and the clipped policy loss with a KL penalty, as pure jit-able functions.

Shapes: B sequences (or groups, for rewards), G members of a group, T response tokens. A group is the G samples
drawn for one prompt; its rewards sit on the last axis (`rewards_BG`, or `[P, Gp, Gc]` for the Coder, whose groups
are the programs of one (problem, plan)).

Names and formulas follow verl (`verl/trainer/ppo/core_algos.py`) and TRL (`trl/trainer/grpo_trainer.py`); each
docstring says where we differ and why. Left out: value functions, token-level rewards, sequence-level importance
ratios (GSPO) and the other loss variants those libraries carry; gradient accumulation and the optimiser live in the
RL step, which combines mini-batches through the `loss_denominator` metric (see `aggregate`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

ESTIMATORS = ("grpo", "drgrpo", "rloo")
KL_ESTIMATORS = ("k1", "k2", "k3")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
LOG_RATIO_CLAMP = 20.0  # exp(±20) stays finite in float32; beyond it a token's ratio carries no useful gradient


# ---------------------------------------------------------------------------------------------- advantages


def zero_variance_groups(rewards_BG: jax.Array) -> jax.Array:
    """`[B]` bool: True where every member of the group has exactly the same reward (a group of one included).

    Such a group has zero advantage under every estimator, so it teaches nothing; the rollout counts these groups
    and may drop and refill them (dynamic sampling). Exact equality, because rewards are sums of a few fixed terms.
    """
    return jnp.all(rewards_BG == rewards_BG[..., :1], axis=-1)


def group_advantages(rewards_BG: jax.Array, estimator: str = "grpo", eps: float = 1e-6) -> jax.Array:
    """Advantage of each member of each group (groups on the last axis; any leading axes), float32.

    - `grpo`:   A = (r − mean) / (std + eps), std unbiased (ddof = 1) over the group, as verl and TRL.
    - `drgrpo`: A = r − mean (Dr. GRPO: no division by std, which over-weights nearly-uniform groups).
    - `rloo`:   A = r − mean of the other G − 1 members = G / (G − 1) · (r − mean).

    A group whose rewards are all equal, and so a group of one, gets exactly 0. verl differs for a group of one: it
    uses mean 0 and std 1 there, so a lone sample's advantage is its raw reward; we give 0 because one sample has no
    baseline to be better or worse than. The explicit zero also removes float rounding in identical groups, which
    verl and TRL leave in: three rewards of 1.1 have a float32 mean one ulp off, and (r − mean) / (0 + 1e-6) ≈ −0.1.
    TRL uses eps = 1e-4; verl and we use 1e-6.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"advantage estimator must be one of {ESTIMATORS}, got {estimator!r}")
    r_BG = jnp.asarray(rewards_BG, jnp.float32)
    G = r_BG.shape[-1]
    centered_BG = r_BG - r_BG.mean(axis=-1, keepdims=True)
    if estimator == "grpo":
        advantages_BG = centered_BG / (jnp.std(r_BG, axis=-1, ddof=1 if G > 1 else 0, keepdims=True) + eps)
    elif estimator == "rloo":
        advantages_BG = centered_BG * (G / max(G - 1, 1))
    else:
        advantages_BG = centered_BG
    return jnp.where(zero_variance_groups(r_BG)[..., None], 0.0, advantages_BG)


def group_metrics(rewards_BG: jax.Array) -> dict[str, jax.Array]:
    """Reward statistics of a batch of groups: mean reward and the fraction of groups with zero reward variance.

    This lives apart from `policy_loss` on purpose: the loss sees one advantage per sequence and no group structure
    (a zero advantage need not mean a zero-variance group), while the rewards carry the groups on their last axis.
    """
    return {"reward_mean": jnp.mean(jnp.asarray(rewards_BG, jnp.float32)),
            "zero_variance_fraction": jnp.mean(zero_variance_groups(rewards_BG).astype(jnp.float32))}


# ---------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """The knobs of the GRPO loss, validated on construction. Hashable, so it can be a static jit argument."""

    clip_eps_low: float = 0.2  # ρ is clipped below at 1 − clip_eps_low
    clip_eps_high: float = 0.2  # ρ is clipped above at 1 + clip_eps_high (DAPO's "clip higher" raises it, e.g. 0.28)
    dual_clip: float | None = None  # c > 1: for A < 0 the surrogate is capped at −A·c (dual-clip PPO); None: off
    kl_coef: float = 0.04  # β of the KL penalty to the frozen reference (GRPO paper's value); 0 skips the reference
    kl_estimator: str = "k3"  # k1 | k2 | k3, see kl_estimate
    loss_agg: str = "token-mean"  # token-mean | seq-mean-token-mean | seq-mean-token-sum-norm, see aggregate
    estimator: str = "grpo"  # grpo | drgrpo | rloo, see group_advantages
    num_iterations: int = 1  # μ: optimiser passes over each rollout; 1 keeps ρ ≡ 1 (purely on-policy)

    def __post_init__(self):
        for name, options in (("kl_estimator", KL_ESTIMATORS), ("loss_agg", LOSS_AGGS), ("estimator", ESTIMATORS)):
            if getattr(self, name) not in options:
                raise ValueError(f"GRPOConfig.{name} must be one of {options}, got {getattr(self, name)!r}")
        for name, ok, requirement in _NUMERIC_FIELDS:
            if not ok(getattr(self, name)):
                raise ValueError(f"GRPOConfig.{name} must be {requirement}, got {getattr(self, name)!r}")


def _real(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)  # "0.2" from a config must not compare


_NUMERIC_FIELDS = (  # (field, check, what the check requires); NaN fails every comparison
    ("clip_eps_low", lambda x: _real(x) and 0 <= x < 1, "in [0, 1)"),
    ("clip_eps_high", lambda x: _real(x) and 0 <= x < math.inf, "finite and >= 0"),
    ("dual_clip", lambda x: x is None or _real(x) and 1 < x < math.inf, "None or a finite number > 1"),
    ("kl_coef", lambda x: _real(x) and 0 <= x < math.inf, "finite and >= 0"),
    ("num_iterations", lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 1, "an integer >= 1"),
)


# ---------------------------------------------------------------------------------------------- loss


def kl_estimate(logp_BT: jax.Array, ref_logp_BT: jax.Array, estimator: str) -> jax.Array:
    """Per-token estimate of KL(π ‖ π_ref) from the log-probs of sampled tokens (Schulman, "Approximating KL").

    - k1 = logp − ref: unbiased, high variance, can be negative.
    - k2 = ½ (logp − ref)²: biased but >= 0 and low variance.
    - k3 = exp(ref − logp) − (ref − logp) − 1: unbiased, >= 0, low variance (the GRPO paper's choice).

    For k3 we clamp ref − logp to ±20 so exp stays finite (beyond that the penalty saturates, with zero gradient);
    verl clamps the same way and also caps k3 at 10, TRL does not clamp. With μ > 1 the tokens come from the old
    policy, not π, so the estimates are slightly off-policy, as in verl and TRL.
    """
    if estimator == "k1":
        return logp_BT - ref_logp_BT
    if estimator == "k2":
        return 0.5 * jnp.square(logp_BT - ref_logp_BT)
    log_ratio_BT = jnp.clip(ref_logp_BT - logp_BT, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return jnp.exp(log_ratio_BT) - log_ratio_BT - 1


def aggregate(loss_BT: jax.Array, mask_BT: jax.Array, loss_agg: str) -> tuple[jax.Array, jax.Array]:
    """Reduce per-token losses to `(loss, denominator)`; only tokens where `mask_BT` is set count.

    With n_b the tokens of sequence b, S the sequences with n_b > 0 and ℓ the masked per-token loss:
    - token-mean:              Σ_b Σ_t ℓ / Σ_b n_b                   denominator = Σ_b n_b (tokens)
    - seq-mean-token-mean:     Σ_{b∈S} (Σ_t ℓ / n_b) / |S|           denominator = |S|
    - seq-mean-token-sum-norm: Σ_b Σ_t ℓ / (|S| · T), as Dr. GRPO    denominator = |S|

    A sequence with no tokens contributes nothing and is not counted (verl does the same in seq-mean-token-mean;
    TRL's "grpo" loss counts it in its mean as a 0). For seq-mean-token-sum-norm, T is the padded length of the
    batch, a constant of its shape: the rollout should pad responses to its generation budget so that T is Dr.
    GRPO's MAX_TOKENS. verl divides this mode by T alone (batch scaling happens elsewhere) and TRL's "dr_grpo" by
    B · max_completion_length, empty rows included; we count only non-empty sequences so that rows padded in to keep
    shapes static do not shrink the loss. An all-empty batch gives loss 0 (denominator 0, no division by zero).

    Gradient accumulation over mini-batches i: loss = Σ_i loss_i · denominator_i / Σ_i denominator_i.
    """
    valid_BT = mask_BT.astype(bool)
    sum_B = jnp.sum(jnp.where(valid_BT, loss_BT, 0.0), axis=-1)
    tokens_B = jnp.sum(valid_BT, axis=-1).astype(jnp.float32)
    sequences = jnp.sum(tokens_B > 0).astype(jnp.float32)
    if loss_agg == "token-mean":
        total, denominator = jnp.sum(sum_B), jnp.sum(tokens_B)
    elif loss_agg == "seq-mean-token-mean":
        total, denominator = jnp.sum(sum_B / jnp.maximum(tokens_B, 1.0)), sequences
    elif loss_agg == "seq-mean-token-sum-norm":
        total, denominator = jnp.sum(sum_B) / loss_BT.shape[-1], sequences
    else:
        raise ValueError(f"loss_agg must be one of {LOSS_AGGS}, got {loss_agg!r}")
    return total / jnp.maximum(denominator, 1.0), denominator


def clipped_surrogate(rho_BT: jax.Array, advantages_B1: jax.Array,
                      cfg: GRPOConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-token PPO surrogate `(loss_BT, clipped_BT, capped_BT)`, to be minimised.

    loss = max(−A·ρ, −A·clip(ρ, 1 − ε_low, 1 + ε_high)), and with dual_clip = c, for A < 0: min(loss, −A·c).
    `clipped_BT` marks tokens where the clipped branch is strictly the larger (ρ > 1 + ε_high with A > 0, or
    ρ < 1 − ε_low with A < 0): those tokens get no gradient. `capped_BT` marks tokens held at the dual-clip cap
    (A < 0 and ρ > c), which get no gradient either. Same definitions as verl's compute_policy_loss_vanilla; verl
    always applies the dual clip (c = 3 by default), we only when asked, as TRL (which has no dual clip).
    """
    unclipped_BT = -advantages_B1 * rho_BT
    clipped_value_BT = -advantages_B1 * jnp.clip(rho_BT, 1 - cfg.clip_eps_low, 1 + cfg.clip_eps_high)
    clipped_BT = clipped_value_BT > unclipped_BT
    # where on clipped_BT, not maximum: the branch that gives the loss (and the gradient) is the one the metric counts.
    loss_BT = jnp.where(clipped_BT, clipped_value_BT, unclipped_BT)
    if cfg.dual_clip is None:
        return loss_BT, clipped_BT, jnp.zeros_like(clipped_BT)
    cap_BT = -advantages_B1 * cfg.dual_clip
    capped_BT = (advantages_B1 < 0) & (loss_BT > cap_BT)
    return jnp.where(capped_BT, cap_BT, loss_BT), clipped_BT, capped_BT


def _check_shapes(logp_BT, old_logp_BT, ref_logp_BT, advantages_B, mask_BT) -> None:
    shapes = {"old_logp_BT": old_logp_BT.shape, "mask_BT": mask_BT.shape}
    if ref_logp_BT is not None:
        shapes["ref_logp_BT"] = ref_logp_BT.shape
    for name, shape in shapes.items():
        if shape != logp_BT.shape:
            raise ValueError(f"policy_loss: {name} has shape {shape}, logp_BT has {logp_BT.shape}")
    if advantages_B.shape != logp_BT.shape[:1]:
        raise ValueError(f"policy_loss: advantages_B has shape {advantages_B.shape}, expected {logp_BT.shape[:1]}")


def _masked_mean(x_BT: jax.Array, valid_BT: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(valid_BT, x_BT, 0)) / jnp.maximum(jnp.sum(valid_BT), 1)


def _rho_range(rho_BT: jax.Array, valid_BT: jax.Array) -> dict[str, jax.Array]:
    """Smallest and largest ρ over real tokens; 1 (the on-policy value) when there are none."""
    anything = jnp.any(valid_BT)
    return {"rho_min": jnp.where(anything, jnp.min(jnp.where(valid_BT, rho_BT, jnp.inf)), 1.0),
            "rho_max": jnp.where(anything, jnp.max(jnp.where(valid_BT, rho_BT, -jnp.inf)), 1.0)}


def _kl_term(logp_BT: jax.Array, ref_logp_BT: jax.Array | None, valid_BT: jax.Array, cfg: GRPOConfig) -> jax.Array:
    """Per-token KL estimate against the frozen reference; zeros, without reading the reference, when β = 0."""
    if cfg.kl_coef == 0:
        return jnp.zeros_like(logp_BT)
    if ref_logp_BT is None:
        raise ValueError(f"policy_loss: kl_coef = {cfg.kl_coef} needs ref_logp_BT (only kl_coef = 0 allows None)")
    ref_BT = jnp.where(valid_BT, jax.lax.stop_gradient(ref_logp_BT).astype(jnp.float32), 0.0)
    return kl_estimate(logp_BT, ref_BT, cfg.kl_estimator)


def policy_loss(logp_BT: jax.Array, old_logp_BT: jax.Array, ref_logp_BT: jax.Array | None,
                advantages_B: jax.Array, mask_BT: jax.Array, cfg: GRPOConfig) -> tuple[jax.Array, dict]:
    """GRPO loss of one batch of responses and its metrics.

    Per token: ρ = exp(clamp(logp − old, −20, 20)), ℓ = clipped_surrogate(ρ, A) + β · KL(logp, ref), with the KL
    estimate of `cfg.kl_estimator`; then `aggregate` by `cfg.loss_agg`. The gradient reaches `logp_BT` only, through
    ρ and the KL term: old log-probs, reference log-probs and advantages are constants (stop_gradient). With β = 0
    the reference is ignored and may be None. Tokens outside the mask may hold anything (−inf, NaN): they are
    zeroed before any arithmetic, so they reach neither the loss nor its gradient.

    Differences from verl / TRL: the KL is in the loss (verl's use_kl_loss, TRL's beta), not in the reward; TRL
    does not clamp the log-ratio (verl does, as we do).

    Metrics (masked tokens only): `clip_fraction` (tokens whose clipped branch is active), `dual_clip_fraction`,
    `kl` (mean per-token estimate; 0 when β = 0), `rho_min` / `rho_max`, `pg_loss` (the surrogate alone, aggregated
    like the loss) and `loss_denominator` (for accumulation, see `aggregate`). The fraction of zero-variance groups
    needs the groups, which this loss does not see: `group_metrics` computes it from the rewards.
    """
    _check_shapes(logp_BT, old_logp_BT, ref_logp_BT, advantages_B, mask_BT)
    valid_BT = mask_BT.astype(bool)
    logp_BT = jnp.where(valid_BT, logp_BT.astype(jnp.float32), 0.0)
    old_BT = jnp.where(valid_BT, jax.lax.stop_gradient(old_logp_BT).astype(jnp.float32), 0.0)
    advantages_B1 = jax.lax.stop_gradient(advantages_B).astype(jnp.float32)[:, None]
    rho_BT = jnp.exp(jnp.clip(logp_BT - old_BT, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    pg_BT, clipped_BT, capped_BT = clipped_surrogate(rho_BT, advantages_B1, cfg)
    kl_BT = _kl_term(logp_BT, ref_logp_BT, valid_BT, cfg)
    loss, denominator = aggregate(pg_BT + cfg.kl_coef * kl_BT, valid_BT, cfg.loss_agg)
    metrics = {"pg_loss": aggregate(pg_BT, valid_BT, cfg.loss_agg)[0], "kl": _masked_mean(kl_BT, valid_BT),
               "clip_fraction": _masked_mean(clipped_BT, valid_BT),
               "dual_clip_fraction": _masked_mean(capped_BT, valid_BT),
               **_rho_range(rho_BT, valid_BT), "loss_denominator": denominator}
    return loss, metrics

