"""The RL run: rollout -> reference log-probs -> update of both agents -> metrics -> checkpoint, step after step.

Layout under `D/rl/`: `checkpoints/<step>/` ({"planner", "coder"} TrainStates: parameters, optimizer states, step,
RNG; and the problem order's position), `metrics.jsonl` + `tb/`, `eval.json` (held-out pass@1 before the first and
after the last step), and at the end `planner/model` and `coder/model` (`checkpoints.save_model`, tokenizer
beside; `models.json` names their step). Rerunning the same command resumes from the latest checkpoint and gives
the run an uninterrupted one would: every step's sampling seeds derive from (rl.seed, step), and the sandbox's
verdicts are deterministic. Rerun with a larger `rl.steps`, a finished run trains on and replaces the final models
and the "after" evaluation.

Weights: each agent's TrainState lives in TRAIN_RULES; before each rollout its parameters are resharded to
SAMPLE_RULES (device to device) and passed to the agent's sampler as arguments, so no sampler program recompiles.
The reference log-probs (β > 0) are computed while the sandbox judges the programs in a background thread; that is
all the overlap the data allows on-policy (the next step's generation needs this step's update, which needs this
step's verdicts).

`rl.offload_idle`: each agent's TrainState (parameters and both Adam moments, 3x the parameters' bytes in fp32)
lives in the host memory of its devices (`pinned_host`, same shardings) and comes onto the accelerator only for
its own update; rollouts need only the samplers' copies of the weights. The device then holds one agent's
training state at a time instead of two, at the cost of two host<->device copies of it per step. Results are
bit-identical with and without it (tests/test_rl.py).

SIGTERM (a preempting scheduler) is honoured between steps: the step in flight finishes, a checkpoint is written
and the command exits with 143; rerunning it resumes.

With adapters (`Config.rl_lora`: `rl.lora`, else `lora`) each agent trains them on a frozen base, one base on the
device when both agents have the same (`checkpoints.load_sharing_base`), and an agent's reference is its base with
the adapters off. `rl.lora` puts fresh adapters on fully fine-tuned SFT models (the tiny default's way: its models
are trained from scratch, so SFT must train every weight); `lora` continues the SFT stage's own adapters.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from algoforge_jax import checkpoints, sharding
from algoforge_jax.config import Config, RLConfig
from algoforge_jax.data.chat import render_chat
from algoforge_jax.errors import UserError
from algoforge_jax.models import lora
from algoforge_jax.models.build import abstract_model
from algoforge_jax.rl.rollout import AgentSampling, Chat, Decoding, Policy, RolloutConfig, sample_groups, start_rollout
from algoforge_jax.rl.step import (AgentUpdate, make_update, reference_logprobs, sampler_base, sampler_params,
                                   update_batch)
from algoforge_jax.sampling import Sampler, SamplerConfig
from algoforge_jax.tokenizer import SentencePieceTokenizer, Tokenizer, open_tokenizer
from algoforge_jax.train.checkpoint import StateCheckpoints
from algoforge_jax.train.loop import EXIT_PREEMPTED, Preemption
from algoforge_jax.train.metrics import MetricsWriter
from algoforge_jax.train.state import TrainState, init_state, make_optimizer, state_shardings
from eval import prompts
from eval.problems import Problem
from eval.score import program_for

AGENTS = ("planner", "coder")


# ---------------------------------------------------------------------------------------------- held-out pass rate


def heldout_pass_rate(planner: Policy, coder: Policy, chat: Chat, problems: Sequence[Problem], judge,
                      temperature: float = 0.0, samples: int = 1, seed: int = 0) -> dict[str, float]:
    """Pass@1 of the Planner -> Coder pair: each problem gets `samples` plans (1 when greedy), one program per plan,
    judged; pass@1 = the fraction of (problem, chain) that pass, i.e. the mean over problems of each problem's pass
    fraction (kept too, as `per_problem`, so two evaluations can be compared problem by problem). Two sampler calls
    in all. `temperature` 0 decodes greedily (deterministic), else samples."""
    n = 1 if temperature == 0 else samples
    P = len(problems)
    plans, _ = sample_groups(planner, [chat.prompt_ids(chat.planner_messages(p)) for p in problems], (P, n),
                             Decoding(planner.sampler.cfg.max_new_tokens, temperature), chat, seed)
    coder_prompts = [chat.prompt_ids(chat.coder_messages(problems[p], plans.texts[p, i])) for p, i in np.ndindex(P, n)]
    code, _ = sample_groups(coder, coder_prompts, (P, n, 1), Decoding(coder.sampler.cfg.max_new_tokens, temperature),
                            chat, seed + 1)
    jobs = [(problems[p], program_for(problems[p], code.texts[p, i, 0])) for p, i in np.ndindex(P, n)]
    passed_Pn = np.array([j.passed for j in judge(jobs)]).reshape(P, n)
    return {"pass_at_1": float(passed_Pn.mean()), "solved_any": float(passed_Pn.any(1).mean()), "problems": P,
            "samples_per_problem": n, "temperature": temperature, "per_problem": passed_Pn.mean(1).tolist()}


# ---------------------------------------------------------------------------------------------- set-up


class ProblemOrder:
    """Endless draws of `size` problem indices, each epoch a fresh seeded permutation; resumable (epoch, index)."""

    def __init__(self, num_problems: int, size: int, seed: int):
        if num_problems < size:
            raise UserError(f"rl.problems_per_step is {size} but there are only {num_problems} training problems")
        self.num_problems, self.size, self.seed, self.epoch, self.index = num_problems, size, seed, 0, 0

    def next(self) -> np.ndarray:
        if self.index + self.size > self.num_problems:
            self.epoch, self.index = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_problems)
        self.index += self.size
        return order[self.index - self.size: self.index]

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def load_problems(path: str, split: str, workdir: Path) -> list[Problem]:
    """Problems from the SPEC's jsonl at `path`, or (path "") the embedded default's `split`, built under D/data."""
    from algoforge_jax.data import embedded, synthetic
    from eval.benchmarks import load_benchmark

    if path:
        return list(load_benchmark("jsonl", path))
    data = embedded.build_embedded(workdir / "data", sketches=None)
    return [t.problem for t in synthetic.read_tasks(data.problems[split])]


def make_chat(tokenizer: Tokenizer) -> Chat:
    """Prompts through `render_chat`; the compact wording for the embedded default's tokenizer (sentencepiece,
    which its SFT data was rendered with), the full one otherwise."""
    compact = isinstance(tokenizer, SentencePieceTokenizer)
    return Chat(tokenizer, render=lambda m: render_chat(tokenizer, m, add_generation_prompt=True)[0],
                planner_messages=lambda p: prompts.planner_messages(p, compact),
                coder_messages=lambda p, plan: prompts.coder_messages(p, plan, compact))


@dataclasses.dataclass
class Agent:
    """One agent's pieces: its update, sampler, frozen reference and where its weights came from."""

    name: str
    init: Path
    update: AgentUpdate
    abstract: nnx.State  # TRAIN_RULES layout, for turning the trainer's params into the sampler's
    sampler: Sampler
    reference: tuple | None  # (graphdef, frozen parameters (pure dict, TRAIN_RULES)); None when β = 0
    sampler_frozen: dict | None = None  # the frozen base in the sampling layout when adapters train


