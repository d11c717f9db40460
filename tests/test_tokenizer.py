"""The bundled Qwen2.5 tokenizer reproduces llama.cpp's Qwen2 test vectors and Qwen2.5's special tokens."""

from pathlib import Path

import pytest

from algoforge_jax.errors import UserError
from algoforge_jax.tokenizer import BUNDLED_QWEN25, encode, load_tokenizer, pad_token_id, stop_token_ids

VECTORS = Path(__file__).parent / "fixtures" / "qwen2-tokenizer-vectors"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(BUNDLED_QWEN25)


def test_reproduces_reference_ids(tok):
    inputs = (VECTORS / "ggml-vocab-qwen2.gguf.inp").read_text().split("\n__ggml_vocab_test__\n")
    expected = (VECTORS / "ggml-vocab-qwen2.gguf.out").read_text().strip("\n").split("\n")
    assert len(expected) == 46
    for text, ids in zip(inputs, expected):
        assert tok.encode(text, add_special_tokens=False) == [int(t) for t in ids.split()], repr(text)


def test_special_tokens_and_chat_template(tok):
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|file_sep|>"]) == [
        151643, 151644, 151645, 151664]
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643 and tok.bos_token is None
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert stop_token_ids(tok, 151645) == (151645, 151643)


def test_encode_text_and_chat(tok):
    assert encode(tok, "def f(x):") == [750, 282, 2075, 1648] == tok.encode("def f(x):")
    chat = encode(tok, "hi", chat=True)
    assert chat == encode(tok, [{"role": "user", "content": "hi"}])
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == tok.encode(text, add_special_tokens=False)
    assert chat[-3:] == tok.convert_tokens_to_ids(["<|im_start|>", "assistant", "Ċ"])  # the assistant's turn, opened


def test_pad_id_prefers_the_model_then_the_tokenizer(tok):
    assert pad_token_id(tok, 7) == 7 and pad_token_id(tok, 0) == 0
    assert pad_token_id(tok) == 151643 and pad_token_id(None) == 0


def test_a_tokenizer_larger_than_the_model_is_refused_when_loaded():
    assert len(load_tokenizer(BUNDLED_QWEN25, vocab_size=151936)) == 151665  # Qwen2.5's padded table: fine
    with pytest.raises(UserError, match=r"the tokenizer has 151665 tokens, more than the model's vocab_size 151664"):
        load_tokenizer(BUNDLED_QWEN25, vocab_size=151664)
