#!/usr/bin/env bash
# Run one algoforge command on every host of a Cloud TPU pod slice, one process per host, joined by
# jax.distributed (which finds the other hosts by itself on Cloud TPU: no coordinator address needed).
#
#   TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh setup            # clone (REPO, REF) and pip install '.[tpu]'
#   TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh sft --config configs/qwen2p5_coder_7b_instruct.py \
#       --config-arg tpu-v5p-64 --agent planner --workdir gs://BUCKET/runs/coder7b --set planner.train_data=...
#   TPU=... ZONE=... launch/tpu_pod.sh run|rl|eval|generate|convert ...
#
# Every host runs the same command; each reads its share of every batch, writes its part of every checkpoint,
# and only host 0 prints, logs and writes the small files. Paths must be visible from every host (GCS or NFS).
# DIR (default ~/algoforge_jax) is where the repository lives on the hosts.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE to its zone}" "${1:?usage: tpu_pod.sh setup|COMMAND ARGS...}"
dir=${DIR:-'~/algoforge_jax'}
ssh_all() { gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$1"; }
case "$1" in
  setup)
    repo=${REPO:?set REPO to the repository URL to clone} ref=${REF:-main}
    ssh_all "set -e; [ -d $dir ] || git clone $repo $dir; cd $dir && git fetch -q origin && git checkout -q $ref
             python3.11 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e '.[tpu]'
             .venv/bin/python -c 'import jax; print(jax.local_devices())'" ;;
  run|sft|rl|eval|generate|convert|solve)
    printf -v args '%q ' "$@"
    ssh_all "cd $dir && JAX_COMPILATION_CACHE_DIR=$dir/.jax_cache \
             .venv/bin/python -m algoforge_jax --distributed ${args}" ;;
  *) echo "tpu_pod.sh: unknown command '$1' (setup, run, sft, rl, eval, generate, convert, solve)" >&2; exit 2 ;;
esac
