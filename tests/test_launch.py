"""Tests for the launch scripts in launch/, through their --dry-run output.

gcloud, sbatch and srun are shadowed on PATH by stand-ins that record each
call, so a test fails if --dry-run ever runs a command instead of printing it,
and the real (not dry) path can be followed through a failing step. Printed
lines are split into words by bash itself, which checks that the
quoting survives a real shell.
"""

import importlib.util
import json
import pathlib
import subprocess
import sys

import pytest

LAUNCH = pathlib.Path(__file__).resolve().parent.parent / "launch"
SPACED = "--workdir=gs://bucket/my run"
MAIN_FLAGS = ["--", "--config=configs/mmr.py", SPACED, "--config.mesh.fsdp=2"]


@pytest.fixture
def launch(tmp_path):
  """Returns run(script, *args) -> CompletedProcess.

  gcloud, sbatch and srun on PATH are stand-ins that append their command line
  to a file read by `run.calls()`, and exit 0, or 3 when a word of it equals
  `run.fail_on`.
  """
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  calls = tmp_path / "calls"
  fail_on = tmp_path / "fail_on"
  for tool in ("gcloud", "sbatch", "srun"):
    stub = bin_dir / tool
    stub.write_text(
        f'#!/bin/sh\necho "{tool} $*" >> "{calls}"\n'
        f'fail=$(cat "{fail_on}" 2>/dev/null)\n'
        'case " $* " in *" $fail "*) [ -n "$fail" ] && exit 3;; esac\n'
        'exit 0\n')
    stub.chmod(0o755)
  # PYTHON: the interpreter tpu.sh plans runs with (this one, which has micar_jax).
  env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "PYTHON": sys.executable}

  def run(script, *args):
    if run.fail_on:
      fail_on.write_text(run.fail_on)
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args], capture_output=True,
        text=True, env=env, cwd=tmp_path, timeout=600, check=False)

  run.fail_on = ""
  run.calls = lambda: calls.read_text().splitlines() if calls.exists() else []
  return run


def words(line):
  """Splits one printed command line into words the way bash does."""
  out = subprocess.run(
      ["bash", "-c", f"set -- {line}\nprintf '%s\\0' \"$@\""],
      capture_output=True, text=True, check=True)
  return out.stdout.split("\0")[:-1]


def dry_run_lines(run, script, *args):
  """Runs with --dry-run (placed before any `--`); returns stdout's lines."""
  result = run(script, "--dry-run", *args)
  assert run.calls() == [], "--dry-run ran a command"
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""
  return result.stdout.splitlines()


def flag(ws, name):
  """Returns the value of `name=value` among words ws."""
  values = [w.split("=", 1)[1] for w in ws if w.startswith(name + "=")]
  assert len(values) == 1, (name, ws)
  return values[0]


def remote_main_words(command):
  """Words of the `env ... python -m micar_jax.main ...` part of a command."""
  main = command.split("; ")[-1].split(" 2>&1 | tee")[0]
  return words(main)


TPU_ALL = ("all", "--name", "micar-v4", "--zone", "us-central2-b",
           "--accelerator-type=v4-32", "--queued", "--spot",
           "--project", "proj", "--env", "TFDS_DATA_DIR=gs://b/tfds dir", "--skip-plan")


