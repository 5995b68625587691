"""Checks every config value at load, so a bad value is one line, not a traceback mid-run.

Each key's type and range or choices is its `settings.SETTINGS` check;
`_relations` holds the checks that involve several fields (top_k <=
num_experts, the head split, the mesh).
`validate` runs both and needs no devices, data or model; `check_train_split`
compares the batch size with the train split's size.

Every failure is a `ConfigError` whose message names the key, its value and
what is expected, e.g.
  `config train.epochs=0 is invalid: expected an integer >= 1`.
"""

from typing import Any, Iterator

import ml_collections

from micar_jax import errors
from micar_jax.config import settings
from micar_jax.data import registry

# The one config error class (errors.py), named here too for this module's callers.
ConfigError = errors.ConfigError


def _lookup(config: ml_collections.ConfigDict, key: str) -> tuple[bool, Any]:
  node: Any = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _check(config: ml_collections.ConfigDict, setting: settings.Setting) -> None:
  present, value = _lookup(config, setting.key)
  if present and not setting.check.accepts(value):
    raise ConfigError(
        f"config {setting.key}={value!r} is invalid: expected {setting.check.expect()}")


def _relations(config: ml_collections.ConfigDict) -> Iterator[str]:
  """One-line problems with combinations of fields."""
  m, train = config.model, config.train
  if m.top_k > m.num_experts:
    yield f"config model.top_k={m.top_k} exceeds model.num_experts={m.num_experts}"
  if m.d_model % m.num_heads:
    yield f"config model.d_model={m.d_model} does not split into model.num_heads={m.num_heads}"
  if m.d_latent != m.num_heads * (m.qk_nope_dim + m.qk_rope_dim):
    yield (f"config model.d_latent={m.d_latent} must equal model.num_heads x (qk_nope_dim + "
           f"qk_rope_dim) = {m.num_heads * (m.qk_nope_dim + m.qk_rope_dim)}")
  if config.data.resize_size < config.data.image_size:
    yield (f"config data.resize_size={config.data.resize_size} is smaller than the centre crop "
           f"data.image_size={config.data.image_size}")
  axes = {a: config.mesh[a] for a in ("data", "fsdp", "expert", "tensor")}
  if list(axes.values()).count(-1) > 1:
    yield f"config mesh ({axes}): at most one axis may be -1"
  if m.moe_impl == "expert_parallel" and axes["expert"] > 0 and m.num_experts % axes["expert"]:
    yield f"config mesh.expert={axes['expert']} does not divide model.num_experts={m.num_experts}"
  shards = axes["data"] * axes["fsdp"] * axes["expert"]
  # Imported here: the batch contract needs jax, which loading a config does not.
  from micar_jax.data import batch_spec  # pylint: disable=g-import-not-at-top
  problem = -1 not in axes.values() and batch_spec.split_problem(
      train.batch_size, shards, f"config train.batch_size={train.batch_size}")
  if problem:
    yield problem
  generated = registry.DATASETS[config.dataset].generated  # the dataset passed its check
  if not config.data_dir and not generated and config.data.source == "jsonl":
    yield "config data_dir is empty; point it at a folder written by micar_jax.data.prepare"


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every value of `config` against its setting's check and the cross-field relations.

  Cheap: reads no data and touches no device. Keys missing from `config`
  (older config files) are not checked; unknown keys are refused when
  overridden on the command line (ml_collections), not here.

  Raises:
    ConfigError: the first invalid value, as one line.
  """
  for setting in settings.SETTINGS:
    _check(config, setting)
  for problem in _relations(config):
    raise ConfigError(problem)


def check_train_split(config: ml_collections.ConfigDict) -> None:
  """Refuses a batch size that gives no training step on the configured train split.

  Reads the split's rows (generating the synthetic dataset if it is not there yet).

  Raises:
    ConfigError: the split is smaller than one batch while the last partial
      batch is dropped (or is empty).
    sources.MissingDataError: the data folder or split is missing.
  """
  from micar_jax.data import sources  # pylint: disable=g-import-not-at-top
  num_rows = len(sources.open_split(config, "train"))
  batch = config.train.batch_size
  if num_rows == 0 or (num_rows < batch and not config.train.keep_last_partial_batch):
    raise ConfigError(
        f"config train.batch_size={batch} is larger than the train split ({num_rows} rows in "
        f"{config.data_dir if config.data.source == 'jsonl' else 'the TFDS dataset'}): no full "
        f"batch per epoch; use a batch size <= {num_rows} or "
        "--config.train.keep_last_partial_batch=True")
