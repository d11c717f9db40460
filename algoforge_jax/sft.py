"""`algoforge sft --config F --agent planner|coder [--workdir D] [--set k=v ...]`: cold-start SFT of one agent.

Thin: reads the config, builds the agent's batches, and hands them to `train.loop.train_sft`. Output goes to
`D/sft-<agent>/` (checkpoints/, metrics.jsonl, tb/, model/); rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from algoforge_jax import config as config_lib
from algoforge_jax.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="Python config file exposing get_config(arg=None)")
    parser.add_argument("--config-arg", default=None, help="string passed to get_config")
    parser.add_argument("--agent", required=True, choices=config_lib.AGENTS, help="which agent to train")
    parser.add_argument("--workdir", default="workdir", help="run directory; output goes to WORKDIR/sft-AGENT")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config field, e.g. --set train.steps=100 (repeatable)")


def agent_batches(cfg: config_lib.Config, agent: str, workdir=None):
    """(training batch iterator, held-out batches, tokenizer directory or None) for one agent.

    With `<agent>.train_data` set: the agent's JSONL rows (`data.datasets.read_rows`), rendered with its tokenizer
    through the same `chat.sft_example` (full prompts) and held in memory (`train.input.ArrayBatches`). With it
    empty: the embedded default, built once under `workdir/data` (`data.embedded`), read through grain
    (`data.datasets.sft_batches`, compact prompts, its sentencepiece tokenizer).
    """
    from algoforge_jax.data.datasets import read_rows
    from algoforge_jax.train.input import ArrayBatches, render_examples

    agent_cfg = cfg.agent(agent)
    if not agent_cfg.train_data:
        return embedded_batches(cfg, agent, Path(workdir or "workdir") / "data")
    tokenizer, tokenizer_dir = _tokenizer(agent_cfg)
    if not agent_cfg.init:
        _check_vocab(cfg, tokenizer, f"the tokenizer of {agent_cfg.tokenizer or 'bytes (the fallback)'}")
    def render(path):
        return render_examples(read_rows(path, agent), agent, tokenizer, cfg.seq_len(agent), pack=cfg.data.pack)

    batches = ArrayBatches(render(agent_cfg.train_data), cfg.data.batch_size, cfg.data.seed)
    held_out = []
    if agent_cfg.eval_data:
        rows = render(agent_cfg.eval_data)
        fixed = ArrayBatches(rows, min(cfg.data.batch_size, len(rows["tokens"])), 0, shuffle=False)
        held_out = [next(fixed) for _ in range(min(cfg.data.eval_batches, fixed.num_rows // fixed.batch_size))]
    return batches, held_out, tokenizer_dir


def _check_vocab(cfg: config_lib.Config, tokenizer, source) -> None:
    """A randomly initialised model (no `init`) must have an embedding row for every id of its tokenizer."""
    vocab = cfg.model.qwen2().vocab_size
    if tokenizer.vocab_size > vocab:
        raise UserError(f"config model.vocab_size {vocab} is smaller than {source} ({tokenizer.vocab_size} ids)")


def embedded_batches(cfg: config_lib.Config, agent: str, data_dir: Path):
    """`agent_batches` for the embedded default: its train split shuffled by `data.seed`, and the first
    `data.eval_batches` batches of its held-out split (shuffled by the same seed, so the same rows every run)."""
    from algoforge_jax.data.datasets import BatchSpec, open_split, sft_batches
    from algoforge_jax.data.embedded import build_embedded
    from algoforge_jax.tokenizer import SENTENCEPIECE_FILE, SentencePieceTokenizer

    data = build_embedded(data_dir, sketches=cfg.data.sketches)
    tokenizer = SentencePieceTokenizer(data.tokenizer_dir / SENTENCEPIECE_FILE)
    _check_vocab(cfg, tokenizer, "the embedded default's tokenizer")
    spec = BatchSpec(cfg.data.batch_size, cfg.seq_len(agent), cfg.data.seed, compact=True, pack=cfg.data.pack)
    batches = sft_batches(open_split(data.tfds[agent], "train"), tokenizer, agent, spec)
    fixed = sft_batches(open_split(data.tfds[agent], "heldout"), tokenizer, agent, spec)
    held_out = [next(fixed) for _ in range(cfg.data.eval_batches)]
    return batches, held_out, data.tokenizer_dir


def _tokenizer(agent_cfg: config_lib.AgentConfig):
    """(the agent's `Tokenizer`, its directory or None): `<agent>.tokenizer`, else the init model's, else bytes."""
    from algoforge_jax.checkpoints import tokenizer_dir
    from algoforge_jax.tokenizer import open_tokenizer
    from algoforge_jax.train.input import ByteTokenizer

    source = agent_cfg.tokenizer or agent_cfg.init
    if not source:
        return ByteTokenizer(), None
    return open_tokenizer(source), tokenizer_dir(source)


def main(args: argparse.Namespace) -> int:
    cfg = config_lib.load(args.config, args.config_arg, args.overrides)
    from algoforge_jax.train.loop import train_sft

    batches, held_out, tokenizer_dir = agent_batches(cfg, args.agent, args.workdir)
    return train_sft(cfg, args.agent, Path(args.workdir) / f"sft-{args.agent}", batches, held_out, tokenizer_dir)
