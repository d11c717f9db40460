"""What the trainer eats: an iterator of fixed-shape numpy batches, and a stand-in source of them.

The batch contract (every trainer in `train/` and `rl/` takes this):
    {"tokens":    int32 [B, T]  token ids, padding anywhere (right-padded by the sources here),
     "loss_mask": int32 [B, T]  1 on the tokens to predict (the assistant's tokens), 0 elsewhere,
     "valid":     bool  [B, T]  False on padding; positions are counted over valid tokens only}
`loss_mask[b, t] = 1` asks the model to predict `tokens[b, t]` from `tokens[b, :t]` (see `train/logprobs.py`).
B and T are the same for every batch so the step compiles once. Each process yields only its own rows, B =
global batch / process count (`algoforge_jax/data/`'s `sft_batches` does exactly this); the loop assembles the
global batch with `jax.make_array_from_process_local_data`.

The iterator must have `get_state() -> dict` (JSON-able) and `set_state(dict)`: its position is saved in every
checkpoint. `ContractBatches` wraps a grain iterator whose batches name the mask `assistant_mask` or lack `valid`.

`ArrayBatches` + `render_examples` are the in-memory source for an agent's own JSONL rows (`algoforge sft` with
`<agent>.train_data`): each row rendered by `data.chat.sft_example`, the renderer of the embedded default's grain
pipeline too, with the full (not compact) prompts, so SFT shows the model exactly the prompts that `algoforge rl`,
`eval` and `solve` give it. `ByteTokenizer` is the fallback `Tokenizer` for random-init models with no tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np

from algoforge_jax.data.chat import sft_example
from algoforge_jax.errors import UserError
from algoforge_jax.tokenizer import Tokenizer



class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids 0-255 and the three ChatML specials after them: 259 ids, no training, any text."""

    vocab_size, im_start_id, eos_id, pad_id = 259, 256, 257, 258
    default_system = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        names = {self.im_start_id: "<|im_start|>", self.eos_id: "<|im_end|>", self.pad_id: "<|endoftext|>"}
        return "".join(names[i] if i in names else bytes([i]).decode("utf-8", errors="replace") for i in ids)


def render_examples(rows: list[dict], agent: str, tokenizer: Tokenizer, seq_len: int,
                    compact: bool = False, pack: bool = False) -> dict[str, np.ndarray]:
    """Rows (`data.datasets.read_rows`) as `chat.sft_example`s -> {tokens, loss_mask, valid} of shape
    [N, seq_len]; a longer example is an error naming the row (cutting it would drop the end of the answer).
    `pack`: several examples a row (`pack_examples`), with `segment_ids`."""
    tokens = np.full((len(rows), seq_len), tokenizer.pad_id, np.int32)
    loss_mask = np.zeros((len(rows), seq_len), np.int32)
    valid = np.zeros((len(rows), seq_len), bool)
    for i, row in enumerate(rows):
        ids, mask = sft_example(tokenizer, agent, row, compact)
        if len(ids) > seq_len:
            raise UserError(f"row {row['task_id']!r}: its {agent} example is {len(ids)} tokens, longer than "
                            f"seq_len {seq_len}; raise {agent}.seq_len (or data.seq_len)")
        tokens[i, : len(ids)], loss_mask[i, : len(ids)], valid[i, : len(ids)] = ids, mask, True
    examples = {"tokens": tokens, "loss_mask": loss_mask, "valid": valid}
    return pack_examples(examples, tokenizer.pad_id) if pack else examples


PACK_WINDOW = 16  # rows still open to examples while packing (first fit among them)


def pack_examples(examples: dict[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """Right-padded rows {tokens, loss_mask, valid} [N, T] -> fewer rows of the same width holding several
    examples each, plus `segment_ids` (1, 2, ... per example in the row, 0 on padding; the model attends within a
    segment and restarts positions there). Each example goes, in order, to the first of the last PACK_WINDOW rows
    with room for it, else to a new row; every example lands whole in exactly one row. Deterministic."""
    tokens, loss_mask, valid = examples["tokens"], examples["loss_mask"], examples["valid"]
    T, lengths = tokens.shape[1], valid.sum(1)
    rows: list[list[int]] = []  # example indices of each packed row
    used: list[int] = []
    for i, n in enumerate(lengths):
        row = next((r for r in range(max(0, len(rows) - PACK_WINDOW), len(rows)) if used[r] + n <= T), None)
        if row is None:
            rows.append([]), used.append(0)
            row = len(rows) - 1
        rows[row].append(i)
        used[row] += int(n)
    out = {"tokens": np.full((len(rows), T), pad_id, np.int32), "loss_mask": np.zeros((len(rows), T), np.int32),
           "valid": np.zeros((len(rows), T), bool), "segment_ids": np.zeros((len(rows), T), np.int32)}
    for r, members in enumerate(rows):
        at = 0
        for segment, i in enumerate(members, 1):
            n = int(lengths[i])
            out["tokens"][r, at:at + n], out["loss_mask"][r, at:at + n] = tokens[i, :n], loss_mask[i, :n]
            out["valid"][r, at:at + n], out["segment_ids"][r, at:at + n] = True, segment
            at += n
    return out


class ArrayBatches(Iterator[dict]):
    """Endless global batches of `batch_size` rows of in-memory examples, each epoch in a fresh seeded order.

    The state is (epoch, index of the next row in that epoch's order): enough to continue exactly.
    """

    def __init__(self, examples: dict[str, np.ndarray], batch_size: int, seed: int, shuffle: bool = True):
        self.examples, self.batch_size, self.seed, self.shuffle = examples, batch_size, seed, shuffle
        self.num_rows = len(examples["tokens"])
        if self.num_rows < batch_size:
            raise UserError(f"dataset has {self.num_rows} rows, fewer than one batch of {batch_size}")
        self.epoch, self.index = 0, 0

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows)
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)

    def __next__(self) -> dict:
        """This process's contiguous share of the next global batch, so the global batch (and the data order) is
        the same whatever the process count."""
        if self.index + self.batch_size > self.num_rows:  # drop the ragged tail: every batch is full
            self.epoch, self.index = self.epoch + 1, 0
        rows = self._order()[self.index: self.index + self.batch_size]
        self.index += self.batch_size
        share = self.batch_size // jax.process_count()
        rows = rows[jax.process_index() * share: (jax.process_index() + 1) * share]
        return {k: v[rows] for k, v in self.examples.items()}

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


def conform(batch: dict) -> dict[str, np.ndarray]:
    """A batch in the contract's keys and dtypes, from one that may call the mask `assistant_mask` and may lack
    `valid` (then the valid positions are those with a non-zero token or a mask bit: pad id 0)."""
    mask = np.asarray(batch["loss_mask"] if "loss_mask" in batch else batch["assistant_mask"])
    tokens = np.asarray(batch["tokens"])
    valid = np.asarray(batch["valid"]) if "valid" in batch else (tokens != 0) | (mask != 0)
    out = {"tokens": tokens.astype(np.int32), "loss_mask": mask.astype(np.int32), "valid": valid.astype(bool)}
    if "segment_ids" in batch:  # packed rows
        out["segment_ids"] = np.asarray(batch["segment_ids"]).astype(np.int32)
    return out


class ContractBatches(Iterator[dict]):
    """Adapts any iterator of dict batches with get_state/set_state (a grain DatasetIterator) to the contract."""

    def __init__(self, source):
        self.source = source

    def __next__(self) -> dict:
        return conform(next(self.source))

    def get_state(self) -> dict:
        return self.source.get_state()

    def set_state(self, state: dict) -> None:
        self.source.set_state(state)