def rl_train_config(cfg: Config):
    """The `train` group's optimizer with the RL learning rate, warmup, epsilon and a constant rate (one step per
    update)."""
    rl = cfg.rl
    return dataclasses.replace(cfg.train, steps=max(rl.steps * rl.grpo.num_iterations, 2),
                               learning_rate=rl.learning_rate, warmup_steps=rl.warmup_steps, end_lr_ratio=1.0,
                               eps=rl.adam_eps or cfg.train.eps)


def make_agent(cfg: Config, name: str, init: Path, tokenizer: Tokenizer, mesh,
               model=None) -> tuple[Agent, TrainState]:
    """(the agent, its step-0 TrainState) from `model`, else from the model at `init`."""
    rl, rules = cfg.rl, sharding.TRAIN_RULES
    load = lambda: checkpoints.load_pretrained(init, mesh, rules, dtype=cfg.model.dtype,  # noqa: E731
                                               param_dtype=cfg.model.param_dtype, remat=cfg.model.remat)
    model = load() if model is None else model
    graphdef, abstract = abstract_model(model.config, mesh, rules)
    frozen = lora.split(nnx.state(model))[0] or None
    tx = make_optimizer(rl_train_config(cfg))
    shardings = state_shardings(abstract, tx, mesh)
    update = make_update(graphdef, tx, shardings, rl.grpo, mesh, rules, accum=rl.grad_accum,
                         chunk_len=cfg.train.logprob_chunk, frozen=frozen)
    prompt_len, max_new = ((rl.planner_prompt_len, rl.planner_max_new_tokens) if name == "planner"
                           else (rl.coder_prompt_len, rl.coder_max_new_tokens))
    sampler_cfg = SamplerConfig(max_new_tokens=max_new, stop_token_ids=(tokenizer.eos_id,),
                                pad_token_id=tokenizer.pad_id, min_prompt_bucket=prompt_len, first_segment=0)
    sampler = Sampler(graphdef, model.config, mesh, sampler_cfg, sharding.SAMPLE_RULES)
    reference = None
    if rl.grpo.kl_coef > 0 and frozen:  # the base, with the adapters off: no extra weights
        reference = (abstract_model(model.config.replace(lora=lora.LoRAConfig()), mesh, rules)[0], frozen)
    elif rl.grpo.kl_coef > 0:
        reference = (graphdef, nnx.to_pure_dict(nnx.state(load(), nnx.Param)))
    state = init_state(model, tx, shardings, rl.seed)
    sampler_frozen = sampler_base(abstract, frozen, mesh) if frozen else None
    return Agent(name, init, update, abstract, sampler, reference, sampler_frozen), state


