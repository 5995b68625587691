"""ModelConfig: each setting declared on its field, read from the config by name."""

import dataclasses

import pytest

from micar_jax import errors
from micar_jax.config import defaults, settings
from micar_jax.core import checkpointing
from micar_jax.models import model_config, resnet
from micar_jax.models.model_config import ModelConfig

DERIVED = {"vocab_size", "max_len", "stage_sizes", "num_views"}


def test_every_field_but_the_derived_declares_its_setting():
  for f in dataclasses.fields(ModelConfig):
    d = model_config.declared(f)
    if f.name in DERIVED:  # no default: from_config must compute them
      assert d is None and f.default is dataclasses.MISSING, f.name
      continue
    s = settings.BY_KEY[f"model.{f.name}"]
    assert (s.default, s.doc) == (f.default, d.doc), f.name
    assert type(f.default) is d.kind or (d.kind is float and type(f.default) is int), f.name
    assert (s.switch is None) == (d.switch is None), f.name


def test_declarations_are_plain_data():
  for f in dataclasses.fields(ModelConfig):
    d = model_config.declared(f)
    if d is not None:
      assert d.kind in (int, float, str, bool), f.name
      assert d.choices is None or isinstance(d.choices, (tuple, str)), f.name


def test_every_setting_comes_from_the_config():
  c = defaults.tiny(defaults.base_config())
  c.model.d_ff = 96
  c.model.moe_combine = "weighted"
  c.model.remat = True
  mc = ModelConfig.from_config(c, 17)
  for f in dataclasses.fields(ModelConfig):
    if f.name not in DERIVED:
      assert getattr(mc, f.name) == c.model[f.name], f.name
  assert (mc.vocab_size, mc.max_len, mc.stage_sizes, mc.num_views) == (
      17, c.data.text_seq_len, (1, 1, 1, 1), c.data.num_views)
  hash(mc)  # a static argument of jitted functions


def test_stage_sizes_follow_resnet_depth_and_vocab_size_the_config():
  c = defaults.base_config()
  c.model.vocab_size = 40
  mc = ModelConfig.from_config(c)
  assert mc.stage_sizes == resnet.RESNET_STAGES[101] and mc.vocab_size == 40
  c.model.resnet_depth = 34
  with pytest.raises(errors.ConfigError, match="unknown resnet_depth 34"):
    ModelConfig.from_config(c)


def test_run_config_leaves_out_exactly_the_compute_only_fields():
  mc = ModelConfig.from_config(defaults.tiny(defaults.base_config()), 17)
  assert ModelConfig.compute_only_fields() == {
      "attention_dropout", "dropout", "capacity_factor", "moe_impl", "dtype", "remat",
      "scan_blocks"}
  run = checkpointing.run_config_of(mc)
  assert set(run) == {f.name for f in dataclasses.fields(mc)} - mc.compute_only_fields()
  assert run["stage_sizes"] == [1, 1, 1, 1]  # JSON-shaped
  assert checkpointing.run_config_of(dataclasses.replace(mc, dtype="bfloat16", remat=True)) == run
  assert checkpointing.run_config_of(dataclasses.replace(mc, d_ff=96)) != run
