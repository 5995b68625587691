# Shared helpers for the launch scripts; sourced, never run.
#
# Every script parses its flags with `parse_flags` (or, for tpu.sh's commands,
# `common_flag`/`take_value` directly), prints or runs
# commands through `run_cmd`, and reports bad input through `die`, so that all
# of them agree on `--flag value` / `--flag=value`, on `--dry-run` output
# (one shell-quoted command per line) and on one-line errors.
# Globals set here are read by the sourcing scripts, hence SC2034.
# shellcheck shell=bash disable=SC2034

PROG="$(basename "$0")"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DRY_RUN=0
PASSTHROUGH=()
EXTRA_ENV=()

# Prints a one-line error and exits 2 (the usual exit code for usage errors).
die() {
  echo "${PROG}: error: $*" >&2
  exit 2
}

# Prints its arguments as one line that a shell reads back as the same words;
# words of only safe characters stay as they are, for readability.
quote() {
  local word out=()
  for word in "$@"; do
    if [[ "${word}" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      out+=("${word}")
    else
      out+=("$(printf '%q' "${word}")")
    fi
  done
  printf '%s\n' "${out[*]}"
}

# Runs a command, or under --dry-run prints it instead.
run_cmd() {
  if ((DRY_RUN)); then
    quote "$@"
  else
    "$@"
  fi
}

# Splits `--flag=value` into `--flag value` and moves everything after `--`
# into PASSTHROUGH; the result is left in FLAGS for `set -- "${FLAGS[@]}"`.
split_args() {
  FLAGS=()
  while (($#)); do
    case "$1" in
      --) shift; PASSTHROUGH=("$@"); return ;;
      --*=*) FLAGS+=("${1%%=*}" "${1#*=}") ;;
      *) FLAGS+=("$1") ;;
    esac
    shift
  done
}

# Sets VALUE to the value of flag $1 given the remaining arguments; dies if
# it is absent (a global, not a subshell, so that `die` ends the script).
take_value() {
  (($# >= 2)) && [[ "$2" != --* ]] || die "$1 needs a value"
  VALUE="$2"
}

# Stores $2 in the variable named after flag $1 (--logs-dir -> LOGS_DIR).
# `tr` rather than ${var^^}, which the bash 3.2 of macOS lacks.
assign_flag() {
  local var="${1#--}"
  var="$(printf '%s' "${var//-/_}" | tr '[:lower:]' '[:upper:]')"
  printf -v "${var}" '%s' "$2"
}

# Dies unless each named variable is non-empty; $1 of each pair is the flag.
require() {
  while (($#)); do
    [[ -n "${!2}" ]] || die "missing required flag $1 (see --help)"
    shift 2
  done
}

# Dies unless $2 (the value of flag $1) is a positive integer.
require_positive_int() {
  [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"
}

# Validates a `--env KEY=VALUE` argument and appends it to EXTRA_ENV.
add_env() {
  [[ "$1" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "--env expects KEY=VALUE, got '$1'"
  EXTRA_ENV+=("$1")
}

# Handles the flags every script shares; returns 1 if $1 is not one of them.
# Sets SHIFT to the number of arguments consumed.
common_flag() {
  SHIFT=1
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --env) take_value "$@"; add_env "$VALUE"; SHIFT=2 ;;
    -h|--help) usage; exit 0 ;;
    *) return 1 ;;
  esac
}

# Parses a script's flags: the shared ones (`common_flag`), the value flags
# matched by the regex alternation $1 (`--a|--b`, each stored by `assign_flag`)
# and the switches matched by $2 (each sets its variable to 1); anything else is
# a one-line error. Everything after `--` lands in PASSTHROUGH.
parse_flags() {
  local values="$1" switches="$2"
  shift 2
  split_args "$@"
  set -- "${FLAGS[@]+"${FLAGS[@]}"}"
  while (($#)); do
    if common_flag "$@"; then shift "${SHIFT}"; continue; fi
    if [[ -n "${switches}" && "$1" =~ ^(${switches})$ ]]; then
      assign_flag "$1" 1
      shift
    elif [[ "$1" =~ ^(${values})$ ]]; then
      take_value "$@"
      assign_flag "$1" "${VALUE}"
      shift 2
    else
      die "unknown argument '$1' (see --help)"
    fi
  done
}

# Environment shared by the GPU launchers, as KEY=VALUE words.
# $1: fraction of GPU memory XLA preallocates.
gpu_env() {
  [[ "$1" =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] ||
    die "--mem-fraction must be a number in (0, 1], got '$1'"
  GPU_ENV=(
    "XLA_PYTHON_CLIENT_MEM_FRACTION=$1"
    # Keeps kernels and collectives in program order on the GPU's queue, as
    # the MaxText GPU recipes do, so the latency-hiding schedule holds.
    "CUDA_DEVICE_MAX_CONNECTIONS=1"
  )
}
