"""Memory check before a run: the compiled step's bytes against the free memory."""

import jax
import jax.numpy as jnp
import pytest

from micar_jax import errors
from micar_jax.training import memory_check

GIB = memory_check.GIB


def test_compiled_bytes_count_arguments_outputs_and_temporaries():
  x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
  n = 256 * 256 * 4
  plain = jax.jit(lambda a: a * 2 + 1).lower(x).compile()
  donated = jax.jit(lambda a: a * 2 + 1, donate_argnums=0).lower(x).compile()
  assert memory_check.compiled_bytes(plain) == 2 * n  # argument + output
  # A donated argument's buffer is reused by the output: counted once.
  assert memory_check.compiled_bytes(donated) == n
  # A matmul chain needs its intermediate product as well.
  chain = jax.jit(lambda a: (a @ a) @ a).lower(x).compile()
  assert memory_check.compiled_bytes(chain) >= 3 * n


def test_host_memory_is_read_from_meminfo(tmp_path):
  meminfo = tmp_path / "meminfo"
  meminfo.write_text("MemTotal:       24000000 kB\nMemAvailable:    8000000 kB\n")
  assert memory_check.host_available_bytes(str(meminfo)) == 8000000 * 1024
  status = tmp_path / "status"
  status.write_text("Name:\tpython\nVmRSS:\t  1500000 kB\n")
  assert memory_check.process_rss_bytes(str(status)) == 1500000 * 1024
  assert memory_check.host_available_bytes(str(tmp_path / "missing")) is None
  assert memory_check.process_rss_bytes() > 0  # this process


def test_cpu_devices_share_the_host_memory():
  est = memory_check.estimate(GIB, jax.devices()[:1] * 4)
  assert est.needed == 4 * GIB and est.pool == "free host RAM"
  assert est.available > 0 and est.in_use > 0
  assert memory_check.describe(est).endswith("GiB free host RAM (this process holds "
                                                f"{est.in_use / GIB:.2f} GiB already)")


@pytest.mark.parametrize("needed, mode, outcome", [
    (1, "refuse", None),  # plenty of room: silent
    (9, "refuse", "warning: the train step needs ~9.00 GiB of 10.0 GiB"),
    (12, "warn", "warning: the train step needs ~12.00 GiB of 10.0 GiB free host RAM: it will "
                 "not fit"),
    (12, "off", None),
])
def test_check_warns_when_tight_and_refuses_when_it_will_not_fit(tmp_path, tiny_config, needed,
                                                                 mode, outcome):
  config = tiny_config(tmp_path)
  config.train.memory_check = mode
  est = memory_check.Estimate(needed * GIB, 10 * GIB, "free host RAM")
  line = memory_check.check(est, config)
  assert line == outcome if outcome is None else line.startswith(outcome)


def test_refusal_is_one_line_with_the_tiny_and_batch_advice(tmp_path, tiny_config):
  config = tiny_config(tmp_path)
  est = memory_check.Estimate(40 * GIB, 10 * GIB, "free host RAM")
  with pytest.raises(errors.UserError) as e:
    memory_check.check(est, config)
  message = str(e.value)
  assert "\n" not in message and "will not fit" in message
  assert "configs/synthetic.py:tiny" in message and "--config.train.batch_size" in message
  config.train.memory_check = "sometimes"
  with pytest.raises(errors.UserError, match="memory_check='sometimes'"):
    memory_check.check(est, config)


def test_training_refuses_a_step_that_cannot_fit(tmp_path, monkeypatch, tiny_config):
  from micar_jax.training import train  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path, max_steps=1)
  monkeypatch.setattr(memory_check, "host_available_bytes", lambda: 1024)
  with pytest.raises(errors.UserError, match="the train step needs .* will not fit"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not list((tmp_path / "run").glob("checkpoints/latest/*"))  # nothing was trained
