"""The SFT loop: build or resume the training state, run jitted steps, log, checkpoint, write the final model.

Layout under `out` (the SPEC's `D/sft-<agent>/`): `checkpoints/<step>/` (TrainState + data position),
`metrics.jsonl`, `tb/` (TensorBoard), and `model/` at the end (`checkpoints.save_model`, usable as `--model`).
Running it again with the same `out` resumes from the latest checkpoint, the data iterator included, and gives
the same parameters as an uninterrupted run. SIGTERM saves a checkpoint after the current step and stops.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from tqdm import tqdm

from algoforge_jax import checkpoints, sharding
from algoforge_jax.config import Config
from algoforge_jax.errors import UserError
from algoforge_jax.models import lora
from algoforge_jax.models.build import abstract_model, init_model
from algoforge_jax.models.qwen2 import Qwen2Config
from algoforge_jax.train.checkpoint import StateCheckpoints
from algoforge_jax.train.metrics import MetricsWriter, flops_per_token, peak_flops_per_device
from algoforge_jax.train.state import TrainState, init_state, learning_rate, make_optimizer, state_shardings
from algoforge_jax.train.step import make_eval_step, make_train_step

EXIT_PREEMPTED = 143  # 128 + SIGTERM: the scheduler should rerun the command


def build_model(cfg: Config, init: str, mesh, seed: int | None = None):
    """The starting model in the training layout: the agent's init checkpoint, else a random one; with
    `cfg.lora` adapters (fresh ones seeded by `seed`, default model.seed) on its frozen weights."""
    rules, seed = sharding.TRAIN_RULES, cfg.model.seed if seed is None else seed
    if init:
        return checkpoints.load_pretrained(init, mesh, rules, lora=cfg.lora, seed=seed, dtype=cfg.model.dtype,
                                           param_dtype=cfg.model.param_dtype, remat=cfg.model.remat)
    return init_model(cfg.model.qwen2().replace(lora=cfg.lora), mesh, rules, seed=seed)


def _global(batch: dict, mesh) -> dict:
    """The global batch from every process's rows of it (on one process: the batch itself)."""
    target = sharding.batch_sharding(mesh, sharding.TRAIN_RULES)
    return {k: jax.make_array_from_process_local_data(target, np.asarray(v)) for k, v in batch.items()}


class Preemption:
    """Turns SIGTERM into a flag the loop checks between steps (a checkpoint needs a finished step)."""

    def __enter__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, *_):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """The compiled pieces of SFT for one model architecture on one mesh (shared by the loop, tests, benchmarks)."""

    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    shardings: TrainState
    step: Callable  # (state, batch) -> (state, metrics); both arguments donated
    eval: Callable  # (params, batch) -> (loss sum, token count)
    mesh: Mesh
    frozen: dict | None = None  # the frozen base when adapters train (models.lora.split), else None

    def model(self, params: dict):
        """The model with these trainable parameters (on the frozen base, if any)."""
        return nnx.merge(self.graphdef, lora.join(self.frozen or {}, params))


def make_trainer(cfg: Config, model_cfg: Qwen2Config, mesh: Mesh, rules=sharding.TRAIN_RULES,
                 frozen: dict | None = None) -> Trainer:
    """The SFT pieces for `model_cfg`; `frozen` is the base its adapters train on (None: full fine-tuning)."""
    graphdef, abstract = abstract_model(model_cfg, mesh, rules)
    tx, schedule = make_optimizer(cfg.train), learning_rate(cfg.train)
    shardings = state_shardings(abstract, tx, mesh)
    step = make_train_step(graphdef, tx, schedule, shardings, mesh, rules, accum=cfg.train.grad_accum,
                           chunk_len=cfg.train.logprob_chunk, frozen=frozen)
    evaluate = make_eval_step(graphdef, shardings, mesh, rules, chunk_len=cfg.train.logprob_chunk, frozen=frozen)
    return Trainer(graphdef, tx, shardings, step, evaluate, mesh, frozen)


