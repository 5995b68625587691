#!/usr/bin/env bash
# Creates a Cloud TPU VM, installs micar_jax on every worker, trains, fetches
# the logs and deletes the TPU.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: ${PROG} COMMAND --name NAME --zone ZONE [options] [-- MAIN_FLAGS...]

Commands:
  create   plan the run (below), then create the TPU VM (or a queued
           resource with --queued, then wait until it is ACTIVE)
  setup    copy the code to every worker, make a venv there and
           pip install -e '.[tpu]'
  run      run \`python -m micar_jax.main MAIN_FLAGS...\` on every worker;
           each worker appends its output to ~/micar_logs/HOSTNAME.log
  logs     copy ~/micar_logs of every worker into --logs-dir
  delete   delete the TPU VM (with --queued: the queued resource and its VM)
  all      create, setup, run, then logs and delete even if a step failed

Before create and all, \`python -m micar_jax.plan --require_fit\` compiles the
train step of MAIN_FLAGS' --config and --config.* overrides for the
accelerator type on this machine (needs '.[tpu]' installed here, no TPU) and
refuses a run that would not fit in the chips' memory (exit 2, one line).

Options:
  --name NAME              TPU (and queued resource) name (required)
  --zone ZONE              zone, e.g. us-central2-b (required)
  --project PROJECT        Google Cloud project (default: gcloud's)
  --accelerator-type TYPE  e.g. v4-32, v5litepod-16 (required by create, all)
  --runtime-version V      TPU software version (default: by generation:
                           v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5,
                           v5litepod v2-alpha-tpuv5-lite, else
                           tpu-ubuntu2204-base)
  --queued                 use a queued resource (create, delete, all)
  --spot                   request Spot capacity (create, all)
  --logs-dir DIR           local folder for logs (default: tpu_logs/NAME)
  --keep                   with all: keep the TPU after the run
  --env KEY=VALUE          environment variable for run; repeatable
  --skip-plan              create without planning the run first
  --dry-run                print the plan's summary (as # comments) and the
                           commands instead of running them
  -h, --help               show this help

Example:
  ${PROG} all --name micar-v4 --zone us-central2-b --accelerator-type v4-32 \\
      --queued --spot -- --config=configs/mmr.py --workdir=gs://bucket/run
EOF
}

# Paths on each worker, relative to the home folder that ssh starts in.
REMOTE_DIR=micar_jax
REMOTE_VENV=micar_venv
REMOTE_LOGS=micar_logs
# What `pip install -e .` needs; tests, data and local venvs stay behind.
SOURCES=(pyproject.toml README.md LICENSE micar_jax configs)
# Seconds between checks of a queued resource's state.
POLL_SECONDS=60

COMMAND=""
NAME=""
ZONE=""
PROJECT=""
ACCELERATOR_TYPE=""
RUNTIME_VERSION=""
LOGS_DIR=""
QUEUED=0
SPOT=0
KEEP=0
PLAN=1
# The local Python that has micar_jax and jax[tpu] (for the plan).
PYTHON="${PYTHON:-python3}"

split_args "$@"
set -- "${FLAGS[@]+"${FLAGS[@]}"}"
while (($#)); do
  if common_flag "$@"; then shift "${SHIFT}"; continue; fi
  case "$1" in
    create|setup|run|logs|delete|all)
      [[ -z "${COMMAND}" ]] || die "two commands: ${COMMAND} and $1"
      COMMAND="$1"; shift ;;
    --queued) QUEUED=1; shift ;;
    --spot) SPOT=1; shift ;;
    --keep) KEEP=1; shift ;;
    --skip-plan) PLAN=0; shift ;;
    --name|--zone|--project|--accelerator-type|--runtime-version|--logs-dir)
      take_value "$@"; assign_flag "$1" "${VALUE}"; shift 2 ;;
    --*) die "unknown argument '$1' (see --help)" ;;
    *) die "unknown COMMAND '$1' (create|setup|run|logs|delete|all)" ;;
  esac
done

[[ -n "${COMMAND}" ]] ||
  die "missing COMMAND (create|setup|run|logs|delete|all; see --help)"
require --name NAME --zone ZONE
[[ "${COMMAND}" != create && "${COMMAND}" != all ]] ||
  require --accelerator-type ACCELERATOR_TYPE
if [[ -z "${RUNTIME_VERSION}" ]]; then
  case "${ACCELERATOR_TYPE}" in
    v6e-*) RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    v5p-*) RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v5litepod-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    *) RUNTIME_VERSION=tpu-ubuntu2204-base ;;
  esac
fi
LOGS_DIR="${LOGS_DIR:-tpu_logs/${NAME}}"
LOCATION=(--zone="${ZONE}")
[[ -z "${PROJECT}" ]] || LOCATION+=(--project="${PROJECT}")
CAPACITY=()
if ((SPOT)); then CAPACITY=(--spot); fi

# Runs shell command $1 on every worker at once.
ssh_all() {
  run_cmd gcloud compute tpus tpu-vm ssh "${NAME}" "${LOCATION[@]}" \
    --worker=all --command="$1"
}

# Copies (recursively) between this machine and every worker.
scp_all() {
  run_cmd gcloud compute tpus tpu-vm scp --recurse --worker=all "$@" \
    "${LOCATION[@]}"
}

wait_until_active() {
  local describe=(gcloud compute tpus queued-resources describe "${NAME}"
    "${LOCATION[@]}" --format='value(state.state)')
  if ((DRY_RUN)); then
    quote "${describe[@]}"
    return
  fi
  local state
  while state="$("${describe[@]}")"; do
    case "${state}" in
      ACTIVE) return ;;
      FAILED|SUSPENDED) die "queued resource ${NAME} is ${state}" ;;
    esac
    echo "${PROG}: queued resource ${NAME} is ${state}; waiting" >&2
    sleep "${POLL_SECONDS}"
  done
  die "could not read the state of queued resource ${NAME}"
}

# Compiles the train step for ACCELERATOR_TYPE with the run's config
# (micar_jax.performance.plan) and dies with the plan's one-line reason when it would not
# fit; prints the plan's summary (as comments under --dry-run).
plan_fit() {
  local args=() arg out err rc
  for arg in "${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}"; do
    case "${arg}" in --config=*|--config.*) args+=("${arg}") ;; esac
  done
  if ((${#args[@]} == 0)); then
    echo "${PROG}: no --config=FILE after --, so the run was not planned" >&2
    return
  fi
  err="$(mktemp)"
  rc=0
  out="$(cd "${REPO_ROOT}" && "${PYTHON}" -m micar_jax.plan \
    --topology="${ACCELERATOR_TYPE}" --require_fit "${args[@]}" 2>"${err}")" || rc=$?
  if ((rc)); then
    local reason
    reason="$(grep '^error: ' "${err}" | tail -n 1)"
    rm -f "${err}"
    reason="${reason#error: }"
    die "plan: ${reason:-micar_jax.plan failed (exit ${rc})}; --skip-plan skips the check"
  fi
  rm -f "${err}"
  # The last line is the plan's JSON; the rest is its table.
  if ((DRY_RUN)); then
    printf '%s\n' "${out}" | sed '$d' | sed 's/^/# /'
  else
    printf '%s\n' "${out}" | sed '$d'
  fi
}

create_tpu() {
  if ((PLAN)); then plan_fit; fi
  if ((QUEUED)); then
    run_cmd gcloud compute tpus queued-resources create "${NAME}" \
      --node-id="${NAME}" --accelerator-type="${ACCELERATOR_TYPE}" \
      --runtime-version="${RUNTIME_VERSION}" "${CAPACITY[@]+"${CAPACITY[@]}"}" \
      "${LOCATION[@]}"
    wait_until_active
  else
    run_cmd gcloud compute tpus tpu-vm create "${NAME}" \
      --accelerator-type="${ACCELERATOR_TYPE}" --version="${RUNTIME_VERSION}" \
      "${CAPACITY[@]+"${CAPACITY[@]}"}" "${LOCATION[@]}"
  fi
}

setup_workers() {
  local sources=() path
  for path in "${SOURCES[@]}"; do
    [[ ! -e "${REPO_ROOT}/${path}" ]] || sources+=("${REPO_ROOT}/${path}")
  done
  ssh_all "mkdir -p ${REMOTE_DIR}"
  scp_all "${sources[@]}" "${NAME}:${REMOTE_DIR}"
  # Ubuntu images may lack the venv module; install it only when missing.
  ssh_all "set -euo pipefail; cd ${REMOTE_DIR}; \
[ -x ../${REMOTE_VENV}/bin/python ] || python3 -m venv ../${REMOTE_VENV} || \
{ sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && \
python3 -m venv ../${REMOTE_VENV}; }; \
../${REMOTE_VENV}/bin/pip install -q -U pip; \
../${REMOTE_VENV}/bin/pip install -q -e '.[tpu]'"
}

run_main() {
  local main
  main="$(quote env "${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}" \
    "../${REMOTE_VENV}/bin/python" -m micar_jax.main \
    "${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}")"
  ssh_all "set -euo pipefail; mkdir -p ${REMOTE_LOGS}; cd ${REMOTE_DIR}; \
${main} 2>&1 | tee -a \"../${REMOTE_LOGS}/\$(hostname).log\""
}

fetch_logs() {
  run_cmd mkdir -p "${LOGS_DIR}"
  scp_all "${NAME}:${REMOTE_LOGS}" "${LOGS_DIR}"
}

delete_tpu() {
  if ((QUEUED)); then
    # --force also deletes the TPU VM the queued resource holds.
    run_cmd gcloud compute tpus queued-resources delete "${NAME}" --force \
      --quiet "${LOCATION[@]}"
  else
    run_cmd gcloud compute tpus tpu-vm delete "${NAME}" --quiet "${LOCATION[@]}"
  fi
}

# After `all` has created the TPU, an exit for any reason (a failed step,
# Ctrl-C) still saves the logs and stops the billing.
finish_all() {
  local rc=$?
  trap - EXIT
  set +e
  fetch_logs
  ((KEEP)) || delete_tpu
  exit "${rc}"
}

case "${COMMAND}" in
  create) create_tpu ;;
  setup) setup_workers ;;
  run) run_main ;;
  logs) fetch_logs ;;
  delete) delete_tpu ;;
  all)
    create_tpu
    trap finish_all EXIT
    trap 'exit 130' INT TERM
    setup_workers
    run_main ;;
esac
