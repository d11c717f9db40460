"""The SFT trainer: it learns, its gradient accumulation is a token-mean over the whole batch, the sharded step equals
the one-device step, a killed or preempted run resumes bit-identically (data order included), and it stops with a
clear error on a non-finite loss. Plus the stand-in data source's row validation and the TensorBoard files."""

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from algoforge_jax import checkpoints, sharding
from algoforge_jax.config import Config, DataConfig, ModelConfig, TrainConfig
from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import jsonl_text
from algoforge_jax.models.build import init_model
from algoforge_jax.data.chat import prompt_ids, row_problem
from algoforge_jax.data.datasets import read_rows
from algoforge_jax.train.input import ArrayBatches, ByteTokenizer, ContractBatches, pack_examples, render_examples
from algoforge_jax.train.loop import make_trainer, train_sft
from algoforge_jax.train.metrics import crc32c, _masked_crc
from algoforge_jax.train.state import init_state
from algoforge_jax.train.step import loss_sums
from hf_tiny import one_device_mesh

REPO = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=2)


def tiny_config(**train) -> Config:
    train = {"steps": 40, "learning_rate": 1e-2, "warmup_steps": 2, "logprob_chunk": 8, **train}
    return Config(model=MODEL, data=DataConfig(seq_len=16, batch_size=8), train=TrainConfig(**train))


