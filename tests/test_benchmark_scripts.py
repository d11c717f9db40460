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
def test_decode_flops_and_bytes_match_a_count_of_the_hf_model(bench, tied):
    hf_cfg = hf_config(tie_word_embeddings=tied)
    hf = transformers.Qwen2ForCausalLM(hf_cfg)
    cfg = Qwen2Config.from_hf_config(hf_cfg.to_dict())
    # Every 2-D weight but the input table is a matrix a decode step multiplies by (the tied head is the table).
    matrices = sum(p.numel() for n, p in hf.named_parameters() if p.ndim == 2 and "embed_tokens" not in n)
    if tied:
        matrices += hf.model.embed_tokens.weight.numel()
    head_dim = hf_cfg.hidden_size // hf_cfg.num_attention_heads
    cache_len = 37.5
    attention = 2 * 2 * hf_cfg.num_hidden_layers * hf_cfg.num_attention_heads * head_dim * cache_len  # QK and PV
    assert bench.decode_flops_per_token(cfg, cache_len) == pytest.approx(2 * matrices + attention, rel=1e-12)

    weights = sum(p.numel() for p in hf.parameters()) * 4  # fp32, each stored tensor once
    kv_per_token = 2 * hf_cfg.num_hidden_layers * hf_cfg.num_key_value_heads * head_dim * 4
    assert bench.decode_bytes_per_step(cfg, 3, cache_len) == pytest.approx(weights + 3 * cache_len * kv_per_token)


def test_gpu_mode_runs_on_the_cpu(bench, capsys):
    bench.gpu(bench.parse_args(["--device", "gpu", "--preset", "tiny", "--dtype", "float32", "--batch", "1", "2",
                                "--new-tokens", "4", "--prompt-len", "8", "--repeats", "1"]))
    lines = [line for line in capsys.readouterr().out.splitlines() if "% of peak" in line]
    assert [line.split()[2] for line in lines] == ["1:", "2:"], lines
    assert all(float(line.split("tokens/s")[0].split()[-1]) > 0 for line in lines)
