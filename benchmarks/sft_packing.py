"""SFT with packed rows (`data.pack`) against padded rows, on the embedded default's Coder data.

The peer measured in the same run is the padded step `data.pack = false` trains with: one example a row of
`--seq` tokens, `--batch` rows a step. Ours packs the same examples (grain's first-fit packing,
`data.datasets.sft_dataset`) into half as many rows of twice the width, so each step holds the same number of
token slots; the model attends within each example (`segment_ids`). Both run the real jitted train step of
`algoforge sft` with the tiny config's model (configs/tiny.py) on one CPU device. Reported: the best seconds per
step over `--repeats` runs of `--steps` steps after a warm-up, the answer tokens (loss-mask tokens) and examples a
step holds on average, and the ratio of answer tokens per second, packed / padded.

    .venv/bin/python benchmarks/sft_packing.py [--data DIR] [--seq 168] [--batch 16]

`--data` reuses a built `WORKDIR/data` (else the embedded default is built in a temporary directory, ~15 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=None, help="a built embedded-default data directory")
    p.add_argument("--seq", type=int, default=168, help="padded row width (the tiny Coder's); packed rows: 2x")
    p.add_argument("--batch", type=int, default=16, help="padded rows a step; packed rows: half")
    p.add_argument("--steps", type=int, default=10, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    return p.parse_args(argv)


def measure(cfg, data, tokenizer, rows: int, seq: int, pack: bool, steps: int, repeats: int) -> dict:
    """Seconds per step (best run) and the mean answer tokens and examples per step of one batch layout."""
    import jax
    import numpy as np

    from algoforge_jax import sharding
    from algoforge_jax.data.datasets import BatchSpec, open_split, sft_batches
    from algoforge_jax.models.build import init_model
    from algoforge_jax.train.loop import make_trainer
    from algoforge_jax.train.state import init_state

    model_cfg = cfg.model.qwen2()
    mesh = sharding.make_mesh(cfg.mesh, jax.devices()[:1])
    model = init_model(model_cfg, mesh, sharding.TRAIN_RULES)
    trainer = make_trainer(cfg, model_cfg, mesh)
    state = init_state(model, trainer.tx, trainer.shardings, seed=0)
    del model
    spec = BatchSpec(rows, seq, seed=0, compact=True, pack=pack)
    it = sft_batches(open_split(data.tfds["coder"], "train"), tokenizer, "coder", spec, process_index=0,
                     process_count=1)
    host = [next(it) for _ in range(1 + steps * repeats)]  # read up front: the timing is the step's alone
    target = sharding.batch_sharding(mesh, sharding.TRAIN_RULES)
    batches = [{k: sharding.from_host(v, target) for k, v in b.items()} for b in host]
    with jax.set_mesh(mesh):
        state, metrics = trainer.step(state, batches[0])
        jax.block_until_ready(metrics)
        best = float("inf")
        for r in range(repeats):
            start = time.perf_counter()
            for b in batches[1 + r * steps: 1 + (r + 1) * steps]:
                state, metrics = trainer.step(state, b)
            jax.block_until_ready(metrics)
            best = min(best, (time.perf_counter() - start) / steps)
    examples = [int(b["segment_ids"].max(1).sum()) if pack else len(b["tokens"]) for b in host[1:]]
    return {"seconds": best, "answer_tokens": float(np.mean([b["loss_mask"].sum() for b in host[1:]])),
            "examples": float(np.mean(examples)), "filled": float(np.mean([b["valid"].mean() for b in host[1:]]))}


def main(argv=None) -> int:
    args = parse_args(argv)
    import importlib.util

    from algoforge_jax.data.embedded import build_embedded
    from algoforge_jax.tokenizer import SENTENCEPIECE_FILE, SentencePieceTokenizer

    spec = importlib.util.spec_from_file_location("tiny", Path(__file__).resolve().parents[1] / "configs" / "tiny.py")
    tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny)
    cfg = tiny.get_config()
    if args.batch % 2:
        raise SystemExit("--batch must be even (packed rows are half as many)")
    with tempfile.TemporaryDirectory() as tmp:
        data = build_embedded(args.data or Path(tmp) / "data", sketches=None)
        tokenizer = SentencePieceTokenizer(data.tokenizer_dir / SENTENCEPIECE_FILE)
        results = {}
        for name, rows, seq, pack in (("padded (peer)", args.batch, args.seq, False),
                                      ("packed (ours)", args.batch // 2, 2 * args.seq, True)):
            run_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=seq, batch_size=rows))
            r = results[name] = measure(run_cfg, data, tokenizer, rows, seq, pack, args.steps, args.repeats)
            print(f"{name}: {rows} rows x {seq} tokens, {r['filled']:.0%} of slots filled, {r['examples']:.1f} "
                  f"examples and {r['answer_tokens']:.0f} answer tokens a step, {r['seconds'] * 1e3:.0f} ms/step, "
                  f"{r['answer_tokens'] / r['seconds']:,.0f} answer tokens/s")
    padded, packed = results.values()
    ratio = (packed["answer_tokens"] / packed["seconds"]) / (padded["answer_tokens"] / padded["seconds"])
    print(f"ratio packed/padded answer tokens/s: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
