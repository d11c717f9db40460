"""Memory of one collaborative RL step (both agents), full fine-tuning against LoRA, as a ratio.

Two measures of the same step:
- arithmetic (every backend, nothing allocated): `memory.memory_budget` of the RL step, i.e. both agents' weights
  and AdamW moments, the references, the sampler's weights and KV cache and one micro-batch's activations, per
  device, with `lora.rank` 0 and with `--rank`;
- measured (`--measure`, where `jax.devices()[0].memory_stats()` reports `peak_bytes_in_use`, i.e. GPUs): a fresh
  process per mode builds both agents as `algoforge rl` does (random weights; with LoRA one shared base), samples
  one rollout of random prompts with each agent and runs each agent's GRPO update on it, then prints its peak.
  On CPU the backend reports nothing and the line says so.

    .venv/bin/python benchmarks/lora_memory.py                       # tiny and 1.5B, arithmetic
    python benchmarks/lora_memory.py --configs 1.5b --measure        # on a GPU: both measures
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GiB = 2**30


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", choices=("tiny", "1.5b"), default=["tiny", "1.5b"])
    p.add_argument("--rank", type=int, default=16, help="LoRA rank of the adapted runs")
    p.add_argument("--measure", action="store_true", help="also run the step and read the backend's peak memory")
    p.add_argument("--child", choices=("full", "lora"), default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def bench_config(name: str, rank: int):
    """(Config, RolloutShape) of one RL step: tiny = the embedded default's RL sizes; 1.5b = Qwen2.5-1.5B in bf16
    over fp32 master weights, 4 problems x 4 plans x 4 programs, 256 + 256 tokens a row."""
    from algoforge_jax.config import Config, ModelConfig
    from algoforge_jax.memory import RolloutShape
    from algoforge_jax.models.lora import LoRAConfig
    from algoforge_jax.sharding import MeshConfig

    lora = LoRAConfig(rank=rank)
    if name == "tiny":  # configs/tiny.py's model and RL sizes (no KL term), both agents from one start
        from algoforge_jax import config as config_lib

        tiny = config_lib.load(Path(__file__).resolve().parents[1] / "configs" / "tiny.py")
        cfg = dataclasses.replace(tiny, mesh=MeshConfig(fsdp=1), lora=lora,
                                  rl=dataclasses.replace(tiny.rl, lora=LoRAConfig()))
        shape = RolloutShape.from_config(cfg)
    else:
        model = ModelConfig(preset="qwen2.5-1.5b", dtype="bfloat16", param_dtype="float32")
        cfg = Config(model=model, mesh=MeshConfig(fsdp=1), lora=lora)
        shape = RolloutShape(4, 4, 4, 256, 256, 256, 256, micro_batch=4)
    grpo = dataclasses.replace(cfg.rl.grpo, kl_coef=cfg.rl.grpo.kl_coef if shape.kl else 0.0)
    return dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, grpo=grpo)), shape


def arithmetic(name: str, rank: int) -> tuple[float, float]:
    """RL-step peak GiB per device (full, LoRA) from shapes."""
    from algoforge_jax import memory
    from algoforge_jax.models.lora import LoRAConfig

    cfg, rollout = bench_config(name, rank)
    hardware = memory.Hardware("one device", 1, 10**15)
    peaks = [memory.memory_budget(c, hardware, rollout).peak / GiB
             for c in (dataclasses.replace(cfg, lora=LoRAConfig()), cfg)]
    return peaks[0], peaks[1]


def measure(name: str, rank: int, mode: str) -> dict:
    """Builds both agents, samples a rollout and updates each agent once; the backend's peak bytes (None if it
    reports none)."""
    import jax
    import numpy as np
    from flax import nnx

    from algoforge_jax import sharding
    from algoforge_jax.models import lora
    from algoforge_jax.models.build import abstract_model, add_adapters, init_model
    from algoforge_jax.models.lora import LoRAConfig
    from algoforge_jax.rl.step import make_update, sampler_base, sampler_params
    from algoforge_jax.sampling import Sample, Sampler, SamplerConfig
    from algoforge_jax.train.logprobs import token_logprobs
    from algoforge_jax.train.state import init_state, make_optimizer, state_shardings

    cfg, shape = bench_config(name, rank if mode == "lora" else 0)
    mesh, rules = sharding.make_mesh(cfg.mesh, devices=jax.devices()[:1]), sharding.TRAIN_RULES
    plain = cfg.model.qwen2()
    base = nnx.to_pure_dict(nnx.state(init_model(plain.replace(param_dtype=plain.dtype), mesh, rules), nnx.Param))
    rows, _ = shape.sampler_rows()["coder"]
    prompt, new = shape.coder_prompt, shape.coder_new_tokens
    kept = []  # both agents' states and references stay alive, as in the RL loop
    for seed in range(2):  # planner and coder: with LoRA on the one base, else each its own full model
        model = (add_adapters(base, plain.replace(lora=cfg.lora), mesh, rules, seed) if mode == "lora"
                 else init_model(plain, mesh, rules, seed=seed))
        graphdef, abstract = abstract_model(model.config, mesh, rules)
        frozen = lora.split(nnx.state(model))[0] or None
        tx = make_optimizer(cfg.train)
        update = make_update(graphdef, tx, state_shardings(abstract, tx, mesh), cfg.rl.grpo, mesh, rules,
                             accum=max(rows // shape.micro_batch, 1), chunk_len=cfg.train.logprob_chunk,
                             frozen=frozen)
        state = init_state(model, tx, update.shardings, 0)
        sampler = Sampler(graphdef, model.config, mesh, SamplerConfig(max_new_tokens=new, min_prompt_bucket=prompt,
                                                                       first_segment=0), sharding.SAMPLE_RULES)
        weights = sampler_params(abstract, state.params, mesh,
                                 None if frozen is None else sampler_base(abstract, frozen, mesh))
        rng = np.random.default_rng(seed)
        out = sampler.generate(weights, rng.integers(1, 1000, (rows, prompt)).tolist(), Sample(1.0))
        del weights
        tokens = np.concatenate([rng.integers(1, 1000, (rows, prompt)), out.tokens], 1).astype(np.int32)
        batch = {"tokens": tokens, "valid": np.ones(tokens.shape, bool), "mask": np.ones(out.tokens.shape, bool),
                 "old_logp": out.model_logprobs, "advantages": rng.standard_normal(rows).astype(np.float32)}
        ref = None
        if shape.kl:  # the reference: the base with adapters off, else a frozen copy in the compute dtype
            ref = ((abstract_model(plain, mesh, rules)[0], frozen) if frozen else
                   (graphdef, jax.tree.map(lambda x: x.astype(plain.compute_dtype), state.params)))
            put = lambda x: sharding.from_host(x, sharding.batch_sharding(mesh, rules))  # noqa: E731
            with jax.set_mesh(mesh):
                logp = token_logprobs(ref, put(tokens), put(batch["valid"]), cfg.train.logprob_chunk)
            batch["ref_logp"] = np.asarray(logp)[:, -new:]
        state, _ = jax.block_until_ready(update.step(state, batch))
        kept.append((state, ref))
    stats = jax.devices()[0].memory_stats() or {}
    return {"mode": mode, "peak_bytes": stats.get("peak_bytes_in_use")}


def _measured(name: str, rank: int, mode: str) -> float | None:
    """The peak GiB of a fresh process running `measure` (a process per mode: peaks cannot be reset)."""
    out = subprocess.run([sys.executable, __file__, "--configs", name, "--rank", str(rank), "--child", mode],
                         check=True, capture_output=True, text=True).stdout
    peak = json.loads(out.strip().splitlines()[-1])["peak_bytes"]
    return None if peak is None else peak / GiB


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.configs[0], args.rank, args.child)))
        return 0
    print(f"RL step, both agents, one device; LoRA rank {args.rank} on q,k,v,o,gate,up,down\n")
    print("| config | measure | full fine-tuning GiB | LoRA GiB | ratio full / LoRA |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name in args.configs:
        full, adapted = arithmetic(name, args.rank)
        print(f"| {name} | eval_shape arithmetic | {full:.3f} | {adapted:.3f} | **{full / adapted:.2f}x** |")
        if args.measure:
            full, adapted = (_measured(name, args.rank, mode) for mode in ("full", "lora"))
            if full is None or adapted is None:
                print(f"| {name} | memory_stats | not reported by this backend | | |")
            else:
                print(f"| {name} | memory_stats peak | {full:.3f} | {adapted:.3f} | **{full / adapted:.2f}x** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
