"""Compile time of the model with scanned layers against the same layers unrolled (one HLO copy per layer).

For each preset, the programs a run compiles are lowered and compiled on the CPU from abstract weights
(`jax.ShapeDtypeStruct`s carrying their shardings), so nothing of model size is ever allocated:

  forward   the full-sequence forward pass (logits of a [batch, length] token block), as scoring runs it
  grad      value and gradient of the mean logit under the config's remat policy (`--remat`), as training runs it
  prefill   the sampler's prefill program (fills the KV cache, picks the first token)
  decode    the sampler's first decode segment (a `jax.lax.while_loop` of single-token steps)

Each program is timed twice in the same run: with the layers scanned (`scan_layers=True`, the default) and with
the scan over the same stacked weights fully unrolled at trace time (`scan_layers=False`), and the table prints
the ratio. Trace + lower and XLA compile are timed apart; compile is what scanning saves.

    .venv/bin/python benchmarks/compile_time.py                             # qwen2.5-1.5b and qwen2.5-7b
    .venv/bin/python benchmarks/compile_time.py --preset qwen2.5-14b --programs forward grad --remat dots

`--scanned-only` times only the default model: run on a checkout from before layers were stacked (no
`scan_layers` field), it gives the baseline of per-layer parameters in a Python loop that the README quotes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROGRAMS = ("forward", "grad", "prefill", "decode")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", nargs="+", default=["qwen2.5-1.5b", "qwen2.5-7b"])
    p.add_argument("--programs", nargs="+", choices=PROGRAMS, default=["forward", "prefill", "decode"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=512, help="forward/grad sequence length and sampler prompt bucket")
    p.add_argument("--new-tokens", type=int, default=64, help="room of the sampler's first decode segment")
    p.add_argument("--dtype", default="bfloat16", help="compute and parameter dtype")
    p.add_argument("--remat", default="full", help="remat policy of the grad program (none, full, dots)")
    p.add_argument("--scanned-only", action="store_true", help="skip the unrolled peer")
    return p.parse_args(argv)


def _timed(fn, *args) -> tuple[float, float]:
    """(seconds to trace and lower, seconds to compile) of jitted `fn` on abstract `args`."""
    start = time.perf_counter()
    lowered = fn.lower(*args)
    mid = time.perf_counter()
    lowered.compile()
    return mid - start, time.perf_counter() - mid


def compile_times(cfg, programs, args) -> dict[str, tuple[float, float]]:
    """{program: (lower seconds, compile seconds)} for one model config on a one-device mesh."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from algoforge_jax import sharding
    from algoforge_jax.models.build import abstract_model
    from algoforge_jax.sampling import Greedy, Sampler, SamplerConfig

    mesh = sharding.make_mesh(sharding.MeshConfig(), devices=jax.devices()[:1])
    graphdef, params = abstract_model(cfg, mesh, sharding.SAMPLE_RULES)
    tokens = jax.ShapeDtypeStruct((args.batch, args.length), jnp.int32)
    flags = jax.ShapeDtypeStruct((args.batch, args.length), bool)
    rows = jax.ShapeDtypeStruct((args.batch,), bool)
    key = jax.eval_shape(jax.random.key, 0)

    def forward(p, t):
        return nnx.merge(graphdef, p)(t)[0]

    def loss(p, t):
        return forward(p, t).mean()

    sampler_cfg = SamplerConfig(max_new_tokens=2 * args.new_tokens, first_segment=args.new_tokens)
    sampler = Sampler(graphdef, cfg, mesh, sampler_cfg, sharding.SAMPLE_RULES)
    prefill, decode, _ = sampler._programs(Greedy())
    out = {}
    with jax.set_mesh(mesh):
        for name in programs:
            if name == "forward":
                out[name] = _timed(jax.jit(forward), params, tokens)
            elif name == "grad":
                out[name] = _timed(jax.jit(jax.value_and_grad(loss)), params, tokens)
            elif name == "prefill":
                out[name] = _timed(prefill, params, tokens, flags, rows, key)
            else:
                state = jax.eval_shape(prefill, params, tokens, flags, rows, key)
                out[name] = _timed(decode, params, state)
    return out


def main(argv=None) -> None:
    args = parse_args(argv)
    from algoforge_jax.models.qwen2 import preset

    print(f"batch {args.batch}, length {args.length}, first decode segment {args.new_tokens}, {args.dtype}, "
          f"grad remat {args.remat}; seconds: trace+lower / XLA compile")
    header = "| preset | program | scanned | unrolled | compile ratio |"
    print(header + "\n" + "|---" * 5 + "|")
    for name in args.preset:
        fields = dict(dtype=args.dtype, param_dtype=args.dtype)
        if "grad" in args.programs:
            fields["remat"] = args.remat
        scanned = compile_times(preset(name, **fields), args.programs, args)
        unrolled = {} if args.scanned_only else compile_times(preset(name, scan_layers=False, **fields),
                                                                  args.programs, args)
        for prog, (lower, comp) in scanned.items():
            peer = unrolled.get(prog)
            peer_text = f"{peer[0]:.1f} / {peer[1]:.1f}" if peer else "-"
            ratio = f"**{peer[1] / comp:.1f}x**" if peer else "-"
            print(f"| {name} | {prog} | {lower:.1f} / {comp:.1f} | {peer_text} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
