"""The base configuration that every `configs/<dataset>.py` starts from, and its variants.

Every setting, its default, check and doc is declared once in `settings.SETTINGS`
(values are the reference's shared settings; dataset files override what differs).
"""

import ml_collections

from micar_jax import errors
from micar_jax.config import settings
from micar_jax.data import registry

# Vocabulary size where neither the config nor a tokenizer gives one (MMR's order):
# the benchmark and the planner need shapes before any data exists.
DEFAULT_VOCAB = 2046

# Declared with the setting they are values of (model.vision_init_from).
IMAGENET_RESNET101 = settings.IMAGENET_RESNET101
SCRATCH = settings.SCRATCH


def base_config() -> ml_collections.ConfigDict:
  """Returns the configuration shared by all datasets (the MMR values)."""
  return settings.build()


def reference_config(dataset: str, *, num_layers: int, act_fn: str, text_seq_len: int,
                     batch_size: int, epochs: int, max_patience: int) -> ml_collections.ConfigDict:
  """The base config with a run script's per-dataset settings (docs/reference_model.md §6)."""
  c = base_config()
  c.dataset = dataset
  c.model.vision_init_from = IMAGENET_RESNET101
  c.data.num_views = registry.DATASETS[dataset].num_views
  c.data_dir = f"data/{dataset}"
  c.data.text_seq_len = text_seq_len
  c.model.num_layers = num_layers
  c.model.act_fn = act_fn
  c.train.batch_size = c.eval.batch_size = batch_size
  c.train.epochs = epochs
  c.train.max_patience = max_patience
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to the test size: stages (1,1,1,1), width 8, 32 px, from scratch.

  No ImageNet start: ResNet-101 weights do not fit the shrunken backbone.
  """
  c.model.vision_init_from = SCRATCH
  c.data.image_size = 32
  c.data.resize_size = 36
  c.model.resnet_stages = (1, 1, 1, 1)
  c.model.resnet_width = 8
  c.model.d_v = 32
  c.model.pool_size = 7
  c.model.d_model = 32
  c.model.d_latent = 56
  c.model.num_heads = 4
  c.model.qk_nope_dim = 6
  c.model.qk_rope_dim = 8
  c.model.d_ff = 64
  c.model.num_layers = 1
  c.model.num_experts = 4
  c.train.batch_size = 4
  c.eval.batch_size = 4
  return c


def apply_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the `configs/x.py:ARG` variant; "" keeps c, "tiny" shrinks it."""
  if arg in (None, ""):
    return c
  if arg == "tiny":
    return tiny(c)
  raise errors.ConfigError(f"unknown config variant {arg!r}; expected '' or 'tiny'")
