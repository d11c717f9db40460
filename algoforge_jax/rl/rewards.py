"""Rewards of the two agents, computed from what the sandbox said about the Coder's programs.

Layout: P problems, Gp plans per problem (Planner samples), Gc programs per plan (Coder samples). Every per-program
array is `[P, Gp, Gc]` in that order: flattened row-major, program k of plan j of problem p sits at
(p·Gp + j)·Gc + k. Coder groups are the Gc programs of one (problem, plan), so coder advantages are taken over the
last axis; planner groups are the Gp plans of one problem, and a plan's reward aggregates the rewards of the
programs written from it (`[P, Gp, Gc] -> [P, Gp]`).

Pure array functions; nothing here runs code. Left out: judging (the sandbox), dropping and refilling groups with
no reward variance (the rollout does that with `grpo.zero_variance_groups`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from algoforge_jax.rl import grpo
from eval.problems import Judgement, Verdict

CORRECTNESS = ("all", "fraction")
PLANNER_AGGS = ("mean", "max")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """How a program's judgement becomes a reward, and the programs' rewards a plan's. Validated on construction."""

    correctness: str = "all"  # "all": 1 if every test passed else 0; "fraction": tests passed / tests
    format_coef: float = 0.0  # added for a well-formed program (extracted and compiled), failing or not
    efficiency_coef: float = 0.0  # times `efficiency` (in [0, 1]) for passing programs
    time_floor_s: float = 0.01  # added to both runtimes, so timer noise on millisecond runs decides nothing
    planner_agg: str = "mean"  # "mean" or "max" of a plan's program rewards

    def __post_init__(self):
        for name, options in (("correctness", CORRECTNESS), ("planner_agg", PLANNER_AGGS)):
            if getattr(self, name) not in options:
                raise ValueError(f"RewardConfig.{name} must be one of {options}, got {getattr(self, name)!r}")
        for name, requirement, ok in (("format_coef", ">= 0", lambda v: 0 <= v < math.inf),
                                      ("efficiency_coef", ">= 0", lambda v: 0 <= v < math.inf),
                                      ("time_floor_s", "> 0", lambda v: 0 < v < math.inf)):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and ok(value)):  # NaN fails the comparisons too
                raise ValueError(f"RewardConfig.{name} must be a finite number {requirement}, got {value!r}")


class ProgramOutcomes(NamedTuple):
    """What the sandbox said about each program: arrays of one shape (`[P, Gp, Gc]` in the rollout). A pytree."""

    passed: jax.Array  # bool: every test passed
    tests_passed: jax.Array  # int: tests passed; "fraction" needs a judge that runs every test (no early stop)
    tests_total: jax.Array  # int: tests of the problem
    well_formed: jax.Array  # bool: a program was extracted and it compiled
    time_s: jax.Array  # float: the program's CPU seconds over the tests it ran
    ref_time_s: jax.Array  # float: the reference solution's CPU seconds over the same tests; NaN if unknown

    @classmethod
    def from_judgements(cls, judgements: Sequence[Judgement], shape: tuple[int, ...], tests_total,
                        ref_time_s) -> ProgramOutcomes:
        """Arrays of `shape` from judgements listed row-major; `tests_total` and `ref_time_s` broadcast to it
        (e.g. `[P, 1, 1]`: one value per problem).

        NO_CODE and CE are not well-formed. A SANDBOX_ERROR (our fault, not the program's) counts as a well-formed
        failure; the rollout should rejudge such programs before rewarding them.
        """
        if len(judgements) != math.prod(shape):
            raise ValueError(f"from_judgements: {len(judgements)} judgements do not fill shape {shape}")

        def field(f):
            return np.array([f(j) for j in judgements]).reshape(shape)

        return cls(passed=field(lambda j: j.passed),
                   tests_passed=field(lambda j: sum(t.verdict is Verdict.PASS for t in j.tests)),
                   tests_total=np.broadcast_to(np.asarray(tests_total, np.int32), shape),
                   well_formed=field(lambda j: j.verdict not in (Verdict.NO_CODE, Verdict.CE)),
                   time_s=field(lambda j: j.time_s).astype(np.float32),
                   ref_time_s=np.broadcast_to(np.asarray(ref_time_s, np.float32), shape))


