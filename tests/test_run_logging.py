"""Run logs after a resume: records after the restored step are dropped, TensorBoard purges them."""

import json
import os
import struct

import ml_collections
import numpy as np
from tensorboardX.proto import event_pb2

from micar_jax.training import run_logging


def write_steps(path, steps, tail=""):
  with open(path, "w") as f:
    f.writelines(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in steps)
    f.write(tail)


def events_in(path):
  """The Event protos of a TFRecord event file (u64 length, u32 crc, data, u32 crc)."""
  data, events, at = open(path, "rb").read(), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    events.append(event_pb2.Event.FromString(data[at + 12:at + 12 + length]))
    at += 12 + length + 4
  return events


def steps_in(path):
  return [json.loads(line)["step"] for line in open(path)]


def test_trim_keeps_records_up_to_the_restored_step_and_drops_a_torn_line(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  write_steps(path, [1, 2, 3, 4, 5, 6], tail='{"step": 7, "lo')
  assert run_logging.trim_records(path, 4) == 3
  assert steps_in(path) == [1, 2, 3, 4]
  assert not os.path.exists(path + ".tmp")


def test_a_resumed_log_appends_after_the_restored_step_with_a_purging_event_file(tmp_path):
  path = tmp_path / "metrics.jsonl"
  write_steps(path, [1, 2, 3, 4, 5])
  log = run_logging.RunLog(str(tmp_path), ml_collections.ConfigDict(), restored_step=2)
  metrics = {"loss": np.float32(np.nan), "ce": 1.0, "aux_loss": 0.0, "z_loss": 0.0,
             "grad_norm": np.float32(np.inf), "expert_load": np.zeros(2),
             "dropped_fraction": np.zeros(1)}
  log.train(3, 0, metrics, {"lr": 1e-4}, 10.0, skipped_steps=1)
  log.close()
  records = [json.loads(line) for line in open(path)]
  assert [r["step"] for r in records] == [1, 2, 3]
  # A skipped (non-finite) step is valid JSON: its non-finite values are null.
  assert records[-1]["loss"] is None and records[-1]["grad_norm"] is None
  assert records[-1]["skipped_steps"] == 1 and records[-1]["ce"] == 1.0
  (name,) = os.listdir(tmp_path / "tensorboard")
  events = events_in(str(tmp_path / "tensorboard" / name))
  # TensorBoard hides older files' events from the first START's step on.
  starts = [e.step for e in events if e.session_log.status == event_pb2.SessionLog.START]
  assert starts == [3]
  scalars = {v.tag: e.step for e in events for v in e.summary.value}
  assert scalars == {"ce": 3, "aux_loss": 3, "z_loss": 3, "lr_lr": 3, "images_per_sec": 3,
                     "skipped_steps": 3}  # the null (non-finite) loss and grad_norm are left out


def test_a_new_run_drops_records_of_a_run_killed_before_its_first_checkpoint(tmp_path):
  path = tmp_path / "metrics.jsonl"
  write_steps(path, [1, 2])
  run_logging.RunLog(str(tmp_path), ml_collections.ConfigDict(), restored_step=0).close()
  assert path.read_text() == ""
