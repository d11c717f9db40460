#!/usr/bin/env bash
# Run one algoforge command as N cooperating JAX processes on this machine (each with D CPU devices): the
# multi-host code paths (sharded load, gathers for export and sampling, orbax from every process) without a pod.
#
#   N=2 D=2 launch/local_processes.sh convert hf-to-orbax --hf DIR --out CKPT
#
# Process 0's stdout is this script's stdout; every process's stderr is prefixed with its rank.
set -euo pipefail
N=${N:-2} D=${D:-2} PORT=${PORT:-$((20000 + RANDOM % 20000))}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
pids=()
for ((i = 0; i < N; i++)); do
  out=/dev/stdout; [ "$i" -eq 0 ] || out=/dev/null
  XLA_FLAGS=--xla_force_host_platform_device_count=$D JAX_PLATFORMS=cpu \
  ALGOFORGE_COORDINATOR_ADDRESS=127.0.0.1:$PORT ALGOFORGE_NUM_PROCESSES=$N ALGOFORGE_PROCESS_ID=$i \
    "$python" -m algoforge_jax --distributed "$@" > "$out" 2> >(sed "s/^/[rank $i] /" >&2) &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