def test_tpu_all_queued_runs_every_step_on_all_workers(launch):
  lines = [words(l) for l in dry_run_lines(launch, "tpu.sh", *TPU_ALL,
                                           *MAIN_FLAGS)]
  assert [ws[:5] if ws[0] == "gcloud" else ws[:2] for ws in lines] == [
      ["gcloud", "compute", "tpus", "queued-resources", "create"],
      ["gcloud", "compute", "tpus", "queued-resources", "describe"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
      ["mkdir", "-p"],
      ["gcloud", "compute", "tpus", "tpu-vm", "scp"],
      ["gcloud", "compute", "tpus", "queued-resources", "delete"],
  ]
  create, _, mkdir, copy, setup, train, _, logs, delete = lines
  assert create[5] == "micar-v4"
  assert flag(create, "--node-id") == "micar-v4"
  assert flag(create, "--runtime-version") == "tpu-ubuntu2204-base"
  assert "--spot" in create
  for ws in lines:
    if ws[0] == "gcloud":
      assert flag(ws, "--zone") == "us-central2-b"
      assert flag(ws, "--project") == "proj"
  for ws in (mkdir, copy, setup, train, logs):
    assert "--worker=all" in ws
  assert "--recurse" in copy and copy[-3] == "micar-v4:micar_jax"
  copied = {pathlib.Path(w).name for w in copy if w.startswith("/")}
  assert {"pyproject.toml", "micar_jax", "configs"} <= copied
  assert not copied & {"tests", ".venv", ".git"}
  setup_cmd = flag(setup, "--command")
  assert "pip install -q -e '.[tpu]'" in setup_cmd
  assert remote_main_words(flag(train, "--command")) == [
      "env", "TFDS_DATA_DIR=gs://b/tfds dir", "../micar_venv/bin/python",
      "-m", "micar_jax.main", *MAIN_FLAGS[1:]]
  assert logs[5:7] == ["--recurse", "--worker=all"]
  assert logs[7:9] == ["micar-v4:micar_logs", "tpu_logs/micar-v4"]
  assert "--force" in delete and "--quiet" in delete


def test_tpu_all_keep_skips_delete(launch):
  lines = dry_run_lines(launch, "tpu.sh", *TPU_ALL, "--keep")
  assert not any(" delete " in l for l in lines)
  assert "micar-v4:micar_logs" in lines[-1]


@pytest.mark.parametrize("keep", [False, True])
def test_tpu_all_fetches_logs_and_deletes_after_a_failed_step(launch, tmp_path,
                                                             keep):
  launch.fail_on = "ssh"
  result = launch("tpu.sh", "all", "--name", "t", "--zone", "z", "--skip-plan",
                  "--accelerator-type", "v4-8", *(["--keep"] if keep else []))
  assert result.returncode == 3
  steps = [call.split()[3:5] for call in launch.calls()]
  assert steps == [["tpu-vm", "create"], ["tpu-vm", "ssh"], ["tpu-vm", "scp"],
                   *([] if keep else [["tpu-vm", "delete"]])]
  assert (tmp_path / "tpu_logs" / "t").is_dir()


@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-32", "tpu-ubuntu2204-base"),
    ("v5litepod-16", "v2-alpha-tpuv5-lite"),
    ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-16", "v2-alpha-tpuv6e"),
])
def test_tpu_create_vm_picks_runtime_by_generation(launch, accelerator,
                                                   runtime):
  (line,) = dry_run_lines(launch, "tpu.sh", "create", "--name", "t", "--skip-plan",
                          "--zone", "z", "--accelerator-type", accelerator)
  ws = words(line)
  assert ws[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "t"]
  assert flag(ws, "--accelerator-type") == accelerator
  assert flag(ws, "--version") == runtime
  assert "--spot" not in ws and not any(w.startswith("--project") for w in ws)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None,
                    reason="libtpu is installed, so the plan compiles instead of failing")
def test_tpu_create_refuses_in_one_line_when_the_plan_cannot_run(launch):
  result = launch("tpu.sh", "create", "--name", "t", "--zone", "z", "--accelerator-type",
                  "v5litepod-8", "--", "--config=configs/mmr.py:tiny", "--workdir=w")
  assert result.returncode == 2 and launch.calls() == []
  (line,) = result.stderr.splitlines()
  assert line.startswith("tpu.sh: error: plan: topology v5litepod-8 needs libtpu")
  assert line.endswith("--skip-plan skips the check")


def test_tpu_create_without_a_config_says_it_did_not_plan(launch):
  result = launch("tpu.sh", "create", "--dry-run", "--name", "t", "--zone", "z",
                  "--accelerator-type", "v5litepod-8")
  assert result.returncode == 0
  assert result.stderr == "tpu.sh: no --config=FILE after --, so the run was not planned\n"
  assert result.stdout.startswith("gcloud compute tpus tpu-vm create t")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="needs libtpu: pip install -e '.[tpu]'")
