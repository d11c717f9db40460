#!/usr/bin/env bash
# Run one algoforge command on one multi-GPU host: a single process that drives every GPU it sees (the mesh
# spans them all; `--config-arg 8xh100` / `8xh200` in the paper configs sizes it).
#
#   launch/gpu_node.sh sft --config configs/qwen2p5_coder_7b_instruct.py --config-arg 8xh100 --agent planner \
#       --workdir runs/coder7b --set planner.train_data=PLANNER.jsonl --set planner.init=Qwen2.5-Coder-7B-Instruct
#
# Needs `pip install -e '.[cuda]'` in .venv (jax with its CUDA 12 plugin; '.[cuda13]' for a CUDA 13 driver).
# GPUS=0,1,2,3 picks devices. JAX takes 75% of each GPU by default; the configs' memory budgets plan for 90%,
# so this raises the cap (MEM_FRACTION overrides). Compiled programs are cached in .jax_cache between runs.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
[ -n "${GPUS:-}" ] && export CUDA_VISIBLE_DEVICES=$GPUS
export XLA_PYTHON_CLIENT_MEM_FRACTION=${MEM_FRACTION:-0.92}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$here/.jax_cache}
backend=$("$python" -c 'import jax; print(jax.default_backend())')
[ "$backend" = gpu ] || { echo "gpu_node.sh: JAX's backend is $backend: install '.[cuda]', check nvidia-smi" >&2; exit 1; }
exec "$python" -m algoforge_jax "$@"
