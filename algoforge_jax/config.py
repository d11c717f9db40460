"""Run configuration: one frozen tree of typed dataclasses, loaded from a Python file and overridden with `--set`.

A config file is plain Python exposing `get_config(arg: str | None = None) -> Config` (its docstring shows the
command that runs it). `--set a.b=value` replaces one leaf, the value coerced to the field's declared type; an
unknown key or a value of the wrong type is a one-line `UserError` naming the key and what is valid. There is no
merging of files and no YAML: a file that wants a variant builds it with `dataclasses.replace`.

Planner and Coder share one code path: the tree has one `model`, `train` and `mesh` for both agents and two
instances of `AgentConfig` (`planner`, `coder`) for what differs between them (their data and starting weights).
The RL stage's knobs are `rl` (`RLConfig`), whose loss and reward groups are `rl/grpo.py`'s `GRPOConfig` and
`rl/rewards.py`'s `RewardConfig` themselves (validated by their own constructors); `lora` is `models/lora.py`'s
`LoRAConfig` (`--set lora.rank=16` trains adapters on a frozen base in SFT and RL; `--set rl.lora.rank=16` in RL
alone, on top of fully fine-tuned SFT models). Left out on purpose: the data pipeline's
packing options.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import types
import typing
from pathlib import Path

from algoforge_jax.errors import UserError
from algoforge_jax.models.lora import LoRAConfig
from algoforge_jax.models.qwen2 import PRESETS, Qwen2Config, preset
from algoforge_jax.rl.grpo import GRPOConfig
from algoforge_jax.rl.rewards import RewardConfig
from algoforge_jax.sharding import MeshConfig

AGENTS = ("planner", "coder")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture to train, or where to start from. Defaults: a random ~1M-parameter model."""

    preset: str = ""  # a name from models.qwen2.PRESETS; "" uses the size fields below
    vocab_size: int = 1024  # used when preset is ""
    hidden_size: int = 128  # used when preset is ""
    intermediate_size: int = 384  # used when preset is ""
    num_layers: int = 4  # used when preset is ""
    num_heads: int = 4  # used when preset is ""
    num_kv_heads: int = 2  # used when preset is ""
    max_position_embeddings: int = 2048  # used when preset is ""
    tie_word_embeddings: bool = True  # used when preset is ""
    dtype: str = "float32"  # compute dtype of activations and matmuls (bfloat16 on accelerators)
    param_dtype: str = "float32"  # dtype of the master weights the optimizer updates
    remat: str = "none"  # what a layer keeps for the backward pass: none | full | dots (models.qwen2.REMAT_POLICIES)
    seed: int = 0  # random init seed when an agent has no init checkpoint

    def qwen2(self) -> Qwen2Config:
        """The model's Qwen2Config, validated (a bad preset or dtype is a one-line error)."""
        dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype, remat=self.remat)
        try:
            if self.preset:
                return preset(self.preset, **dtypes)
            return Qwen2Config(self.vocab_size, self.hidden_size, self.intermediate_size, self.num_layers,
                               self.num_heads, self.num_kv_heads, self.max_position_embeddings,
                               tie_word_embeddings=self.tie_word_embeddings, **dtypes)
        except ValueError as e:
            raise UserError(f"config model: {e}") from None


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """What one agent (Planner or Coder) trains on and starts from; both agents are instances of this class."""

    train_data: str = ""  # JSONL of training rows (planner: task_id, problem, plan; coder: ... plus code)
    eval_data: str = ""  # JSONL of held-out rows for the periodic held-out loss; "" skips it
    init: str = ""  # model to start from (HF directory or orbax checkpoint); "" = random init from `model`
    tokenizer: str = ""  # tokenizer directory; "" = the init model's tokenizer, else the byte-level fallback
    seq_len: int = 0  # tokens per SFT row of this agent (plans are shorter than programs); 0 = data.seq_len


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Shapes of the batches the train step sees (fixed, so the step compiles once)."""

    seq_len: int = 256  # tokens per row; longer rendered rows are cut, shorter ones padded
    batch_size: int = 16  # rows per optimizer step (the whole accumulated batch)
    eval_batches: int = 2  # batches of held-out rows averaged for the held-out loss
    seed: int = 0  # data order seed (epochs are reshuffled from it)
    pack: bool = False  # SFT: several examples a row (attention and positions kept per example), fewer pad tokens
    sketches: float = 0.0  # embedded default: constant-free sketch plans per problem added to the Planner's data


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimizer, schedule and loop. The learning rate warms up linearly, then decays on a cosine to the end."""

    steps: int = 200  # optimizer steps
    learning_rate: float = 1e-3  # peak learning rate
    warmup_steps: int = 20  # linear warmup from 0 to learning_rate
    end_lr_ratio: float = 0.1  # final learning rate as a fraction of the peak
    weight_decay: float = 0.01  # AdamW decoupled decay, applied to matrices only (not norms or biases)
    b1: float = 0.9  # Adam first-moment decay
    b2: float = 0.95  # Adam second-moment decay
    eps: float = 1e-8  # Adam epsilon
    max_grad_norm: float = 1.0  # global-norm clipping threshold; 0 disables clipping
    grad_accum: int = 1  # micro-batches per step; batch_size must divide by it
    logprob_chunk: int = 128  # sequence chunk of the log-prob head: bounds the fp32 [B, chunk, V] logits
    checkpoint_every: int = 50  # save training state every K steps (and at the end, and on SIGTERM)
    keep_checkpoints: int = 2  # how many training-state checkpoints to keep
    eval_every: int = 50  # held-out loss every K steps (needs the agent's eval_data)
    seed: int = 0  # RNG seed carried in the training state
    peak_tflops: float = 0.0  # per-device peak for MFU; 0 = known accelerators' nominal bf16 peak, else no MFU


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """Collaborative GRPO (`algoforge rl`): what each step draws, how it is rewarded, and the optimizer of both agents
    (the `train` group's AdamW and clipping, with this group's learning rate and schedule length)."""

    steps: int = 30  # RL steps; each is one rollout and num_iterations optimizer updates of each agent
    problems_per_step: int = 8  # P: problems drawn per step (in a seeded order, epoch after epoch)
    num_plans: int = 4  # Gp: plans per problem (one planner group)
    num_programs: int = 4  # Gc: programs per plan (one coder group)
    temperature: float = 1.0  # sampling temperature of both agents during rollouts
    top_p: float = 1.0  # nucleus sampling of both agents during rollouts; 1 = off
    planner_prompt_len: int = 64  # prompt width (left-padded); fixed, so the sampler and the update compile once
    planner_max_new_tokens: int = 64  # plan budget; responses are padded to it
    coder_prompt_len: int = 128  # as planner_prompt_len, for the Coder (whose prompt holds the plan)
    coder_max_new_tokens: int = 96  # program budget
    learning_rate: float = 1e-4  # constant after warmup_steps (optimizer updates)
    warmup_steps: int = 0
    adam_eps: float = 0.0  # AdamW epsilon of the RL updates; 0 = train.eps (see the README on noisy gradients)
    grad_accum: int = 1  # micro-batches per update; every agent's batch (P*Gp, P*Gp*Gc rows) must divide by it
    dynamic_sampling: bool = False  # redraw problems whose programs all earn one reward (see rl/rollout.py)
    grpo: GRPOConfig = GRPOConfig()
    reward: RewardConfig = RewardConfig()
    problems: str = ""  # training problems (the SPEC's jsonl); "" = the embedded default's train split
    eval_problems: str = ""  # held-out problems; "" = the embedded default's held-out split
    evaluate: bool = True  # held-out pass@1 before the first and after the last step (`algoforge run`: its eval stage)
    eval_limit: int = 0  # held-out problems evaluated before and after (the first N); 0 = all
    eval_temperature: float = 0.0  # held-out pass@1 decoding of both agents: 0 = greedy, else sampled
    eval_samples: int = 1  # plan -> program chains per held-out problem (pass@1 is their mean); 1 when greedy
    checkpoint_every: int = 5  # save both agents' training state every K steps (and at the end, and on SIGTERM)
    keep_checkpoints: int = 2
    sandbox_workers: int = 2  # sandbox worker processes judging programs
    offload_idle: bool = False  # keep each agent's training state in host memory except during its own update
    lora: LoRAConfig = LoRAConfig()  # adapters for RL alone, on the (fully fine-tuned) SFT models; rank 0 = `lora`
    seed: int = 0  # problem order and sampling seeds


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole run: one tree, shared by every command."""

    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    planner: AgentConfig = AgentConfig()
    coder: AgentConfig = AgentConfig()
    rl: RLConfig = RLConfig()
    lora: LoRAConfig = LoRAConfig()  # adapters on a frozen base for SFT and RL; rank 0 = full fine-tuning

    def agent(self, name: str) -> AgentConfig:
        if name not in AGENTS:
            raise UserError(f"unknown agent {name!r}; valid: {', '.join(AGENTS)}")
        return getattr(self, name)

    def rl_lora(self) -> LoRAConfig:
        """The adapters RL trains: `rl.lora` when it has a rank, else the `lora` group SFT used too."""
        return self.rl.lora if self.rl.lora.rank else self.lora

    def seq_len(self, agent: str) -> int:
        """Tokens per SFT row of `agent`: its own `seq_len`, else `data.seq_len`."""
        return self.agent(agent).seq_len or self.data.seq_len


def validate(cfg: Config) -> Config:
    """Checks across fields, each a one-line error naming the field; run once the overrides are all applied."""
    if cfg.model.preset and cfg.model.preset.lower() not in PRESETS:
        raise UserError(f"config model.preset: unknown {cfg.model.preset!r}; known: {', '.join(sorted(PRESETS))}")
    positive = {"train.steps": cfg.train.steps, "train.grad_accum": cfg.train.grad_accum,
                "train.checkpoint_every": cfg.train.checkpoint_every, "train.keep_checkpoints": cfg.train.keep_checkpoints,
                "train.eval_every": cfg.train.eval_every, "train.logprob_chunk": cfg.train.logprob_chunk,
                "data.seq_len": cfg.data.seq_len, "data.batch_size": cfg.data.batch_size}
    for key, value in positive.items():
        if value < 1:
            raise UserError(f"config {key}: must be >= 1, got {value}")
    if cfg.data.sketches < 0:
        raise UserError(f"config data.sketches: must be >= 0 (sketch plans per problem), got {cfg.data.sketches}")
    for agent in AGENTS:
        if cfg.agent(agent).seq_len < 0:
            raise UserError(f"config {agent}.seq_len: must be >= 0 (0 = data.seq_len), got {cfg.agent(agent).seq_len}")
    rl = cfg.rl
    for key in ("steps", "problems_per_step", "num_plans", "num_programs", "planner_prompt_len",
                "planner_max_new_tokens", "coder_prompt_len", "coder_max_new_tokens", "grad_accum", "eval_samples",
                "checkpoint_every", "keep_checkpoints", "sandbox_workers"):
        if getattr(rl, key) < 1:
            raise UserError(f"config rl.{key}: must be >= 1, got {getattr(rl, key)}")
    if not (rl.temperature > 0 and 0 < rl.top_p <= 1 and rl.eval_temperature >= 0 and rl.learning_rate > 0):
        raise UserError(f"config rl: need temperature > 0, 0 < top_p <= 1, eval_temperature >= 0 and "
                        f"learning_rate > 0, got {rl.temperature}, {rl.top_p}, {rl.eval_temperature}, "
                        f"{rl.learning_rate}")
    if not rl.adam_eps >= 0:
        raise UserError(f"config rl.adam_eps: must be >= 0 (0 = train.eps), got {rl.adam_eps}")
    if rl.lora.rank and cfg.lora.rank:
        raise UserError(f"config rl.lora.rank ({rl.lora.rank}) and lora.rank ({cfg.lora.rank}) are both set: "
                        f"`lora` adapts SFT and RL, `rl.lora` RL alone on fully fine-tuned models; set one")
    planner_rows = rl.problems_per_step * rl.num_plans
    if planner_rows % rl.grad_accum or planner_rows * rl.num_programs % rl.grad_accum:
        raise UserError(f"config rl.grad_accum ({rl.grad_accum}) must divide both agents' rows per step "
                        f"({planner_rows} plans, {planner_rows * rl.num_programs} programs)")
    if cfg.data.batch_size % cfg.train.grad_accum:
        raise UserError(f"config data.batch_size ({cfg.data.batch_size}) must be a multiple of train.grad_accum "
                        f"({cfg.train.grad_accum})")
    mesh = dataclasses.asdict(cfg.mesh)
    if list(mesh.values()).count(-1) > 1 or any(v == 0 or v < -1 for v in mesh.values()):
        raise UserError(f"config mesh: sizes must be positive with at most one -1 (all remaining devices), got {mesh}")
    if cfg.train.warmup_steps < 0:
        raise UserError(f"config train.warmup_steps: must be >= 0, got {cfg.train.warmup_steps}")
    if cfg.train.learning_rate <= 0:
        raise UserError(f"config train.learning_rate: must be > 0, got {cfg.train.learning_rate}")
    return cfg


# ------------------------------------------------------------------------------------------------ loading


def load(path, arg: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """`get_config(arg)` of the Python file at `path`, with `--set key=value` overrides applied in order."""
    cfg = _call_get_config(Path(path), arg)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected key=value")
        cfg = override(cfg, key.strip(), value.strip())
    return validate(cfg)


def _call_get_config(path: Path, arg: str | None) -> Config:
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    spec = importlib.util.spec_from_file_location(f"algoforge_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise UserError(f"{path}:{e.lineno}: {e.msg}") from None
    if not callable(getattr(module, "get_config", None)):
        raise UserError(f"{path}: defines no get_config(arg=None) function")
    cfg = module.get_config(arg)
    if not isinstance(cfg, Config):
        raise UserError(f"{path}: get_config returned {type(cfg).__name__}, expected algoforge_jax.config.Config")
    return cfg


def override(cfg, key: str, value: str):
    """A copy of `cfg` with the dotted `key` set to `value` (a string, coerced to the field's type)."""
    return _override(cfg, key.split("."), value, key)


def _override(node, parts: list[str], value: str, key: str, prefix: str = ""):
    head, rest = parts[0], parts[1:]
    fields = [f.name for f in dataclasses.fields(node)]
    if head not in fields:
        raise UserError(f"--set {key}: unknown key {prefix + head!r}; valid: {', '.join(prefix + f for f in fields)}")
    current = getattr(node, head)
    if dataclasses.is_dataclass(current):
        if not rest:
            names = ", ".join(f"{prefix}{head}.{f.name}" for f in dataclasses.fields(current))
            raise UserError(f"--set {key}: {prefix + head!r} is a group; set one of its fields: {names}")
        new = _override(current, rest, value, key, f"{prefix}{head}.")
    elif rest:
        raise UserError(f"--set {key}: {prefix + head!r} is a value, not a group")
    else:
        new = _coerce(value, typing.get_type_hints(type(node))[head], key)
    try:
        return dataclasses.replace(node, **{head: new})
    except ValueError as e:  # a nested dataclass's own validation (e.g. MeshConfig)
        raise UserError(f"--set {key}={value}: {e}") from None


def _coerce(text: str, kind, key: str):
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        options = typing.get_args(kind)
        if type(None) in options and text.lower() in ("none", "null"):
            return None
        kind = next(t for t in options if t is not type(None))
    try:
        if kind is bool:
            if text.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return text.lower() in ("true", "1")
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        if kind is str:
            return text
    except ValueError:
        raise UserError(f"--set {key}={text}: expected {kind.__name__}") from None
    raise UserError(f"--set {key}: fields of type {kind} cannot be set from the command line")
