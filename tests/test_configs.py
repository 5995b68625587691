"""configs/mmr.py variants: the fast settings, combined with the test size, and bad variants."""

import pytest

from micar_jax import errors
from micar_jax.config import validation as config_validation


def test_fast_is_bf16_compute_with_the_reference_dispatch(load_config):
  base, fast = load_config("configs/mmr.py"), load_config("configs/mmr.py:fast")
  config_validation.validate(fast)
  assert base.model.dtype == "float32" and fast.model.dtype == "bfloat16"
  assert (fast.model.moe_impl, fast.model.capacity_factor, fast.model.remat) == ("sort", -1.0, False)
  # Nothing but the dtype differs from the faithful MMR config.
  fast.model.dtype = "float32"
  assert fast.to_dict() == base.to_dict()


@pytest.mark.parametrize("arg", ["fast,tiny", "tiny,fast"])
def test_fast_combines_with_tiny(arg, load_config):
  c = load_config(f"configs/mmr.py:{arg}")
  config_validation.validate(c)
  assert c.model.dtype == "bfloat16" and c.data.image_size == 32
  assert tuple(c.model.resnet_stages) == (1, 1, 1, 1)


def test_unknown_variant_is_rejected(load_config):
  with pytest.raises(errors.ConfigError, match="unknown config variant 'quick'"):
    load_config("configs/mmr.py:fast,quick")
