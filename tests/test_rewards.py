"""Rewards of the two agents from real Judgement objects, against hand-computed values."""

import math

import jax
import numpy as np
import pytest

from algoforge_jax.rl import rewards
from algoforge_jax.rl.grpo import group_advantages
from algoforge_jax.rl.rewards import ProgramOutcomes, RewardConfig
from eval import problems
from eval.problems import Judgement, Verdict


def judgement(verdicts: str, time_s: float = 0.1) -> Judgement:
    """A judgement from per-test verdict letters: P pass, W wrong answer; "" is NO_CODE and "C" a compile error."""
    if verdicts == "":
        return Judgement(Verdict.NO_CODE, tests=())
    if verdicts == "C":
        return Judgement(Verdict.CE, tests=(problems.TestOutcome(Verdict.CE, 0.0, 0.0),))
    tests = tuple(problems.TestOutcome(Verdict.PASS if v == "P" else Verdict.WA, time_s / len(verdicts), 1.0)
                  for v in verdicts)
    first_failure = next((t.verdict for t in tests if t.verdict is not Verdict.PASS), Verdict.PASS)
    return Judgement(first_failure, tests)


def outcomes(judgements, tests_total=4, ref_time_s=0.1):
    return ProgramOutcomes.from_judgements(judgements, (len(judgements),), tests_total, ref_time_s)


def test_from_judgements_reads_verdicts():
    got = outcomes([judgement("PPPP", 0.2), judgement("PPWW"), judgement(""), judgement("C")])
    np.testing.assert_array_equal(got.passed, [True, False, False, False])
    np.testing.assert_array_equal(got.tests_passed, [4, 2, 0, 0])
    np.testing.assert_array_equal(got.tests_total, [4, 4, 4, 4])
    np.testing.assert_array_equal(got.well_formed, [True, True, False, False])
    np.testing.assert_allclose(got.time_s, [0.2, 0.1, 0.0, 0.0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"3 judgements do not fill shape \(2, 2\)"):
        ProgramOutcomes.from_judgements([judgement("P")] * 3, (2, 2), 1, 0.1)


def test_correctness_all_or_fraction():
    got = outcomes([judgement("PPPP"), judgement("PPPW"), judgement("WWWW"), judgement("")])
    np.testing.assert_allclose(rewards.coder_rewards(got, RewardConfig()), [1, 0, 0, 0])
    np.testing.assert_allclose(rewards.coder_rewards(got, RewardConfig(correctness="fraction")), [1, 0.75, 0, 0])


def test_format_term_rewards_well_formed_programs():
    got = outcomes([judgement("PPPP"), judgement("WWWW"), judgement("C"), judgement("")])
    np.testing.assert_allclose(rewards.coder_rewards(got, RewardConfig(format_coef=0.1)), [1.1, 0.1, 0, 0],
                               rtol=1e-6)


def test_efficiency_term_by_hand():
    # Reference 0.1 s, floor 0.01 s. Programs: as fast (1), faster (capped at 1), twice as slow ((0.11 / 0.21)),
    # failing and fast (0: only correct programs earn it), passing but with no reference time (0).
    got = outcomes([judgement("PPPP", 0.1), judgement("PPPP", 0.01), judgement("PPPP", 0.2), judgement("WWWW", 0.01),
                    judgement("PPPP", 0.1)], ref_time_s=[0.1, 0.1, 0.1, 0.1, math.nan])
    cfg = RewardConfig(efficiency_coef=0.5, time_floor_s=0.01)
    np.testing.assert_allclose(rewards.efficiency(got, cfg.time_floor_s), [1, 1, 0.11 / 0.21, 0, 0], rtol=1e-5)
    np.testing.assert_allclose(rewards.coder_rewards(got, cfg), [1.5, 1.5, 1 + 0.5 * 0.11 / 0.21, 0, 1], rtol=1e-5)


# Plan (p, j) of P = 2 problems x Gp = 3 plans gets PASSES[p][j] passing programs out of Gc = 4: every plan has its
# own pass count, so any mix-up of plans, problems or axes changes the planner rewards.
PASSES = [[0, 1, 4], [3, 2, 1]]
P, GP, GC = 2, 3, 4


def collaborative_outcomes() -> ProgramOutcomes:
    flat = [judgement("PPPP" if k < PASSES[p][j] else "PPWW") for p in range(P) for j in range(GP) for k in range(GC)]
    return ProgramOutcomes.from_judgements(flat, (P, GP, GC), tests_total=[[[4]], [[4]]], ref_time_s=0.1)


def test_planner_rewards_aggregate_the_programs_of_their_plan():
    coder_PGpGc = rewards.coder_rewards(collaborative_outcomes(), RewardConfig())
    planner_mean = rewards.planner_rewards(coder_PGpGc, RewardConfig())
    np.testing.assert_allclose(planner_mean, np.array(PASSES) / GC)
    planner_max = rewards.planner_rewards(coder_PGpGc, RewardConfig(planner_agg="max"))
    np.testing.assert_array_equal(planner_max, np.array(PASSES) > 0)
    fraction = rewards.coder_rewards(collaborative_outcomes(), RewardConfig(correctness="fraction"))
    np.testing.assert_allclose(rewards.planner_rewards(fraction, RewardConfig()), (np.array(PASSES) / GC + 1) / 2)


def test_planner_rewards_need_three_axes():
    with pytest.raises(ValueError, match=r"must be \[P, Gp, Gc\], got shape \(6, 4\)"):
        rewards.planner_rewards(np.zeros((6, 4)), RewardConfig())


def test_agent_rewards_groups_and_metrics():
    (coder_PGpGc, planner_PGp), metrics = rewards.agent_rewards(collaborative_outcomes(), RewardConfig())
    assert coder_PGpGc.shape == (P, GP, GC) and planner_PGp.shape == (P, GP)
    # Coder groups: plans with 0 or 4 passes out of 4 have one reward throughout (2 of 6); planner groups: no
    # problem has equal pass counts across its plans.
    assert float(metrics["coder/zero_variance_fraction"]) == pytest.approx(2 / 6)
    assert float(metrics["planner/zero_variance_fraction"]) == 0.0
    assert float(metrics["pass_rate"]) == pytest.approx(sum(map(sum, PASSES)) / (P * GP * GC))
    # Coder advantages are taken within each plan's programs: plan (0, 1) has one passing program out of four.
    coder_adv = group_advantages(coder_PGpGc)
    np.testing.assert_allclose(coder_adv[0, 1], [1.5, -0.5, -0.5, -0.5], rtol=1e-5)
    assert np.all(np.asarray(coder_adv[0, 0]) == 0) and np.all(np.asarray(coder_adv[0, 2]) == 0)


def test_rewards_jit_with_static_config():
    cfg = RewardConfig(correctness="fraction", format_coef=0.1, efficiency_coef=0.2)
    got = collaborative_outcomes()
    eager = rewards.agent_rewards(got, cfg)
    jitted = jax.jit(rewards.agent_rewards, static_argnums=1)(got, cfg)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted)


@pytest.mark.parametrize("kwargs, field", [
    ({"correctness": "some"}, "correctness"), ({"planner_agg": "min"}, "planner_agg"),
    ({"format_coef": -0.1}, "format_coef"), ({"efficiency_coef": math.nan}, "efficiency_coef"),
    ({"time_floor_s": 0.0}, "time_floor_s"), ({"format_coef": "0.1"}, "format_coef"),
])
def test_reward_config_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=f"RewardConfig.{field} must be") as info:
        RewardConfig(**kwargs)
    assert "\n" not in str(info.value)
