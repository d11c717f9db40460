"""Train-step throughput and MFU: our sharded SFT step against a plain jax + optax reference step.

MFU = model FLOPs per token (MaxText's count: 6 x matmul weights + causal attention, `train/metrics.py`) x tokens/s
/ peak FLOP/s of the devices used. Compile time is excluded (one warm-up step, then the best of `--repeats` timed
runs of `--steps` steps).

CPU (default): a small random Qwen2 (4 layers, hidden 256, mlp 1024, 4/2 heads, vocab 4096) in fp32 at batch 8 x
seq 256 on one device. The peer measured in the same run is the textbook step: `jax.jit(value_and_grad)` of a
full-logits cross-entropy, `optax.adamw`, no mesh, no chunked log-prob head, no accumulation. The CPU's peak is
measured too (best fp32 2048^3 matmul), so the MFU printed is against what XLA's matmul reaches here.

    .venv/bin/python benchmarks/train.py

GPU: random-init Qwen2.5-1.5B, bf16 compute with fp32 master weights, seq 2048; MFU against the nominal dense bf16
peak (989 TFLOP/s for H100/H200; `--peak-tflops` to change).

    python benchmarks/train.py --device gpu [--batch 4] [--peak-tflops 989]

`--smoke` runs the GPU path's code at a tiny size on whatever devices there are (CPU in CI), so it keeps working.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--batch", type=int, default=None, help="rows per step (cpu: 8, gpu: 4)")
    p.add_argument("--seq", type=int, default=None, help="tokens per row (cpu: 256, gpu: 2048)")
    p.add_argument("--steps", type=int, default=3, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=2, help="timed runs; the best is reported")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="gpu: per-device peak, TFLOP/s")
    p.add_argument("--smoke", action="store_true", help="gpu path at a tiny size (a CPU check that it builds)")
    p.add_argument("--logprob-memory", action="store_true",
                   help="only print the compiled memory of token_logprobs on Qwen2.5-7B, B=8, T=4096 (no run)")
    return p.parse_args(argv)


def bench_config(args):
    """(our Config, its Qwen2Config) for the chosen device."""
    from algoforge_jax.config import Config, DataConfig, ModelConfig, TrainConfig

    if args.device == "cpu":
        model = ModelConfig(vocab_size=4096, hidden_size=256, intermediate_size=1024, num_layers=4, num_heads=4,
                            num_kv_heads=2)
        batch, seq = args.batch or 8, args.seq or 256
    else:
        model = ModelConfig(preset="qwen2.5-1.5b", dtype="bfloat16", param_dtype="float32")
        batch, seq = args.batch or 4, args.seq or 2048
        if args.smoke:
            model = dataclasses.replace(model, preset="tiny")
            batch, seq = args.batch or 8, args.seq or 64
    cfg = Config(model=model, data=DataConfig(seq_len=seq, batch_size=batch),
                 train=TrainConfig(steps=1000, warmup_steps=0, logprob_chunk=min(512, seq)))
    return cfg, model.qwen2()


def random_batch(cfg, vocab: int):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (cfg.data.batch_size, cfg.data.seq_len)
    return {"tokens": rng.integers(0, vocab, shape).astype(np.int32), "loss_mask": np.ones(shape, np.int32),
            "valid": np.ones(shape, bool)}


def best_seconds_per_step(step, state, make_batch, steps: int, repeats: int) -> float:
    """Warm-up (compile), then the best per-step time over `repeats` runs of `steps` steps."""
    import jax

    state, metrics = step(state, make_batch())
    jax.block_until_ready(metrics)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = step(state, make_batch())
        jax.block_until_ready(metrics)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def ours(cfg, model_cfg, args) -> float:
    import jax

    from algoforge_jax import sharding
    from algoforge_jax.models.build import init_model
    from algoforge_jax.train.loop import make_trainer
    from algoforge_jax.train.state import init_state

    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1] if args.device == "cpu" else None)
    model = init_model(model_cfg, mesh, sharding.TRAIN_RULES)
    trainer = make_trainer(cfg, model_cfg, mesh)
    state = init_state(model, trainer.tx, trainer.shardings, seed=0)
    del model
    host = random_batch(cfg, model_cfg.vocab_size)
    target = sharding.batch_sharding(mesh, sharding.TRAIN_RULES)
    with jax.set_mesh(mesh):
        return best_seconds_per_step(trainer.step, state, lambda: {k: sharding.from_host(v, target)
                                                                   for k, v in host.items()},
                                     args.steps, args.repeats)


def reference(cfg, model_cfg, args) -> float:
    """The peer: the plain jax + optax train step (full [B, T, V] logits, no mesh), same model and optimizer."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from algoforge_jax.models.qwen2 import Qwen2ForCausalLM

    graphdef, params = nnx.split(Qwen2ForCausalLM(model_cfg, rngs=nnx.Rngs(0)))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, b2=0.95, weight_decay=0.01))

    def loss(params, batch):
        logits_BTV, _ = nnx.merge(graphdef, params)(batch["tokens"], batch["valid"])
        nll = optax.softmax_cross_entropy_with_integer_labels(logits_BTV[:, :-1], batch["tokens"][:, 1:])
        mask = batch["loss_mask"][:, 1:]
        return (nll * mask).sum() / mask.sum()

    @jax.jit
    def step(state, batch):
        params, opt_state = state
        value, grads = jax.value_and_grad(loss)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    host = random_batch(cfg, model_cfg.vocab_size)
    batch = {k: jnp.asarray(v) for k, v in host.items()}
    return best_seconds_per_step(step, (params, tx.init(params)), lambda: batch, args.steps, args.repeats)


