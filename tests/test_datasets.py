"""Planner/Coder datasets: located errors for bad rows, the TFDS array_record copy, and grain batches of fixed
shape that resume exactly from a saved iterator state and split disjointly over processes."""

import json

import numpy as np
import pytest

from algoforge_jax.data import datasets, synthetic
from algoforge_jax.data.chat import agent_answer
from algoforge_jax.data.embedded import build_embedded, tokenizer_corpus
from algoforge_jax.errors import UserError
from algoforge_jax.jsonl import jsonl_text
from algoforge_jax.tokenizer import open_tokenizer, train_sentencepiece

ROW = {"task_id": "t1", "problem": "Given xs, return the sum.", "plan": "1. Return the sum.",
       "code": "def solve(xs):\n    return sum(xs)\n", "entry_point": "solve"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A small coder dataset in TFDS form, and a tokenizer trained on it."""
    root = tmp_path_factory.mktemp("data")
    tasks = synthetic.generate(seed=5, n_train=40, n_heldout=8)
    rows = {s: datasets.task_rows(t) for s, t in tasks.items()}
    files = {s: datasets.write_rows(root / f"coder-{s}.jsonl", r, "coder") for s, r in rows.items()}
    tok = open_tokenizer(train_sentencepiece(tokenizer_corpus(rows["train"]), root / "tok", 512).parent)
    return rows, datasets.write_tfds(files, "coder", root / "tfds"), tok


def _write(path, rows):
    path.write_text(jsonl_text(rows))
    return path


@pytest.mark.parametrize("change, message", [
    ({"plan": None}, r"rows.jsonl:2: field 'plan': expected a string, got NoneType"),
    ({"code": "   "}, r"rows.jsonl:2: field 'code': empty"),
    ({"task_id": [1]}, r"rows.jsonl:2: field 'task_id': expected a string or an integer, got list"),
    ({"entry_point": 3}, r"rows.jsonl:2: field 'entry_point': expected a string or null, got int"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, change, message):
    path = _write(tmp_path / "rows.jsonl", [ROW, {**ROW, **change}])
    with pytest.raises(UserError, match=f"^{message}$"):
        datasets.read_rows(path, "coder")


def test_missing_field_and_bad_json(tmp_path):
    path = _write(tmp_path / "rows.jsonl", [ROW, {k: v for k, v in ROW.items() if k != "problem"}])
    with pytest.raises(UserError, match=r"^rows.jsonl:2: field 'problem': missing$"):
        datasets.read_rows(path, "planner")
    path.write_text(json.dumps(ROW) + "\n{oops\n")
    with pytest.raises(UserError, match=r"^rows.jsonl:2: not valid JSON"):
        datasets.read_rows(path, "coder")


def test_planner_rows_need_no_code_and_round_trip(tmp_path):
    planner_row = {k: ROW[k] for k in ("task_id", "problem", "plan")}
    rows = datasets.read_rows(_write(tmp_path / "p.jsonl", [planner_row]), "planner")
    assert rows == [{**planner_row, "entry_point": None}]
    with pytest.raises(UserError, match="field 'code': missing"):
        datasets.read_rows(tmp_path / "p.jsonl", "coder")
    out = datasets.write_rows(tmp_path / "c.jsonl", [ROW], "coder")
    assert datasets.read_rows(out, "coder") == [ROW]
    with pytest.raises(UserError, match="agent must be one of planner, coder"):
        datasets.read_rows(out, "critic")


def test_tfds_copy_holds_every_row(built):
    rows, tfds_dir, _ = built
    for split, split_rows in rows.items():
        source = datasets.open_split(tfds_dir, split)
        stored = sorted((datasets._decoded(source[i]) for i in range(len(source))), key=lambda r: r["task_id"])
        assert stored == sorted(split_rows, key=lambda r: r["task_id"])
    with pytest.raises(UserError, match="no split 'test'"):
        datasets.open_split(tfds_dir, "test")


def _batches(built, n, spec, state=None, **shard):
    _, tfds_dir, tok = built
    it = datasets.sft_batches(datasets.open_split(tfds_dir, "train"), tok, "coder", spec,
                              **(shard or {"process_index": 0, "process_count": 1}))
    if state is not None:
        it.set_state(state)
    return it, [next(it) for _ in range(n)]


def test_batches_have_fixed_shapes_and_the_answer_masked(built):
    rows, _, tok = built
    spec = datasets.BatchSpec(batch_size=4, seq_len=192, compact=True)
    _, batches = _batches(built, 12, spec)  # 48 examples: past the end of the 40-row epoch
    answers = {agent_answer("coder", r) + "<|im_end|>" for r in rows["train"]}
    for b in batches:
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
            "tokens": ((4, 192), np.int32), "loss_mask": ((4, 192), np.int32), "valid": ((4, 192), np.bool_)}
        assert not (b["loss_mask"].astype(bool) & ~b["valid"]).any()
        assert (b["tokens"][~b["valid"]] == tok.pad_id).all()
        for tokens, mask in zip(b["tokens"], b["loss_mask"]):
            assert tok.decode(tokens[mask == 1]) in answers


def test_packed_batches_hold_whole_answers_per_segment_and_resume(built):
    rows, _, tok = built
    spec = datasets.BatchSpec(batch_size=2, seq_len=384, seed=3, compact=True, pack=True)
    it, batches = _batches(built, 6, spec)
    answers = {agent_answer("coder", r) + "<|im_end|>" for r in rows["train"]}
    segments = 0
    for b in batches:
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
            "tokens": ((2, 384), np.int32), "loss_mask": ((2, 384), np.int32), "valid": ((2, 384), np.bool_),
            "segment_ids": ((2, 384), np.int32)}
        assert (b["valid"] == (b["segment_ids"] > 0)).all() and (b["tokens"][~b["valid"]] == tok.pad_id).all()
        for tokens, mask, seg in zip(b["tokens"], b["loss_mask"], b["segment_ids"]):
            for k in range(1, seg.max() + 1):  # each segment: one example, its answer whole
                assert tok.decode(tokens[(seg == k) & (mask == 1)]) in answers
                segments += 1
    assert segments >= 2 * len(batches) * 2  # at 384 tokens, at least two ~110-token examples a row
    state = it.get_state()
    _, more = _batches(built, 2, spec, state=state)
    _, again = _batches(built, 8, spec)
    for a, b in zip(more, again[6:]):
        assert all((a[k] == b[k]).all() for k in a)


def test_iterator_state_resumes_the_identical_batches(built):
    spec = datasets.BatchSpec(batch_size=3, seq_len=192, seed=11, compact=True)
    it, first = _batches(built, 4, spec)
    state = it.get_state()
    rest = [next(it) for _ in range(15)]  # crosses an epoch boundary (40 rows, 3 per batch)
    json.dumps(state)  # plain data: it goes into a checkpoint
    _, resumed = _batches(built, 15, spec, state=state)
    for a, b in zip(rest, resumed):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    _, again = _batches(built, 4, spec)
    assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, again))
    _, other_seed = _batches(built, 4, datasets.BatchSpec(batch_size=3, seq_len=192, seed=12, compact=True))
    assert not all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(first, other_seed))


def _one_epoch(built, **shard):
    spec = datasets.BatchSpec(batch_size=shard.get("process_count", 1), seq_len=384, num_epochs=1, compact=True)
    _, tfds_dir, tok = built
    it = datasets.sft_batches(datasets.open_split(tfds_dir, "train"), tok, "coder", spec, **shard)
    return [tuple(row[row != tok.pad_id]) for b in it for row in b["tokens"]]


def test_process_shards_are_disjoint_and_cover_the_data(built):
    whole = _one_epoch(built, process_index=0, process_count=1)
    shards = [_one_epoch(built, process_index=i, process_count=2) for i in range(2)]
    assert len(whole) == 40 and len(set(whole)) == 40
    assert set(shards[0]).isdisjoint(shards[1]) and sorted(shards[0] + shards[1]) == sorted(whole)
    with pytest.raises(UserError, match="batch size 3 does not divide over 2 processes"):
        datasets.sft_dataset([ROW], built[2], "coder", datasets.BatchSpec(3, 64), process_index=0, process_count=2)


def test_examples_longer_than_seq_len_are_skipped_and_counted(built):
    rows, _, tok = built
    stats = datasets.length_stats(rows["train"], tok, "coder", compact=True, seq_len=100)
    assert 0 < stats["over_seq_len"] < 40 and stats["max"] > 100
    kept = _one_epoch_with(built, seq_len=100)
    assert len(kept) == 40 - stats["over_seq_len"] and all(len(t) <= 100 for t in kept)


def _one_epoch_with(built, seq_len):
    _, tfds_dir, tok = built
    spec = datasets.BatchSpec(batch_size=1, seq_len=seq_len, num_epochs=1, compact=True)
    it = datasets.sft_batches(datasets.open_split(tfds_dir, "train"), tok, "coder", spec, process_index=0,
                              process_count=1)
    return [row[row != tok.pad_id] for b in it for row in b["tokens"]]


def test_build_embedded_writes_everything_once(tmp_path):
    data = build_embedded(tmp_path, seed=2, n_train=30, n_heldout=6, vocab_size=400)
    assert len(synthetic.read_tasks(data.problems["heldout"])) == 6
    assert len(datasets.read_rows(data.rows["planner"]["train"], "planner")) == 30
    assert len(datasets.open_split(data.tfds["coder"], "heldout")) == 6
    model = data.tokenizer_dir / "tokenizer.model"
    stamp = model.stat().st_mtime_ns
    assert build_embedded(tmp_path, seed=2, n_train=30, n_heldout=6).tokenizer_dir == data.tokenizer_dir
    assert model.stat().st_mtime_ns == stamp  # found, not rebuilt


def test_sketch_plans_enter_the_planners_dataset_only(tmp_path):
    data = build_embedded(tmp_path, seed=2, n_train=30, n_heldout=6, vocab_size=400, sketches=1.5)
    tasks = {t.problem.task_id: t for t in synthetic.read_tasks(data.problems["train"])}
    rows = datasets.read_rows(data.rows["planner"]["train"], "planner")
    detailed = [r["task_id"] for r in rows if not synthetic.is_sketch(r["plan"])]
    sketched = [r for r in rows if synthetic.is_sketch(r["plan"])]
    assert sorted(detailed) == sorted(tasks)  # every problem keeps its reference plan, once
    assert all(r["plan"] == tasks[r["task_id"]].plan for r in rows if not synthetic.is_sketch(r["plan"]))
    per_task = {i: sum(r["task_id"] == i for r in sketched) for i in tasks}
    assert set(per_task.values()) == {1, 2} and sum(per_task.values()) / len(tasks) == pytest.approx(1.5, abs=0.3)
    for r in sketched:  # the family's sketch, which names no constant, letter or condition
        assert r["plan"] == synthetic.SKETCHES[tasks[r["task_id"]].family]
        assert not any(c.isdigit() or c in "\"<>=%" for c in r["plan"].split("\n", 1)[0][3:])
    assert [r["task_id"] for r in rows] != [r["task_id"] for r in sorted(rows, key=lambda r: r["task_id"])]
    coder = datasets.read_rows(data.rows["coder"]["train"], "coder")
    assert [r["plan"] for r in coder] == [t.plan for t in tasks.values()]  # the Coder's dataset is untouched
    assert len(datasets.open_split(data.tfds["planner"], "train")) == len(rows)
    # The setting is recorded: None reads it back, another number is an error naming the file.
    again = build_embedded(tmp_path, seed=2, n_train=30, n_heldout=6, vocab_size=400, sketches=None)
    assert datasets.read_rows(again.rows["planner"]["train"], "planner") == rows
    with pytest.raises(UserError, match=r"build\.json: the data there was built with data\.sketches=1\.5, not 0"):
        build_embedded(tmp_path, seed=2, n_train=30, n_heldout=6, vocab_size=400, sketches=0.0)


def test_a_seq_len_nothing_fits_fails_at_once(built):
    _, tfds_dir, tok = built
    with pytest.raises(UserError, match=r"^seq_len 20 is too short: the shortest of the first 40 examples has \d+"):
        datasets.sft_dataset(datasets.open_split(tfds_dir, "train"), tok, "coder", datasets.BatchSpec(2, 20),
                             process_index=0, process_count=1)
    with pytest.raises(UserError, match="shard of the dataset is empty"):
        datasets.sft_dataset(datasets.open_split(tfds_dir, "heldout"), tok, "coder", datasets.BatchSpec(16, 64),
                             process_index=9, process_count=16)
