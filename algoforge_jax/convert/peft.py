"""An adapted model's adapters as a PEFT LoRA directory (`adapter_config.json` + `adapter_model.safetensors`), which
`peft.PeftModel.from_pretrained(hf_base, DIR)` loads onto the Hugging Face export of the base.

PEFT stores each adapted `nn.Linear` of in -> out features as `lora_A.weight` [R, in] and `lora_B.weight`
[out, R] under the base module's name prefixed `base_model.model.`, with scale lora_alpha / r (rsLoRA off), the
bias staying in the base. Our A [L, in..., R] and B [L, R, out...] are those matrices transposed, one layer
slice each, with the head axes flattened in HF's (head, dim) order: the same layout `convert/hf.py` gives
the kernels.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
from flax import nnx
from tqdm import tqdm

from algoforge_jax.convert.hf import KeyRule, PlannedTensor, TensorSpec, _hf_arrays, write_safetensors
from algoforge_jax.models import lora
from algoforge_jax.models.qwen2 import Qwen2ForCausalLM

ADAPTER_FILE, CONFIG_FILE = "adapter_model.safetensors", "adapter_config.json"
_MODULES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
            "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def _rule(path: str) -> KeyRule:
    """The PEFT name of one stacked adapter matrix, e.g. layers.stacked.self_attn.lora.q.a."""
    *_, target, matrix = path.split(".")
    name = f"base_model.model.model.layers.{{i}}.{_MODULES[target]}.lora_{matrix.upper()}.weight"
    if matrix == "a":  # [in..., R] -> [R, in]
        return KeyRule(name, path, to_hf=lambda w, c: w.reshape(-1, w.shape[-1]).T)
    return KeyRule(name, path, to_hf=lambda w, c: w.reshape(w.shape[0], -1).T)  # [R, out...] -> [out, R]


def peft_config(cfg: lora.LoRAConfig, base_model: str) -> dict:
    """adapter_config.json: the LoraConfig fields that decide what PEFT builds, the rest at PEFT's defaults."""
    alpha = int(cfg.alpha) if float(cfg.alpha).is_integer() else cfg.alpha
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
            "r": cfg.rank, "lora_alpha": alpha, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
            "use_rslora": False, "use_dora": False, "inference_mode": True,
            "target_modules": sorted(_MODULES[t].split(".")[1] for t in cfg.target_names)}


def export_peft(model: Qwen2ForCausalLM, out_dir, *, base_model: str = "", dtype: str | None = None) -> Path:
    """Writes the adapters of `model` as a PEFT directory; `base_model` is recorded as base_model_name_or_path.
    Tensors are gathered one layer slice at a time (a collective on every process), written by process 0."""
    cfg = model.config
    if not cfg.lora.rank:
        raise ValueError("export_peft: the model has no adapters")
    name = dtype or cfg.checkpoint_dtype
    np_dtype = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    tensors = []
    for path, var in nnx.to_flat_state(nnx.state(model, lora.LoRAParam)):
        rule = _rule(".".join(map(str, path)))
        shape = rule.hf_shape(var.shape, cfg)
        tensors += [PlannedTensor(var, rule, i, TensorSpec(n, np_dtype, shape)) for i, n in
                    enumerate(rule.hf_names(var.shape))]
    out_dir = Path(out_dir)
    bar = tqdm(total=len(tensors), desc="exporting adapters", unit="tensor", disable=None, leave=False)
    arrays = _hf_arrays(tensors, cfg, bar)
    if jax.process_index() != 0:
        for _ in arrays:  # join every gather
            pass
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_safetensors(out_dir / ADAPTER_FILE, [t.spec for t in tensors], arrays)
        (out_dir / CONFIG_FILE).write_text(json.dumps(peft_config(cfg.lora, base_model), indent=2) + "\n")
    bar.close()
    return out_dir
