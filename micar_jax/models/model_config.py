"""ModelConfig: the hashable model hyper-parameters, read from the config by name.

`config.settings.SETTINGS` is the one place that declares every model setting,
its default, check and doc; this dataclass only names the settings the model
reads (and marks those that do not shape parameters), so blocks can take it
whole. (models/ does not import the config package.)
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
import ml_collections

from micar_jax import errors
from micar_jax.models import resnet


def _compute_only() -> Any:
  """Marks a field that changes how the model runs, not its parameters.

  Such fields may differ between runs that share a checkpoint (see
  `checkpointing.run_config_of`).
  """
  return dataclasses.field(metadata={"compute_only": True})


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The hashable model hyper-parameters (a static argument of jitted functions).

  Fields carry no defaults: each is read by name from `config.model` (the
  defaults live in `config.settings.SETTINGS`), except the few `_derived_fields`.
  """

  vocab_size: int
  max_len: int
  stage_sizes: tuple[int, ...]
  resnet_width: int
  d_v: int
  pool_size: int
  num_views: int
  d_model: int
  d_latent: int
  num_heads: int
  qk_nope_dim: int
  qk_rope_dim: int
  rope_theta: float
  d_ff: int
  num_layers: int
  act_fn: str
  attention_dropout: float = _compute_only()
  dropout: float = _compute_only()
  num_experts: int
  top_k: int
  moe_combine: str
  moe_aux_loss: str
  capacity_factor: float = _compute_only()
  moe_impl: str = _compute_only()
  dtype: str = _compute_only()
  remat: bool = _compute_only()

  @property
  def compute_dtype(self) -> Any:
    """`dtype` as a numpy dtype, the one blocks compute in."""
    return jnp.dtype(self.dtype)

  @classmethod
  def compute_only_fields(cls) -> frozenset[str]:
    """Names of the fields that do not shape parameters."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("compute_only"))

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int | None = None
                  ) -> "ModelConfig":
    """Builds the model config; `vocab_size` overrides config.model.vocab_size."""
    values = _derived_fields(config, vocab_size)
    for f in dataclasses.fields(cls):
      if f.name not in values:
        values[f.name] = config.model[f.name]
    return cls(**values)


def _derived_fields(config: ml_collections.ConfigDict, vocab_size: int | None) -> dict[str, Any]:
  """The ModelConfig fields that are not a `config.model` value of the same name."""
  m = config.model
  stages = tuple(m.resnet_stages) or resnet.RESNET_STAGES.get(m.resnet_depth)
  if stages is None:
    raise errors.ConfigError(f"unknown resnet_depth {m.resnet_depth}; expected one of "
                             f"{sorted(resnet.RESNET_STAGES)} or set model.resnet_stages")
  v = vocab_size or m.vocab_size
  if not v:
    raise errors.ConfigError("model.vocab_size is 0 and no tokenizer gave a vocabulary size "
                             "(pass --config.model.vocab_size=N)")
  return {"vocab_size": int(v), "max_len": config.data.text_seq_len,
          "stage_sizes": tuple(stages), "num_views": config.data.num_views}
