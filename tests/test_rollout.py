"""The collaborative rollout with real parts: two tiny random Qwen2 models (Planner, Coder) sharing one sampler, the
bundled Qwen2.5 tokenizer and its chat template, a real sandbox with two workers, two small problems.

A random model writes no working code, so most tests judge through `KnownPrograms`: the real sandbox, handed for
each job a correct or a wrong program *for that job's problem*, chosen by a hash of the program the Coder wrote.
Which slot passes is then fixed by the sampled text alone, and the test recomputes it from the returned tokens:
a row shuffled anywhere between the sampler, the judge and the reward arrays puts a reward in the wrong slot.
"""

import functools
import threading
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from algoforge_jax import sharding
from algoforge_jax.models.build import init_model
from algoforge_jax.models.qwen2 import PRESETS
from algoforge_jax.rl import grpo
from algoforge_jax.rl.rewards import RewardConfig
from algoforge_jax.rl.rollout import (AgentSampling, Chat, Policy, RolloutConfig, judge_programs, judging_jobs,
                                      rollout, score, split_judgements, start_rollout)
from algoforge_jax.sampling import Sampler, SamplerConfig
from algoforge_jax.tokenizer import BUNDLED_QWEN25, load_tokenizer
from eval.problems import Judgement, Problem, Verdict
from eval.problems import Test as Case  # not "Test*": pytest would try to collect it
from eval.sandbox import Sandbox
from eval.score import program_for
from hf_tiny import one_device_mesh

N = 12  # both agents' response budget
P, GP, GC = 2, 2, 3
# A random model stops on <|im_end|> about never; with every id from 140000 up (8% of the vocabulary) as a stop
# token, rows end at varied lengths, so the masks below are tested on short and full-length responses alike.
STOPS = tuple(range(140_000, 151_936))
ADD = Problem("add", "Return the sum of two integers a and b.",
              (Case("assert", code="assert add(1, 2) == 3"), Case("assert", code="assert add(-4, 4) == 0")),
              entry_point="add", reference_solution="def add(a, b):\n    return a + b")
REV = Problem("rev", "Return the string s reversed.",
              (Case("assert", code="assert rev('ab') == 'ba'"), Case("assert", code="assert rev('') == ''")),
              entry_point="rev")
PROBLEMS = (ADD, REV)
RIGHT = {"add": "def add(a, b):\n    return a + b", "rev": "def rev(s):\n    return s[::-1]"}
WRONG = {"add": "def add(a, b):\n    return a - b", "rev": "def rev(s):\n    return s"}


