"""Sampler throughput: our jitted KV-cache sampler against transformers' `generate`, or alone on a GPU.

CPU (default): a small random Qwen2 (4 layers, hidden 256, 4 heads / 2 kv heads, mlp 1024, vocab 32000) written with
transformers' `save_pretrained` and loaded with `load_hf_model`, so both sides run the same fp32 weights on the
same 64 left-padded prompts (lengths 24-32) for exactly 128 greedy new tokens each (no early stop). Compile time is
excluded (one warm-up run each, then the best of `--repeats` timed runs); torch gets as many threads as JAX has cores.

    .venv/bin/python benchmarks/sampler.py                      # prints tokens/s of both and the ratio

It also times our sampler decoding over one static cache of the whole budget (`first_segment=0`), to show what
decoding in segments saves, and prints two floors measured in the same run, which no fp32 implementation built on
the matmul kernels of JAX or torch can beat on this machine: a decode step whose weight products each run at the
best speed JAX or torch reaches for that shape (q/k/v and gate/up fused) and whose KV cache is read at XLA's
streaming speed, everything else free; and the vocabulary-head product alone.

GPU: random-init Qwen2.5-1.5B and 7B in bfloat16 at batch 1, 64 and 256; prints decode tokens/s and the memory
bandwidth utilisation of a decode step, (weight bytes + KV-cache bytes a step must read) / step time / peak.

    python benchmarks/sampler.py --device gpu --peak-gbps 3350   # H100 SXM; 4800 for an H200

The KV bytes counted are those of the *filled* cache (mean over the run), the bytes any implementation has to read;
our decode step attends over the whole static-size cache, so a short run understates what it actually moves.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (cpu: 64 8; gpu: 1 64 256)")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens generated per sequence")
    p.add_argument("--prompt-len", type=int, default=32, help="longest prompt (cpu prompts are 3/4 to all of it)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs after the warm-up; the best is reported")
    p.add_argument("--peak-gbps", type=float, default=3350.0, help="peak memory bandwidth, GB/s (H200: 4800)")
    p.add_argument("--preset", nargs="+", default=["qwen2.5-1.5b", "qwen2.5-7b"], help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="bfloat16", help=argparse.SUPPRESS)  # gpu mode; float32 for CPU checks
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------- arithmetic


def kv_bytes_per_slot(cfg) -> int:
    """Bytes of K and V that one cached token of one row holds, over all layers."""
    import jax.numpy as jnp

    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_size * jnp.dtype(cfg.compute_dtype).itemsize


def decode_bytes_per_step(cfg, batch: int, cache_len: float) -> float:
    """Bytes a decode step must read from memory: every weight once, plus K and V of `cache_len` tokens per row."""
    from algoforge_jax.models.qwen2 import parameter_count

    import jax.numpy as jnp

    return parameter_count(cfg) * jnp.dtype(cfg.weight_dtype).itemsize + batch * cache_len * kv_bytes_per_slot(cfg)


def bandwidth_utilisation(cfg, batch: int, prompt_len: int, new_tokens: int, step_seconds: float, peak_gbps: float):
    """(GB/s achieved, fraction of peak) of a decode step; the cache grows from prompt_len to prompt_len+new_tokens."""
    gbps = decode_bytes_per_step(cfg, batch, prompt_len + new_tokens / 2) / step_seconds / 1e9
    return gbps, gbps / peak_gbps


def decode_products(cfg, batch: int) -> list[tuple[int, int, int, int]]:
    """The weight products of one decode step as (m, k, n, how many), fused as far as they can be: q, k and v in
    one [D, (N + 2K)H] product and gate and up in one [D, 2F] (fewer, larger products only run faster). The
    vocabulary head comes last."""
    D, F, H = cfg.hidden_size, cfg.intermediate_size, cfg.head_size
    N, K, L = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.num_hidden_layers
    return [(batch, D, (N + 2 * K) * H, L), (batch, N * H, D, L), (batch, D, 2 * F, L), (batch, F, D, L),
            (batch, D, cfg.vocab_size, 1)]


def read_bandwidth(nbytes: int) -> float:
    """Bytes/s of XLA streaming `nbytes` of fp32 from memory (a sum), best of a few runs."""
    import jax
    import jax.numpy as jnp

    x = jnp.ones(max(nbytes // 4, 1 << 22), jnp.float32)
    total = jax.jit(jnp.sum)
    return x.nbytes / _best_seconds(lambda: total(x).block_until_ready(), rounds=10)


def timed_products(cfg, batch: int) -> list[tuple[int, float, str]]:
    """(how many, seconds, fastest library) for each product of `decode_products`, in its order."""
    return [(count, *fastest_matmul(m, k, n)) for m, k, n, count in decode_products(cfg, batch)]


def step_floor(cfg, batch: int, cache_len: float, timed: list[tuple[int, float, str]]) -> tuple[float, float]:
    """(seconds, KV bytes/s): a lower bound on a decode step on this machine. Each product of `decode_products`
    at the speed of the faster of JAX and torch for exactly that shape (`timed`, from `timed_products`), plus
    reading the K and V of `cache_len` filled slots per row at the speed XLA streams memory. Attention arithmetic,
    norms, RoPE, activations and sampling count as free."""
    kv_bytes = batch * cache_len * kv_bytes_per_slot(cfg)
    bandwidth = read_bandwidth(int(kv_bytes))
    return sum(count * seconds for count, seconds, _ in timed) + kv_bytes / bandwidth, bandwidth


def _best_seconds(run, rounds: int, calls: int = 1) -> float:
    """Seconds a call of `run` takes: one warm-up call, then the best of `rounds` rounds of `calls` calls each."""
    run()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            run()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def fastest_matmul(m: int, k: int, n: int) -> tuple[float, str]:
    """Seconds of the fastest fp32 [m, k] @ [k, n] product on this machine, the best of JAX and torch, and which."""
    import jax
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    ja, jb = jax.numpy.asarray(a), jax.numpy.asarray(b)
    f = jax.jit(lambda x, y: x @ y)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    times = {name: _best_seconds(run, rounds=5, calls=4)
             for name, run in (("jax", lambda: f(ja, jb).block_until_ready()), ("torch", lambda: ta @ tb))}
    name = min(times, key=times.get)
    return times[name], name


# ------------------------------------------------------------------------------------------------- runs


def _prompts(batch: int, max_len: int, vocab: int, seed: int = 0) -> list[list[int]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    lengths = rng.integers(max(1, 3 * max_len // 4), max_len + 1, batch)
    return [rng.integers(1, vocab, n).tolist() for n in lengths]


def time_ours(sampler, params, prompts, repeats: int) -> tuple[float, object, object]:
    """(best seconds, its SampleStats, a rollout), compiling left out."""
    sampler.generate(params, prompts)  # compile
    best, stats, rollout = float("inf"), None, None
    for _ in range(repeats):
        start = time.perf_counter()
        rollout = sampler.generate(params, prompts)
        seconds = time.perf_counter() - start
        if seconds < best:
            best, stats = seconds, rollout.stats
    return best, stats, rollout


def time_torch(model, prompts, new_tokens: int, repeats: int):
    import numpy as np
    import torch

    T = max(map(len, prompts))
    ids = np.zeros((len(prompts), T), np.int64)
    mask = np.zeros((len(prompts), T), np.int64)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):], mask[i, T - len(p):] = p, 1
    ids, mask = torch.tensor(ids), torch.tensor(mask)

    def run(n):
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                  do_sample=False, use_cache=True, pad_token_id=0)

    run(8)  # warm-up (allocator, kernels)
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run(new_tokens)
        best = min(best, time.perf_counter() - start)
    return best, out[:, T:].numpy()


def cpu(args) -> None:
    import jax
    import numpy as np
    import torch
    import transformers

    from algoforge_jax import sharding
    from algoforge_jax.convert.hf import load_hf_model
    from algoforge_jax.sampling import SamplerConfig, make_sampler

    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    hf_cfg = transformers.Qwen2Config(vocab_size=32000, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                                      tie_word_embeddings=False)
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(hf_cfg).eval()
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        model = load_hf_model(tmp, mesh, sharding.SAMPLE_RULES)
    cfg = SamplerConfig(args.new_tokens, stop_token_ids=())
    sampler, params = make_sampler(model, mesh, cfg, sharding.SAMPLE_RULES)
    # one cache of the full budget
    static, _ = make_sampler(model, mesh, dataclasses.replace(cfg, first_segment=0), sharding.SAMPLE_RULES)
    for batch in args.batch or [64, 8]:
        _compare(sampler, static, params, hf, model.config, batch, threads, args)


def _step_ms(stats: dict) -> float:
    return stats.decode_seconds / max(stats.decode_steps, 1) * 1e3


def _compare(sampler, static, params, hf, cfg, batch: int, threads: int, args) -> None:
    import numpy as np

    prompts = _prompts(batch, args.prompt_len, hf.config.vocab_size)
    total = batch * args.new_tokens
    ours_s, stats, rollout = time_ours(sampler, params, prompts, args.repeats)
    torch_s, torch_tokens = time_torch(hf, prompts, args.new_tokens, args.repeats)
    static_s, static_stats, static_rollout = time_ours(static, params, prompts, args.repeats)
    agree = float(np.mean(rollout.tokens == torch_tokens))
    print(f"cpu, {threads} threads: batch {batch} x {args.new_tokens} new tokens, prompts <= {args.prompt_len}")
    print(f"  algoforge_jax  {total / ours_s:9.1f} tokens/s  ({ours_s:.3f} s; prefill {stats.prefill_seconds:.3f} s,"
          f" {_step_ms(stats):.2f} ms/decode step; decode segments {sampler.cfg.segments})")
    print(f"  transformers   {total / torch_s:9.1f} tokens/s  ({torch_s:.3f} s)")
    print(f"  ratio          {torch_s / ours_s:9.2f}x   (greedy tokens equal to transformers': {agree:.1%})")
    same = bool((static_rollout.tokens == rollout.tokens).all())
    print(f"  one segment    {total / static_s:9.1f} tokens/s  ({_step_ms(static_stats):.2f} ms/decode step over a static "
          f"cache of the whole budget; segments {static_s / ours_s:.2f}x faster, same tokens: {same})")
    # Two floors no fp32 implementation on this machine can beat (prefill left out, which only favours them):
    # a decode step whose products all run at the best speed this machine shows for their shapes, and the
    # vocabulary head alone, a product every decode step must compute in full (greedy needs every logit's value,
    # GRPO the logsumexp).
    mean_cache = float(np.mean([len(p) for p in prompts])) + (args.new_tokens - 1) / 2
    timed = timed_products(cfg, batch)
    floor_step, bandwidth = step_floor(cfg, batch, mean_cache, timed)
    floor_s = floor_step * args.new_tokens
    print(f"  step floor     {total / floor_s:9.1f} tokens/s  ({floor_step * 1e3:.2f} ms a step: each weight product at "
          f"the best speed of JAX or torch for its shape, + the filled KV cache read at {bandwidth / 1e9:.0f} GB/s): "
          f"at most {torch_s / floor_s:.2f}x transformers")
    _, head_s, head_src = timed[-1]  # the head, timed once for both floors
    head_floor_s = head_s * args.new_tokens
    print(f"  head floor     {total / head_floor_s:9.1f} tokens/s  ({head_s * 1e3:.2f} ms a step for the [{batch}, "
          f"{cfg.hidden_size}] @ [{cfg.hidden_size}, {cfg.vocab_size}] head alone, {head_src}): "
          f"at most {torch_s / head_floor_s:.2f}x transformers")


def gpu(args) -> None:
    import jax

    from algoforge_jax import sharding
    from algoforge_jax.models.build import init_model
    from algoforge_jax.models.qwen2 import preset
    from algoforge_jax.sampling import SamplerConfig, make_sampler

    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    print(f"{jax.devices()[0].device_kind}: prompts of {args.prompt_len}, {args.new_tokens} new tokens, "
          f"peak {args.peak_gbps:.0f} GB/s")
    for name in args.preset:
        cfg = preset(name, dtype=args.dtype, param_dtype=args.dtype)
        model = init_model(cfg, mesh, sharding.SAMPLE_RULES)
        sampler, params = make_sampler(model, mesh, SamplerConfig(args.new_tokens, stop_token_ids=(),
                                                                  min_prompt_bucket=args.prompt_len),
                                       sharding.SAMPLE_RULES)
        for batch in args.batch or [1, 64, 256]:
            prompts = _prompts(batch, args.prompt_len, cfg.vocab_size)
            prompts = [p + [1] * (args.prompt_len - len(p)) for p in prompts]  # exact length: no pad to count
            _, stats, _ = time_ours(sampler, params, prompts, args.repeats)
            step = stats.decode_seconds / max(stats.decode_steps, 1)
            gbps, frac = bandwidth_utilisation(cfg, batch, args.prompt_len, args.new_tokens, step, args.peak_gbps)
            print(f"  {name:14s} batch {batch:4d}: {batch / step:10.1f} tokens/s  {step * 1e3:7.2f} ms/step  "
                  f"{gbps:7.1f} GB/s = {frac:6.1%} of peak  (prefill {stats.prefill_seconds * 1e3:.1f} ms)")
        del model, sampler, params


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.device == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        cpu(args)
    else:
        gpu(args)


if __name__ == "__main__":
    main()
