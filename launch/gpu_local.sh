#!/usr/bin/env bash
# Trains on one machine's GPUs from a single process that sees all of them.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: ${PROG} [options] [-- MAIN_FLAGS...]

Runs \`python -m micar_jax.main MAIN_FLAGS...\` in one process that owns every
visible local GPU (no jax.distributed setup is needed on one host).

Options:
  --gpus LIST          comma-separated GPU ids for CUDA_VISIBLE_DEVICES
                       (default: all GPUs)
  --mem-fraction F     XLA_PYTHON_CLIENT_MEM_FRACTION (default: 0.85)
  --python PATH        Python interpreter (default: python3)
  --env KEY=VALUE      extra environment variable; repeatable
  --dry-run            print the command instead of running it
  -h, --help           show this help

Example:
  ${PROG} --gpus 0,1 -- --config=configs/mmr.py --workdir=/tmp/run \\
      --config.mesh.data=-1 --config.mesh.fsdp=2
EOF
}

GPUS=""
MEM_FRACTION=0.85
PYTHON=python3

parse_flags "--gpus|--mem-fraction|--python" "" "$@"

gpu_env "${MEM_FRACTION}"
if [[ -n "${GPUS}" ]]; then
  [[ "${GPUS}" =~ ^[0-9]+(,[0-9]+)*$ ]] ||
    die "--gpus expects comma-separated GPU ids like 0,1, got '${GPUS}'"
  GPU_ENV+=("CUDA_VISIBLE_DEVICES=${GPUS}")
fi

run_cmd env "${GPU_ENV[@]}" "${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}" \
  "${PYTHON}" -m micar_jax.main "${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}"
