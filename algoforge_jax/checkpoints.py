"""Orbax checkpoints of model parameters, restorable onto any mesh.

A model checkpoint is a directory with two orbax items, the layout that `orbax.checkpoint.CheckpointManager`
also gives each step under `WORKDIR/checkpoints/<stage>/<step>`:

    CKPT/params/        the parameters as a nested dict of arrays (written shard by shard from every host)
    CKPT/model_config/  the model's config as HF-style JSON plus our dtype fields
    CKPT/tokenizer/     tokenizer files and generation_config.json, when the source had them

Restore builds the abstract model for the *target* mesh first, so orbax reads each shard straight onto the
devices that keep it. Optimizer state and training metadata are the training loop's business, not this file's.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from flax import nnx
from jax.sharding import Mesh

from algoforge_jax import sharding
from algoforge_jax.convert.hf import copy_sidecar_files, load_hf_model
from algoforge_jax.errors import UserError
from algoforge_jax.models import lora as lora_lib
from algoforge_jax.models.build import abstract_model, add_adapters
from algoforge_jax.models.lora import LoRAConfig
from algoforge_jax.models.qwen2 import Qwen2Config, Qwen2ForCausalLM, load_hf_config

_OURS = ("dtype", "param_dtype", "checkpoint_dtype")


def config_to_json(cfg: Qwen2Config) -> dict:
    """The HF config plus our dtype fields, and the adapters' config when the model has adapters (only then, so a
    plain model's checkpoint is what it always was)."""
    data = {**cfg.to_hf_config(), **{k: getattr(cfg, k) for k in _OURS}}
    if cfg.lora.rank:
        data["lora"] = dataclasses.asdict(cfg.lora)
    return data


def config_from_json(data: dict, source: str, **overrides) -> Qwen2Config:
    ours = {k: data[k] for k in _OURS if k in data}
    if "lora" in data:
        try:
            ours["lora"] = LoRAConfig(**data["lora"])
        except (TypeError, ValueError) as e:
            raise UserError(f"{source}: field 'lora': {e}") from None
    return Qwen2Config.from_hf_config(data, source=source, **{**ours, **overrides})


def is_orbax_checkpoint(path) -> bool:
    return (Path(path) / "params").is_dir() and (Path(path) / "model_config").is_dir()


def save_model(path, model: Qwen2ForCausalLM, tokenizer_dir=None, replace: bool = False) -> Path:
    """Writes params and config to `path` (must not exist, unless `replace`: then the old one is removed first), then
    copies tokenizer files beside them."""
    path = Path(path).absolute()
    if path.exists():
        if not replace:
            raise UserError(f"{path}: already exists; choose a new checkpoint directory")
        if jax.process_index() == 0:
            shutil.rmtree(path)
    if jax.process_count() > 1:  # every host has checked (and an old one is gone) before any starts writing
        multihost_utils.sync_global_devices(f"save_model {path}")
    meta = config_to_json(model.config)
    if model.config.lora.rank:  # lets a later load see that two adapted checkpoints share their base
        meta[BASE_FINGERPRINT] = lora_lib.fingerprint(lora_lib.split(nnx.state(model))[0])
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(nnx.to_pure_dict(nnx.state(model, nnx.Param))),
        model_config=ocp.args.JsonSave(meta),
    )
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        ckptr.save(path, args=args)
    if tokenizer_dir is not None and jax.process_index() == 0:
        copy_sidecar_files(Path(tokenizer_dir), path / "tokenizer")
    return path


def _read_json(path: Path) -> dict:
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        return ckptr.restore(path, args=ocp.args.Composite(model_config=ocp.args.JsonRestore())).model_config


def read_config(path, **overrides) -> Qwen2Config:
    path = Path(path).absolute()
    return config_from_json(_read_json(path), source=str(path / "model_config"), **overrides)


def base_fingerprint(path) -> str | None:
    """The checksum of an adapted checkpoint's frozen base (`models.lora.fingerprint`); None for a plain model."""
    path = Path(path).absolute()
    return _read_json(path).get(BASE_FINGERPRINT) if is_orbax_checkpoint(path) else None


