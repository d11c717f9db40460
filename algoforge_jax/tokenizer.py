"""Tokenizers: the one stored with a model, or the bundled Qwen2.5 tokenizer for random test models."""

from __future__ import annotations

import os
from pathlib import Path

from algoforge_jax.errors import UserError

BUNDLED_QWEN25 = Path(__file__).parent / "assets" / "qwen2.5-tokenizer"


def load_tokenizer(path, vocab_size: int | None = None):
    """`transformers.AutoTokenizer` from a tokenizer folder, or from the tokenizer of a model directory.

    With the model's `vocab_size`, a tokenizer with more tokens than the model has embeddings is refused: its
    ids would index past the table. (Fewer is normal: Qwen2.5 pads its embedding table past the tokenizer's
    151665 tokens to 151936 or 152064.)"""
    # Only tokenizers are used: no advice that models need PyTorch (which an install without the test extras lacks).
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers import AutoTokenizer

    from algoforge_jax.checkpoints import tokenizer_dir

    found = tokenizer_dir(path)
    if found is None:
        raise UserError(f"{path}: no tokenizer files (tokenizer.json, vocab.json or tokenizer_config.json)")
    tokenizer = AutoTokenizer.from_pretrained(str(found))
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise UserError(f"{found}: the tokenizer has {len(tokenizer)} tokens, more than the model's vocab_size "
                        f"{vocab_size}; the tokenizer is not this model's")
    return tokenizer


def stop_token_ids(tokenizer, model_eos=None) -> tuple[int, ...]:
    """EOS ids to stop on: the model's generation eos (int or list) plus, with a tokenizer, its eos and
    <|im_end|>."""
    ids = [model_eos] if isinstance(model_eos, int) else list(model_eos or [])
    for token in (tokenizer.eos_token, "<|im_end|>", "<|endoftext|>") if tokenizer else ():
        tid = tokenizer.convert_tokens_to_ids(token) if token else None
        if isinstance(tid, int) and tid != tokenizer.unk_token_id:
            ids.append(tid)
    return tuple(dict.fromkeys(ids))


# ---------------------------------------------------------------- one interface for training and chat rendering

CHATML_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
SENTENCEPIECE_FILE = "tokenizer.model"
# Python needs its newlines and indentation kept whole: each is one piece, never merged away. Indentation is
# spelled with "▁" (U+2581), sentencepiece's escaped space, because symbols are matched after that escaping.
_CODE_SYMBOLS = ("\n", *("\u2581" * n for n in (4, 8, 12, 16)))


class Tokenizer:
    """What training and chat rendering need of a tokenizer: text <-> ids and the ChatML special ids.

    `eos_id` is `<|im_end|>` (what ends an assistant turn, so what the model learns to emit), `pad_id` is
    `<|endoftext|>` (as in Qwen2.5), and `default_system` is the system message a chat template adds when the
    conversation has none (Qwen2.5's own; None for the embedded default's tokenizer).
    """

    vocab_size: int
    pad_id: int
    eos_id: int
    im_start_id: int
    default_system: str | None

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError


class HFTokenizer(Tokenizer):
    """A transformers tokenizer (Qwen2.5's, or any ChatML one) behind the `Tokenizer` interface."""

    def __init__(self, hf):
        self.hf = hf
        self.vocab_size = len(hf)
        self.pad_id, self.im_start_id, self.eos_id = (_special_id(hf, t) for t in CHATML_SPECIALS)
        self.default_system = _template_default_system(hf)

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)


def _special_id(hf, token: str) -> int:
    tid = hf.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or tid == hf.unk_token_id:
        raise UserError(f"tokenizer {hf.name_or_path}: no {token} token; chat rendering needs ChatML's specials")
    return tid


def _template_default_system(hf) -> str | None:
    """The system message the chat template inserts for a conversation without one (None if it inserts none)."""
    if not hf.chat_template:
        return None
    text = hf.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    head = "<|im_start|>system\n"
    return text[len(head):text.index("<|im_end|>")] if text.startswith(head) else None


class SentencePieceTokenizer(Tokenizer):
    """A sentencepiece model trained by `train_sentencepiece` (the embedded default's), with ChatML specials."""

    def __init__(self, model_file):
        import sentencepiece

        self.path = Path(model_file)
        self.sp = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
        self.vocab_size = self.sp.get_piece_size()
        self.pad_id, self.im_start_id, self.eos_id = (self.sp.piece_to_id(t) for t in CHATML_SPECIALS)
        if self.sp.unk_id() in (self.pad_id, self.im_start_id, self.eos_id):
            raise UserError(f"{model_file}: the sentencepiece model lacks the ChatML specials {CHATML_SPECIALS}")
        self.default_system = None

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def decode(self, ids) -> str:
        return self.sp.decode([int(i) for i in ids])


def train_sentencepiece(texts, out_dir, vocab_size: int = 1024) -> Path:
    """Trains a BPE sentencepiece model on `texts` and writes `out_dir/tokenizer.model`; deterministic (one thread,
    every text used in order) and fast (seconds for the default corpus).

    Settings that keep Python intact: identity normalisation, no whitespace collapsing or dummy prefix (so
    decode(encode(x)) == x), newlines and indentation runs as whole pieces, digits split one per piece, unknown
    characters as bytes. Pieces may span spaces (`split_by_whitespace=False`): on the regular synthetic corpus that
    shortens sequences by about a quarter.
    """
    import sentencepiece

    out = Path(out_dir) / SENTENCEPIECE_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")  # renamed into place when complete: a killed run leaves no half model
    with open(tmp, "wb") as f:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=f, vocab_size=vocab_size, model_type="bpe",
            normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
            allow_whitespace_only_pieces=True, split_by_whitespace=False, split_digits=True, byte_fallback=True,
            user_defined_symbols=[*_CODE_SYMBOLS, *CHATML_SPECIALS], unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            character_coverage=1.0, input_sentence_size=0, shuffle_input_sentence=False, hard_vocab_limit=False,
            num_threads=1, minloglevel=2)
    os.replace(tmp, out)
    return out


def open_tokenizer(path) -> Tokenizer:
    """The `Tokenizer` of a tokenizer folder or model directory: its sentencepiece model if it has one, else its
    transformers tokenizer."""
    from algoforge_jax.checkpoints import sidecar_dir

    for folder in (Path(path), sidecar_dir(path)):
        if (folder / SENTENCEPIECE_FILE).is_file():
            return SentencePieceTokenizer(folder / SENTENCEPIECE_FILE)
    return HFTokenizer(load_tokenizer(path))

def pad_token_id(tokenizer, model_pad: int | None = None) -> int:
    """The id that left-pads prompts and fills finished rows: the model config's, else the tokenizer's, else 0."""
    if model_pad is not None:
        return model_pad
    return (tokenizer.pad_token_id if tokenizer is not None else None) or 0


def encode(tokenizer, prompt: str | list[dict], chat: bool = False) -> list[int]:
    """Token ids of a prompt: a text as it stands (no special tokens added), or a chat, given as a list of
    messages or as a text with chat=True (one user turn), through the tokenizer's chat template with the
    assistant's turn opened."""
    if isinstance(prompt, str) and not chat:
        return tokenizer.encode(prompt, add_special_tokens=False)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