def cpu_peak_flops() -> float:
    """Best fp32 FLOP/s of one 2048^3 matmul under XLA on this machine."""
    import jax
    import jax.numpy as jnp

    n = 2048
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def logprob_memory(chunk_len: int = 256, B: int = 8, T: int = 4096) -> None:
    """Compiles (never runs) the shared log-prob function on abstract Qwen2.5-7B fp32 weights and prints the
    temporary memory XLA plans for it, next to the [B, T, V] fp32 logits it avoids."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from algoforge_jax.models.qwen2 import Qwen2ForCausalLM, preset
    from algoforge_jax.train.logprobs import sequence_logprobs

    cfg = preset("qwen2.5-7b", dtype="float32", param_dtype="float32")
    graphdef, params = nnx.split(nnx.eval_shape(lambda: Qwen2ForCausalLM(cfg, rngs=nnx.Rngs(0))))
    tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)
    valid = jax.ShapeDtypeStruct((B, T), jnp.bool_)
    fn = jax.jit(lambda p, t, v: sequence_logprobs(nnx.merge(graphdef, p), t, v, chunk_len))
    temp = fn.lower(params, tokens, valid).compile().memory_analysis().temp_size_in_bytes
    print(f"token_logprobs forward, qwen2.5-7b fp32, B={B} T={T} chunk {chunk_len}: {temp / 2**30:.1f} GiB temporary; "
          f"the [B, T, V] fp32 logits alone would be {B * T * cfg.vocab_size * 4 / 2**30:.1f} GiB")


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    if args.logprob_memory:
        logprob_memory()
        return 0

    from algoforge_jax.models.qwen2 import parameter_count
    from algoforge_jax.train.metrics import flops_per_token

    cfg, model_cfg = bench_config(args)
    tokens = cfg.data.batch_size * cfg.data.seq_len
    flops = flops_per_token(model_cfg, cfg.data.seq_len)
    if args.device == "cpu":
        peak, devices = cpu_peak_flops(), 1
    else:
        peak, devices = args.peak_tflops * 1e12, jax.device_count()
    print(f"model: {parameter_count(model_cfg) / 1e6:.1f}M params, {model_cfg.dtype} compute, batch "
          f"{cfg.data.batch_size} x seq {cfg.data.seq_len}, {flops / 1e6:.1f} MFLOP/token, {devices} device(s) "
          f"({jax.devices()[0].device_kind}), peak {peak / 1e12:.3f} TFLOP/s per device"
          f"{' (measured matmul)' if args.device == 'cpu' else ''}")
    results = {"ours (sharded step)": ours(cfg, model_cfg, args)}
    if args.device == "cpu" or args.smoke:
        results["reference (plain jax+optax)"] = reference(cfg, model_cfg, args)
    for name, seconds in results.items():
        mfu = flops * tokens / seconds / (peak * devices)
        print(f"{name}: {seconds * 1e3:.1f} ms/step, {tokens / seconds:,.0f} tokens/s, MFU {mfu:.1%}")
    if len(results) == 2:
        a, b = results.values()
        print(f"ratio ours/reference tokens/s: {b / a:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
