#!/usr/bin/env bash
# Run one algoforge command on every host of a Cloud TPU pod slice, one process per host.
#
#   TPU=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh generate --model gs://.../ckpt --prompts-file p.jsonl
#
# Assumes the repo is checked out at ~/algoforge_jax on every host with its virtual environment set up
# (README command 1 with jax[tpu] in place of jax[cpu]). jax.distributed.initialize() finds the other hosts by
# itself on Cloud TPU, so no coordinator address is needed. Paths must be visible from every host (GCS or NFS).
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE to its zone}"
printf -v args '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all \
  --command "cd ~/algoforge_jax && .venv/bin/algoforge --distributed ${args}"