def random_examples(rows: int, seed: int = 0, T: int = 16) -> dict:
    """Rows of random tokens with right padding and a loss mask over a different span in each row."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(6, T + 1, rows)
    starts = rng.integers(1, 5, rows)
    pos = np.arange(T)[None]
    valid = pos < lengths[:, None]
    return {"tokens": np.where(valid, rng.integers(1, 64, (rows, T)), 0).astype(np.int32),
            "loss_mask": (valid & (pos >= starts[:, None])).astype(np.int32), "valid": valid}


def read_metrics(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def read_events(directory) -> list[bytes]:
    """The payloads of every TFRecord in a TensorBoard directory, checking both CRCs of each."""
    payloads = []
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        while data:
            header, crc = data[:8], struct.unpack("<I", data[8:12])[0]
            assert crc == _masked_crc(header)
            n = struct.unpack("<Q", header)[0]
            payload, crc = data[12:12 + n], struct.unpack("<I", data[12 + n:16 + n])[0]
            assert crc == _masked_crc(payload)
            payloads.append(payload)
            data = data[16 + n:]
    return payloads


def test_crc32c_known_answer():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_tiny_model_overfits_a_tiny_dataset(tmp_path):
    examples = random_examples(8)
    cfg = tiny_config(eval_every=20, checkpoint_every=20)
    code = train_sft(cfg, "planner", tmp_path, ArrayBatches(examples, 8, seed=0), [examples])
    assert code == 0
    metrics = read_metrics(tmp_path / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 41))
    assert metrics[-1]["loss"] < 0.3 * metrics[0]["loss"], (metrics[0]["loss"], metrics[-1]["loss"])
    assert metrics[-1]["eval_loss"] < 0.3 * metrics[0]["loss"]  # same rows held out: memorised
    assert {"grad_norm", "lr", "tokens_per_s"} <= set(metrics[0])
    assert metrics[0]["lr"] == 0.0 and metrics[2]["lr"] == pytest.approx(1e-2)  # warmup, then peak
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["20", "40"]
    model = checkpoints.load_model(tmp_path / "model", one_device_mesh(), sharding.SAMPLE_RULES)
    assert model.config.vocab_size == 64
    events = read_events(tmp_path / "tb")
    assert b"brain.Event:2" in events[0] and len(events) == 41 and b"loss" in events[1]
    # Rerunning a finished run is a no-op.
    assert train_sft(cfg, "planner", tmp_path, ArrayBatches(examples, 8, seed=0), []) == 0
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 40


# Adam's first steps are nearly sign(g) where |g| << eps fails to damp them, which turns rounding noise in tiny
# gradients into full-size differences; a large eps makes the update proportional to the gradient it compares.
LINEAR = dict(warmup_steps=0, eps=1.0, weight_decay=0.0)


def _one_step(cfg: Config, mesh, params_from=None, batch=None):
    model = init_model(cfg.model.qwen2(), mesh, sharding.TRAIN_RULES, seed=1)
    trainer = make_trainer(cfg, model.config, mesh)
    state = init_state(model, trainer.tx, trainer.shardings, seed=0)
    if params_from is not None:  # the same starting values, in this mesh's layout
        state.params = jax.device_put(params_from, trainer.shardings.params)
    out = []
    with jax.set_mesh(mesh):
        for b in batch:
            put = {k: sharding.from_host(v, sharding.batch_sharding(mesh, sharding.TRAIN_RULES)) for k, v in b.items()}
            state, metrics = trainer.step(state, put)
            out.append(jax.device_get(metrics))
    return jax.device_get(state.params), out


def test_gradient_accumulation_is_a_token_mean_over_the_whole_batch():
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=4, tensor=2))
    batch = random_examples(8, seed=3)
    batch["loss_mask"][0::2, 6:] = 0  # micro-batch 0 (even rows) has far fewer loss tokens than micro-batch 1
    assert batch["loss_mask"][0::2].sum() * 2 < batch["loss_mask"][1::2].sum()
    whole, m1 = _one_step(tiny_config(**LINEAR), mesh, batch=[batch])
    accum, m2 = _one_step(tiny_config(**LINEAR, grad_accum=2), mesh, batch=[batch])
    np.testing.assert_allclose(m2[0]["loss"], m1[0]["loss"], rtol=1e-6)
    assert m2[0]["loss_tokens"] == batch["loss_mask"].sum()
    for a, b in zip(jax.tree.leaves(accum), jax.tree.leaves(whole)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # The reference those equal: the token-mean over all 8 rows, which a mean of the micro-batch means is not.
    model = init_model(MODEL.qwen2(), one_device_mesh(), sharding.TRAIN_RULES, seed=1)
    graphdef, params = nnx.split(model)
    sums = [jax.value_and_grad(lambda p, b: loss_sums(graphdef, p, b, 8)[0])(params, {k: v[i::2] for k, v in
                                                                                    batch.items()}) for i in (0, 1)]
    counts = [batch["loss_mask"][i::2].sum() for i in (0, 1)]
    np.testing.assert_allclose(m1[0]["loss"], (sums[0][0] + sums[1][0]) / sum(counts), rtol=1e-5)
    token_mean = jax.tree.map(lambda a, b: (a + b) / sum(counts), sums[0][1], sums[1][1])
    mean_of_means = jax.tree.map(lambda a, b: (a / counts[0] + b / counts[1]) / 2, sums[0][1], sums[1][1])
    gap = optax.tree.norm(jax.tree.map(jnp.subtract, token_mean, mean_of_means))
    assert gap > 0.05 * optax.tree.norm(token_mean)


def test_sharded_step_equals_one_device_step():
    batches = [random_examples(8, seed=s) for s in range(3)]
    cfg = tiny_config(**LINEAR)
    one, m1 = _one_step(cfg, one_device_mesh(), batch=batches)
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=4, tensor=2))
    start = jax.device_get(nnx.to_pure_dict(nnx.state(init_model(MODEL.qwen2(), one_device_mesh(),
                                                                  sharding.TRAIN_RULES, seed=1))))
    eight, m8 = _one_step(cfg, mesh, params_from=start, batch=batches)
    for a, b in zip(m1, m8):
        np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_packed_rows_give_the_loss_and_gradients_of_the_examples_one_per_row():
    examples = random_examples(24, seed=5)
    packed = pack_examples(examples, pad_id=0)
    # every example lands whole in one row, in order within its row; rows hold 1-2 examples at this length mix
    assert packed["valid"].sum() == examples["valid"].sum() and len(packed["tokens"]) < 24
    assert packed["segment_ids"].max() >= 2 and (packed["valid"] == (packed["segment_ids"] > 0)).all()
    assert sorted(np.concatenate([r[v] for r, v in zip(packed["tokens"], packed["valid"])]).tolist()) == sorted(
        np.concatenate([r[v] for r, v in zip(examples["tokens"], examples["valid"])]).tolist())
    model = init_model(MODEL.qwen2(), one_device_mesh(), sharding.TRAIN_RULES, seed=1)
    graphdef, params = nnx.split(model)
    grad = jax.value_and_grad(lambda p, b: loss_sums(graphdef, p, b, 8)[0])
    (l_packed, g_packed), (l_rows, g_rows) = grad(params, packed), grad(params, examples)
    np.testing.assert_allclose(l_packed, l_rows, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g_packed), jax.tree.leaves(g_rows)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # and the jitted, sharded step takes packed batches: 8 devices equal one
    batch = {k: v[:8] for k, v in packed.items()}
    one, m1 = _one_step(tiny_config(**LINEAR), one_device_mesh(), batch=[batch])
    mesh = sharding.make_mesh(sharding.MeshConfig(fsdp=4, tensor=2))
    start = jax.device_get(nnx.to_pure_dict(nnx.state(init_model(MODEL.qwen2(), one_device_mesh(),
                                                                  sharding.TRAIN_RULES, seed=1))))
    eight, m8 = _one_step(tiny_config(**LINEAR), mesh, params_from=start, batch=[batch])
    np.testing.assert_allclose(m1[0]["loss"], m8[0]["loss"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(eight)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_non_finite_loss_stops_naming_the_step(tmp_path):
    examples = random_examples(8)
    examples["tokens"][3, 2] = 10_000  # past the vocabulary: the embedding gather fills NaN, so the loss is NaN
    with pytest.raises(UserError, match=r"^step 1: loss is nan; stopped \(last checkpoint: none\)$"):
        train_sft(tiny_config(), "planner", tmp_path, ArrayBatches(examples, 8, seed=0), [])


def test_bad_rows_name_file_line_and_field(tmp_path):
    path = tmp_path / "coder.jsonl"
    path.write_text(jsonl_text([{"task_id": "a", "problem": "p", "plan": "q", "code": "c"},
                                {"task_id": "b", "problem": "p", "plan": "q"}]))
    with pytest.raises(UserError, match=r"^coder.jsonl:2: field 'code': missing$"):
        read_rows(path, "coder")
    assert len(read_rows(path, "planner")) == 2


@pytest.mark.parametrize("agent", ["planner", "coder"])
def test_own_rows_train_on_the_prompts_the_agents_are_given(agent):
    """An agent's own JSONL rows are rendered as the sampler is prompted in rl/eval/solve (full prompts), and the
    loss mask covers exactly the answer and its <|im_end|>."""
    row = {"task_id": "a", "problem": "add the numbers", "plan": "1. add", "code": "def f(xs):\n    return sum(xs)",
           "entry_point": "f"}
    tok = ByteTokenizer()
    out = render_examples([row], agent, tok, 1024)
    tokens, mask, valid = out["tokens"][0], out["loss_mask"][0].astype(bool), out["valid"][0]
    answer = "1. add" if agent == "planner" else "```python\ndef f(xs):\n    return sum(xs)\n```"
    assert tok.decode(tokens[mask]) == answer + "<|im_end|>"
    prompt = prompt_ids(tok, agent, row_problem(row), row["plan"] if agent == "coder" else None)
    assert list(tokens[: len(prompt)]) == prompt and not mask[: len(prompt)].any()
    assert valid.sum() == len(prompt) + mask.sum() + 1  # the turn's closing newline
    with pytest.raises(UserError, match=f"row 'a': its {agent} example is {valid.sum()} tokens, longer than seq_len 64"):
        render_examples([row], agent, tok, 64)


# ------------------------------------------------------------------------------------- resume (subprocess)

CONFIG_FILE = '''
from algoforge_jax.config import AgentConfig, Config, DataConfig, ModelConfig, TrainConfig
def get_config(arg=None):
    return Config(model=ModelConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_layers=2,
                                    num_heads=4, num_kv_heads=2),
                  data=DataConfig(seq_len=512, batch_size=8),
                  train=TrainConfig(steps=60, learning_rate=3e-3, warmup_steps=5, checkpoint_every=6,
                                    logprob_chunk=16),
                  coder=AgentConfig(train_data=%r))
'''


def _sft(tmp_path, workdir) -> list[str]:
    return [sys.executable, "-m", "algoforge_jax", "sft", "--config", str(tmp_path / "cfg.py"), "--agent", "coder",
            "--workdir", str(workdir)]


def _wait_for_checkpoint_after(proc, directory: Path, step: int) -> int:
    """Polls until a finished checkpoint later than `step` exists, then returns its step."""
    while proc.poll() is None:
        done = [int(p.name) for p in directory.glob("*") if p.name.isdigit() and int(p.name) > step]
        if done:
            return max(done)
        time.sleep(0.01)
    raise AssertionError(f"the run ended (rc {proc.returncode}) before a checkpoint after step {step}")


@pytest.mark.slow
def test_killed_and_preempted_runs_resume_bit_identical(tmp_path):
    rows = [{"task_id": f"t{i}", "problem": f"sum list {i}", "plan": "add them", "code": f"def f(x): return {i}"}
            for i in range(20)]
    (tmp_path / "rows.jsonl").write_text(jsonl_text(rows))
    (tmp_path / "cfg.py").write_text(CONFIG_FILE % str(tmp_path / "rows.jsonl"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    subprocess.run(_sft(tmp_path, tmp_path / "a"), check=True, **quiet)

    ckpts = tmp_path / "b" / "sft-coder" / "checkpoints"
    proc = subprocess.Popen(_sft(tmp_path, tmp_path / "b"), **quiet)
    _wait_for_checkpoint_after(proc, ckpts, 0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "sft-coder" / "model").exists(), "the run finished before it was killed"
    killed_at = max(int(p.name) for p in ckpts.glob("*") if p.name.isdigit())

    proc = subprocess.Popen(_sft(tmp_path, tmp_path / "b"), **quiet)  # resumes, then is preempted
    _wait_for_checkpoint_after(proc, ckpts, killed_at)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    stopped_at = max(int(p.name) for p in ckpts.glob("*") if p.name.isdigit())
    assert killed_at < stopped_at < 60
    assert read_metrics(tmp_path / "b" / "sft-coder" / "metrics.jsonl")[-1]["step"] == stopped_at

    subprocess.run(_sft(tmp_path, tmp_path / "b"), check=True, **quiet)
    mesh = one_device_mesh()
    a = checkpoints.load_model(tmp_path / "a" / "sft-coder" / "model", mesh, sharding.SAMPLE_RULES)
    b = checkpoints.load_model(tmp_path / "b" / "sft-coder" / "model", mesh, sharding.SAMPLE_RULES)
    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    losses = [[(m["step"], m["loss"], m["grad_norm"]) for m in read_metrics(d / "sft-coder" / "metrics.jsonl")]
              for d in (tmp_path / "a", tmp_path / "b")]
    assert losses[0] == losses[1] and len(losses[0]) == 60


def test_contract_adapter_renames_the_mask_and_keeps_the_source_position():
    class Source:  # a grain-like iterator: assistant_mask, no valid, get/set_state
        def __init__(self):
            self.i = 0

        def __next__(self):
            self.i += 1
            return {"tokens": np.array([[5, 6, 7, 0]]) * self.i, "assistant_mask": np.array([[0, 1, 1, 0]])}

        def get_state(self):
            return {"i": self.i}

        def set_state(self, state):
            self.i = state["i"]

    batches = ContractBatches(Source())
    first = next(batches)
    assert first["loss_mask"].tolist() == [[0, 1, 1, 0]] and first["valid"].tolist() == [[True, True, True, False]]
    assert first["tokens"].dtype == np.int32 and batches.get_state() == {"i": 1}
    batches.set_state({"i": 4})
    assert next(batches)["tokens"].tolist() == [[25, 30, 35, 0]]


def test_flops_per_token_counts_matmul_weights_and_causal_attention():
    import transformers
    from hf_tiny import hf_config

    from algoforge_jax.models.qwen2 import Qwen2Config
    from algoforge_jax.train.metrics import flops_per_token

    for tied in (False, True):
        hf_cfg = hf_config(tie_word_embeddings=tied)
        hf = transformers.Qwen2ForCausalLM(hf_cfg)
        # Every weight a token is multiplied by: all but biases, norms and the (untied) input table.
        matmul = sum(p.numel() for n, p in hf.named_parameters() if p.ndim == 2 and "embed_tokens" not in n)
        matmul += hf_cfg.vocab_size * hf_cfg.hidden_size if tied else 0
        biases_and_norms = sum(p.numel() for p in hf.parameters() if p.ndim == 1)
        T = 128
        attention = 6 * hf_cfg.num_hidden_layers * hf_cfg.hidden_size * T  # N x H = hidden size for Qwen2
        cfg = Qwen2Config.from_hf_config(hf_cfg.to_dict())
        # MaxText counts every parameter but the input table: biases and norms ride along (a rounding error).
        assert flops_per_token(cfg, T) == 6 * (matmul + biases_and_norms) + attention
