"""Planner and Coder datasets: JSONL rows, written once as a TFDS array_record dataset, read through grain.

Rows: Planner `{task_id, problem, plan}`, Coder `{task_id, problem, plan, code}`, both with an optional
`entry_point` (the function the problem asks for, which the prompt names). Bad rows fail on load with
`file:line: field 'x': ...`.

Training input: `write_tfds` stores one agent's rows (a split per JSONL file) in array_record format, which
tensorflow-datasets writes and reads without TensorFlow; `sft_batches` reads a split through grain: sharded by
process (disjoint, interleaved slices of the stored order), shuffled from a seed (reshuffled each epoch), rendered
through `chat.sft_example`, right-padded to `seq_len` and batched, so every batch has the shape
[batch_size / process_count, seq_len] and the train step compiles once. The iterator's `get_state()` is a small
dict to store in a checkpoint; `set_state()` on a fresh iterator resumes the identical batch sequence.

Deliberately left out: packing several examples into one row (the model has no segment-aware attention mask);
examples longer than `seq_len` are skipped (`length_stats` counts them, so pick `seq_len` from it); a `seq_len`
that none of the first examples fits is an error, not an endless search.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grain
import numpy as np
import tensorflow_datasets as tfds

from algoforge_jax.data.chat import AGENTS, sft_example
from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import jsonl_text
from algoforge_jax.tokenizer import Tokenizer
from eval.records import OPT_STR, read_records
from eval.score import write_atomic

FIELDS = {"planner": ("task_id", "problem", "plan"), "coder": ("task_id", "problem", "plan", "code")}
STORED = ("task_id", "problem", "plan", "code", "entry_point")  # what the TFDS dataset holds ("" when absent)


def _check_agent(agent: str) -> None:
    if agent not in AGENTS:
        raise UserError(f"agent must be one of {', '.join(AGENTS)}, got {agent!r}")


def read_rows(path, agent: str) -> list[dict[str, Any]]:
    """The rows of an agent's JSONL file, each field checked (non-empty strings; `task_id` may be an integer)."""
    _check_agent(agent)
    rows = []
    for rec in read_records(Path(path)):
        row = {"task_id": str(rec.get("task_id", (str, int)))}
        for field in FIELDS[agent][1:]:
            row[field] = rec.get(field, str)
            if not row[field].strip():
                raise rec.error(field, "empty")
        row["entry_point"] = rec.get("entry_point", OPT_STR, None)
        rows.append(row)
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def write_rows(path, rows: Iterable[dict[str, Any]], agent: str) -> Path:
    """Writes an agent's rows (only its fields, plus `entry_point`) as JSONL."""
    _check_agent(agent)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    keep = (*FIELDS[agent], "entry_point")
    write_atomic(path, jsonl_text({k: r.get(k) for k in keep} for r in rows))  # a killed run leaves no half file
    return path


def task_rows(tasks) -> list[dict[str, Any]]:
    """Coder rows (a superset of Planner rows) of synthetic tasks: their reference plan and code."""
    return [{"task_id": t.problem.task_id, "problem": t.problem.prompt, "plan": t.plan, "code": t.code,
             "entry_point": t.problem.entry_point} for t in tasks]


# ---------------------------------------------------------------- TFDS array_record


class AlgoforgeSft(tfds.core.GeneratorBasedBuilder):
    """One agent's rows, a split per JSONL file, stored as array_record (written and read without TensorFlow)."""

    VERSION = tfds.core.Version("1.0.0")
    # No source-file metadata (checksums, README): TFDS would look for it beside this module through
    # `importlib_resources`, a backport that is not installed (and not needed: there is nothing to download).
    code_path = None

    def __init__(self, *, files: dict[str, Path], agent: str, **kwargs):
        self._files, self._agent = files, agent
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # Not dataset_info_from_configs: it looks for metadata files this package does not ship.
        features = tfds.features.FeaturesDict({f: tfds.features.Text() for f in STORED})
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(path) for split, path in self._files.items()}

    def _generate_examples(self, path):
        for i, row in enumerate(read_rows(path, self._agent)):
            yield i, {f: row.get(f) or "" for f in STORED}


def write_tfds(files: dict[str, Path], agent: str, data_dir) -> Path:
    """Stores `files` ({split: rows.jsonl}) as a TFDS dataset under `data_dir`, once (an existing one is kept);
    returns the dataset's directory, which `open_split` reads."""
    _check_agent(agent)
    tfds.display_progress_bar(False)  # callers show their own progress
    builder = AlgoforgeSft(files={s: Path(p) for s, p in files.items()}, agent=agent, data_dir=str(data_dir),
                           file_format="array_record")
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints "Downloading and preparing..." banners
        builder.download_and_prepare()
    return Path(builder.data_dir)


def open_split(dataset_dir, split: str):
    """A random-access source of a stored split (records of bytes fields)."""
    builder = tfds.builder_from_directory(str(dataset_dir))
    if split not in builder.info.splits:
        raise UserError(f"{dataset_dir}: no split {split!r}; it has {', '.join(builder.info.splits)}")
    return builder.as_data_source(split=split)


# ---------------------------------------------------------------- grain input pipeline