def test_tpu_dry_run_prints_the_plan_summary_as_comments(launch):
  result = launch("tpu.sh", "create", "--dry-run", "--name", "t", "--zone", "z",
                  "--accelerator-type", "v5litepod-8", "--", "--config=configs/mmr.py:tiny",
                  "--config.data.text_seq_len=8", "--config.train.batch_size=8")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith("# topology  v5litepod-8: 8 x TPU v5 lite")
  assert any(l.startswith("#   ESTIMATE") for l in lines)
  assert lines[-1].startswith("gcloud compute tpus tpu-vm create t")


def test_tpu_runtime_version_flag_overrides_default(launch):
  (line,) = dry_run_lines(launch, "tpu.sh", "create", "--name", "t", "--skip-plan",
                          "--zone", "z", "--accelerator-type", "v5p-8",
                          "--runtime-version", "tpu-ubuntu2204-base")
  assert flag(words(line), "--version") == "tpu-ubuntu2204-base"


def test_tpu_run_and_delete_single_commands(launch):
  (run,) = dry_run_lines(launch, "tpu.sh", "run", "--name", "t", "--zone",
                         "z", *MAIN_FLAGS)
  ws = words(run)
  assert ws[3:6] == ["tpu-vm", "ssh", "t"] and "--worker=all" in ws
  assert remote_main_words(flag(ws, "--command"))[-3:] == MAIN_FLAGS[1:]
  (delete,) = dry_run_lines(launch, "tpu.sh", "delete", "--name", "t",
                            "--zone", "z")
  assert words(delete) == ["gcloud", "compute", "tpus", "tpu-vm", "delete",
                           "t", "--quiet", "--zone=z"]


def test_gpu_local_sets_env_and_passes_flags_through(launch):
  (line,) = dry_run_lines(launch, "gpu_local.sh", "--gpus", "0,2",
                          "--mem-fraction=.9", "--env", "A=b c", *MAIN_FLAGS)
  assert words(line) == [
      "env", "XLA_PYTHON_CLIENT_MEM_FRACTION=.9",
      "CUDA_DEVICE_MAX_CONNECTIONS=1", "CUDA_VISIBLE_DEVICES=0,2", "A=b c",
      "python3", "-m", "micar_jax.main", *MAIN_FLAGS[1:]]


def test_gpu_local_without_gpus_leaves_devices_visible(launch):
  (line,) = dry_run_lines(launch, "gpu_local.sh", "--python", "/v/bin/py")
  ws = words(line)
  assert not any(w.startswith("CUDA_VISIBLE_DEVICES") for w in ws)
  assert ws[-3:] == ["/v/bin/py", "-m", "micar_jax.main"]


