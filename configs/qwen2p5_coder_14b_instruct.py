"""AlgoForge with Qwen2.5-Coder-14B-Instruct as both Planner and Coder: full fine-tuning, SFT then collaborative RL.

Variants (`--config-arg`): `8xh200` (default, one node of 8 x 141 GB) and `tpu-v5p-64` (32 chips of 95 GB,
8 hosts). Not 8 x H100: two 14B agents with fp32 AdamW, references, a sampler copy and one 1024-token row of
activations need ~105 GiB a device there. The LoRA variants `1xh200-lora` and `1xh100-lora` put both agents on
ONE GPU instead: rank-64 adapters on one shared frozen bf16 base (59 GiB at peak; see the README's LoRA section).
Get the weights once, then on a GPU node (`pip install -e '.[cuda]'`):

    huggingface-cli download Qwen/Qwen2.5-Coder-14B-Instruct --local-dir models/Qwen2.5-Coder-14B-Instruct
    launch/gpu_node.sh sft --config configs/qwen2p5_coder_14b_instruct.py --config-arg 8xh200 --agent planner \\
        --workdir runs/coder14b --set planner.train_data=data/planner.jsonl
    launch/gpu_node.sh sft --config configs/qwen2p5_coder_14b_instruct.py --config-arg 8xh200 --agent coder \\
        --workdir runs/coder14b --set coder.train_data=data/coder.jsonl

and on a pod slice (paths on GCS or NFS, visible from every host):

    TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh sft --config configs/qwen2p5_coder_14b_instruct.py \\
        --config-arg tpu-v5p-64 --agent planner --workdir gs://BUCKET/runs/coder14b \\
        --set planner.init=gs://BUCKET/models/Qwen2.5-Coder-14B-Instruct --set planner.train_data=gs://...

Settings: bf16 compute over fp32 master weights and AdamW moments; SFT at lr 1e-5 (warmup 30, cosine to 10%),
64 rows a step on GPUs (128 on the pod), one row per device per micro-batch. RL (`rollout_shape`, carried by the
RL config once `algoforge rl` lands): lr 1e-6, 16 problems a step (32 on the pod) x 4 plans x 4 programs, KL to
the frozen start. Rows are 1024 tokens: the model keeps every layer's attention scores for the backward pass
(43 GiB a 1024-token row, 86 GiB a 1536-token one); per-layer rematerialisation will lift it. `tests/test_configs.py`
prints the memory table of each variant (also in the README); both fit with fsdp x tensor sharding alone.
"""

from algoforge_jax import paper_configs
from algoforge_jax.config import Config
from algoforge_jax.memory import RolloutShape
from algoforge_jax.sharding import MeshConfig

MODEL = "models/Qwen2.5-Coder-14B-Instruct"  # HF directory (or orbax checkpoint) both agents start from
# variant -> (mesh, SFT rows a step, tokens a row, RL problems a step); the first is the default
VARIANTS = {
    "8xh200": (MeshConfig(fsdp=4, tensor=2), 64, 1024, 16),
    "tpu-v5p-64": (MeshConfig(fsdp=8, tensor=4), 128, 1024, 32),
    "1xh200-lora": (MeshConfig(fsdp=1), 64, 1024, 8),  # LoRA: both agents on one 141 GB GPU
    "1xh100-lora": (MeshConfig(fsdp=1), 64, 1024, 8),  # LoRA: both agents on one 80 GB GPU
}


def get_config(arg: str | None = None) -> Config:
    return paper_configs.full_finetune("qwen2.5-coder-14b-instruct", MODEL, VARIANTS, arg)


def rollout_shape(arg: str | None = None) -> RolloutShape:
    return paper_configs.rollout_shape(VARIANTS, arg)