@dataclasses.dataclass(frozen=True)
class BatchSpec:
    """How rows become training batches."""

    batch_size: int  # global: summed over processes
    seq_len: int  # every batch is [batch_size / process_count, seq_len]
    seed: int = 0  # shuffle order (each epoch reshuffled from it)
    num_epochs: int | None = None  # None: repeat forever
    compact: bool = False  # the prompts' compact wording (the embedded default)
    pack: bool = False  # several examples a row, with segment_ids (grain's first-fit packing)
    read_threads: int = 2

    def __post_init__(self):
        if self.batch_size < 1 or self.seq_len < 2:
            raise ValueError(f"batch_size must be >= 1 and seq_len >= 2, got {self.batch_size} and {self.seq_len}")


def _decoded(record: dict[str, Any]) -> dict[str, Any]:
    row = {k: v.decode("utf-8") if isinstance(v, bytes) else v for k, v in record.items()}
    row["entry_point"] = row.get("entry_point") or None
    return row


def _encode(record: dict[str, Any], tokenizer: Tokenizer, agent: str, compact: bool) -> dict[str, np.ndarray]:
    ids, mask = sft_example(tokenizer, agent, _decoded(record), compact)
    return {"tokens": np.asarray(ids, np.int32), "loss_mask": np.asarray(mask, np.int32)}


def _pad(example: dict[str, np.ndarray], seq_len: int, pad_id: int) -> dict[str, np.ndarray]:
    n = len(example["tokens"])
    tokens = np.full(seq_len, pad_id, np.int32)
    tokens[:n] = example["tokens"]
    loss_mask = np.zeros(seq_len, np.int32)
    loss_mask[:n] = example["loss_mask"]
    return {"tokens": tokens, "loss_mask": loss_mask, "valid": np.arange(seq_len) < n}


def sft_dataset(source, tokenizer: Tokenizer, agent: str, spec: BatchSpec, process_index: int | None = None,
                process_count: int | None = None) -> grain.IterDataset:
    """Batches of one process's shard: `tokens` (int32, padded with `pad_id`), `loss_mask` (1 on the assistant
    tokens the model must predict) and `valid` (bool, False on padding), each [batch_size / process_count, seq_len];
    with `spec.pack`, rows of several examples and their `segment_ids` (1, 2, ... per example, 0 on padding).
    Process index and count default to JAX's."""
    _check_agent(agent)
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if spec.batch_size % process_count:
        raise UserError(f"batch size {spec.batch_size} does not divide over {process_count} processes")
    encode = functools.partial(_encode, tokenizer=tokenizer, agent=agent, compact=spec.compact)
    shard = grain.MapDataset.source(source)[process_index::process_count]
    _check_some_fit(shard, encode, spec.seq_len)
    ds = shard.seed(spec.seed).shuffle().repeat(spec.num_epochs).map(encode)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=spec.read_threads, prefetch_buffer_size=64))
    it = it.filter(lambda ex: len(ex["tokens"]) <= spec.seq_len)
    rows = spec.batch_size // process_count
    if spec.pack:
        it = grain.experimental.FirstFitPackIterDataset(
            it, length_struct={"tokens": spec.seq_len, "loss_mask": spec.seq_len}, num_packing_bins=rows,
            seed=spec.seed, padding_struct={"tokens": tokenizer.pad_id, "loss_mask": 0})
        it = it.map(_from_packed)
    else:
        it = it.map(functools.partial(_pad, seq_len=spec.seq_len, pad_id=tokenizer.pad_id))
    return it.batch(rows, drop_remainder=True)


def _from_packed(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """grain's packed example (with `<feature>_segment_ids` and `_positions`) in the batch contract."""
    segment_ids = np.asarray(example["tokens_segment_ids"], np.int32)
    return {"tokens": np.asarray(example["tokens"], np.int32), "loss_mask": np.asarray(example["loss_mask"], np.int32),
            "valid": segment_ids > 0, "segment_ids": segment_ids}


def _check_some_fit(shard: grain.MapDataset, encode, seq_len: int, probe: int = 64) -> None:
    """Fails at once, rather than skipping rows forever, when the shard is empty or none of its first `probe`
    examples fits `seq_len`."""
    if len(shard) == 0:
        raise UserError("this process's shard of the dataset is empty: more processes than rows")
    shortest = min(len(encode(shard[i])["tokens"]) for i in range(min(probe, len(shard))))
    if shortest > seq_len:
        raise UserError(f"seq_len {seq_len} is too short: the shortest of the first {min(probe, len(shard))} "
                        f"examples has {shortest} tokens")


def sft_batches(source, tokenizer: Tokenizer, agent: str, spec: BatchSpec, **shard) -> grain.DatasetIterator:
    """An iterator over `sft_dataset`; its `get_state()` / `set_state()` save and resume the exact position."""
    return iter(sft_dataset(source, tokenizer, agent, spec, **shard))


def length_stats(rows: Iterable[dict[str, Any]], tokenizer: Tokenizer, agent: str, compact: bool = False,
                 seq_len: int | None = None) -> dict[str, Any]:
    """Token counts of an agent's examples (mean, p95, max; and how many exceed `seq_len`, if given)."""
    lengths = np.asarray([len(sft_example(tokenizer, agent, r, compact)[0]) for r in rows])
    stats = {"n": len(lengths), "mean": float(lengths.mean()), "p95": float(np.percentile(lengths, 95)),
             "max": int(lengths.max())}
    if seq_len is not None:
        stats["over_seq_len"] = int((lengths > seq_len).sum())
    return stats