def rollout_config(rl: RLConfig) -> RolloutConfig:
    def sampling(max_new):
        return AgentSampling(max_new_tokens=max_new, temperature=rl.temperature, top_p=rl.top_p)
    return RolloutConfig(num_plans=rl.num_plans, num_programs=rl.num_programs,
                         planner=sampling(rl.planner_max_new_tokens), coder=sampling(rl.coder_max_new_tokens),
                         reward=rl.reward, estimator=rl.grpo.estimator, dynamic_sampling=rl.dynamic_sampling)


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence((seed, step)).generate_state(1)[0] & 0x7FFFFFFF)


# ---------------------------------------------------------------------------------------------- the run


def run_rl(cfg: Config, workdir, planner: str | None = None, coder: str | None = None) -> int:
    """Trains both agents to `cfg.rl.steps` (resuming from D/rl/checkpoints), evaluates before and after (unless
    `rl.evaluate` is off)."""
    workdir = Path(workdir)
    out = workdir / "rl"
    inits = {"planner": Path(planner or workdir / "sft-planner" / "model"),
             "coder": Path(coder or workdir / "sft-coder" / "model")}
    for name, path in inits.items():
        if not path.exists():
            raise UserError(f"{path}: no {name} model; run `algoforge sft --agent {name} --workdir {workdir}` "
                            f"first or pass --{name} MODEL")
    from eval.sandbox import Sandbox

    mesh = sharding.make_mesh(cfg.mesh)
    check_batch_split(cfg.rl, sharding.batch_shards(mesh, sharding.TRAIN_RULES))
    tokenizer = open_tokenizer(inits["coder"])
    chat = make_chat(tokenizer)
    train_problems = load_problems(cfg.rl.problems, "train", workdir)
    eval_problems = load_problems(cfg.rl.eval_problems, "heldout", workdir)
    eval_problems = eval_problems[: cfg.rl.eval_limit or None]
    order = ProblemOrder(len(train_problems), cfg.rl.problems_per_step, cfg.rl.seed)
    models = checkpoints.load_sharing_base(inits, mesh, sharding.TRAIN_RULES, cfg.rl_lora(), cfg.model.seed,
                                           dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype,
                                           remat=cfg.model.remat)
    built = {name: make_agent(cfg, name, inits[name], tokenizer, mesh, models.pop(name)) for name in AGENTS}
    agents = {name: agent for name, (agent, _) in built.items()}
    state = {name: s for name, (_, s) in built.items()}
    with StateCheckpoints(out / "checkpoints", cfg.rl.keep_checkpoints) as ckpts, \
            Sandbox(workers=cfg.rl.sandbox_workers, stop_at_first_failure=False) as sandbox, Preemption() as preempt:
        report = _read_eval(out)
        if cfg.rl.evaluate and "before" not in report:  # of the starting models, so before any restore
            report["before"] = _evaluate(cfg.rl, agents, state, chat, eval_problems, sandbox.judge, mesh)
            _write_eval(out, report, "before")
        start = ckpts.latest_step() or 0
        if start:
            state = ckpts.restore(_abstract(state), order)
        if cfg.rl.offload_idle:
            state = {name: to_memory(s, "pinned_host") for name, s in state.items()}
        writer = MetricsWriter(out, resume_step=start)
        try:
            state, code = _run(cfg, agents, state, chat, train_problems, order, sandbox.judge, ckpts, writer, mesh,
                               start, preempt)
        finally:
            writer.close()
        if code:
            return code
        final = max(start, cfg.rl.steps)  # rerun with more steps: the last results are stale
        if cfg.rl.evaluate and report.get("after", {}).get("step") != final:
            report["after"] = {**_evaluate(cfg.rl, agents, state, chat, eval_problems, sandbox.judge, mesh),
                               "step": final}
            _write_eval(out, report, "after")
    saved = out / "models.json"  # every process writes it (identical), like eval.json, and reads it back alike
    stale = json.loads(saved.read_text()).get("step") != final if saved.exists() else True
    for name, agent in agents.items():
        if stale or not (out / name / "model").exists():
            params = agent.update.params(to_memory(state[name].params, "device"))
            checkpoints.save_model(out / name / "model", nnx.merge(agent.update.graphdef, params),
                                   tokenizer_dir=checkpoints.sidecar_dir(agent.init), replace=True)
    if stale:
        saved.write_text(json.dumps({"step": final}) + "\n")
    return 0