def train_sft(cfg: Config, agent: str, out, batches, eval_batches: list[dict], tokenizer_dir=None) -> int:
    """Trains one agent to `cfg.train.steps` (resuming if `out` has checkpoints); returns a process exit code."""
    out = Path(out)
    mesh = sharding.make_mesh(cfg.mesh)
    model = build_model(cfg, cfg.agent(agent).init, mesh)
    trainer = make_trainer(cfg, model.config, mesh, frozen=lora.split(nnx.state(model))[0] or None)
    with StateCheckpoints(out / "checkpoints", cfg.train.keep_checkpoints) as ckpts:
        state = _start_state(ckpts, model, trainer, batches, cfg.train.seed)
        model_cfg = model.config
        del model  # its arrays now live in `state` (which the first step donates) and `trainer.frozen`
        start = int(state.step)
        if start >= cfg.train.steps and (out / "model").exists():
            print(f"sft {agent}: already trained to step {start} in {out}")
            return 0
        writer = MetricsWriter(out, resume_step=start)
        try:
            state, code = _run(cfg, model_cfg, trainer, state, batches, eval_batches, ckpts, writer)
        finally:
            writer.close()
    if code == 0 and not (out / "model").exists():
        checkpoints.save_model(out / "model", trainer.model(state.params), tokenizer_dir=tokenizer_dir)
    return code


def _start_state(ckpts: StateCheckpoints, model, trainer: Trainer, batches, seed: int) -> TrainState:
    if ckpts.latest_step() is None:
        return init_state(model, trainer.tx, trainer.shardings, seed)
    abstract = jax.eval_shape(lambda: init_state(model, trainer.tx, trainer.shardings, seed))
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract,
                            trainer.shardings)
    return ckpts.restore(abstract, batches)


def _run(cfg: Config, model_cfg, trainer: Trainer, state, batches, eval_batches, ckpts, writer):
    """The step loop proper; returns (final state, exit code)."""
    tcfg = cfg.train
    peak = peak_flops_per_device(tcfg.peak_tflops)
    first = int(state.step)
    bar = tqdm(total=tcfg.steps, initial=first, desc="sft", unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    mesh = trainer.mesh
    with Preemption() as preempt, jax.set_mesh(mesh):
        for step in range(first + 1, tcfg.steps + 1):
            batch = next(batches)
            tokens = batch["tokens"].size  # every position, padding included: what the step computes on
            started = time.perf_counter()
            state, metrics = trainer.step(state, _global(batch, mesh))
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            seconds = time.perf_counter() - started
            if not np.isfinite(metrics["loss"]):
                last = ckpts.latest_step()
                raise UserError(f"step {step}: loss is {metrics['loss']}; stopped (last checkpoint: "
                                f"{'none' if last is None else last})")
            metrics.update(tokens_per_s=tokens / seconds, step_s=seconds)
            if peak:
                flops = flops_per_token(model_cfg, batch["tokens"].shape[-1])  # the agent's own row length
                metrics["mfu"] = flops * tokens / seconds / (peak * jax.device_count())
            if eval_batches and (step % tcfg.eval_every == 0 or step == tcfg.steps):
                metrics["eval_loss"] = _eval_loss(trainer.eval, state.params, eval_batches, mesh)
            writer.write(step, metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if step % tcfg.checkpoint_every == 0 or step == tcfg.steps or preempt.requested:
                ckpts.save(step, state, batches, force=True)
            if preempt.requested:
                ckpts.wait()
                bar.close()
                print(f"sft: SIGTERM: saved step {step}; rerun the same command to resume")
                return state, EXIT_PREEMPTED
    bar.close()
    return state, 0


def _eval_loss(eval_fn, params, eval_batches, mesh) -> float:
    sums = [jax.device_get(eval_fn(params, _global(b, mesh))) for b in eval_batches]
    return float(sum(s for s, _ in sums) / max(sum(c for _, c in sums), 1.0))
