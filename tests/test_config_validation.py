"""Tests for micar_jax.config.validation: every field's range, the relations, the train split."""

import glob
import math
import subprocess
import sys

import ml_collections
import pytest

from micar_jax import errors
from micar_jax.config import defaults, settings
from micar_jax.config import validation as config_validation


def _leaves(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield prefix + key


def test_every_base_config_field_is_a_declared_setting_and_back():
  assert sorted(_leaves(defaults.base_config())) == sorted(s.key for s in settings.SETTINGS)


@pytest.mark.parametrize("path", sorted(glob.glob("configs/*.py")))
def test_every_shipped_config_is_valid(path, load_config):
  for arg in ("", "tiny"):
    config_validation.validate(load_config(f"{path}:{arg}"))


@pytest.mark.parametrize("key,value,message", [
    ("train.epochs", 0, "config train.epochs=0 is invalid: expected an integer >= 1"),
    ("train.batch_size", 0, "config train.batch_size=0 is invalid: expected an integer >= 1"),
    ("train.epochs", True, "config train.epochs=True is invalid: expected an integer >= 1"),
    ("train.epochs", "3", "config train.epochs='3' is invalid: expected an integer >= 1"),
    ("train.lr", 0.0, "config train.lr=0.0 is invalid: expected a finite number > 0"),
    ("train.lr", math.inf, "config train.lr=inf is invalid: expected a finite number > 0"),
    ("train.lr", math.nan, "config train.lr=nan is invalid: expected a finite number > 0"),
    ("model.dropout", 1.0, "model.dropout=1.0 is invalid: expected a finite number in [0, 1)"),
    ("eval.beam_width", 0, "config eval.beam_width=0 is invalid: expected an integer >= 1"),
    ("model.moe_impl", "dense", "config model.moe_impl='dense' is invalid: expected one of "
     "('sort', 'einsum', 'expert_parallel')"),
    ("model.dtype", "float16", "expected one of ('float32', 'bfloat16')"),
    ("eval.decode", "sample", "expected one of ('greedy', 'greedy_uncached', 'beam')"),
    ("data.tokenizer", "bpe", "expected one of ('word', 'sentencepiece')"),
    ("mesh.data", 0, "mesh.data=0 is invalid: expected -1 (fill the devices) or an integer >= 1"),
    ("seed", -1, "config seed=-1 is invalid: expected an integer in [0, 4294967295]"),
    ("data.vocab_path", "/nonexistent/token2id.json",
     "config data.vocab_path='/nonexistent/token2id.json' is invalid: expected an existing path"),
    ("init_from", "/nonexistent/ckpt", "config init_from='/nonexistent/ckpt' is invalid"),
    ("eval.suites", ("coco", "bertscore"), "expected some of"),
    ("eval.explain_heads", -1, "eval.explain_heads=-1 is invalid: expected \"mean\" or an index"),
])
def test_bad_value_is_one_line_naming_key_value_and_range(key, value, message):
  config = defaults.base_config()
  section, _, name = key.rpartition(".")
  if section:  # a rebuilt section takes any type, as a config file's own ConfigDict may
    config[section] = ml_collections.ConfigDict({**config[section].to_dict(), name: value})
  else:
    config[name] = value
  with pytest.raises(config_validation.ConfigError) as caught:
    config_validation.validate(config)
  assert message in str(caught.value) and "\n" not in str(caught.value)
  assert isinstance(caught.value, errors.UserError)


@pytest.mark.parametrize("changes,message", [
    ({"model.top_k": 9}, "config model.top_k=9 exceeds model.num_experts=8"),
    ({"model.d_latent": 700}, "config model.d_latent=700 must equal model.num_heads x"),
    ({"data.resize_size": 200}, "data.resize_size=200 is smaller than the centre crop"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "at most one axis may be -1"),
    ({"mesh.data": 3, "train.batch_size": 32}, "batch_size=32 does not split over the mesh's 3"),
    ({"model.moe_impl": "expert_parallel", "mesh.expert": 3}, "mesh.expert=3 does not divide"),
])
def test_inconsistent_fields_are_one_line(changes, message):
  config = defaults.base_config()
  for key, value in changes.items():
    section, name = key.split(".")
    config[section][name] = value
  with pytest.raises(config_validation.ConfigError, match=message.replace("(", r"\(")):
    config_validation.validate(config)


def test_batch_larger_than_the_train_split_names_the_split_size(tmp_path, tiny_config):
  config = tiny_config(tmp_path, batch_size=1000)  # synthetic train split: 16 rows
  with pytest.raises(config_validation.ConfigError,
                     match=r"^config train.batch_size=1000 is larger than the train split "
                     r"\(16 rows in .*data\)"):
    config_validation.check_train_split(config)
  config.train.keep_last_partial_batch = True
  config_validation.check_train_split(config)
  config.train.batch_size = 16
  config.train.keep_last_partial_batch = False
  config_validation.check_train_split(config)


@pytest.mark.parametrize("override,fragment", [
    ("--config.train.epochs=0", "config train.epochs=0 is invalid: expected an integer >= 1"),
    ("--config.train.batch_size=0", "config train.batch_size=0 is invalid"),
    ("--config.data.vocab_path=/nonexistent/vocab.json", "config data.vocab_path="),
    ("--config.train.batch_size=1000", "is larger than the train split (16 rows in"),
])
def test_cli_refuses_bad_values_in_one_line_before_training(tmp_path, override, fragment):
  out = subprocess.run(
      [sys.executable, "-m", "micar_jax.main", "--config=configs/synthetic.py:tiny",
       f"--workdir={tmp_path / 'w'}", "--config.data.synthetic_sizes=(16,4,4)", override],
      capture_output=True, text=True, timeout=300)
  assert out.returncode == 2, out.stderr
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], out.stderr


@pytest.mark.parametrize("name", ["covctr", "mmr", "pgross", "roco", "iu_xray", "mimic_cxr"])
def test_dataset_configs_start_from_imagenet_and_tiny_from_scratch(name, load_config):
  assert load_config(f"configs/{name}.py").model.vision_init_from == defaults.IMAGENET_RESNET101
  assert load_config(f"configs/{name}.py:tiny").model.vision_init_from == defaults.SCRATCH


def test_synthetic_config_trains_from_scratch(load_config):
  assert load_config("configs/synthetic.py").model.vision_init_from == ""
