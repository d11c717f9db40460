"""AlgoForge with Qwen2.5-Coder-7B-Instruct as both Planner and Coder: full fine-tuning, SFT then collaborative RL.

Variants (`--config-arg`): `8xh100` (default, one node of 8 x 80 GB), `8xh200` (8 x 141 GB), `tpu-v5p-64`
(32 chips of 95 GB, 8 hosts), and `1xh100-lora`: both agents on ONE 80 GB GPU, rank-64 adapters on one shared
frozen bf16 base (32 GiB at peak; the README's LoRA section has the commands). Get the weights once, then on a GPU node (`pip install -e '.[cuda]'`):

    huggingface-cli download Qwen/Qwen2.5-Coder-7B-Instruct --local-dir models/Qwen2.5-Coder-7B-Instruct
    launch/gpu_node.sh sft --config configs/qwen2p5_coder_7b_instruct.py --config-arg 8xh100 --agent planner \\
        --workdir runs/coder7b --set planner.train_data=data/planner.jsonl
    launch/gpu_node.sh sft --config configs/qwen2p5_coder_7b_instruct.py --config-arg 8xh100 --agent coder \\
        --workdir runs/coder7b --set coder.train_data=data/coder.jsonl

and on a pod slice (paths on GCS or NFS, visible from every host):

    TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh sft --config configs/qwen2p5_coder_7b_instruct.py \\
        --config-arg tpu-v5p-64 --agent planner --workdir gs://BUCKET/runs/coder7b \\
        --set planner.init=gs://BUCKET/models/Qwen2.5-Coder-7B-Instruct --set planner.train_data=gs://...

Settings: bf16 compute over fp32 master weights and AdamW moments; SFT at lr 1e-5 (warmup 30, cosine to 10%),
64 rows a step on GPUs (128 on the pod), one row per device per micro-batch. RL (`rollout_shape`, carried by the
RL config once `algoforge rl` lands): lr 1e-6, 16 problems a step (32 on the pod) x 4 plans x 4 programs, KL to
the frozen start. Rows are 1024 tokens on 80 GB GPUs and 2048 on H200 and v5p: the model keeps every layer's
attention scores for the backward pass (20 GiB a 1024-token row, 65 GiB a 2048-token one), so that is what the
budget allows; per-layer rematerialisation will lift it to 4k. `tests/test_configs.py` prints the memory table of
every variant (also in the README); all fit with fsdp x tensor sharding alone, no offload or bf16 moments needed.
"""

from algoforge_jax import paper_configs
from algoforge_jax.config import Config
from algoforge_jax.memory import RolloutShape
from algoforge_jax.sharding import MeshConfig

MODEL = "models/Qwen2.5-Coder-7B-Instruct"  # HF directory (or orbax checkpoint) both agents start from
# variant -> (mesh, SFT rows a step, tokens a row, RL problems a step); the first is the default
VARIANTS = {
    "8xh100": (MeshConfig(fsdp=4, tensor=2), 64, 1024, 16),
    "8xh200": (MeshConfig(fsdp=4, tensor=2), 64, 2048, 16),
    "tpu-v5p-64": (MeshConfig(fsdp=8, tensor=4), 128, 2048, 32),
    "1xh100-lora": (MeshConfig(fsdp=1), 64, 1024, 8),  # LoRA: both agents on one 80 GB GPU
}


def get_config(arg: str | None = None) -> Config:
    return paper_configs.full_finetune("qwen2.5-coder-7b-instruct", MODEL, VARIANTS, arg)


def rollout_shape(arg: str | None = None) -> RolloutShape:
    return paper_configs.rollout_shape(VARIANTS, arg)
