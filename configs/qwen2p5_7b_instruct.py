"""AlgoForge with Qwen2.5-7B-Instruct (the general release) as both Planner and Coder: full fine-tuning, SFT
then collaborative RL.

Variants (`--config-arg`): `8xh100` (default, one node of 8 x 80 GB), `8xh200` (8 x 141 GB), `tpu-v5p-64`
(32 chips of 95 GB, 8 hosts), and `1xh100-lora`: both agents on ONE 80 GB GPU, rank-64 adapters on one shared
frozen bf16 base (32 GiB at peak; the README's LoRA section has the commands). The recipe and where each value
comes from (ours, except GRPO's β = 0.04 and ε = 0.2) are in `algoforge_jax/paper_configs.py`; this file holds the
variant table.

Get the weights once, then on a GPU node (`pip install -e '.[cuda]'`), the stages in order:

    huggingface-cli download Qwen/Qwen2.5-7B-Instruct --local-dir models/Qwen2.5-7B-Instruct
    launch/gpu_node.sh sft --config configs/qwen2p5_7b_instruct.py --config-arg 8xh100 --agent planner \\
        --workdir runs/instruct7b --set planner.train_data=data/planner.jsonl
    launch/gpu_node.sh sft --config configs/qwen2p5_7b_instruct.py --config-arg 8xh100 --agent coder \\
        --workdir runs/instruct7b --set coder.train_data=data/coder.jsonl
    launch/gpu_node.sh rl --config configs/qwen2p5_7b_instruct.py --config-arg 8xh100 --workdir runs/instruct7b \\
        --set rl.problems=data/rl_problems.jsonl --set rl.eval_problems=data/heldout_problems.jsonl
    launch/gpu_node.sh eval --benchmark mbpp --mode planner-coder --workdir runs/instruct7b --dtype bfloat16
    launch/gpu_node.sh report --workdir runs/instruct7b

and on a pod slice (paths on GCS or NFS, visible from every host; `setup` once):

    TPU=my-v5p-64 ZONE=us-east5-a REPO=https://github.com/YOU/algoforge_jax launch/tpu_pod.sh setup
    TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh sft --config configs/qwen2p5_7b_instruct.py \\
        --config-arg tpu-v5p-64 --agent planner --workdir gs://BUCKET/runs/instruct7b \\
        --set planner.init=gs://BUCKET/models/Qwen2.5-7B-Instruct \\
        --set planner.train_data=gs://BUCKET/data/planner.jsonl
    (the same with --agent coder and coder.*, then)
    TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh rl --config configs/qwen2p5_7b_instruct.py \\
        --config-arg tpu-v5p-64 --workdir gs://BUCKET/runs/instruct7b \\
        --set rl.problems=gs://BUCKET/data/rl_problems.jsonl

Memory: `pytest -s -m slow tests/test_configs.py` prints every variant's per-device table for SFT and for the RL
step (two agents' fp32 weights and AdamW moments, two bf16 frozen references, one sampler copy with the KV cache
of the Coder's rollout call, gradients and one micro-batch's activations) and fails if one does not fit. With
`model.remat = "full"` (turned on here, see paper_configs.py) all fit with fsdp x tensor sharding alone: no host
offload or bf16 moments needed.
"""

from algoforge_jax import paper_configs
from algoforge_jax.config import Config
from algoforge_jax.sharding import MeshConfig

MODEL = "models/Qwen2.5-7B-Instruct"  # HF directory (or orbax checkpoint) both agents start from
# variant -> (mesh, SFT rows a step, tokens a row, RL problems a step); the first is the default
VARIANTS = {
    "8xh100": (MeshConfig(fsdp=4, tensor=2), 64, 1024, 16),
    "8xh200": (MeshConfig(fsdp=4, tensor=2), 64, 2048, 16),
    "tpu-v5p-64": (MeshConfig(fsdp=8, tensor=4), 128, 2048, 32),
    "1xh100-lora": (MeshConfig(fsdp=1), 64, 1024, 8),  # LoRA: both agents on one 80 GB GPU
}


def get_config(arg: str | None = None) -> Config:
    return paper_configs.full_finetune("qwen2.5-7b-instruct", MODEL, VARIANTS, arg)

