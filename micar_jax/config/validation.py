"""Checks every config value at load, so a bad value is one line, not a traceback mid-run.

`RULES` is the declarative table: one `Rule` per field of `defaults.base_config`
(its type and valid range or choices); `_RELATIONS` holds the checks that
involve several fields (top_k <= num_experts, the head split, the mesh).
`validate` runs both and needs no devices, data or model; `check_train_split`
compares the batch size with the train split's size.

Every failure is a `ConfigError` whose message names the key, its value and
what is expected, e.g.
  `config train.epochs=0 is invalid: expected an integer >= 1`.
"""

import dataclasses
import math
import os
from typing import Any, Callable, Iterator

import ml_collections

from micar_jax import errors
from micar_jax.data import registry


class ConfigError(errors.UserError):
  """A config value of the wrong type, out of range, or naming a missing path."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """What one config key accepts.

  Attributes:
    key: dotted path below the config root, e.g. "train.epochs".
    kind: the accepted Python type(s); an int is accepted where float is.
    ok: the value test (after the type test).
    expect: what `ok` accepts, in words, for the error message.
  """
  key: str
  kind: type | tuple[type, ...]
  ok: Callable[[Any], bool]
  expect: str


def _num(key: str, kind: type, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False) -> Rule:
  """A finite int or float in [lo, hi] (either end open or absent)."""
  def ok(v: Any) -> bool:
    return (math.isfinite(v) and (lo is None or (v > lo if lo_open else v >= lo))
            and (hi is None or (v < hi if hi_open else v <= hi)))
  name = "an integer" if kind is int else "a finite number"
  show = str if kind is int else "{:g}".format
  if lo is not None and hi is not None:
    bounds = f"in {'(' if lo_open else '['}{show(lo)}, {show(hi)}{')' if hi_open else ']'}"
  elif lo is not None:
    bounds = f"{'>' if lo_open else '>='} {show(lo)}"
  else:
    bounds = ""
  return Rule(key, (int, float) if kind is float else int, ok, f"{name} {bounds}".strip())


def _choice(key: str, choices: tuple[Any, ...]) -> Rule:
  return Rule(key, type(choices[0]), lambda v: v in choices, f"one of {choices}")


def _flag(key: str) -> Rule:
  return Rule(key, bool, lambda v: True, "True or False")


def _text(key: str) -> Rule:
  return Rule(key, str, lambda v: True, "a string")


def _path(key: str) -> Rule:
  """A file or folder that must exist when set ("" = unset)."""
  return Rule(key, str, lambda v: not v or os.path.exists(os.path.expanduser(v)),
              'an existing path (or "" for none)')


def _mesh_axis(key: str) -> Rule:
  return Rule(key, int, lambda v: v == -1 or v >= 1, "-1 (fill the devices) or an integer >= 1")


def _int_tuple(key: str, length: int | None, expect: str) -> Rule:
  return Rule(key, (tuple, list), lambda v: (length is None or len(v) == length) and all(
      isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in v), expect)


def _index_or_mean(key: str) -> Rule:
  return Rule(key, (str, int), lambda v: v == "mean" or (isinstance(v, int) and v >= 0),
              '"mean" or an index >= 0')


_SUITES = ("reference", "coco", "ratescore")  # metrics.scores.SUITES, without importing the metrics
RULES: tuple[Rule, ...] = (
    _choice("dataset", tuple(registry.DATASETS)),
    _text("data_dir"),
    _num("seed", int, 0, 2**32 - 1),
    _num("data.image_size", int, 1),
    _num("data.resize_size", int, 1),
    _num("data.text_seq_len", int, 2),
    _num("data.min_frequency", int, 1),
    _choice("data.tokenizer", ("word", "sentencepiece")),
    _choice("data.sp_model_type", ("unigram", "bpe")),
    _num("data.sp_vocab_size", int, 1),
    _path("data.vocab_path"),
    _num("data.num_views", int, 1),
    _flag("data.augment"),
    _num("data.worker_count", int, 0),
    _num("data.worker_buffer_size", int, 1),
    _choice("data.source", ("jsonl", "tfds")),
    _text("data.tfds_data_dir"),
    _int_tuple("data.synthetic_sizes", 3, "3 integers >= 1 (train, val, test)"),
    _num("model.vocab_size", int, 0),
    _choice("model.resnet_depth", (50, 101, 152)),
    _int_tuple("model.resnet_stages", None, "() or stage sizes >= 1, e.g. (1, 1, 1, 1)"),
    _num("model.resnet_width", int, 1),
    # Checked when training starts, where a missing folder names the convert command.
    _text("model.vision_init_from"),
    _num("model.d_v", int, 1),
    _num("model.pool_size", int, 1),
    _num("model.d_model", int, 1),
    _num("model.d_latent", int, 1),
    _num("model.num_heads", int, 1),
    _num("model.qk_nope_dim", int, 0),
    _num("model.qk_rope_dim", int, 0),
    _num("model.rope_theta", float, 0, lo_open=True),
    _num("model.d_ff", int, 1),
    _num("model.num_layers", int, 1),
    _choice("model.act_fn", ("silu", "gelu", "selu", "telu")),
    _num("model.attention_dropout", float, 0, 1, hi_open=True),
    _num("model.dropout", float, 0, 1, hi_open=True),
    _num("model.num_experts", int, 1),
    _num("model.top_k", int, 1),
    _choice("model.moe_combine", ("sum", "weighted")),
    _choice("model.moe_aux_loss", ("entropy", "switch")),
    _num("model.router_z_loss_weight", float, 0),
    _num("model.capacity_factor", float),
    _choice("model.moe_impl", ("sort", "einsum", "expert_parallel")),
    _choice("model.dtype", ("float32", "bfloat16")),
    _flag("model.remat"),
    _num("train.batch_size", int, 1),
    _num("train.epochs", int, 1),
    _num("train.max_patience", int, 1),
    _num("train.lr", float, 0, lo_open=True),
    _num("train.v_lr", float, 0),
    _num("train.weight_decay", float, 0),
    _num("train.gamma", float, 0, lo_open=True),
    _num("train.lr_step_epochs", int, 0),
    _num("train.aux_loss_weight", float, 0),
    _num("train.grad_clip", float, 0),
    _num("train.max_steps", int, 0),
    _choice("train.memory_check", ("refuse", "warn", "off")),
    _num("train.log_every", int, 1),
    _num("train.checkpoint_every", int, 1),
    _num("train.skip_nonfinite_steps", int, 0),
    _num("train.max_zero_grad_steps", int, 0),
    _flag("train.keep_last_partial_batch"),
    _text("train.select_suite"),
    _text("train.select_key"),
    _num("eval.batch_size", int, 1),
    _choice("eval.decode", ("greedy", "beam", "greedy_uncached")),
    _num("eval.beam_width", int, 1),
    _num("eval.length_penalty", float),
    _flag("eval.keep_after_eos"),
    Rule("eval.suites", (tuple, list), lambda v: bool(v) and set(v) <= set(_SUITES),
         f"some of {_SUITES}"),
    _text("eval.wordnet_dir"),
    _choice("eval.coco_tokenize", ("whitespace", "jury")),
    _num("eval.meteor_timeout_s", float, 0, lo_open=True),
    _text("eval.ratescore_dir"),
    _choice("eval.rouge_aggregate", ("bootstrap", "mean")),
    _choice("eval.val_loss_mean", ("batch", "token")),
    _index_or_mean("eval.explain_layers"),
    _index_or_mean("eval.explain_heads"),
    _num("eval.explain_max_words", int, 1),
    _num("mesh.num_devices", int, 0),
    _mesh_axis("mesh.data"),
    _mesh_axis("mesh.fsdp"),
    _mesh_axis("mesh.expert"),
    _mesh_axis("mesh.tensor"),
    _num("serve.max_wait_ms", float, 0),
    _num("serve.max_upload_mb", float, 0, lo_open=True),
    _num("serve.max_files", int, 1),
    _path("init_from"),
)


def _lookup(config: ml_collections.ConfigDict, key: str) -> tuple[bool, Any]:
  node: Any = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False, None
    node = node[part]
  return True, node


def _type_ok(value: Any, kind: type | tuple[type, ...]) -> bool:
  kinds = kind if isinstance(kind, tuple) else (kind,)
  if isinstance(value, bool):
    return bool in kinds
  return isinstance(value, kinds)


def _check_rule(config: ml_collections.ConfigDict, rule: Rule) -> None:
  present, value = _lookup(config, rule.key)
  if present and not (_type_ok(value, rule.kind) and rule.ok(value)):
    raise ConfigError(f"config {rule.key}={value!r} is invalid: expected {rule.expect}")


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
  if -1 not in axes.values() and train.batch_size % shards:
    yield (f"config train.batch_size={train.batch_size} does not split over the mesh's {shards} "
           "batch shards (mesh data x fsdp x expert); use a multiple of it")
  if not config.data_dir and config.dataset != "synthetic" and config.data.source == "jsonl":
    yield "config data_dir is empty; point it at a folder written by micar_jax.data.prepare"


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every value of `config` against RULES and the cross-field relations.

  Cheap: reads no data and touches no device. Keys missing from `config`
  (older config files) are not checked; unknown keys are refused when
  overridden on the command line (ml_collections), not here.

  Raises:
    ConfigError: the first invalid value, as one line.
  """
  for rule in RULES:
    _check_rule(config, rule)
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
