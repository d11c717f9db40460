"""Generation for evaluation: problems in, each inference mode's completions (and plans) out, models read from disk.

    cfg = EvalConfig(mode="planner-coder", n=5, planner=Decoding(256, temperature=0.8))
    agents = load_agents({"planner": P, "coder": C}, cfg, sharding.make_mesh())
    solutions, metrics = generate_solutions(problems, agents, cfg)

The modes are the paper's baselines: `direct` (the Coder alone), `cot` (the Coder reasoning first) and
`planner-coder` (n plans per problem in one Planner sampler call, then one program per plan in one Coder call:
the rollout's `plan_and_code`, so evaluation and RL build prompts and pair plans with programs the same way).
Each mode is one sampler call per agent over all problems × n samples (or per `problems_per_call` chunk).
Judging and files are not here: `algoforge eval` (evaluate.py) scores the solutions with eval/score.py's functions.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Sequence

import numpy as np

from algoforge_jax.data.synthetic import EVAL_BENCHMARKS
from algoforge_jax.errors import UserError
from algoforge_jax.rl.rollout import Chat, Decoding, Policy, Samples, agent_seed, plan_and_code, sample_groups
from eval import prompts
from eval.benchmarks import BENCHMARKS, load_benchmark
from eval.judging import program_for
from eval.problems import Problem

MODES = prompts.MODES
CODER_MESSAGES = {"direct": prompts.direct_messages, "cot": prompts.cot_messages}  # the Coder-only modes
SYNTHETIC = EVAL_BENCHMARKS  # the embedded default's splits, as build_embedded writes them under WORKDIR/data
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What `algoforge eval` generates; flags override fields. Validated on construction."""

    mode: str = "planner-coder"  # direct | cot | planner-coder
    n: int = 1  # samples per problem (plans per problem in planner-coder); pass@k is reported for every k <= n
    planner: Decoding = Decoding(max_new_tokens=256, temperature=0.0)  # temperature 0: greedy
    coder: Decoding = Decoding(max_new_tokens=512, temperature=0.0)
    seed: int = 0  # sampling seed
    compact_prompts: bool = False  # the embedded default's short Planner/Coder wording (eval/prompts.py compact)
    workdir: str | None = None  # run directory: default models D/rl/{agent}/model, else D/sft-{agent}/model
    dtype: str = "float32"  # compute dtype of the models
    problems_per_call: int = 0  # problems per sampler call (bounds the KV cache); 0: all in one call
    workers: int | None = None  # sandbox worker processes; None: the CPU count

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"EvalConfig.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name, minimum in (("n", 1), ("problems_per_call", 0)):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
                raise ValueError(f"EvalConfig.{name} must be an integer >= {minimum}, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"EvalConfig.dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        varied = self.agents[0]  # the agent whose samples make the n samples differ
        if self.n > 1 and getattr(self, varied).temperature == 0:
            raise ValueError(f"EvalConfig: n={self.n} greedy samples would be one sample repeated; give the "
                             f"{varied} a temperature > 0")

    @property
    def agents(self) -> tuple[str, ...]:
        """The agents this mode runs, in order."""
        return ("planner", "coder") if self.mode == "planner-coder" else ("coder",)


# ---------------------------------------------------------------------------------------------- inputs


def default_model(workdir, agent: str) -> Path:
    """An agent's model in a run directory: after RL if there is one, else after SFT."""
    for path in (Path(workdir) / "rl" / agent / "model", Path(workdir) / f"sft-{agent}" / "model"):
        if path.exists():
            return path
    raise UserError(f"{workdir}: no {agent} model (looked for rl/{agent}/model and sft-{agent}/model); "
                    f"give --{agent}")


def benchmark_problems(name: str, path=None, split: str | None = None,
                       workdir=None) -> tuple[list[Problem], str]:
    """(problems, split name) of a benchmark of eval/benchmarks.py, or of the embedded default's synthetic splits
    (`synthetic-heldout`, `synthetic-train`: WORKDIR/data/problems/SPLIT.jsonl unless `path` names the file)."""
    if name not in SYNTHETIC:
        problems = load_benchmark(name, path, split)  # raises on an unknown name first
        return problems, split or BENCHMARKS[name].default_split
    if split is not None:
        raise UserError(f"benchmark {name!r} is one split already; drop --split")
    if path is None and workdir is None:
        raise UserError(f"benchmark {name!r} is read from a run directory: give --workdir (or --problems)")
    file = Path(path) if path is not None else Path(workdir) / "data" / "problems" / f"{SYNTHETIC[name]}.jsonl"
    return load_benchmark("jsonl", file), SYNTHETIC[name]


# ---------------------------------------------------------------------------------------------- models


@dataclasses.dataclass(frozen=True)
class Agents:
    """The loaded agents (a sampler and weights each) and the one tokenizer they share."""

    policies: dict[str, Policy]
    chat: Chat


def make_chat(tokenizer, compact: bool = False) -> Chat:
    """ChatML prompts through data/chat.py's renderer (one for the Qwen HF and the sentencepiece tokenizers)."""
    from algoforge_jax.data.chat import render_chat

    return Chat(tokenizer, render=lambda messages: render_chat(tokenizer, messages, add_generation_prompt=True)[0],
                planner_messages=functools.partial(prompts.planner_messages, compact=compact),
                coder_messages=functools.partial(prompts.coder_messages, compact=compact))


def _same_tokenizer(a, b) -> bool:
    probe = "def f(x):\n    return x + 1  # plan"
    return (a.vocab_size, a.eos_id, a.pad_id, a.im_start_id, a.encode(probe)) == \
        (b.vocab_size, b.eos_id, b.pad_id, b.im_start_id, b.encode(probe))


def open_shared_tokenizer(paths: dict[str, Path], override=None):
    """The tokenizer of `override`, else the one stored with the models; the agents must agree on it (a plan is
    passed as text, but both prompts are rendered by one Chat)."""
    from algoforge_jax.tokenizer import open_tokenizer

    if override is not None:
        return open_tokenizer(override)
    found = {path: open_tokenizer(path) for path in dict.fromkeys(paths.values())}
    first, *others = found.items()
    for path, tokenizer in others:
        if not _same_tokenizer(first[1], tokenizer):
            raise UserError(f"{path}: its tokenizer differs from {first[0]}'s; both agents need one tokenizer")
    return first[1]


def _stop_ids(tokenizer, model_eos) -> tuple[int, ...]:
    """<|im_end|> (an assistant turn's end), <|endoftext|> and the model's own generation eos ids."""
    eos = [model_eos] if isinstance(model_eos, int) else list(model_eos or [])
    return tuple(dict.fromkeys([tokenizer.eos_id, tokenizer.pad_id, *eos]))


def load_agents(paths: dict[str, Path], cfg: EvalConfig, mesh, tokenizer=None) -> Agents:
    """The agents of `paths` (agent -> model directory, HF or orbax) on `mesh`, each with a sampler of its own
    budget. A path named twice is loaded once; agents with one architecture and budget share a sampler (and its
    compiled programs)."""
    from algoforge_jax import checkpoints, sharding
    from algoforge_jax.sampling import SamplerConfig, make_sampler

    tokenizer = open_shared_tokenizer(paths, tokenizer)
    models, samplers, policies = {}, {}, {}
    for agent, path in paths.items():
        if path not in models:
            models[path] = checkpoints.load_pretrained(path, mesh, sharding.SAMPLE_RULES, dtype=cfg.dtype)
        model = models[path]
        budget = getattr(cfg, agent).max_new_tokens
        sampler_cfg = SamplerConfig(budget, _stop_ids(tokenizer, model.config.eos_token_id), tokenizer.pad_id)
        sampler, params = make_sampler(model, mesh, sampler_cfg, sharding.SAMPLE_RULES)
        policies[agent] = Policy(samplers.setdefault((repr(model.config), budget), sampler), params)
    return Agents(policies, make_chat(tokenizer, cfg.compact_prompts))


# ---------------------------------------------------------------------------------------------- generation


@dataclasses.dataclass(frozen=True)
class Solution:
    """One sample of one problem: what the last agent wrote, the program in it and, in planner-coder, its plan."""

    problem: Problem
    sample_index: int
    completion: str  # the Coder's raw answer
    program: str  # what the sandbox runs ("" when the completion holds no code)
    plan: str | None  # the plan the Coder was given (planner-coder only)
    prompt_ids: tuple[int, ...]  # the Coder's prompt
    truncated: bool  # the Coder stopped at its budget, not at a stop token


def generate_solutions(problems: Sequence[Problem], agents: Agents,
                       cfg: EvalConfig) -> tuple[list[Solution], dict[str, float]]:
    """(len(problems) × cfg.n solutions, problem-major; generation seconds per agent)."""
    problems = list(problems)
    if not problems:
        raise ValueError("generate_solutions: no problems")
    chunk = cfg.problems_per_call or len(problems)
    solutions, metrics = [], {}
    for c, start in enumerate(range(0, len(problems), chunk)):
        found, seconds = _generate_chunk(problems[start:start + chunk], agents, cfg, c)
        solutions += found
        metrics = {k: metrics.get(k, 0.0) + v for k, v in seconds.items()}
    return solutions, metrics


def _generate_chunk(problems: list[Problem], agents: Agents, cfg: EvalConfig,
                    chunk: int) -> tuple[list[Solution], dict[str, float]]:
    """One sampler call per agent over `problems` × n."""
    P, n, chat, coder = len(problems), cfg.n, agents.chat, agents.policies["coder"]
    if cfg.mode == "planner-coder":
        seeds = (agent_seed(cfg.seed, 0, chunk), agent_seed(cfg.seed, 1, chunk))
        drawn, metrics = plan_and_code(problems, agents.policies["planner"], coder, chat, (n, 1),
                                       (cfg.planner, cfg.coder), seeds)
        return _solutions(problems, drawn.code, drawn.plans.texts), metrics
    messages = CODER_MESSAGES[cfg.mode]
    code, seconds = sample_groups(coder, [chat.prompt_ids(messages(p)) for p in problems], (P, n), cfg.coder, chat,
                                  agent_seed(cfg.seed, 1, chunk))
    return _solutions(problems, code, None), {"coder/generate_seconds": seconds}


def _solutions(problems: list[Problem], code: Samples, plans_PN: np.ndarray | None) -> list[Solution]:
    """Solutions from the Coder's samples: `(P, n)` groups, or `(P, n, 1)` (one program per plan of `plans_PN`)."""
    P, n = code.texts.shape[:2]
    texts, truncated = code.texts.reshape(P, n), code.truncated.reshape(P, n)
    prompts_PN = code.prompts if plans_PN is not None else np.repeat(code.prompts[:, None], n, axis=1)
    return [Solution(problems[p], i, texts[p, i], program_for(problems[p], texts[p, i]),
                     None if plans_PN is None else plans_PN[p, i], tuple(prompts_PN[p, i]), bool(truncated[p, i]))
            for p, i in np.ndindex(P, n)]
