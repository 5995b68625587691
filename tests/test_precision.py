"""The dtype comparison tool: identical runs agree exactly; bf16 stays close to float32."""

import pytest

from micar_jax import errors
from micar_jax.config import defaults
from micar_jax.tools import precision


def tiny_config(dtype):
  c = defaults.tiny(defaults.base_config())
  c.data.text_seq_len = 8
  c.mesh.num_devices = 1
  c.model.dtype = dtype
  return c


def test_float32_against_itself_differs_by_nothing():
  result = precision.compare(tiny_config("float32"), steps=2)
  assert result["loss"]["float32"] and len(result["loss"]["float32"]) == 2
  assert result["loss_rel_diff"] == [0.0, 0.0]
  assert result["logits_rel_diff"] == {"init": 0.0, "trained": 0.0}
  assert result["argmax_agreement"] == {"init": 1.0, "trained": 1.0}


def test_steps_must_be_positive():
  with pytest.raises(errors.UserError, match="--steps must be >= 1"):
    precision.compare(tiny_config("float32"), steps=0)


@pytest.mark.slow
def test_bfloat16_loss_stays_within_a_tenth_of_a_percent_of_float32():
  result = precision.compare(tiny_config("bfloat16"), steps=3)
  assert result["dtype"] == "bfloat16"
  assert 0 < result["logits_rel_diff"]["init"] < 0.1
  assert all(d < 1e-3 for d in result["loss_rel_diff"])
