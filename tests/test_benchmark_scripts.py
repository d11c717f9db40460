"""The arithmetic the benchmark scripts report, checked against counts made independently from transformers'
models, and the GPU path of benchmarks/sampler.py run end to end on the CPU (no GPU is needed to keep it working)."""

import importlib.util
from pathlib import Path

import pytest
import transformers

from algoforge_jax.models.qwen2 import Qwen2Config
from hf_tiny import hf_config

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("sampler")


@pytest.mark.parametrize("tied", [False, True])
def test_decode_products_and_bytes_match_a_count_of_the_hf_model(bench, tied):
    hf_cfg = hf_config(tie_word_embeddings=tied)
    hf = transformers.Qwen2ForCausalLM(hf_cfg)
    cfg = Qwen2Config.from_hf_config(hf_cfg.to_dict())
    # Every 2-D weight but the input table is a matrix a decode step multiplies by (the tied head is the table).
    matrices = sum(p.numel() for n, p in hf.named_parameters() if p.ndim == 2 and "embed_tokens" not in n)
    if tied:
        matrices += hf.model.embed_tokens.weight.numel()
    products = bench.decode_products(cfg, batch=3)
    assert all(m == 3 for m, _, _, _ in products)
    assert sum(k * n * count for _, k, n, count in products) == matrices
    head_dim = hf_cfg.hidden_size // hf_cfg.num_attention_heads
    cache_len = 37.5
    weights = sum(p.numel() for p in hf.parameters()) * 4  # fp32, each stored tensor once
    kv_per_token = 2 * hf_cfg.num_hidden_layers * hf_cfg.num_key_value_heads * head_dim * 4
    assert bench.decode_bytes_per_step(cfg, 3, cache_len) == pytest.approx(weights + 3 * cache_len * kv_per_token)


def test_step_floor_counts_the_head_and_a_real_bandwidth(bench):
    cfg = Qwen2Config.from_hf_config(hf_config().to_dict())
    assert bench.decode_products(cfg, batch=4)[-1] == (4, cfg.hidden_size, cfg.vocab_size, 1)  # the head, last
    timed = bench.timed_products(cfg, batch=4)
    seconds, bandwidth = bench.step_floor(cfg, batch=4, cache_len=20.0, timed=timed)
    assert 1e8 < bandwidth < 1e13  # bytes/s: a memory, not a division by ~0
    assert seconds > timed[-1][1] * 0.5  # the head is one of its products
    products = sum(count * s for count, s, _ in timed)
    assert seconds == pytest.approx(products + 4 * 20.0 * bench.kv_bytes_per_slot(cfg) / bandwidth)


def test_gpu_mode_runs_on_the_cpu(bench, capsys):
    bench.gpu(bench.parse_args(["--device", "gpu", "--preset", "tiny", "--dtype", "float32", "--batch", "1", "2",
                                "--new-tokens", "4", "--prompt-len", "8", "--repeats", "1"]))
    lines = [line for line in capsys.readouterr().out.splitlines() if "% of peak" in line]
    assert [line.split()[2] for line in lines] == ["1:", "2:"], lines
    assert all(float(line.split("tokens/s")[0].split()[-1]) > 0 for line in lines)


@pytest.mark.slow
def test_train_benchmark_gpu_mode_runs_on_the_cpu(capsys):
    train = _load("train")
    assert train.main(["--device", "gpu", "--smoke", "--batch", "8", "--seq", "16", "--steps", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "ours (sharded step)" in out and "ratio ours/reference" in out
