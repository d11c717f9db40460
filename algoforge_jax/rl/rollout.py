"""The collaborative rollout: problems in, each agent's policy-gradient batch out. No training happens here.

    pending = start_rollout(problems, planner, coder, chat, sandbox.judge, cfg, seed)  # two sampler calls
    planner_batch, coder_batch = pending.batches()  # tokens only: e.g. reference log-probs while the sandbox judges
    result = pending.finish()  # rewards, advantages, metrics

P problems; the Planner samples Gp plans for each (one batched sampler call over all P prompts); the Coder samples
Gc programs for each (problem, plan) (one batched call over all P·Gp prompts, each holding a plan just sampled
from the *current* Planner: that is what makes the Coder collaboration-aware); the sandbox judges the P·Gp·Gc
programs on its CPU worker processes, in a background thread, so the caller can use the tokens meanwhile. Rewards
come from `rl.rewards` (coder `[P, Gp, Gc]`, planner `[P, Gp]`) and advantages from `rl.grpo.group_advantages`
over the last axis: coder groups are the programs of one (problem, plan), planner groups the plans of one problem.
Rows are group-major everywhere: planner row p·Gp + i, coder row (p·Gp + i)·Gc + j, matching `rl/rewards.py`.

Dynamic sampling (off by default): a problem whose Gp·Gc programs all earn the same reward teaches neither agent
(every group in it has zero variance); it is drawn again with fresh seeds, up to `max_resample_tries` times, and
its slot takes the first draw with any variance. Each try is again two sampler calls, over those problems only.

Touch points with code that changes under us, kept to one place each: `Chat` (messages -> prompt ids, response ids
-> text), `judge_programs` (a list of (problem, program) -> judgements), `Policy` (a sampler and its weights).
Left out: log-probs under the trainer and the reference, the loss and the optimiser (the RL step does them).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from algoforge_jax.rl import grpo, rewards
from algoforge_jax.sampling import Greedy, Sample, Sampler, SamplerConfig, bucket, sampling_method
from eval import prompts
from eval.problems import Judgement, Problem, Verdict
from eval.score import program_for

Judge = Callable[[Sequence[tuple[Problem, str]]], Sequence[Judgement]]
Messages = list[dict[str, str]]

# ---------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class Decoding:
    """How one agent generates: a response budget and a sampling method (temperature 0: greedy, evaluation's
    default). `max_new_tokens` must equal its sampler's (it is the padded response length T)."""

    max_new_tokens: int = 256  # response budget; responses are padded to it so the train step compiles once
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off

    def __post_init__(self):
        name = type(self).__name__
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1):
            raise ValueError(f"{name}.max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:
            raise ValueError(f"{name}.temperature must be >= 0, got {self.temperature!r}")
        self.method  # raises on a bad top_k or top_p

    @property
    def method(self) -> Greedy | Sample:
        return sampling_method(self.temperature, self.top_k, self.top_p)


@dataclasses.dataclass(frozen=True)
class AgentSampling(Decoding):
    """How one agent samples during a rollout: `Decoding` without greedy, since a group of greedy samples would be
    one sample repeated."""

    def __post_init__(self):
        super().__post_init__()
        if not self.temperature > 0:
            raise ValueError(f"AgentSampling.temperature must be > 0 (a group of greedy samples is one sample "
                             f"repeated), got {self.temperature!r}")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
    """What one collaborative rollout draws and how it is rewarded. Validated on construction."""

    num_plans: int = 4  # Gp: plans per problem (one planner group)
    num_programs: int = 4  # Gc: programs per plan (one coder group)
    planner: AgentSampling = AgentSampling(max_new_tokens=256)
    coder: AgentSampling = AgentSampling(max_new_tokens=512)
    reward: rewards.RewardConfig = rewards.RewardConfig()
    estimator: str = "grpo"  # advantage estimator, see grpo.group_advantages (the RL step passes GRPOConfig's)
    dynamic_sampling: bool = False  # redraw problems whose programs all earn the same reward
    max_resample_tries: int = 2  # redraws per rollout at most, when dynamic_sampling is on
    rejudge_sandbox_errors: bool = True  # judge SANDBOX_ERROR programs once more before rewarding them

    def __post_init__(self):
        for name, minimum in (("num_plans", 1), ("num_programs", 1), ("max_resample_tries", 0)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
                raise ValueError(f"RolloutConfig.{name} must be an integer >= {minimum}, got {value!r}")
        if self.estimator not in grpo.ESTIMATORS:
            raise ValueError(f"RolloutConfig.estimator must be one of {grpo.ESTIMATORS}, got {self.estimator!r}")


# ---------------------------------------------------------------------------------------------- touch points


class Policy(NamedTuple):
    """An agent as the rollout sees it: a sampler and the weights to pass it (both agents may share a sampler)."""

    sampler: Sampler
    params: Any


@dataclasses.dataclass(frozen=True)
class Chat:
    """Text in and out of the models. `render(messages)` gives the prompt ids ending at the assistant header (e.g.
    `lambda m: render_chat(tok, m, add_generation_prompt=True)[0]`); without it, the tokenizer's own chat template.
    `tokenizer.decode(ids)` turns a response (its stop token removed) back into text."""

    tokenizer: Any
    render: Callable[[Messages], Sequence[int]] | None = None
    planner_messages: Callable[[Problem], Messages] = prompts.planner_messages
    coder_messages: Callable[[Problem, str], Messages] = prompts.coder_messages

    def prompt_ids(self, messages: Messages) -> list[int]:
        if self.render is not None:
            return [int(t) for t in self.render(messages)]
        return list(self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False))

    def text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(t) for t in ids])


