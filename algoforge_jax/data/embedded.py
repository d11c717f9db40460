"""The embedded default's data in one call: synthetic problems, both agents' datasets, the tokenizer, TFDS copies.

    build_embedded(out_dir, seed=0, n_train=2000, n_heldout=200)

writes under `out_dir`:
    problems/{train,heldout}.jsonl            the SPEC's generic problems (+ plan, family, difficulty, ops)
    rows/{planner,coder}-{train,heldout}.jsonl the agents' datasets (the reference plans and code are the data;
                                               the Planner's plus `sketches` sketch plans per problem)
    build.json                                 the `sketches` it was built with (a rebuild with others is an error)
    tokenizer/tokenizer.model                  sentencepiece, trained on the train split's rendered chats
    tfds/{planner,coder}/...                   the datasets as TFDS array_record (splits train, heldout)
Existing files are kept, so a rerun (or a resumed pipeline) redoes nothing. `python -m algoforge_jax.data.embedded
OUT` builds it and prints the corpus statistics (tokens per statement, plan, code and whole example).
"""

from __future__ import annotations

import dataclasses
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

from algoforge_jax.data import datasets, synthetic
from algoforge_jax.data.chat import AGENTS, agent_answer, agent_messages
from algoforge_jax.errors import UserError
from algoforge_jax.tokenizer import SENTENCEPIECE_FILE, SentencePieceTokenizer, Tokenizer, train_sentencepiece

VOCAB_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class EmbeddedData:
    """Where `build_embedded` put things."""

    problems: dict[str, Path]  # split -> problems jsonl
    rows: dict[str, dict[str, Path]]  # agent -> split -> rows jsonl
    tokenizer_dir: Path
    tfds: dict[str, Path]  # agent -> TFDS dataset directory (for datasets.open_split)


def chat_text(messages: list[dict[str, str]]) -> str:
    """A conversation in ChatML as text (for training the tokenizer on what it will encode)."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def tokenizer_corpus(rows: list[dict[str, Any]]) -> list[str]:
    """Both agents' full conversations of every row, in the compact wording the embedded default uses."""
    return [chat_text([*agent_messages(agent, row, compact=True), {"role": "assistant",
                                                                     "content": agent_answer(agent, row)}])
            for row in rows for agent in AGENTS]


def with_sketches(rows: list[dict[str, Any]], tasks: list[synthetic.Task], sketches: float,
                  seed: int) -> list[dict[str, Any]]:
    """Planner rows plus `sketches` sketch rows per problem on average (`synthetic.SKETCHES`: the same problem with
    its family's constant-free plan): floor(sketches) for every problem and one more for a stable-hashed
    frac(sketches) share of them; then shuffled with `seed`. Each problem keeps its detailed row too."""
    if sketches <= 0:
        return rows
    whole, frac = int(sketches), sketches - int(sketches)
    out = []
    for row, task in zip(rows, tasks, strict=True):
        extra = whole + (synthetic.unit_hash(row["task_id"]) < frac)
        out += [row] + [{**row, "plan": synthetic.SKETCHES[task.family]}] * extra
    random.Random(seed).shuffle(out)
    return out


def _sketches_of_build(out: Path, sketches: float | None) -> float:
    """`out/build.json` records the `sketches` the data was built with: None reads it back (0 for a fresh
    directory); a different number is an error, since the existing rows would silently stay those of the first
    build."""
    path = out / "build.json"
    built = json.loads(path.read_text())["sketches"] if path.exists() else None
    if sketches is None:
        return built or 0.0
    if built is not None and built != sketches:
        raise UserError(f"{path}: the data there was built with data.sketches={built}, not {sketches}; use "
                        f"another workdir, or delete {out} to rebuild it")
    if built is None:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"sketches": sketches}) + "\n")
    return sketches


def build_embedded(out_dir, seed: int = 0, n_train: int = 2000, n_heldout: int = 200,
                   vocab_size: int = VOCAB_SIZE, sketches: float | None = 0.0) -> EmbeddedData:
    """Builds (or finds, if already built) the embedded default's data under `out_dir`; `sketches` adds that many
    sketch plans per problem (on average) to the Planner's dataset (`with_sketches`); None: as built before."""
    out = Path(out_dir)
    sketches = _sketches_of_build(out, sketches)
    problems = {s: out / "problems" / f"{s}.jsonl" for s in synthetic.SPLITS}
    if not all(p.exists() for p in problems.values()):
        synthetic.write_problems(out / "problems", seed, n_train, n_heldout)
    tasks = {s: synthetic.read_tasks(p) for s, p in problems.items()}
    rows = {s: datasets.task_rows(t) for s, t in tasks.items()}
    paths = {a: {s: out / "rows" / f"{a}-{s}.jsonl" for s in synthetic.SPLITS} for a in AGENTS}
    for agent in AGENTS:
        for split, path in paths[agent].items():
            if not path.exists():
                agent_rows = with_sketches(rows[split], tasks[split], sketches, seed) if agent == "planner" else \
                    rows[split]
                datasets.write_rows(path, agent_rows, agent)
    tokenizer_dir = out / "tokenizer"
    if not (tokenizer_dir / SENTENCEPIECE_FILE).exists():
        train_sentencepiece(tokenizer_corpus(rows["train"]), tokenizer_dir, vocab_size)
    tfds_dirs = {a: datasets.write_tfds(paths[a], a, out / "tfds" / a) for a in AGENTS}
    return EmbeddedData(problems, paths, tokenizer_dir, tfds_dirs)


def _summary(values: list[int]) -> dict[str, float]:
    v = np.asarray(values)
    return {"mean": round(float(v.mean()), 1), "p95": float(np.percentile(v, 95)), "max": int(v.max())}


def corpus_stats(rows: list[dict[str, Any]], tokenizer: Tokenizer) -> dict[str, Any]:
    """Tokens per statement, plan and code, and per whole example of each agent (compact prompts), to size
    `seq_len` by."""
    stats = {f: _summary([len(tokenizer.encode(r[f])) for r in rows]) for f in ("problem", "plan", "code")}
    for agent in AGENTS:
        stats[f"{agent}_example"] = datasets.length_stats(rows, tokenizer, agent, compact=True)
    return {"rows": len(rows), "vocab_size": tokenizer.vocab_size, **stats}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m algoforge_jax.data.embedded OUT_DIR", file=sys.stderr)
        return 2
    data = build_embedded(argv[0])
    tokenizer = SentencePieceTokenizer(data.tokenizer_dir / SENTENCEPIECE_FILE)
    rows = datasets.read_rows(data.rows["coder"]["train"], "coder")
    print(json.dumps(corpus_stats(rows, tokenizer), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