def check_batch_split(rl: RLConfig, shards: int) -> None:
    """Each agent's micro-batch (its rows per step / rl.grad_accum) must split evenly over the mesh's batch axes;
    the Coder has num_programs times the Planner's rows, so checking the Planner's suffices."""
    plans = rl.problems_per_step * rl.num_plans
    if plans % (rl.grad_accum * shards):
        raise UserError(f"config rl: the planner's {plans} rows per step (problems_per_step x num_plans) / "
                        f"grad_accum {rl.grad_accum} do not split over the mesh's {shards} batch shards; change "
                        f"rl.problems_per_step or the mesh")


def _abstract(state: dict[str, TrainState]):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


def to_memory(tree, kind: str):
    """`tree`'s arrays moved to memory `kind` of the devices that hold them ("device", or "pinned_host" for the
    host memory beside them), shardings otherwise unchanged; a no-op for arrays already there."""
    return jax.tree.map(lambda x: jax.device_put(x, x.sharding.with_memory_kind(kind)), tree)


def _policies(agents: dict[str, Agent], state: dict[str, TrainState], mesh) -> dict[str, Policy]:
    """Each agent's sampler with its current weights (brought onto the devices first when offloaded)."""
    return {n: Policy(a.sampler, sampler_params(a.abstract, to_memory(state[n].params, "device"), mesh,
                                                a.sampler_frozen))
            for n, a in agents.items()}


def _evaluate(rl: RLConfig, agents, state, chat, problems, judge, mesh) -> dict[str, float]:
    policies = _policies(agents, state, mesh)
    return heldout_pass_rate(policies["planner"], policies["coder"], chat, problems, judge, rl.eval_temperature,
                             rl.eval_samples, seed=rl.seed)


