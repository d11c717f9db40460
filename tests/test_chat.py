"""Tokenizers behind one interface and the one ChatML renderer: Qwen2.5's template agreed with token for token
(default system prompt included), the trained sentencepiece model round-trips every reference program, and the
assistant mask covers exactly the assistant contents and their <|im_end|> in both."""

import pytest

from algoforge_jax.data import synthetic
from algoforge_jax.data.chat import agent_answer, agent_messages, render_chat, sft_example
from algoforge_jax.data.datasets import task_rows
from algoforge_jax.data.embedded import tokenizer_corpus
from algoforge_jax.errors import UserError
from algoforge_jax.tokenizer import (BUNDLED_QWEN25, HFTokenizer, SentencePieceTokenizer, open_tokenizer,
                                     train_sentencepiece)


@pytest.fixture(scope="module")
def rows():
    tasks = synthetic.generate(seed=3, n_train=120, n_heldout=20)
    return task_rows(tasks["train"]), task_rows(tasks["heldout"])


@pytest.fixture(scope="module")
def qwen():
    return open_tokenizer(BUNDLED_QWEN25)


@pytest.fixture(scope="module")
def spm(rows, tmp_path_factory):
    path = train_sentencepiece(tokenizer_corpus(rows[0]), tmp_path_factory.mktemp("spm"), vocab_size=512)
    return open_tokenizer(path.parent)


def _conversations(row):
    for agent in ("planner", "coder"):
        for compact in (False, True):
            yield [*agent_messages(agent, row, compact), {"role": "assistant", "content": agent_answer(agent, row)}]


def test_qwen_special_ids_and_default_system(qwen):
    assert isinstance(qwen, HFTokenizer)
    assert (qwen.pad_id, qwen.im_start_id, qwen.eos_id) == (151643, 151644, 151645)
    assert qwen.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_render_equals_qwen_chat_template(qwen, rows):
    for row in rows[1][:6]:
        for messages in _conversations(row):  # full prompts carry a system message; compact ones get Qwen's default
            ids, _ = render_chat(qwen, messages)
            assert ids == list(qwen.hf.apply_chat_template(messages, tokenize=True, return_dict=False))
            prompt = messages[:-1]
            ids, mask = render_chat(qwen, prompt, add_generation_prompt=True)
            assert ids == list(qwen.hf.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True,
                                                           return_dict=False))
            assert not any(mask)


def test_default_system_only_when_the_conversation_has_none(qwen):
    user = [{"role": "user", "content": "hi"}]
    ids, _ = render_chat(qwen, user)
    assert qwen.decode(ids).startswith(f"<|im_start|>system\n{qwen.default_system}<|im_end|>\n<|im_start|>user")
    ids, _ = render_chat(qwen, [{"role": "system", "content": "Be brief."}, *user])
    assert qwen.decode(ids) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"


@pytest.mark.parametrize("which", ["qwen", "spm"])
def test_mask_covers_exactly_the_assistant_tokens(which, request):
    tok = request.getfixturevalue(which)
    turns = [{"role": "user", "content": "Given xs, return the sum."},
             {"role": "assistant", "content": "1. Return the sum."},
             {"role": "user", "content": "Now the code."},
             {"role": "assistant", "content": "```python\ndef solve(xs):\n    return sum(xs)\n```"}]
    ids, mask = render_chat(tok, turns)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    # The masked tokens are two runs, each one assistant content followed by <|im_end|>.
    runs, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    assert [tok.decode(r) for r in runs] == [turns[1]["content"] + "<|im_end|>", turns[3]["content"] + "<|im_end|>"]
    assert all(r[-1] == tok.eos_id for r in runs)
    unmasked = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert "assistant\n" in unmasked and "return sum" not in unmasked and "Now the code." in unmasked


def test_sft_example_masks_the_answer(spm, rows):
    row = rows[1][0]
    for agent in ("planner", "coder"):
        ids, mask = sft_example(spm, agent, row, compact=True)
        assert spm.decode([i for i, m in zip(ids, mask) if m]) == agent_answer(agent, row) + "<|im_end|>"
        assert mask[-1] == 0 and ids[-1] != spm.eos_id  # the "\n" after <|im_end|> is context, not a target
    assert agent_answer("coder", row).startswith("```python\ndef solve(")


def test_sentencepiece_round_trips_every_text(spm, rows):
    assert isinstance(spm, SentencePieceTokenizer) and spm.default_system is None
    assert 256 < spm.vocab_size <= 512
    for row in rows[0] + rows[1]:
        for text in (row["problem"], row["plan"], row["code"]):
            assert spm.decode(spm.encode(text)) == text
    odd = "x\tλ  y\n\n        return 'é'  \n"  # tabs, unseen characters (bytes), runs of spaces and newlines
    assert spm.decode(spm.encode(odd)) == odd
    code = rows[0][0]["code"]
    indent = [spm.sp.piece_to_id("\u2581" * n) for n in (4, 8, 12)]  # user-defined pieces: never merged away
    assert spm.encode("\n") == [spm.sp.piece_to_id("\n")] and spm.sp.unk_id() not in indent
    assert spm.encode("        x = 1\n") == [indent[1], *spm.encode("x = 1"), spm.encode("\n")[0]]
    assert len(spm.encode("<|im_start|>")) == 1 and spm.encode("<|im_end|>") == [spm.eos_id]


def test_sentencepiece_training_is_deterministic(rows, tmp_path):
    corpus = tokenizer_corpus(rows[0])
    a = train_sentencepiece(corpus, tmp_path / "a", vocab_size=512)
    b = train_sentencepiece(corpus, tmp_path / "b", vocab_size=512)
    assert a.read_bytes() == b.read_bytes()


def test_compact_prompts_are_short_and_carry_the_problem(qwen, rows):
    row = rows[0][0]
    for agent in ("planner", "coder"):
        compact, full = agent_messages(agent, row, compact=True), agent_messages(agent, row)
        assert [m["role"] for m in compact] == ["user"] and row["problem"] in compact[0]["content"]
        assert "`solve`" in compact[0]["content"]
        assert len(compact[0]["content"]) < len(full[1]["content"])
    assert row["plan"] in agent_messages("coder", row, compact=True)[0]["content"]


def test_a_tokenizer_without_chatml_specials_is_refused(tmp_path):
    import sentencepiece

    with open(tmp_path / "tokenizer.model", "wb") as f:
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(["abc def"] * 20), model_writer=f,
                                                 vocab_size=20, minloglevel=2, hard_vocab_limit=False)
    with pytest.raises(UserError, match="lacks the ChatML specials"):
        open_tokenizer(tmp_path)


def test_the_sentencepiece_model_travels_with_a_saved_model(spm, tmp_path):
    from algoforge_jax.convert.hf import copy_sidecar_files

    copy_sidecar_files(spm.path.parent, tmp_path / "model")
    found = open_tokenizer(tmp_path / "model")
    assert isinstance(found, SentencePieceTokenizer) and found.encode("def solve(xs):") == spm.encode("def solve(xs):")


@pytest.mark.parametrize("which", ["qwen", "spm"])
def test_sampler_prompt_is_the_training_prefix(which, request, rows):
    from algoforge_jax.data.chat import prompt_ids, row_problem

    tok, row = request.getfixturevalue(which), rows[1][0]
    for agent in ("planner", "coder"):
        ids, mask = sft_example(tok, agent, row, compact=True)
        prompt = prompt_ids(tok, agent, row_problem(row), row["plan"] if agent == "coder" else None, compact=True)
        assert ids[:len(prompt)] == prompt and mask.index(1) == len(prompt)