def test_slurm_prints_script_and_submit_command(launch, tmp_path):
  lines = dry_run_lines(launch, "slurm.sh", "--nodes", "2",
                        "--gpus-per-node=4", "--partition", "gpu", "--time",
                        "12:00:00", "--account", "acct", "--nccl-ifname",
                        "ib0", *MAIN_FLAGS)
  assert lines[0] == "#!/bin/bash"
  directives = [l for l in lines if l.startswith("#SBATCH")]
  assert directives == [
      "#SBATCH --job-name=micar_jax", "#SBATCH --nodes=2",
      "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=4",
      "#SBATCH --partition=gpu", "#SBATCH --time=12:00:00",
      "#SBATCH --account=acct", "#SBATCH --output=%x-%j.out"]
  exports = dict(l[len("export "):].split("=", 1) for l in lines
                 if l.startswith("export "))
  assert exports["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3"
  assert exports["NCCL_SOCKET_IFNAME"] == "ib0"
  assert "XLA_PYTHON_CLIENT_MEM_FRACTION" in exports
  srun = words(lines[-2])
  assert srun == ["srun", "--nodes=2", "--ntasks-per-node=1",
                  "--gpus-per-node=4", "python3", "-m", "micar_jax.main",
                  *MAIN_FLAGS[1:]]
  assert words(lines[-1]) == ["sbatch", "micar_jax.sbatch"]
  assert not (tmp_path / "micar_jax.sbatch").exists()


def test_slurm_submits_the_script_it_prints(launch, tmp_path):
  args = ("--nodes", "2", "--script-file", "j.sbatch", *MAIN_FLAGS)
  printed = dry_run_lines(launch, "slurm.sh", *args)
  result = launch("slurm.sh", *args)
  assert result.returncode == 0, result.stderr
  assert launch.calls() == ["sbatch j.sbatch"]
  assert (tmp_path / "j.sbatch").read_text().splitlines() == printed[:-1]


def test_slurm_script_is_valid_bash_and_omits_unset_directives(launch):
  lines = dry_run_lines(launch, "slurm.sh", "--nodes", "1", "--job-name",
                        "j", "--script-file", "out/j.sh")
  assert not any(l.startswith(("#SBATCH --partition", "#SBATCH --time",
                               "#SBATCH --account", "#SBATCH --cpus"))
                 for l in lines)
  assert words(lines[-1]) == ["sbatch", "out/j.sh"]
  script = "\n".join(lines[:-1]) + "\n"
  assert subprocess.run(["bash", "-n"], input=script, text=True,
                        check=False).returncode == 0


@pytest.mark.parametrize("script, args, message", [
    ("tpu.sh", [], "missing COMMAND"),
    ("tpu.sh", ["launch"], "unknown COMMAND 'launch'"),
    ("tpu.sh", ["run", "--zone", "z"], "missing required flag --name"),
    ("tpu.sh", ["create", "--name", "t", "--zone", "z"],
     "missing required flag --accelerator-type"),
    ("tpu.sh", ["logs", "--name", "t", "--zone"], "--zone needs a value"),
    ("tpu.sh", ["logs", "--name", "t", "--zone", "z", "--worker=all"],
     "unknown argument '--worker'"),
    ("gpu_local.sh", ["--gpus", "all"], "--gpus expects"),
    ("gpu_local.sh", ["--mem-fraction", "2"], "--mem-fraction must be"),
    ("gpu_local.sh", ["--env", "no_equals"], "--env expects KEY=VALUE"),
    ("slurm.sh", ["--partition", "gpu"], "missing required flag --nodes"),
    ("slurm.sh", ["--nodes", "two"], "--nodes must be a positive integer"),
])
def test_bad_input_gives_one_line_error(launch, script, args, message):
  result = launch(script, "--dry-run", *args)
  assert launch.calls() == []
  assert result.returncode == 2
  assert result.stdout == ""
  assert len(result.stderr.splitlines()) == 1
  assert result.stderr.startswith(f"{script}: error: ")
  assert message in result.stderr


@pytest.mark.parametrize("script", ["tpu.sh", "gpu_local.sh", "slurm.sh"])
def test_help_describes_dry_run(launch, script):
  result = launch(script, "--help")
  assert result.returncode == 0
  assert "--dry-run" in result.stdout and "Example:" in result.stdout


def test_gpu_bench_dry_run_prints_one_bench_per_run_with_cache_and_output(launch):
  lines = dry_run_lines(launch, "gpu_bench.sh", "--workdir", "/w", "--results", "/r",
                        "--budget", "300", "--", "--config.model.remat=True")
  assert [flag(words(line), "--out") for line in lines] == [
      f"/r/{name}.json" for name in ("fast", "fp32", "beam", "moe", "max_batch")]
  for line in lines:
    ws = words(line)
    assert ws[:3] == ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95", "CUDA_DEVICE_MAX_CONNECTIONS=1"]
    assert ws[3:7] == ["timeout", "--kill-after=10", "300", "python3"]
    assert flag(ws, "--compilation_cache") == "/w/xla_cache"
    assert ws[-1] == "--config.model.remat=True"
  fast, fp32, beam, moe, max_batch = (words(line) for line in lines)
  assert flag(fast, "--config") == "configs/mmr.py:fast" and flag(fast, "--profile_dir")
  assert flag(fp32, "--config") == "configs/mmr.py"
  assert flag(beam, "--decode") == "beam" and flag(beam, "--decode_batch") == "128"
  assert flag(moe, "--moe_experts") == "8,64" and "--notrain" in moe
  assert "--max_batch" in max_batch
  assert launch.calls() == []


@pytest.mark.parametrize("args, message", [
    (["--runs", "fast,decode"], "--runs expects names from"),
    (["--budget", "0"], "--budget must be a positive integer"),
    (["--mem-fraction", "1.5"], "--mem-fraction must be"),
])
def test_gpu_bench_bad_input_gives_one_line_error(launch, args, message):
  result = launch("gpu_bench.sh", "--dry-run", *args)
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.splitlines() == [result.stderr.strip()]
  assert message in result.stderr


def run_gpu_bench_tiny(tmp_path, *args):
  """Runs launch/gpu_bench.sh --tiny; returns (results folder, index, log)."""
  results = tmp_path / "results"
  out = subprocess.run(
      ["bash", str(LAUNCH / "gpu_bench.sh"), "--tiny", "--python", sys.executable,
       "--workdir", str(tmp_path / "work"), "--results", str(results), *args],
      capture_output=True, text=True, timeout=600, check=False)
  assert out.returncode == 0, out.stderr
  index = json.loads((results / "index.json").read_text())
  return results, index, (results / "gpu_bench.log").read_text()


def test_gpu_bench_tiny_cpu_path_writes_one_json_per_run(tmp_path):
  """Train + profile, the cached fp32 twin and the batch search, at test size on the CPU."""
  results, index, log = run_gpu_bench_tiny(tmp_path, "--runs", "fast,fp32,max_batch")
  assert {name: run["status"] for name, run in index.items()} == dict.fromkeys(
      ("fast", "fp32", "max_batch"), "ok"), log
  fast, fp32, max_batch = (json.loads((results / f"{name}.json").read_text())
                           for name in index)
  assert fast["config"]["stage_sizes"] == [1, 1, 1, 1] and fast["device"]["platform"] == "cpu"
  assert fast["train"]["images_per_s"] > 0 and fast["train"]["peak_memory_bytes"] is None
  assert "unavailable" in fast["train"]["peak_memory_note"]
  assert fast["train"]["profile"]["ops"] and fast["decode"]["greedy"]["batch_size"] == 2
  # The fp32 run's shapes equal the tiny fast run's (float32 there): served by the cache.
  assert not fast["train"]["compile_cache_hit"] and fp32["train"]["compile_cache_hit"]
  assert max_batch["max_batch"]["largest_batch"] is None
  assert "unavailable" in max_batch["max_batch"]["note"]
  assert list((tmp_path / "work" / "xla_cache").iterdir())


@pytest.mark.slow
def test_gpu_bench_tiny_runs_every_measurement(tmp_path):
  results, index, log = run_gpu_bench_tiny(tmp_path, "--budget", "900")
  assert all(run["status"] == "ok" for run in index.values()), log
  assert list(index) == ["fast", "fp32", "beam", "moe", "max_batch"]
  beam = json.loads((results / "beam.json").read_text())
  assert beam["decode"]["beam"]["beam_width"] == 3 and beam["train"]["compile_cache_hit"]
  moe = json.loads((results / "moe.json").read_text())["moe"]
  assert moe["sort_pallas"] == {"skipped": "GPU only (backend: cpu)"}
  for variant in ("sort", "einsum", "expert_parallel"):
    assert moe[variant]["E=4"]["step_ms"] > 0 and moe[variant]["step_ratio"] > 0, moe[variant]
  assert moe["sort"]["E=2"]["dropped_fraction"] == 0.0  # sort is dropless