def _read_eval(out: Path) -> dict:
    path = out / "eval.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _write_eval(out: Path, report: dict, when: str) -> None:
    """Every process writes the (identical) file: each reads it back on resume to decide, in step with the others,
    whether the evaluation still has to run (it is collective)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=1) + "\n")
    if jax.process_index() == 0:
        r = report[when]
        how = "greedy" if r["temperature"] == 0 else f"T={r['temperature']:g}, {r['samples_per_problem']} samples each"
        print(f"rl: held-out pass@1 {when} RL: {r['pass_at_1']:.3f} ({r['problems']} problems, {how})")


def _run(cfg: Config, agents, state, chat, problems, order, judge, ckpts, writer, mesh, start: int, preempt):
    """Steps `start + 1 ..` to `rl.steps`, checkpointing as configured; returns (states, exit code). A SIGTERM
    (`preempt.requested`, from any time since the command started) ends it after the step in flight."""
    rl = cfg.rl
    bar = tqdm(total=rl.steps, initial=start, desc="rl", unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    for step in range(start + 1, rl.steps + 1):
        state, metrics = _step(cfg, agents, state, chat, [problems[i] for i in order.next()], judge, mesh, step)
        for name in AGENTS:
            if not np.isfinite(metrics[f"{name}/loss"]):
                last = ckpts.latest_step()
                raise UserError(f"rl step {step}: {name} loss is {metrics[f'{name}/loss']}; stopped (last "
                                f"checkpoint: {'none' if last is None else last})")
        writer.write(step, metrics)
        bar.update(1)
        bar.set_postfix(pass_rate=f"{metrics['coder/pass_rate']:.3f}")
        if step % rl.checkpoint_every == 0 or step == rl.steps or preempt.requested:
            ckpts.save(step, state, order, force=True)
        if preempt.requested:
            ckpts.wait()
            bar.close()
            print(f"rl: SIGTERM: saved step {step}; rerun the same command to resume")
            return state, EXIT_PREEMPTED
    bar.close()
    return state, 0


def _step(cfg: Config, agents, state, chat, problems, judge, mesh, step: int):
    """One RL step on `problems`: rollout, reference log-probs, both agents' updates; returns (states, metrics)."""
    rl, started = cfg.rl, time.perf_counter()
    policies = _policies(agents, state, mesh)
    pending = start_rollout(problems, policies["planner"], policies["coder"], chat, judge, rollout_config(rl),
                            seed=step_seed(rl.seed, step))
    refs, logprob_s = {}, 0.0
    if not rl.dynamic_sampling:  # else `finish` may replace rows: reference log-probs wait for it
        refs, logprob_s = _reference(agents, pending.batches(), mesh, cfg)
    result = pending.finish()
    if rl.dynamic_sampling:
        refs, logprob_s = _reference(agents, (result.planner, result.coder), mesh, cfg)
    metrics = dict(result.metrics)
    update_start = time.perf_counter()
    for name, batch in (("planner", result.planner), ("coder", result.coder)):
        resident = to_memory(state[name], "device") if rl.offload_idle else state[name]
        resident, m = agents[name].update.step(resident, update_batch(batch, refs.get(name)))
        state[name] = to_memory(resident, "pinned_host") if rl.offload_idle else resident
        metrics.update(_update_metrics(name, jax.device_get(m)))
    metrics.update(generate_seconds=metrics["planner/generate_seconds"] + metrics["coder/generate_seconds"],
                   logprob_seconds=logprob_s, update_seconds=time.perf_counter() - update_start,
                   step_seconds=time.perf_counter() - started)
    return state, metrics


def _reference(agents, batches, mesh, cfg: Config) -> tuple[dict[str, np.ndarray], float]:
    """({agent: reference log-probs [B, T]} (empty when β = 0), seconds)."""
    if cfg.rl.grpo.kl_coef == 0:
        return {}, 0.0
    start = time.perf_counter()
    refs = {name: reference_logprobs(*agents[name].reference, batch, mesh, sharding.TRAIN_RULES,
                                     cfg.train.logprob_chunk)
            for name, batch in zip(AGENTS, batches)}
    return refs, time.perf_counter() - start


def _update_metrics(name: str, metrics_I: dict) -> dict[str, float]:
    """An agent's update metrics over its μ passes: means, the first pass's ρ range (1 on-policy) and the whole
    range."""
    out = {f"{name}/{k}": float(np.mean(v)) for k, v in metrics_I.items() if not k.startswith("rho")}
    out.update({f"{name}/rho_min_first": float(metrics_I["rho_min"][0]),
                f"{name}/rho_max_first": float(metrics_I["rho_max"][0]),
                f"{name}/rho_min": float(np.min(metrics_I["rho_min"])),
                f"{name}/rho_max": float(np.max(metrics_I["rho_max"]))})
    return out