class CountingSampler(Sampler):
    """The real sampler, recording each generate call as (prompts, samples per prompt)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def generate(self, params, prompts, method, num_samples=1, seed=0):
        self.calls.append((len(prompts), num_samples))
        return super().generate(params, prompts, method, num_samples, seed)


def passes(program: str) -> bool:
    """The hidden rule of KnownPrograms: whether the slot that wrote `program` gets the right program."""
    return zlib.crc32(program.encode()) % 2 == 0


class KnownPrograms:
    """A judge: the real sandbox runs, for each job, RIGHT or WRONG of the job's problem by `passes(program)`.
    Records the jobs it saw and the thread it ran on. `hopeless` names problems that get WRONG on the first
    `hopeless_calls` calls; with a `gate` (threading.Event), judging waits until the gate opens."""

    def __init__(self, sandbox, hopeless=(), hopeless_calls=0, gate=None):
        self.sandbox, self.hopeless, self.hopeless_calls, self.gate = sandbox, set(hopeless), hopeless_calls, gate
        self.jobs, self.threads = [], []

    def __call__(self, jobs):
        if self.gate is not None:
            self.gate.wait(timeout=30)
        self.jobs.append(list(jobs))
        self.threads.append(threading.current_thread().name)
        first = len(self.jobs) <= self.hopeless_calls
        return self.sandbox.judge([
            (problem, (WRONG if first and problem.task_id in self.hopeless or not passes(program) else RIGHT)[
                problem.task_id]) for problem, program in jobs])


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(BUNDLED_QWEN25)


@pytest.fixture(scope="module")
def chat(tokenizer):
    return Chat(tokenizer)


@pytest.fixture(scope="module")
def models():
    mesh = one_device_mesh()
    return [init_model(PRESETS["tiny"], mesh, sharding.SAMPLE_RULES, seed=s) for s in (0, 1)]


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as sb:
        yield sb


@pytest.fixture(scope="module")
def agents(models):
    """(planner, coder): one counting sampler shared by both, each agent its own weights. Every call pads to one
    (batch, prompt) bucket, so one set of compiled programs serves all tests and both agents."""
    graphdef, _ = nnx.split(models[0])
    cfg = SamplerConfig(max_new_tokens=N, stop_token_ids=STOPS, pad_token_id=151643, min_prompt_bucket=256,
                        min_batch_bucket=16, first_segment=0)
    sampler = CountingSampler(graphdef, models[0].config, one_device_mesh(), cfg, sharding.SAMPLE_RULES)
    return tuple(Policy(sampler, nnx.state(m)) for m in models)


def config(**overrides):
    return RolloutConfig(num_plans=GP, num_programs=GC, planner=AgentSampling(N), coder=AgentSampling(N),
                         **overrides)


@pytest.fixture(scope="module")
def known(chat, agents, sandbox):
    """(result, judge, sampler calls) of one rollout judged by KnownPrograms, shared by the tests that read it."""
    planner, coder = agents
    planner.sampler.calls.clear()
    judge = KnownPrograms(sandbox)
    result = rollout(PROBLEMS, planner, coder, chat, judge, config(), seed=3)
    return result, judge, list(planner.sampler.calls)


def response_text(chat, ids_N, mask_N):
    """The text of one response row: its masked tokens, less a final stop token."""
    ids = ids_N[mask_N].tolist()
    return chat.text(ids[:-1] if ids and ids[-1] in STOPS else ids)


@functools.partial(jax.jit, static_argnums=3)
def response_logprobs(model, tokens_BT, valid_BT, width):
    """log p(response token t | prompt, response[:t]) from one forward pass, projecting response positions only."""
    hidden_BTD, _ = model.hidden_states(tokens_BT, valid_BT)
    logp_BTV = jax.nn.log_softmax(model.logits(hidden_BTD[:, width - 1:-1]), axis=-1)
    return jnp.take_along_axis(logp_BTV, tokens_BT[:, width:, None], -1)[..., 0]


# ---------------------------------------------------------------------------------------------- bookkeeping


def test_rewards_land_in_their_slots(chat, known):
    result, judge, calls = known
    assert calls == [(P, GP), (P * GP, GC)]  # one batched call per agent, nothing else
    assert result.planner.response_ids_BT.shape == (P * GP, N)
    assert result.coder.response_ids_BT.shape == (P * GP * GC, N)
    assert result.coder_rewards.shape == (P, GP, GC) and result.planner_rewards.shape == (P, GP)
    (jobs,) = judge.jobs
    expected = np.zeros((P, GP, GC), np.float32)
    planner = result.planner
    for p, i in np.ndindex(P, GP):
        plan = response_text(chat, planner.response_ids_BT[p * GP + i], planner.response_mask_BT[p * GP + i])
        assert plan == result.plans[p, i]
        planner_prompt = chat.text(planner.prompt_ids_BL[p * GP + i][planner.prompt_mask_BL[p * GP + i]])
        assert PROBLEMS[p].prompt in planner_prompt
        for j in range(GC):
            r = (p * GP + i) * GC + j
            prompt = chat.text(result.coder.prompt_ids_BL[r][result.coder.prompt_mask_BL[r]])
            assert PROBLEMS[p].prompt in prompt and f"Plan:\n{plan.strip()}\n" in prompt, (p, i, j)
            program = program_for(PROBLEMS[p], response_text(chat, result.coder.response_ids_BT[r],
                                                              result.coder.response_mask_BT[r]))
            assert result.programs[p, i, j] == program and jobs[r] == (PROBLEMS[p], program), (p, i, j)
            expected[p, i, j] = passes(program)
    assert 0 < expected.mean() < 1, "the seed should give both passing and failing slots"
    np.testing.assert_array_equal(result.coder_rewards, expected)
    np.testing.assert_array_equal([[[j.passed for j in row] for row in plan] for plan in result.judgements], expected)
    np.testing.assert_allclose(result.planner_rewards, expected.mean(-1), rtol=1e-6)
    np.testing.assert_allclose(result.coder.advantages_B, grpo.group_advantages(expected).reshape(-1), rtol=1e-6)
    np.testing.assert_allclose(result.planner.advantages_B, grpo.group_advantages(expected.mean(-1)).reshape(-1),
                               rtol=1e-6)
    zero_variance_PGp = np.all(expected == expected[..., :1], axis=-1)
    np.testing.assert_array_equal(result.coder.zero_variance_B, np.repeat(zero_variance_PGp.reshape(-1), GC))
    np.testing.assert_array_equal(result.planner.zero_variance_B, np.repeat(
        [len(set(row)) == 1 for row in expected.mean(-1)], GP))
    m = result.metrics
    assert m["coder/pass_rate"] == pytest.approx(expected.mean())
    assert m["planner/pass_rate"] == pytest.approx(expected.any(-1).mean())
    assert m["verdict/PASS"] + m["verdict/WA"] == pytest.approx(1.0)
    assert m["coder/zero_variance_fraction"] == pytest.approx(zero_variance_PGp.mean())
    for key in ("planner/generate_seconds", "coder/generate_seconds", "judge_seconds", "rollout_seconds"):
        assert m[key] > 0, key


def test_masks_and_old_logprobs_are_the_samplers(known, models):
    result = known[0]
    for batch, model in ((result.planner, models[0]), (result.coder, models[1])):
        lengths = batch.response_mask_BT.sum(-1)
        assert np.all(batch.response_mask_BT == (np.arange(N) < lengths[:, None])), "a mask is one prefix"
        ends = batch.response_ids_BT[np.arange(len(lengths)), lengths - 1]
        stopped = np.isin(ends, STOPS)
        assert stopped.any() and (lengths < N).any(), "the stop set should end some responses early"
        assert np.all(stopped | (lengths == N)), "a response shorter than the budget ends with its stop token"
        assert np.all(batch.response_ids_BT[~batch.response_mask_BT] == 151643)
        # Reference: one forward pass over prompt + response; the log-prob of each response token.
        reference_BT = np.asarray(response_logprobs(model, *batch.sequences(), batch.prompt_ids_BL.shape[1]))
        np.testing.assert_allclose(batch.old_logprobs_BT[batch.response_mask_BT],
                                   reference_BT[batch.response_mask_BT], atol=2e-5)
        assert np.all(batch.old_logprobs_BT[~batch.response_mask_BT] == 0)


def test_background_judging_equals_foreground(chat, agents, sandbox, known):
    planner, coder = agents
    foreground, foreground_judge, _ = known
    gate = threading.Event()
    judge = KnownPrograms(sandbox, gate=gate)
    pending = start_rollout(PROBLEMS, planner, coder, chat, judge, config(), seed=3)
    early = pending.batches()  # every token is there while the sandbox works
    assert not pending.judging.done(), "start_rollout must return while the judge is still at work"
    gate.set()
    background = pending.finish()
    assert judge.threads[0].startswith("rollout-judge")
    assert foreground_judge.threads == [threading.main_thread().name]
    for before, after in zip(early, (background.planner, background.coder)):
        for field in ("prompt_ids_BL", "response_ids_BT", "response_mask_BT", "old_logprobs_BT"):
            np.testing.assert_array_equal(getattr(before, field), getattr(after, field), err_msg=field)
        np.testing.assert_array_equal(before.advantages_B, 0.0)  # not known before the judge is done
    for a, b in ((background.planner, foreground.planner), (background.coder, foreground.coder)):
        for field in ("prompt_ids_BL", "response_ids_BT", "response_mask_BT", "old_logprobs_BT", "advantages_B"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    np.testing.assert_array_equal(background.coder_rewards, foreground.coder_rewards)
    assert background.programs.tolist() == foreground.programs.tolist()


# ---------------------------------------------------------------------------------------------- dynamic sampling


def test_dynamic_sampling_refills_a_zero_variance_problem(chat, agents, sandbox, known):
    planner, coder = agents
    plain = known[0]  # the same seed without dynamic sampling: the first draw
    planner.sampler.calls.clear()
    # "rev" fails everywhere on the first judging call: its groups all have zero variance.
    result = rollout(PROBLEMS, planner, coder, chat, KnownPrograms(sandbox, {"rev"}, 1),
                     config(dynamic_sampling=True), seed=3)
    assert planner.sampler.calls == [(P, GP), (P * GP, GC), (1, GP), (GP, GC)]  # the redraw: "rev" alone
    assert result.metrics["dynamic/tries"] == 1 and result.metrics["dynamic/refilled"] == 1
    assert result.metrics["dynamic/degenerate_fraction_before"] == 0.5
    assert len(set(result.coder_rewards[1].reshape(-1).tolist())) == 2, "the refilled problem has variance"
    # "add" keeps its first draw; "rev" holds the new one, with rewards that match its new programs.
    np.testing.assert_array_equal(result.coder_rewards[0], plain.coder_rewards[0])
    assert result.programs[0].tolist() == plain.programs[0].tolist()
    assert result.programs[1].tolist() != plain.programs[1].tolist()
    np.testing.assert_array_equal(result.coder_rewards[1], np.vectorize(passes)(result.programs[1]))
    rows = slice(GP * GC, 2 * GP * GC)
    np.testing.assert_allclose(result.coder.advantages_B[rows],
                               grpo.group_advantages(result.coder_rewards[1]).reshape(-1))


def test_dynamic_sampling_gives_up_after_its_tries(chat, agents, sandbox):
    planner, coder = agents
    planner.sampler.calls.clear()
    result = rollout(PROBLEMS, planner, coder, chat, KnownPrograms(sandbox, {"rev"}, 99),
                     config(dynamic_sampling=True, max_resample_tries=2), seed=3)
    assert planner.sampler.calls == [(P, GP), (P * GP, GC)] + [(1, GP), (GP, GC)] * 2
    assert result.metrics["dynamic/tries"] == 2
    assert result.metrics["dynamic/refilled"] == 0 and np.all(result.coder_rewards[1] == 0)
    np.testing.assert_array_equal(result.coder.advantages_B[GP * GC:], 0.0)
    assert result.coder.zero_variance_B[GP * GC:].all() and result.planner.zero_variance_B[GP:].all()


# ---------------------------------------------------------------------------------------------- judging


def test_reference_times_feed_the_efficiency_term(sandbox):
    cfg = config(reward=RewardConfig(efficiency_coef=0.5))
    programs = np.array([[[RIGHT["add"], WRONG["add"], RIGHT["add"]]] * GP, [[RIGHT["rev"]] * GC] * GP], dtype=object)
    jobs = judging_jobs(PROBLEMS, programs, cfg)
    assert jobs[-2:] == [(ADD, ADD.reference_solution), (REV, "")]  # one reference per problem, after the programs
    judgements, metrics = judge_programs(sandbox.judge, jobs)
    judgements_PGpGc, ref_time_P = split_judgements(judgements, programs.shape, cfg)
    assert judgements_PGpGc.shape == (P, GP, GC) and np.isfinite(ref_time_P[0]) and np.isnan(ref_time_P[1])
    (coder_PGpGc, _), _ = score(PROBLEMS, judgements_PGpGc, ref_time_P, cfg)
    assert np.all(coder_PGpGc[0, :, 0] > 1) and np.all(coder_PGpGc[0, :, 1] == 0)  # correct and measured: a bonus
    np.testing.assert_array_equal(coder_PGpGc[1], 1.0)  # no reference: correctness alone
    assert metrics["sandbox_errors"] == 0 and metrics["rejudged"] == 0


def test_sandbox_errors_are_judged_again(sandbox):
    calls = []

    def flaky(jobs):  # the real sandbox, but the first call's second job is lost as if a worker had died
        calls.append(len(jobs))
        out = sandbox.judge(jobs)
        return [Judgement(Verdict.SANDBOX_ERROR, ()) if len(calls) == 1 and k == 1 else j for k, j in enumerate(out)]

    jobs = [(ADD, RIGHT["add"]), (ADD, RIGHT["add"]), (REV, WRONG["rev"])]
    judgements, metrics = judge_programs(flaky, jobs)
    assert calls == [3, 1] and [j.verdict for j in judgements] == [Verdict.PASS, Verdict.PASS, Verdict.WA]
    assert metrics["rejudged"] == 1 and metrics["sandbox_errors"] == 0
    calls.clear()
    judgements, metrics = judge_programs(flaky, jobs, rejudge=False)
    assert calls == [3] and judgements[1].verdict is Verdict.SANDBOX_ERROR and metrics["sandbox_errors"] == 1


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, message", [
    ({"num_plans": 0}, "num_plans must be an integer >= 1"),
    ({"num_programs": 2.0}, "num_programs must be an integer >= 1"),
    ({"estimator": "ppo"}, "estimator must be one of"),
    ({"max_resample_tries": -1}, "max_resample_tries must be an integer >= 0"),
])
def test_bad_config_fails_with_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RolloutConfig(**kwargs)


def test_bad_sampling_fails_with_the_field():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        AgentSampling(16, temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        AgentSampling(16, top_p=1.5)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 1"):
        AgentSampling(0)


def test_budget_must_match_the_sampler(chat, agents, sandbox):
    planner, coder = agents
    cfg = RolloutConfig(num_plans=GP, num_programs=GC, planner=AgentSampling(N + 1), coder=AgentSampling(N))
    with pytest.raises(ValueError, match=f"max_new_tokens={N + 1} but the sampler generates {N}"):
        rollout(PROBLEMS, planner, coder, chat, sandbox.judge, cfg)
    with pytest.raises(ValueError, match="no problems"):
        rollout((), planner, coder, chat, sandbox.judge, config())



def test_chat_renders_with_the_template_or_an_injected_renderer(tokenizer):
    """The two ways in agree on our prompts: the tokenizer's chat template, and a ChatML renderer passed as `render`
    (the layout of data/chat.py's render_chat: each content encoded on its own after its role header)."""
    def encode(text):
        return tokenizer.encode(text, add_special_tokens=False)

    def chatml(messages):
        ids = []
        for m in messages:
            ids += [151644, *encode(f"{m['role']}\n"), *encode(m["content"]), 151645, *encode("\n")]
        return ids + [151644, *encode("assistant\n")]

    template, injected = Chat(tokenizer), Chat(tokenizer, render=chatml)
    for messages in (template.planner_messages(ADD), template.coder_messages(REV, "1. Slice backwards.")):
        assert injected.prompt_ids(messages) == template.prompt_ids(messages)
    assert template.text(tokenizer.encode("def f():\n    return 1")) == "def f():\n    return 1"
