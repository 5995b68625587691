"""ModelConfig: the hashable model hyper-parameters, each declared here once.

Every field but the few `_derived_fields` is the `config.model` setting of the
same name, declared with `setting(...)`: its default, a one-line doc and what it
accepts, as plain data. `config.settings` builds the config's `model.*`
settings (checks, docs/configuration.md rows, switches) from these fields, so a
new block hyper-parameter is a field here plus its use in the block.

models/ does not import the config package, and this module imports no jax
when it loads: loading a config reads these declarations.
"""

import dataclasses
from typing import Any

import ml_collections

from micar_jax import errors


@dataclasses.dataclass(frozen=True)
class Declared:
  """What one `config.model` setting is for and accepts, as plain data.

  `config.settings` turns it into the setting's check, its docs row and, with
  `switch`, its switch-table row.

  Attributes:
    doc: one line on what it does.
    kind: the accepted type: int, float (an int is accepted too), str or bool.
    lo: a number's lower bound (None: unbounded); `lo_open` excludes it.
    hi: a number's upper bound (None: unbounded); `hi_open` excludes it.
    lo_open: the value must be > lo, not >= lo.
    hi_open: the value must be < hi, not <= hi.
    choices: the accepted values: a tuple, or "package.module.NAME", a table the
      models keep (its keys or items), read when a value is first checked, since
      those modules import jax.
    switch: set for a deviation from the reference (whose value is the
      default): the alternatives, as the switch table shows them.
    switch_note: shown after the reference value in the switch table.
  """
  doc: str
  kind: type
  lo: float | None = None
  hi: float | None = None
  lo_open: bool = False
  hi_open: bool = False
  choices: tuple[Any, ...] | str | None = None
  switch: str | None = None
  switch_note: str = ""


def setting(default: Any, doc: str, *, kind: type | None = None, lo: float | None = None,
            hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
            choices: tuple[Any, ...] | str | None = None, compute_only: bool = False,
            switch: str | None = None, switch_note: str = "") -> Any:
  """Declares a field as the `config.model` setting of its name (see `Declared`).

  Args:
    default: the base config's value (the reference's unless `switch` says otherwise).
    doc: one line on what it does.
    kind: the accepted type; the default's type when not given.
    lo: see `Declared`.
    hi: see `Declared`.
    lo_open: see `Declared`.
    hi_open: see `Declared`.
    choices: see `Declared`.
    compute_only: the field changes how the model runs, not its parameters, so
      it may differ between runs that share a checkpoint (see
      `checkpointing.run_config_of`).
    switch: see `Declared`.
    switch_note: see `Declared`.

  Returns:
    The dataclass field.
  """
  declared = Declared(doc, type(default) if kind is None else kind, lo, hi, lo_open, hi_open,
                      choices, switch, switch_note)
  return dataclasses.field(default=default,
                           metadata={"setting": declared, "compute_only": compute_only})


def declared(field: dataclasses.Field) -> Declared | None:
  """The setting a `ModelConfig` field declares; None for a derived field."""
  return field.metadata.get("setting")


# Keyword-only, so fields keep their order while derived ones (no default) sit
# among the declared ones.
@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """The hashable model hyper-parameters (a static argument of jitted functions).

  `from_config` reads each declared field by name from `config.model`; the
  derived fields (no default) come from `_derived_fields`.
  """

  vocab_size: int
  max_len: int
  stage_sizes: tuple[int, ...]
  resnet_width: int = setting(
      64, "Stem width of the ResNet (64 in torchvision; stage widths are 1x,2x,4x,8x).", lo=1)
  d_v: int = setting(2048, "FPN / fusion channel width d_v (visual token size).", lo=1)
  pool_size: int = setting(
      7, "Side of the adaptive average pool grid; tokens = pool_size**2.", lo=1)
  num_views: int
  d_model: int = setting(512, "Transformer width.", lo=1)
  d_latent: int = setting(
      768, "Latent attention width (q, k, v each d_latent, split over heads).", lo=1)
  num_heads: int = setting(8, "Attention heads.", lo=1)
  qk_nope_dim: int = setting(48, "Per-head channels without rotary embedding.", lo=0)
  qk_rope_dim: int = setting(
      48, "Per-head channels of the rope branch (only the first half is rotated).", lo=0)
  rope_theta: float = setting(10000.0, "RoPE base frequency.", lo=0, lo_open=True)
  d_ff: int = setting(2048, "SwiGLU hidden width (encoder FFN and each expert).", lo=1)
  num_layers: int = setting(3, "Encoder blocks = decoder blocks.", lo=1)
  act_fn: str = setting("gelu", "Activation (gelu is exact).",
                        choices="micar_jax.models.layers.ACTIVATIONS")
  attention_dropout: float = setting(
      0.12, "Dropout on attention probabilities.", lo=0, hi=1, hi_open=True, compute_only=True)
  dropout: float = setting(
      0.1, "Dropout on embeddings, FFN / expert outputs and the fusion MLP.",
      lo=0, hi=1, hi_open=True, compute_only=True)
  num_experts: int = setting(8, "Experts per MoE layer.", lo=1)
  top_k: int = setting(2, "Experts per token.", lo=1)
  moe_combine: str = setting(
      "sum", '"sum": unweighted sum of the k experts (reference); "weighted": gate-weighted.',
      choices="micar_jax.models.routing.COMBINES", switch='`"weighted"` (gate-weighted)')
  moe_aux_loss: str = setting(
      "entropy",
      '"entropy": sum(p_mean*log p_mean) over all tokens (reference); "switch": E*sum(f*P).',
      choices="micar_jax.models.routing.AUX_LOSSES", switch='`"switch"` (E·Σ f·P)')
  capacity_factor: float = setting(
      -1.0, "Expert capacity factor; <= 0 means dropless (every routed token is computed).",
      compute_only=True, switch="e.g. `1.25` (token dropping, counted)",
      switch_note="(dropless)")
  moe_impl: str = setting(
      "sort",
      "MoE dispatch; expert_parallel shards experts over mesh.expert (must divide num_experts).",
      choices="micar_jax.models.moe.DISPATCH", compute_only=True,
      switch='`"einsum"` (capacity buffers), `"expert_parallel"` (shard_map all-to-all)',
      switch_note="(ragged_dot)")
  dtype: str = setting(
      "float32", "Compute dtype; bfloat16 keeps params, norms and softmax in float32.",
      choices=("float32", "bfloat16"), compute_only=True,
      switch='`"bfloat16"` (fp32 params, norms, softmax)')
  remat: bool = setting(False, "Rematerialise blocks in the backward pass to save memory.",
                        compute_only=True, switch="`True`")
  # Compute-only: a checkpoint of either layout restores into both (block_layout).
  scan_blocks: bool = setting(
      True, "Run each ResNet stage's repeated bottleneck blocks 1..n-1 (n >= 3) as one scan: "
      "stacked variables, one compiled block body (faster compiles, same results).",
      compute_only=True)

  @property
  def compute_dtype(self) -> Any:
    """`dtype` as a numpy dtype, the one blocks compute in."""
    # Imported here: loading a config reads this module and must not pull in jax.
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
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
  # Imported here: the ResNet needs jax, which loading a config does not.
  from micar_jax.models import resnet  # pylint: disable=g-import-not-at-top
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