def judge_programs(judge: Judge, jobs: Sequence[tuple[Problem, str]],
                   rejudge: bool = True) -> tuple[list[Judgement], dict[str, float]]:
    """(one judgement per job, in order; metrics). SANDBOX_ERROR is our fault, not the program's, so with `rejudge`
    those jobs are judged once more; what still fails is counted in `sandbox_errors` (and rewarded as a failure)."""
    start = time.perf_counter()
    judgements = list(judge(jobs))
    if len(judgements) != len(jobs):
        raise RuntimeError(f"the judge returned {len(judgements)} judgements for {len(jobs)} programs")
    failed = [k for k, j in enumerate(judgements) if j.verdict is Verdict.SANDBOX_ERROR] if rejudge else []
    if failed:
        for k, judgement in zip(failed, judge([jobs[k] for k in failed]), strict=True):
            judgements[k] = judgement
    errors = sum(j.verdict is Verdict.SANDBOX_ERROR for j in judgements)
    return judgements, {"judge_seconds": time.perf_counter() - start, "rejudged": float(len(failed)),
                        "sandbox_errors": float(errors)}


def judge_in_background(judge: Judge, jobs: Sequence[tuple[Problem, str]],
                        rejudge: bool = True) -> concurrent.futures.Future:
    """`judge_programs` in a thread of its own; the future's result is its `(judgements, metrics)`. The sandbox
    runs programs in worker processes, so the calling thread stays free for the accelerator meanwhile."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout-judge")
    future = executor.submit(judge_programs, judge, list(jobs), rejudge)
    executor.shutdown(wait=False)  # the submitted job still runs; the thread ends with it
    return future


# ---------------------------------------------------------------------------------------------- samples


def _objects(items: Sequence[Any], shape: tuple[int, ...]) -> np.ndarray:
    """An object array of `shape` holding `items` row-major (lists stay lists, not a new axis)."""
    out = np.empty(len(items), dtype=object)
    for k, item in enumerate(items):
        out[k] = item
    return out.reshape(shape)


@dataclasses.dataclass
class Samples:
    """One agent's responses, group axes leading: `G` is the group shape, `(P, Gp)` planner, `(P, Gp, Gc)` coder;
    the prompts have the shape `G[:-1]` (one prompt per group). N is the sampler's max_new_tokens."""

    prompts: np.ndarray  # object: list[int] per prompt
    tokens: np.ndarray  # int32 [*G, N], pad after each response's end
    lengths: np.ndarray  # int [*G]: response tokens, the stop token included
    model_logprobs: np.ndarray  # float32 [*G, N]: the sampler's untempered log-probs, 0 past the end
    truncated: np.ndarray  # bool [*G]: stopped by the budget, not by a stop token
    texts: np.ndarray  # object [*G]: the response decoded, without its stop token

    @property
    def mask(self) -> np.ndarray:
        """bool [*G, N]: exactly the response tokens, the stop token included."""
        return np.arange(self.tokens.shape[-1]) < self.lengths[..., None]

    def take(self, index) -> Samples:
        """The groups of the problems at `index` (along the leading problem axis)."""
        return Samples(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def put(self, index, other: Samples) -> None:
        """Overwrite the groups of the problems at `index` with `other`'s."""
        for f in dataclasses.fields(self):
            getattr(self, f.name)[index] = getattr(other, f.name)


def sample_groups(policy: Policy, prompt_ids: Sequence[list[int]], group_shape: tuple[int, ...],
                  sampling: Decoding, chat: Chat, seed: int) -> tuple[Samples, float]:
    """(samples of group shape `group_shape`, seconds): ONE sampler call for all prompts, `group_shape[-1]` samples
    each. `prompt_ids` are row-major over `group_shape[:-1]`."""
    sampler = policy.sampler
    if sampler.cfg.max_new_tokens != sampling.max_new_tokens:
        raise ValueError(f"the config asks for max_new_tokens={sampling.max_new_tokens} but the sampler "
                         f"generates {sampler.cfg.max_new_tokens}: build the sampler with the config's budget")
    start = time.perf_counter()
    out = sampler.generate(policy.params, prompt_ids, sampling.method, num_samples=group_shape[-1], seed=seed)
    seconds = time.perf_counter() - start
    truncated = np.array([reason != "eos" for reason in out.finish_reason])
    content = np.where(truncated, out.lengths, out.lengths - 1)  # a stopped response's text ends before its stop
    texts = [chat.text(out.tokens[r, :content[r]]) for r in range(len(content))]
    N = out.tokens.shape[-1]
    return Samples(prompts=_objects(list(prompt_ids), group_shape[:-1]),
                   tokens=out.tokens.astype(np.int32).reshape(*group_shape, N),
                   lengths=out.lengths.reshape(group_shape),
                   model_logprobs=out.model_logprobs.astype(np.float32).reshape(*group_shape, N),
                   truncated=truncated.reshape(group_shape), texts=_objects(texts, group_shape)), seconds


@dataclasses.dataclass
class Draw:
    """Everything sampled for P problems: plans `(P, Gp)`, programs `(P, Gp, Gc)` and the programs' text."""

    plans: Samples
    code: Samples
    programs: np.ndarray  # object [P, Gp, Gc]: what the sandbox runs ("" when the completion holds no code)

    def take(self, index) -> Draw:
        return Draw(self.plans.take(index), self.code.take(index), self.programs[index])

    def put(self, index, other: Draw) -> None:
        self.plans.put(index, other.plans)
        self.code.put(index, other.code)
        self.programs[index] = other.programs


def draw(problems: Sequence[Problem], planner: Policy, coder: Policy, chat: Chat, cfg: RolloutConfig,
         seed: int, attempt: int = 0) -> tuple[Draw, dict[str, float]]:
    """Plans from the Planner, then programs from the Coder given those plans: two sampler calls in all."""
    return plan_and_code(problems, planner, coder, chat, (cfg.num_plans, cfg.num_programs), (cfg.planner, cfg.coder),
                         (agent_seed(seed, 0, attempt), agent_seed(seed, 1, attempt)))


def plan_and_code(problems: Sequence[Problem], planner: Policy, coder: Policy, chat: Chat, groups: tuple[int, int],
                  decoding: tuple[Decoding, Decoding], seeds: tuple[int, int]) -> tuple[Draw, dict[str, float]]:
    """`groups` = (Gp, Gc): Gp plans per problem (one Planner call), then Gc programs per plan (one Coder call over
    all P·Gp prompts); `decoding` and `seeds` are (planner's, coder's). Shared by the rollout and `algoforge eval`."""
    (P, (Gp, Gc)), (planner_decoding, coder_decoding) = (len(problems), groups), decoding
    plans, planner_s = sample_groups(planner, [chat.prompt_ids(chat.planner_messages(p)) for p in problems],
                                     (P, Gp), planner_decoding, chat, seeds[0])
    coder_prompts = [chat.prompt_ids(chat.coder_messages(problems[p], plans.texts[p, i])) for p, i in np.ndindex(P, Gp)]
    code, coder_s = sample_groups(coder, coder_prompts, (P, Gp, Gc), coder_decoding, chat, seeds[1])
    programs = [program_for(problems[p], code.texts[p, i, j]) for p, i, j in np.ndindex(P, Gp, Gc)]
    return Draw(plans, code, _objects(programs, (P, Gp, Gc))), {"planner/generate_seconds": planner_s,
                                                                "coder/generate_seconds": coder_s}


def agent_seed(seed: int, agent: int, attempt: int = 0) -> int:
    """A distinct sampler seed per (run seed, agent, attempt): the rollout's dynamic-sampling tries, eval's chunks."""
    return int(np.random.SeedSequence((seed, agent, attempt)).generate_state(1)[0] & 0x7FFFFFFF)


# ---------------------------------------------------------------------------------------------- judging


def judging_jobs(problems: Sequence[Problem], programs_PGpGc: np.ndarray,
                 cfg: RolloutConfig) -> list[tuple[Problem, str]]:
    """The programs row-major, then (when the efficiency term is on) each problem's reference solution, whose
    measured time is the baseline (`reference_times`)."""
    jobs = [(problems[p], programs_PGpGc[p, i, j]) for p, i, j in np.ndindex(programs_PGpGc.shape)]
    if cfg.reward.efficiency_coef > 0:
        jobs += [(p, p.reference_solution or "") for p in problems]
    return jobs


def split_judgements(judgements: Sequence[Judgement], shape: tuple[int, int, int],
                     cfg: RolloutConfig) -> tuple[np.ndarray, np.ndarray]:
    """(the programs' judgements as an object array of `shape` = (P, Gp, Gc), [P] CPU seconds of each passing
    reference solution: NaN, so no efficiency term, where there is none or the term is off)."""
    n = int(np.prod(shape))
    references = judgements[n:] if cfg.reward.efficiency_coef > 0 else [None] * shape[0]
    ref_time_P = np.array([j.time_s if j is not None and j.passed else np.nan for j in references], np.float32)
    return _objects(judgements[:n], shape), ref_time_P


def score(problems: Sequence[Problem], judgements_PGpGc: np.ndarray, ref_time_P: np.ndarray,
          cfg: RolloutConfig) -> tuple[tuple[np.ndarray, np.ndarray], dict[str, float]]:
    """((coder rewards [P, Gp, Gc], planner rewards [P, Gp]), metrics of `rewards.agent_rewards`)."""
    outcomes = rewards.ProgramOutcomes.from_judgements(
        list(judgements_PGpGc.reshape(-1)), judgements_PGpGc.shape,
        np.array([len(p.tests) for p in problems])[:, None, None], ref_time_P[:, None, None])
    (coder_PGpGc, planner_PGp), metrics = rewards.agent_rewards(outcomes, cfg.reward)
    return (np.asarray(coder_PGpGc), np.asarray(planner_PGp)), {k: float(v) for k, v in metrics.items()}


def degenerate_problems(coder_rewards_PGpGc: np.ndarray) -> np.ndarray:
    """[P] bool: every program of the problem earned the same reward, so no group in it has any variance."""
    P = coder_rewards_PGpGc.shape[0]
    return np.array(grpo.zero_variance_groups(coder_rewards_PGpGc.reshape(P, -1)))  # a writable copy


# ---------------------------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class AgentBatch:
    """What one agent's policy-gradient step needs. B rows, group-major (B = groups × `group_size`); L: prompts,
    left-padded to a power of two (the sampler's buckets); T: responses, right-padded to the sampler's
    max_new_tokens, so the train step sees one response length (the T of `grpo.policy_loss`)."""

    prompt_ids_BL: np.ndarray  # int32
    prompt_mask_BL: np.ndarray  # bool: real prompt tokens
    response_ids_BT: np.ndarray  # int32
    response_mask_BT: np.ndarray  # bool: exactly the response tokens, the stop token included
    old_logprobs_BT: np.ndarray  # float32: the sampler's model_logprobs (untempered), 0 outside the mask
    advantages_B: np.ndarray  # float32, one per sequence
    zero_variance_B: np.ndarray  # bool: the row's group earned one reward throughout (advantage 0; a step may drop it)
    group_size: int

    def sequences(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, valid), each [B, L + T]: prompt then response; the response's log-probs sit at [:, L:]."""
        return (np.concatenate([self.prompt_ids_BL, self.response_ids_BT], axis=1),
                np.concatenate([self.prompt_mask_BL, self.response_mask_BT], axis=1))


def agent_batch(samples: Samples, rewards_G: np.ndarray | None, estimator: str,
                sampler_cfg: SamplerConfig) -> AgentBatch:
    """`samples` as flat group-major rows, with the advantages of their rewards (same group shape `G`, groups on the
    last axis); rewards None (not known yet) gives advantages 0 and no zero-variance group."""
    G, shape = samples.lengths.shape[-1], samples.lengths.shape
    if rewards_G is None:
        advantages_G, zero_variance_G = np.zeros(shape, np.float32), np.zeros(shape, bool)
    else:
        advantages_G = np.asarray(grpo.group_advantages(rewards_G, estimator))
        zero_variance_G = np.broadcast_to(np.asarray(grpo.zero_variance_groups(rewards_G))[..., None], rewards_G.shape)
    prompts = [prompt for prompt in samples.prompts.reshape(-1) for _ in range(G)]
    longest = max(map(len, prompts))
    width = bucket(longest, sampler_cfg.min_prompt_bucket)  # the sampler's prompt buckets
    prompt_ids_BL = np.full((len(prompts), width), sampler_cfg.pad_token_id, np.int32)
    prompt_mask_BL = np.zeros((len(prompts), width), bool)
    for b, prompt in enumerate(prompts):
        prompt_ids_BL[b, width - len(prompt):] = prompt
        prompt_mask_BL[b, width - len(prompt):] = True
    N = samples.tokens.shape[-1]
    return AgentBatch(prompt_ids_BL, prompt_mask_BL, samples.tokens.reshape(-1, N), samples.mask.reshape(-1, N),
                      np.where(samples.mask, samples.model_logprobs, 0.0).reshape(-1, N).astype(np.float32),
                      advantages_G.astype(np.float32).reshape(-1), zero_variance_G.reshape(-1), G)


@dataclasses.dataclass(frozen=True)
class RolloutResult:
    """One step's rollout. Per-program arrays are `[P, Gp, Gc]`, per-plan `[P, Gp]` (texts as object arrays)."""

    problems: tuple[Problem, ...]
    planner: AgentBatch  # row p·Gp + i is plan i of problem p
    coder: AgentBatch  # row (p·Gp + i)·Gc + j is program j written from plan (p, i)
    plans: np.ndarray  # str [P, Gp]
    completions: np.ndarray  # str [P, Gp, Gc]: the Coder's raw answers
    programs: np.ndarray  # str [P, Gp, Gc]: what the sandbox ran
    judgements: np.ndarray  # Judgement [P, Gp, Gc]
    planner_rewards: np.ndarray  # float32 [P, Gp]
    coder_rewards: np.ndarray  # float32 [P, Gp, Gc]
    metrics: dict[str, float]


def outcome_metrics(judgements_PGpGc: np.ndarray) -> dict[str, float]:
    """The verdict mix (fraction of programs per verdict) and pass rates: of programs (`coder/pass_rate`), of plans
    with at least one passing program (`planner/pass_rate`) and of problems solved at least once."""
    verdicts = np.vectorize(lambda j: j.verdict.value, otypes=[object])(judgements_PGpGc)
    passed_PGpGc = verdicts == Verdict.PASS.value
    return {**{f"verdict/{v.value}": float(np.mean(verdicts == v.value)) for v in Verdict},
            "coder/pass_rate": float(passed_PGpGc.mean()), "planner/pass_rate": float(passed_PGpGc.any(-1).mean()),
            "problem_solved_rate": float(passed_PGpGc.any((1, 2)).mean())}


def response_metrics(agent: str, samples: Samples) -> dict[str, float]:
    return {f"{agent}/response_len_mean": float(samples.lengths.mean()),
            f"{agent}/response_len_max": float(samples.lengths.max()),
            f"{agent}/truncated_fraction": float(samples.truncated.mean())}


def _add(*metrics: dict[str, float]) -> dict[str, float]:
    """Merge metric dicts, summing values under the same key (seconds and counts over dynamic-sampling tries)."""
    out: dict[str, float] = {}
    for m in metrics:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v
    return out


# ---------------------------------------------------------------------------------------------- the rollout


@dataclasses.dataclass
class PendingRollout:
    """A drawn rollout whose programs are being judged. `draw` already holds every prompt and response token, so
    the caller may compute log-probs meanwhile; with dynamic sampling, `finish` may still replace the draws of
    problems whose rewards turn out all equal."""

    problems: tuple[Problem, ...]
    planner: Policy
    coder: Policy
    chat: Chat
    judge: Judge
    cfg: RolloutConfig
    seed: int
    draw: Draw
    judging: concurrent.futures.Future  # of judge_programs' (judgements, metrics)
    metrics: dict[str, float]
    started: float  # time.perf_counter() when the rollout began

    def finish(self) -> RolloutResult:
        """Waits for the judge, redraws degenerate problems if asked, and returns rewards, advantages, metrics."""
        wait_start = time.perf_counter()
        judgements, judge_metrics = self.judging.result()
        metrics = _add(self.metrics, judge_metrics, {"judge_wait_seconds": time.perf_counter() - wait_start})
        judgements_PGpGc, ref_time_P = split_judgements(judgements, self.draw.programs.shape, self.cfg)
        if self.cfg.dynamic_sampling:
            metrics = _add(metrics, self._resample(judgements_PGpGc, ref_time_P))
        return self._result(judgements_PGpGc, ref_time_P, metrics)

    def _resample(self, judgements_PGpGc: np.ndarray, ref_time_P: np.ndarray) -> dict[str, float]:
        """Dynamic sampling, in place: problems whose programs all earned one reward are drawn again (two sampler
        calls per try, over those problems only) and take the first draw that has any variance."""
        (coder_PGpGc, _), _ = score(self.problems, judgements_PGpGc, ref_time_P, self.cfg)
        degenerate_P = degenerate_problems(coder_PGpGc)
        metrics = {"dynamic/degenerate_fraction_before": float(degenerate_P.mean()), "dynamic/tries": 0.0,
                   "dynamic/refilled": 0.0}
        for attempt in range(1, self.cfg.max_resample_tries + 1):
            index = np.flatnonzero(degenerate_P)
            if not index.size:
                break
            subset = tuple(self.problems[k] for k in index)
            new, draw_metrics = draw(subset, self.planner, self.coder, self.chat, self.cfg, self.seed, attempt)
            judged, judge_metrics = judge_programs(self.judge, judging_jobs(subset, new.programs, self.cfg),
                                                   self.cfg.rejudge_sandbox_errors)
            new_judgements, new_ref_time = split_judgements(judged, new.programs.shape, self.cfg)
            (new_coder, _), _ = score(subset, new_judgements, new_ref_time, self.cfg)
            varied = ~degenerate_problems(new_coder)
            self.draw.put(index[varied], new.take(varied))
            judgements_PGpGc[index[varied]] = new_judgements[varied]
            ref_time_P[index[varied]] = new_ref_time[varied]
            degenerate_P[index[varied]] = False
            metrics = _add(metrics, draw_metrics, judge_metrics,
                           {"dynamic/tries": 1.0, "dynamic/refilled": float(varied.sum())})
        return metrics

    def batches(self, rewards_=(None, None)) -> tuple[AgentBatch, AgentBatch]:
        """(planner, coder) batches of the current draw, advantages from `rewards_` (planner `[P, Gp]`, coder
        `[P, Gp, Gc]`). Before `finish` the rewards are unknown and the advantages 0: such batches are for
        log-probs, and with dynamic sampling `finish` may still replace some problems' rows."""
        return (agent_batch(self.draw.plans, rewards_[0], self.cfg.estimator, self.planner.sampler.cfg),
                agent_batch(self.draw.code, rewards_[1], self.cfg.estimator, self.coder.sampler.cfg))

    def _result(self, judgements_PGpGc: np.ndarray, ref_time_P: np.ndarray,
                metrics: dict[str, float]) -> RolloutResult:
        (coder_PGpGc, planner_PGp), reward_metrics = score(self.problems, judgements_PGpGc, ref_time_P, self.cfg)
        batches = self.batches((planner_PGp, coder_PGpGc))
        metrics = {**metrics, **reward_metrics, **outcome_metrics(judgements_PGpGc),
                   **response_metrics("planner", self.draw.plans), **response_metrics("coder", self.draw.code),
                   "rollout_seconds": time.perf_counter() - self.started}
        return RolloutResult(self.problems, *batches, plans=self.draw.plans.texts, completions=self.draw.code.texts,
                             programs=self.draw.programs, judgements=judgements_PGpGc, planner_rewards=planner_PGp,
                             coder_rewards=coder_PGpGc, metrics=metrics)


def start_rollout(problems: Sequence[Problem], planner: Policy, coder: Policy, chat: Chat, judge: Judge,
                  cfg: RolloutConfig, seed: int = 0, background: bool = True) -> PendingRollout:
    """Draws plans and programs (two sampler calls) and starts judging the programs: in a background thread, or
    before returning with `background=False`. `judge` is e.g. `Sandbox(stop_at_first_failure=False).judge`."""
    problems = tuple(problems)
    if not problems:
        raise ValueError("start_rollout: no problems to roll out")
    started = time.perf_counter()
    sampled, metrics = draw(problems, planner, coder, chat, cfg, seed)
    jobs = judging_jobs(problems, sampled.programs, cfg)
    if background:
        judging = judge_in_background(judge, jobs, cfg.rejudge_sandbox_errors)
    else:
        judging = concurrent.futures.Future()
        judging.set_result(judge_programs(judge, jobs, cfg.rejudge_sandbox_errors))
    return PendingRollout(problems, planner, coder, chat, judge, cfg, seed, sampled, judging, metrics, started)


def rollout(problems: Sequence[Problem], planner: Policy, coder: Policy, chat: Chat, judge: Judge,
            cfg: RolloutConfig, seed: int = 0) -> RolloutResult:
    """The whole rollout on this thread: draw, judge, reward, advantages."""
    return start_rollout(problems, planner, coder, chat, judge, cfg, seed, background=False).finish()