def efficiency(outcomes: ProgramOutcomes, time_floor_s: float) -> jax.Array:
    """Speed against the reference, in [0, 1], for passing programs: min(1, (ref + floor) / (time + floor)).

    As fast as the reference or faster: 1; twice as slow: about ½. A failing program, or one whose problem has no
    reference time, gets 0: speed only means something for a correct program measured against a known baseline.
    The bound keeps the term a tie-breaker among correct programs, never a reason to prefer a fast wrong one.
    """
    ref_s = jnp.asarray(outcomes.ref_time_s, jnp.float32)
    ratio = (ref_s + time_floor_s) / (jnp.asarray(outcomes.time_s, jnp.float32) + time_floor_s)
    known = jnp.isfinite(ref_s) & (ref_s >= 0)
    return jnp.where(jnp.asarray(outcomes.passed) & known, jnp.clip(ratio, 0.0, 1.0), 0.0)


def coder_rewards(outcomes: ProgramOutcomes, cfg: RewardConfig) -> jax.Array:
    """Reward of each program, float32, same shape as the outcomes:

    correctness + format_coef · well_formed + efficiency_coef · efficiency, where correctness is 1[all tests pass]
    ("all") or tests passed / tests ("fraction"; a problem with no tests counts as passed or not).
    """
    passed = jnp.asarray(outcomes.passed, jnp.float32)
    if cfg.correctness == "all":
        correct = passed
    else:
        total = jnp.asarray(outcomes.tests_total, jnp.float32)
        correct = jnp.where(total > 0, jnp.asarray(outcomes.tests_passed, jnp.float32) / jnp.maximum(total, 1), passed)
    return (correct + cfg.format_coef * jnp.asarray(outcomes.well_formed, jnp.float32)
            + cfg.efficiency_coef * efficiency(outcomes, cfg.time_floor_s))


def planner_rewards(coder_rewards_PGpGc: jax.Array, cfg: RewardConfig) -> jax.Array:
    """Reward of each plan `[P, Gp]`: the mean (or max) of the rewards of the Gc programs written from it.

    Mean rewards a plan that makes the Coder reliably right; max rewards a plan that makes it right at least once.
    """
    shape = jnp.shape(coder_rewards_PGpGc)
    if len(shape) != 3:
        raise ValueError(f"planner_rewards: coder rewards must be [P, Gp, Gc], got shape {shape}")
    agg = jnp.mean if cfg.planner_agg == "mean" else jnp.max
    return agg(jnp.asarray(coder_rewards_PGpGc, jnp.float32), axis=-1)


def agent_rewards(outcomes: ProgramOutcomes, cfg: RewardConfig) -> tuple[tuple[jax.Array, jax.Array], dict]:
    """`((coder_PGpGc, planner_PGp), metrics)`: both agents' rewards and what to log about them.

    Metrics: each agent's mean reward and fraction of zero-variance groups (coder groups: programs of one plan;
    planner groups: plans of one problem), the pass rate and the well-formed rate of the programs.
    """
    coder_PGpGc = coder_rewards(outcomes, cfg)
    planner_PGp = planner_rewards(coder_PGpGc, cfg)
    metrics = {f"{agent}/{k}": v for agent, r in (("coder", coder_PGpGc), ("planner", planner_PGp))
               for k, v in grpo.group_metrics(r).items()}
    metrics["pass_rate"] = jnp.mean(jnp.asarray(outcomes.passed, jnp.float32))
    metrics["well_formed_rate"] = jnp.mean(jnp.asarray(outcomes.well_formed, jnp.float32))
    return (coder_PGpGc, planner_PGp), metrics