def load_model(path, mesh: Mesh, rules: sharding.ShardingRules, base: dict | None = None,
               **overrides) -> Qwen2ForCausalLM:
    """Restores a checkpoint onto `mesh` with `rules`; `overrides` change config fields such as dtype.

    Parameters are restored in the checkpoint's own dtype unless `param_dtype` is overridden. For an adapted
    checkpoint, `base` (the frozen half of another model's `lora.split`, equal to this checkpoint's base) is used
    as it is and only the adapters are read.
    """
    path = Path(path).absolute()
    if not is_orbax_checkpoint(path):
        raise UserError(f"{path}: not an orbax model checkpoint (expected params/ and model_config/ inside)")
    cfg = read_config(path, **overrides)
    graphdef, abstract = abstract_model(cfg, mesh, rules)
    target = nnx.to_pure_dict(abstract) if base is None else lora_lib.split(abstract)[1]
    restore = ocp.args.StandardRestore(target) if base is None else ocp.args.PyTreeRestore(
        target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        try:
            restored = ckptr.restore(path, args=ocp.args.Composite(params=restore)).params
        except (ValueError, KeyError) as e:
            raise UserError(f"{path / 'params'}: does not match {path / 'model_config'}: {e}") from None
    nnx.replace_by_pure_dict(abstract, restored)
    if base is not None:
        nnx.replace_by_pure_dict(abstract, base)
    return nnx.merge(graphdef, abstract)


def sidecar_dir(model_path) -> Path:
    """Where a model directory keeps the files that travel with its weights (tokenizer, generation_config)."""
    path = Path(model_path)
    return path / "tokenizer" if is_orbax_checkpoint(path) else path


def tokenizer_dir(model_path) -> Path | None:
    """Where a model directory (HF or orbax) keeps its tokenizer files, if anywhere."""
    candidate = sidecar_dir(model_path)
    if any((candidate / f).exists() for f in ("tokenizer.json", "vocab.json", "tokenizer_config.json")):
        return candidate
    return None


BASE_FINGERPRINT = "lora_base_fingerprint"  # model_config field of an adapted checkpoint


def load_pretrained(path, mesh: Mesh, rules: sharding.ShardingRules, lora: LoRAConfig | None = None,
                    seed: int = 0, base: dict | None = None, **overrides) -> Qwen2ForCausalLM:
    """A model from either a Hugging Face directory or an orbax checkpoint of ours.

    With `lora` (rank > 0) the model gets adapters: an adapted checkpoint keeps its own (its adapters' config must
    be `lora`), a plain model is loaded as the frozen base, stored in the compute dtype, and gets fresh adapters
    seeded by `seed`. `base`, the frozen parameters of a model already loaded that has the same base, is then
    used as it is instead of reading the base again (see `load_sharing_base`)."""
    lora = lora or LoRAConfig()
    saved = read_pretrained_config(path).lora
    if saved.rank:
        if lora.rank and lora != saved:
            raise UserError(f"{path}: its adapters are {saved}, the config asks for {lora}")
        return load_model(path, mesh, rules, base=base, **overrides)
    if not lora.rank:
        return _load_plain(path, mesh, rules, **overrides)
    cfg = read_pretrained_config(path, **overrides).replace(lora=lora)
    if base is None:
        plain = _load_plain(path, mesh, rules, **{**overrides, "param_dtype": cfg.dtype})
        base = nnx.to_pure_dict(nnx.state(plain, nnx.Param))
    return add_adapters(base, cfg, mesh, rules, seed)


def load_sharing_base(paths: dict[str, str], mesh: Mesh, rules: sharding.ShardingRules,
                      lora: LoRAConfig | None = None, seed: int = 0, **overrides) -> dict[str, Qwen2ForCausalLM]:
    """{name: `load_pretrained(path)`} for several models, the i-th seeded `seed + i`. Models with adapters whose
    base is the same (one path, or adapted checkpoints with equal base fingerprints) share one copy of it on the
    device: the base is read once, each model's adapters are its own."""
    models: dict[str, Qwen2ForCausalLM] = {}
    for i, (name, path) in enumerate(paths.items()):
        twin = next((m for n, m in models.items() if m.config.lora.rank and _same_base(paths[n], path)), None)
        base = None if twin is None else lora_lib.split(nnx.state(twin))[0]
        models[name] = load_pretrained(path, mesh, rules, lora, seed + i, base=base, **overrides)
    return models


def _same_base(a, b) -> bool:
    if Path(a).resolve() == Path(b).resolve():
        return True
    fingerprint = base_fingerprint(a)
    return fingerprint is not None and fingerprint == base_fingerprint(b)


def _load_plain(path, mesh: Mesh, rules: sharding.ShardingRules, **overrides) -> Qwen2ForCausalLM:
    if _is_orbax(path):
        return load_model(path, mesh, rules, **overrides)
    return load_hf_model(path, mesh, rules, **overrides)


def _is_orbax(path) -> bool:
    """Whether `path` is an orbax checkpoint of ours (else a Hugging Face directory); neither is a UserError."""
    path = Path(path)
    if is_orbax_checkpoint(path):
        return True
    if (path / "config.json").exists():
        return False
    raise UserError(f"{path}: neither a Hugging Face model directory (config.json) nor an orbax checkpoint")


def read_pretrained_config(path, **overrides) -> Qwen2Config:
    """The config of a model `load_pretrained` would load, read without touching the weights, so inputs can be
    checked against it before a long load."""
    if _is_orbax(path):
        return read_config(path, **overrides)
    return load_hf_config(Path(path) / "config.json", **overrides)
