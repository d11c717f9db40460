"""Training metrics: model FLOPs per token (MaxText's count), MFU, and where the numbers go (JSON lines and
TensorBoard event files).

TensorBoard's file format is written here directly because neither tensorboard nor tensorboardX is a dependency:
an event file is a TFRecord stream (length, masked CRC-32C, payload, masked CRC-32C) of `Event` protobufs, and
scalars need only four protobuf fields, encoded by hand below. TensorBoard reads the files as usual.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path

import jax

from algoforge_jax.models.qwen2 import Qwen2Config, parameter_count

# Nominal dense bf16 peak per device, TFLOP/s, by substring of `device_kind`.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
               "TPU v5p": 459.0, "TPU v6": 918.0}


def flops_per_token(cfg: Qwen2Config, seq_len: int) -> float:
    """Training FLOPs per token as MaxText counts them: 6 x (every matmul weight, the output projection included,
    the embedding lookup not) plus causal attention, 6 x L x N x H x T (QK^T and AV, 2 FLOPs per multiply-add,
    halved for the causal mask, x3 for forward + backward)."""
    lookup = 0 if cfg.tie_word_embeddings else cfg.vocab_size * cfg.hidden_size  # untied: embed_tokens is a gather
    matmul_params = parameter_count(cfg) - lookup
    attention = 6 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_size * seq_len
    return 6.0 * matmul_params + attention


def peak_flops_per_device(override_tflops: float = 0.0) -> float | None:
    """Peak FLOP/s of one device: the override if given, else a known accelerator's nominal peak, else None."""
    if override_tflops > 0:
        return override_tflops * 1e12
    kind = jax.devices()[0].device_kind
    return next((t * 1e12 for name, t in PEAK_TFLOPS.items() if name in kind), None)


# ------------------------------------------------------------------------------------------------ writers


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:  # length-delimited protobuf field
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def scalar_event(step: int, wall_time: float, scalars: dict[str, float]) -> bytes:
    """An `Event{wall_time, step, summary{value{tag, simple_value}...}}` protobuf."""
    values = b"".join(_field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", v)) for tag, v in scalars.items())
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + _field(5, values)


def tfrecord(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", _masked_crc(length)) + payload + struct.pack("<I", _masked_crc(payload))


class MetricsWriter:
    """Appends one JSON line per record to `metrics.jsonl` and the scalars to a TensorBoard event file in `tb/`.

    Only process 0 writes. On resume, lines of steps after the restored one (written after the last checkpoint
    by the run that died) are dropped, so the file reads as one uninterrupted run.
    """

    def __init__(self, directory, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        directory = Path(directory)
        self.jsonl = directory / "metrics.jsonl"
        if self.jsonl.exists():
            kept = [line for line in self.jsonl.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.jsonl.write_text("".join(line + "\n" for line in kept))
        (directory / "tb").mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{resume_step}"
        self.events = open(directory / "tb" / name, "ab")
        version = b"\x09" + struct.pack("<d", time.time()) + _field(3, b"brain.Event:2")
        self.events.write(tfrecord(version))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.events.write(tfrecord(scalar_event(step, time.time(), numbers)))
        self.events.flush()

    def close(self) -> None:
        if self.enabled:
            self.events.close()
