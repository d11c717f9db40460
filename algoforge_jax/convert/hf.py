"""Hugging Face <-> JAX conversion of Qwen2 checkpoints, driven by one declarative key table.

Import reads `config.json` and the `*.safetensors` files (single or sharded with `model.safetensors.index.json`)
one tensor at a time through a memory map, and writes each straight onto its target sharding: a 14B model never
exists as a whole in host memory, and on a multi-host mesh each host reads only the slices it keeps. The per-layer
HF tensors of a stacked decoder parameter stay memory-mapped until all L are read; each device then takes its
slice of the stack from them. Export streams the other way: it plans the safetensors files (split with an index
above `max_shard_bytes`) from the parameters' shapes, a stacked parameter as its L per-layer HF tensors, then
gathers one HF tensor (one layer slice) at a time and appends it to its file at once, so a 32B model needs host
memory for its largest tensor, not for a shard. With config.json, generation_config.json and the tokenizer files
it makes a directory that `transformers.AutoModelForCausalLM.from_pretrained` loads with no code of ours.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from tqdm import tqdm
from jax.sharding import Mesh

from algoforge_jax import sharding
from algoforge_jax.errors import UserError
from algoforge_jax.models.build import abstract_model
from algoforge_jax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM, load_hf_config

# Files that travel with the weights through every conversion: the tokenizer, and the generation defaults
# (eos ids, sampling settings) that transformers reads from generation_config.json.
SIDECAR_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "tokenizer.model",  # the embedded default's sentencepiece model
)
INDEX_FILE = "model.safetensors.index.json"

# ------------------------------------------------------------------------------------------ key table


@dataclasses.dataclass(frozen=True)
class KeyRule:
    """One HF tensor name pattern <-> one JAX parameter path, with the reshapes between their layouts.

    A pattern with {i} names one tensor per decoder layer; all of them are slices of one stacked JAX parameter
    (leading axis = layer index), converted one slice at a time.
    """

    hf: str  # may contain {i} (layer index)
    jax: str  # dotted path into the model's state
    to_jax: Callable[[np.ndarray, Qwen2Config], np.ndarray] = lambda w, c: w
    to_hf: Callable[[np.ndarray, Qwen2Config], np.ndarray] = lambda w, c: w

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf

    def hf_shape(self, shape: tuple[int, ...], cfg: Qwen2Config) -> tuple[int, ...]:
        """The HF-layout shape of one HF tensor of a parameter whose JAX shape is `shape` (a stacked parameter's
        tensors are its layer slices), computed on a broadcast: no data."""
        layer_shape = shape[1:] if self.per_layer else shape
        return tuple(self.to_hf(np.broadcast_to(np.int8(0), layer_shape), cfg).shape)

    def hf_regex(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.hf).replace(r"\{i\}", r"(?P<i>\d+)") + "$")

    def hf_names(self, shape: tuple[int, ...]) -> list[str]:
        """The HF tensors that make up a JAX parameter of this shape."""
        return [self.hf.format(i=i) for i in range(shape[0])] if self.per_layer else [self.hf]


def _heads(w, c, n):  # torch Linear [n*H, D] -> kernel [D, n, H]
    return w.T.reshape(c.hidden_size, n, c.head_size)


def _unheads(k, c):  # kernel [D, n, H] -> torch Linear [n*H, D]
    return k.reshape(c.hidden_size, -1).T


_N = lambda c: c.num_attention_heads  # noqa: E731
_K = lambda c: c.num_key_value_heads  # noqa: E731
_T = lambda w, c: w.T  # noqa: E731
_L = "layers.stacked."  # the DecoderStack: every decoder layer's parameters, stacked

KEY_TABLE: tuple[KeyRule, ...] = (
    KeyRule("model.embed_tokens.weight", "embed_tokens"),
    KeyRule("model.norm.weight", "norm.weight"),
    KeyRule("lm_head.weight", "lm_head", _T, _T),
    KeyRule("model.layers.{i}.input_layernorm.weight", _L + "input_layernorm.weight"),
    KeyRule("model.layers.{i}.post_attention_layernorm.weight", _L + "post_attention_layernorm.weight"),
    KeyRule("model.layers.{i}.self_attn.q_proj.weight", _L + "self_attn.q_proj", lambda w, c: _heads(w, c, _N(c)), _unheads),
    KeyRule("model.layers.{i}.self_attn.k_proj.weight", _L + "self_attn.k_proj", lambda w, c: _heads(w, c, _K(c)), _unheads),
    KeyRule("model.layers.{i}.self_attn.v_proj.weight", _L + "self_attn.v_proj", lambda w, c: _heads(w, c, _K(c)), _unheads),
    KeyRule("model.layers.{i}.self_attn.q_proj.bias", _L + "self_attn.q_bias", lambda w, c: w.reshape(_N(c), -1), lambda w, c: w.reshape(-1)),
    KeyRule("model.layers.{i}.self_attn.k_proj.bias", _L + "self_attn.k_bias", lambda w, c: w.reshape(_K(c), -1), lambda w, c: w.reshape(-1)),
    KeyRule("model.layers.{i}.self_attn.v_proj.bias", _L + "self_attn.v_bias", lambda w, c: w.reshape(_K(c), -1), lambda w, c: w.reshape(-1)),
    # o_proj: torch [D, N*H] -> kernel [N, H, D]
    KeyRule("model.layers.{i}.self_attn.o_proj.weight", _L + "self_attn.o_proj",
            lambda w, c: w.T.reshape(_N(c), c.head_size, c.hidden_size), lambda k, c: k.reshape(-1, c.hidden_size).T),
    KeyRule("model.layers.{i}.mlp.gate_proj.weight", _L + "mlp.gate_proj", _T, _T),
    KeyRule("model.layers.{i}.mlp.up_proj.weight", _L + "mlp.up_proj", _T, _T),
    KeyRule("model.layers.{i}.mlp.down_proj.weight", _L + "mlp.down_proj", _T, _T),
)
_HF_PATTERNS = [(rule, rule.hf_regex()) for rule in KEY_TABLE]
_JAX_RULES = {rule.jax: rule for rule in KEY_TABLE}


def hf_to_jax_key(name: str) -> tuple[KeyRule, int | None] | None:
    """(rule, layer index or None) of an HF tensor name, None if no rule matches."""
    for rule, pattern in _HF_PATTERNS:
        if m := pattern.match(name):
            return rule, None if m.groupdict().get("i") is None else int(m["i"])
    return None


def jax_rule(path: str) -> KeyRule:
    if path not in _JAX_RULES:
        raise KeyError(f"no HF name for parameter {path!r}")
    return _JAX_RULES[path]


# ----------------------------------------------------------------------------------- safetensors I/O

_ST_DTYPES = {
    "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def read_safetensors(path: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, array) from a .safetensors file as zero-copy memory-mapped views (bf16 included)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UserError(f"{path}: not a safetensors file (bad header)") from None
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _ST_DTYPES:
            raise UserError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        yield name, data[begin:end].view(_ST_DTYPES[info["dtype"]]).reshape(info["shape"])


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A tensor as a safetensors header describes it."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


def write_safetensors(path: Path, specs: Sequence[TensorSpec], arrays: Iterable[np.ndarray]) -> None:
    """Writes a .safetensors file (metadata format=pt, as transformers expects). The header is built from `specs`
    before any data, so `arrays` may be a generator: each array is written as it comes and freed before the next
    is made."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for spec in specs:
        header[spec.name] = {"dtype": _ST_NAMES[spec.dtype], "shape": list(spec.shape),
                             "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # keep tensor data 8-byte aligned
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        arrays = iter(arrays)
        for spec in specs:  # not zip(): its reused result tuple would keep each array alive during the next
            arr = next(arrays, None)
            if arr is None or (arr.dtype, arr.shape) != (spec.dtype, spec.shape):
                got = "nothing" if arr is None else f"{arr.dtype}{list(arr.shape)}"
                raise ValueError(f"{path}: tensor {spec.name!r} is {got}, its header says "
                                 f"{spec.dtype}{list(spec.shape)}")
            f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8))  # no bytes copy of the tensor
            del arr
    os.replace(tmp, path)


def safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / INDEX_FILE
    if index.exists():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise UserError(f"{index}: field 'weight_map' missing or not an object")
        files = [model_dir / f for f in dict.fromkeys(weight_map.values())]
        for f in files:
            if not f.exists():
                raise UserError(f"{index}: lists {f.name}, which does not exist")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise UserError(f"{model_dir}: no *.safetensors files (and no {INDEX_FILE})")
    return files


# ----------------------------------------------------------------------------------------- import


def _flat_abstract(abstract: nnx.State) -> dict[str, jax.ShapeDtypeStruct]:
    return {".".join(map(str, path)): leaf for path, leaf in nnx.to_flat_state(abstract)}


class _Stacked:
    """Per-layer host arrays read as one [L, ...] array: `sharding.from_host` takes each device's slice of the
    stack from the layers' memory maps, so the whole stacked parameter never exists in host memory."""

    def __init__(self, layers: list[np.ndarray]):
        self.layers = layers
        self.shape = (len(layers), *layers[0].shape)
        self.dtype = layers[0].dtype

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        return np.stack([layer[index[1:]] for layer in self.layers[index[0]]])


def load_hf_state(model_dir: Path, cfg: Qwen2Config, abstract: nnx.State) -> nnx.State:
    """Fills an abstract state from HF safetensors, checking every tensor's name and shape, and that each is set
    exactly once. A stacked parameter is placed once all of its layers' tensors have been read."""
    targets = _flat_abstract(abstract)
    pending = {path: [None] * len(jax_rule(path).hf_names(t.shape)) for path, t in targets.items()}
    loaded: dict[str, jax.Array] = {}
    seen: set[str] = set()
    bar = tqdm(total=sum(map(len, pending.values())), desc="loading tensors", unit="tensor", disable=None, leave=False)
    for file in safetensors_files(model_dir):
        for name, tensor in read_safetensors(file):
            bar.update()
            rule, layer = hf_to_jax_key(name) or (None, None)
            if rule is None or rule.jax not in targets or name not in rule.hf_names(targets[rule.jax].shape):
                if name == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue  # some tied checkpoints still store the (identical) head
                raise UserError(f"{file}: unexpected tensor {name!r} (not part of this Qwen2 config)")
            if name in seen:
                raise UserError(f"{file}: tensor {name!r} is set twice")
            seen.add(name)
            target = targets[rule.jax]
            # Checked in the HF layout, before to_jax: its reshapes would accept any tensor of the right size.
            expected = rule.hf_shape(target.shape, cfg)
            if tensor.shape != expected:
                raise UserError(
                    f"{file}: tensor {name!r} has shape {list(tensor.shape)}, config.json implies {list(expected)}"
                )
            slots = pending[rule.jax]
            slots[layer or 0] = rule.to_jax(tensor, cfg)
            if all(s is not None for s in slots):
                value = _Stacked(slots) if rule.per_layer else slots[0]
                loaded[rule.jax] = sharding.from_host(value, target.sharding, target.dtype)
                del pending[rule.jax]
    bar.close()
    missing = sorted({n for p, t in targets.items() for n in jax_rule(p).hf_names(t.shape)} - seen)
    if missing:
        raise UserError(f"{model_dir}: missing tensor(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return nnx.from_flat_state({tuple(p.split(".")): v for p, v in loaded.items()})


def load_hf_model(model_dir, mesh: Mesh, rules: sharding.ShardingRules, **overrides) -> Qwen2ForCausalLM:
    """A sharded model from a Hugging Face directory. `overrides` set config fields such as dtype."""
    model_dir = Path(model_dir)
    cfg = load_hf_config(model_dir / "config.json", **overrides)
    graphdef, abstract = abstract_model(cfg, mesh, rules)
    state = load_hf_state(model_dir, cfg, abstract)
    return nnx.merge(graphdef, state)


# ----------------------------------------------------------------------------------------- export


def export_hf(model: Qwen2ForCausalLM, out_dir, *, tokenizer_dir=None, dtype: str | None = None,
              max_shard_bytes: int = 4 << 30) -> Path:
    """Writes `model` as a Hugging Face directory, streaming: host memory holds about one tensor, never a shard.

    The split into safetensors files is planned from the parameters' shapes first, so every file's final name
    (`model-0000k-of-0000N`) and header are known before any data moves. Then every process gathers one tensor at a
    time (a collective, in the same order everywhere) and process 0 alone converts it and appends it to its file.
    The tokenizer files and generation_config.json are copied from `tokenizer_dir` when it has them; else the
    latter is written from the model's config."""
    cfg = model.config if dtype is None else model.config.replace(checkpoint_dtype=dtype)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np_dtype = np.dtype(ml_dtypes.bfloat16) if cfg.checkpoint_dtype == "bfloat16" else np.dtype(cfg.checkpoint_dtype)
    shards = plan_shards(nnx.to_flat_state(nnx.state(model, nnx.Param)), cfg, np_dtype, max_shard_bytes)
    files = ["model.safetensors"] if len(shards) == 1 else [
        f"model-{k:05d}-of-{len(shards):05d}.safetensors" for k in range(1, len(shards) + 1)]
    writer = jax.process_index() == 0
    if writer:
        for stale in list(out_dir.glob("*.safetensors")) + [out_dir / INDEX_FILE]:
            stale.unlink(missing_ok=True)
    bar = tqdm(total=sum(map(len, shards)), desc="exporting tensors", unit="tensor", disable=None, leave=False)
    for file, shard in zip(files, shards):
        if writer:
            write_safetensors(out_dir / file, [t.spec for t in shard], _hf_arrays(shard, cfg, bar))
        else:
            for t in shard:  # every process joins every gather (a collective), in the same order
                _gather(t, bar)
    bar.close()
    if not writer:
        return out_dir
    if len(shards) > 1:
        weight_map = {t.spec.name: file for file, shard in zip(files, shards) for t in shard}
        index = {"metadata": {"total_size": sum(t.spec.nbytes for s in shards for t in s)}, "weight_map": weight_map}
        (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    (out_dir / "config.json").write_text(json.dumps(cfg.to_hf_config(), indent=2) + "\n")
    if tokenizer_dir is not None:
        copy_sidecar_files(Path(tokenizer_dir), out_dir)
    if tokenizer_dir is None or not (Path(tokenizer_dir) / "generation_config.json").exists():  # else the source's
        gen = {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id}
        (out_dir / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return out_dir


@dataclasses.dataclass(frozen=True)
class PlannedTensor:
    """One HF tensor of an export: the parameter it comes from (one layer slice of it, for a stacked parameter),
    its key rule, and how it is written."""

    var: nnx.Variable
    rule: KeyRule
    layer: int | None  # the slice of a stacked parameter; None: the whole parameter
    spec: TensorSpec  # HF name, the export dtype and the HF-layout shape


def plan_shards(params, cfg: Qwen2Config, dtype: np.dtype, max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Splits the HF tensors of the parameters (nnx flat state, in export order) into safetensors files of at most
    `max_shard_bytes` (a bigger tensor gets a file of its own), from their shapes alone: nothing is gathered."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for path, var in params:
        rule = jax_rule(".".join(map(str, path)))
        spec_shape = rule.hf_shape(var.shape, cfg)
        for i, name in enumerate(rule.hf_names(var.shape)):
            tensor = PlannedTensor(var, rule, i if rule.per_layer else None, TensorSpec(name, dtype, spec_shape))
            if size and size + tensor.spec.nbytes > max_shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(tensor)
            size += tensor.spec.nbytes
    return shards


def _gather(t: PlannedTensor, bar: tqdm) -> np.ndarray:
    """The tensor's value in the JAX layout on this host; a stacked parameter's layer slice alone is gathered."""
    bar.update()
    value = t.var[...]
    return sharding.to_host(value if t.layer is None else value[t.layer])


def _hf_arrays(shard: list[PlannedTensor], cfg: Qwen2Config, bar: tqdm) -> Iterator[np.ndarray]:
    """The shard's tensors in HF layout and dtype, gathered one at a time; the gathered copy is dropped as soon as
    it is converted."""
    for t in shard:
        yield np.ascontiguousarray(t.rule.to_hf(_gather(t, bar), cfg), dtype=t.spec.dtype)


def copy_sidecar_files(src: Path, dst: Path) -> list[str]:
    """Copies the SIDECAR_FILES that `src` has into `dst`, made only if there is something to copy."""
    copied = []
    for name in SIDECAR_FILES:
        if (src / name).exists() and (src / name).resolve() != (dst / name).resolve():
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied
