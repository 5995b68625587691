#!/usr/bin/env bash
# Runs every benchmark of docs/performance.md on one GPU within a time budget,
# one JSON per run.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: ${PROG} [options] [-- BENCH_FLAGS...]

Runs \`python -m micar_jax.bench\` once per measurement, in this order, each
writing RESULTS/<run>.json (also part-way, so a run stopped by the budget
keeps what it measured):
  fast       configs/mmr.py:fast (bf16): train images/s at batch 32, peak
             memory, compile time, greedy decoding at batch 32, and a
             profiler trace of the train step (top ops by time)
  fp32       configs/mmr.py: the same in float32 (no trace)
  beam       configs/mmr.py:fast: true beam-3 decoding at batch 128
  moe        configs/mmr.py:fast, E=8 and E=64 x dispatch (sort, sort with the
             Pallas ragged_dot lowering, capacity einsum, expert_parallel):
             train step ms and dropped fraction
  max_batch  configs/mmr.py:fast: the largest training batch that fits
and RESULTS/index.json (exit status and seconds of each run) and
RESULTS/gpu_bench.log (everything the runs printed). All runs share a
persistent XLA compilation cache in WORKDIR/xla_cache, so a shape compiled by
one run loads in the next. A run is started only while more than 20 s of the
budget are left, and is stopped when the budget ends.

Options:
  --runs LIST       comma-separated runs to do, in the order given
                    (default: fast,fp32,beam,moe,max_batch)
  --tiny            test-size model (configs/mmr.py:tiny, float32, 8 tokens,
                    1-2 steps) on whatever jax finds, for CI on a CPU
  --results DIR     where the JSON files go (default: \$OUT if set, else
                    WORKDIR/results)
  --workdir DIR     the run's folder: cache, traces (default: a new
                    folder under \${TMPDIR:-/tmp})
  --budget SECONDS  wall-clock budget for all runs (default: 480)
  --wheels DIR      wheels to install into WORKDIR/site when ml_collections
                    is missing (default: .whl in the repository)
  --mem-fraction F  XLA_PYTHON_CLIENT_MEM_FRACTION (default: 0.95)
  --python PATH     Python interpreter (default: python3)
  --env KEY=VALUE   extra environment variable; repeatable
  --dry-run         print the commands instead of running them
  -h, --help        show this help
BENCH_FLAGS are appended to every run (e.g. --config.model.remat=True).

Example:
  ${PROG} --results /tmp/bench --budget 480
  ${PROG} --runs moe,max_batch --results /tmp/bench
EOF
}

TINY=0
RUNS=fast,fp32,beam,moe,max_batch
RESULTS=""
WORKDIR=""
BUDGET=480
WHEELS="${REPO_ROOT}/.whl"
MEM_FRACTION=0.95
PYTHON=python3

parse_flags "--runs|--results|--workdir|--budget|--wheels|--mem-fraction|--python" "--tiny" "$@"
require_positive_int --budget "${BUDGET}"
IFS=, read -r -a RUN_NAMES <<<"${RUNS}"
for name in "${RUN_NAMES[@]}"; do
  [[ "${name}" =~ ^(fast|fp32|beam|moe|max_batch)$ ]] ||
    die "--runs expects names from fast,fp32,beam,moe,max_batch, got '${name}'"
done
gpu_env "${MEM_FRACTION}"

if [[ -z "${WORKDIR}" ]]; then
  if ((DRY_RUN)); then WORKDIR="${TMPDIR:-/tmp}/micar_gpu_bench"
  else WORKDIR="$(mktemp -d "${TMPDIR:-/tmp}/micar_gpu_bench.XXXXXX")"; fi
fi
RESULTS="${RESULTS:-${OUT:-${WORKDIR}/results}}"
CACHE="${WORKDIR}/xla_cache"
LOG="${RESULTS}/gpu_bench.log"

# The fast run comes first so that the bf16 batch-32 train step is compiled
# cold there (its compile time is the one reported) and loads from the cache
# in the beam and moe runs.
if ((TINY)); then
  # bfloat16 is emulated on CPUs and compiles several times slower: the tiny
  # path checks the plumbing in float32.
  SHAPES=(--config.mesh.num_devices=1 --config.data.text_seq_len=8)
  FP32=(--config=configs/mmr.py:tiny "${SHAPES[@]}")
  FAST=(--config=configs/mmr.py:fast,tiny "${SHAPES[@]}" --config.model.dtype=float32)
  STEPS=(--steps=1 --warmup=0 --decode_repeats=1)
  DECODE_BATCH=2; BEAM_BATCH=2; EXPERTS=2,4; PROFILE_STEPS=1; MOE_STEPS=(--steps=1)
else
  FP32=(--config=configs/mmr.py)
  FAST=(--config=configs/mmr.py:fast)
  STEPS=(--steps=10 --warmup=2 --decode_repeats=3)
  DECODE_BATCH=32; BEAM_BATCH=128; EXPERTS=8,64; PROFILE_STEPS=3; MOE_STEPS=(--steps=3 --warmup=1)
fi
# Sets RUN_FLAGS to run $1's bench flags: the config file first (overrides
# apply to it), then STEPS, then the run's own flags (the last value wins).
run_flags() {
  case "$1" in
    fast) RUN_FLAGS=("${FAST[@]}" "${STEPS[@]}" --decode=greedy "--decode_batch=${DECODE_BATCH}"
                     "--profile_dir=${WORKDIR}/profile" "--profile_steps=${PROFILE_STEPS}") ;;
    fp32) RUN_FLAGS=("${FP32[@]}" "${STEPS[@]}" --decode=greedy "--decode_batch=${DECODE_BATCH}") ;;
    beam) RUN_FLAGS=("${FAST[@]}" "${STEPS[@]}" --steps=1 --warmup=0 --decode=beam
                     "--decode_batch=${BEAM_BATCH}" --config.eval.beam_width=3) ;;
    moe) RUN_FLAGS=("${FAST[@]}" "${STEPS[@]}" --notrain --decode=
                    --moe_variants=sort,sort_pallas,einsum,expert_parallel
                    "--moe_experts=${EXPERTS}" "${MOE_STEPS[@]}") ;;
    max_batch) RUN_FLAGS=("${FAST[@]}" "${STEPS[@]}" --notrain --decode= --max_batch
                          --steps=2 --warmup=1) ;;
  esac
}

if ! ((DRY_RUN)); then
  mkdir -p "${RESULTS}" "${CACHE}"
  : >"${LOG}"
fi
cd "${REPO_ROOT}"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"

# The GPU image has jax, flax, optax and orbax-checkpoint but not ml_collections:
# install carried wheels (see docs/performance.md) into the run's folder.
if ! ((DRY_RUN)) && ! "${PYTHON}" -c "import ml_collections" 2>/dev/null; then
  compgen -G "${WHEELS}/*.whl" >/dev/null ||
    die "ml_collections is not installed and ${WHEELS} holds no wheels (see --help)"
  "${PYTHON}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --target "${WORKDIR}/site" "${WHEELS}"/*.whl >>"${LOG}" 2>&1 ||
    die "installing the wheels in ${WHEELS} failed (see ${LOG})"
  export PYTHONPATH="${PYTHONPATH}:${WORKDIR}/site"
fi

START=${SECONDS}
INDEX=()
for name in "${RUN_NAMES[@]}"; do
  run_flags "${name}"
  left=$((BUDGET - (SECONDS - START)))
  cmd=(env "${GPU_ENV[@]}" "${EXTRA_ENV[@]+"${EXTRA_ENV[@]}"}"
       timeout --kill-after=10 "${left}" "${PYTHON}" -m micar_jax.bench "${RUN_FLAGS[@]}"
       "--compilation_cache=${CACHE}" "--out=${RESULTS}/${name}.json"
       "${PASSTHROUGH[@]+"${PASSTHROUGH[@]}"}")
  if ((DRY_RUN)); then run_cmd "${cmd[@]}"; continue; fi
  if ((left <= 20)); then
    INDEX+=("\"${name}\": {\"status\": \"skipped: ${BUDGET} s budget spent\"}")
    continue
  fi
  echo "== ${name}: $(quote "${cmd[@]}")" >>"${LOG}"
  began=${SECONDS}
  status=0
  "${cmd[@]}" >/dev/null 2>>"${LOG}" || status=$?
  took=$((SECONDS - began))
  case "${status}" in
    0) state="ok" ;;
    124|137) state="stopped at the budget" ;;
    *) state="failed (exit ${status})" ;;
  esac
  echo "== ${name}: ${state} after ${took} s" >>"${LOG}"
  INDEX+=("\"${name}\": {\"status\": \"${state}\", \"seconds\": ${took}}")
done
((DRY_RUN)) && exit 0

{
  echo "{"
  for i in "${!INDEX[@]}"; do
    sep=","; ((i == ${#INDEX[@]} - 1)) && sep=""
    echo "  ${INDEX[i]}${sep}"
  done
  echo "}"
} >"${RESULTS}/index.json"
echo "${PROG}: results in ${RESULTS} ($((SECONDS - START)) s)"
