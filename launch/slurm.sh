#!/usr/bin/env bash
# Writes an sbatch script for multi-node GPU training and submits it.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: ${PROG} --nodes N [options] [-- MAIN_FLAGS...]

Writes an sbatch script that starts one \`python -m micar_jax.main\` process
per node (srun), each owning all of its node's GPUs, then submits it with
sbatch. jax.distributed.initialize() reads the SLURM_* variables itself.

Options:
  --nodes N              number of nodes (required)
  --gpus-per-node G      GPUs per node (default: 8)
  --partition P          SLURM partition
  --time T               wall-clock limit, e.g. 24:00:00
  --account A            account to charge
  --job-name NAME        job name (default: micar_jax)
  --cpus-per-task C      CPUs per process (grain decoding workers)
  --output PATTERN       log file pattern (default: %x-%j.out)
  --nccl-ifname IFACE    NCCL_SOCKET_IFNAME (default: NCCL's choice)
  --mem-fraction F       XLA_PYTHON_CLIENT_MEM_FRACTION (default: 0.85)
  --python PATH          Python on the nodes (default: python3)
  --env KEY=VALUE        extra environment variable; repeatable
  --script-file PATH     where to write the script (default: ./JOB_NAME.sbatch)
  --dry-run              print the script and the sbatch command instead
  -h, --help             show this help

Example:
  ${PROG} --nodes 2 --gpus-per-node 8 --partition gpu --time 12:00:00 \\
      -- --config=configs/mimic_cxr.py --workdir=/shared/runs/mimic
EOF
}

NODES=""
GPUS_PER_NODE=8
PARTITION=""
TIME=""
ACCOUNT=""
JOB_NAME=micar_jax
CPUS_PER_TASK=""
OUTPUT="%x-%j.out"
NCCL_IFNAME=""
MEM_FRACTION=0.85
PYTHON=python3
SCRIPT_FILE=""

VALUE_FLAGS="--nodes|--gpus-per-node|--partition|--time|--account|--job-name|--cpus-per-task"
VALUE_FLAGS+="|--output|--nccl-ifname|--mem-fraction|--python|--script-file"
parse_flags "${VALUE_FLAGS}" "" "$@"

require --nodes NODES
require_positive_int --nodes "${NODES}"
require_positive_int --gpus-per-node "${GPUS_PER_NODE}"
[[ -z "${CPUS_PER_TASK}" ]] || require_positive_int --cpus-per-task "${CPUS_PER_TASK}"
gpu_env "${MEM_FRACTION}"
SCRIPT_FILE="${SCRIPT_FILE:-${JOB_NAME}.sbatch}"

# jax.distributed.initialize() under SLURM restricts each process to GPU
# $SLURM_LOCALID unless JAX_LOCAL_DEVICE_IDS lists the devices it may use;
# with one process per node that must be all of the node's GPUs.
LOCAL_IDS="$(seq -s, 0 $((GPUS_PER_NODE - 1)))"
JOB_ENV=("${GPU_ENV[@]}" "JAX_LOCAL_DEVICE_IDS=${LOCAL_IDS}" "NCCL_DEBUG=WARN")
[[ -z "${NCCL_IFNAME}" ]] || JOB_ENV+=("NCCL_SOCKET_IFNAME=${NCCL_IFNAME}")
JOB_ENV+=("${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}")

# Prints `#SBATCH --$1=$2` when $2 is set.
directive() {
  [[ -z "$2" ]] || printf '#SBATCH --%s=%s\n' "$1" "$2"
}

sbatch_script() {
  echo "#!/bin/bash"
  directive job-name "${JOB_NAME}"
  directive nodes "${NODES}"
  directive ntasks-per-node 1
  directive gpus-per-node "${GPUS_PER_NODE}"
  directive cpus-per-task "${CPUS_PER_TASK}"
  directive partition "${PARTITION}"
  directive time "${TIME}"
  directive account "${ACCOUNT}"
  directive output "${OUTPUT}"
  echo "set -euo pipefail"
  local kv
  for kv in "${JOB_ENV[@]}"; do
    echo "export ${kv%%=*}=$(quote "${kv#*=}")"
  done
  quote srun --nodes="${NODES}" --ntasks-per-node=1 \
    --gpus-per-node="${GPUS_PER_NODE}" \
    "${PYTHON}" -m micar_jax.main "${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}"
}

if ((DRY_RUN)); then
  sbatch_script
else
  sbatch_script >"${SCRIPT_FILE}"
fi
run_cmd sbatch "${SCRIPT_FILE}"
