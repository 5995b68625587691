"""The official PyTorch `CaptionModel` state dict <-> our {"params", "batch_stats"}.

Names are matched block by block in the unscanned ResNet layout
(`block_layout`); variables cross into the model's layout (scanned when
`model.scan_blocks`) only at this module's boundary.
"""

import math
from typing import Any

import flax.traverse_util
import jax
import ml_collections
import numpy as np

from micar_jax.convert import names
from micar_jax.core import summary, weights
from micar_jax.models import attention, block_layout, transformer
from micar_jax.models import model as model_lib

EMBEDDING = "text_embs.embedding.weight"


def constants(mc: model_lib.ModelConfig) -> dict[str, np.ndarray]:
  """Reference entries that are fixed functions of the config (checked, never loaded)."""
  freqs = attention.rope_frequencies(mc.qk_rope_dim, mc.rope_theta)
  out = {"text_embs.pe.pe": transformer.sinusoidal_table(mc.max_len, mc.d_model)[None]}
  for i in range(mc.num_layers):
    out[f"encoder.layers.{i}.self_attention.rope.freqs"] = freqs
    out[f"decoder.layers.{i}.self_attention.rope.freqs"] = freqs
    out[f"decoder.layers.{i}.gated_fusion.cross_attention.rope.freqs"] = freqs
  return out


def torch_position_table(length: int, d_model: int) -> np.ndarray | None:
  """[length, d_model] float32 computed by torch with the reference's operations, in its
  order and dtypes (architecture/blocks.py, PositionalEmbedding); None without torch.

  torch's float32 exp/sin/cos round differently from numpy's (docs/reference_model.md §13).
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  pos = torch.arange(0, length, dtype=torch.float).unsqueeze(1)
  div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
  pe = torch.zeros(length, d_model)
  pe[:, 0::2] = torch.sin(pos * div_term)
  pe[:, 1::2] = torch.cos(pos * div_term)
  return pe.numpy()


def variable_shapes(mc: model_lib.ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat (collection, module..., leaf) -> shape of the model's variables (no allocation),
  in the unscanned layout (`stage{s}_block{b}`) whatever `mc.scan_blocks` says."""
  flat = flax.traverse_util.flatten_dict(block_layout.unstack(summary.abstract_variables(mc)))
  return {k: tuple(v.shape) for k, v in flat.items()}


def official_state_dict_to_variables(state_dict: dict[str, np.ndarray],
                                     config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Converts the reference model's weights for the model of `config`.

  The vocabulary size comes from the state dict's embedding table, every other
  dimension from `config`. num_layers and text_seq_len (through the PE table) are
  checked against the weights; act_fn leaves no trace in them, so the config
  must name the right one.

  Args:
    state_dict: reference name -> array (e.g. `io.read_state_dict(model_snapshot.pth)`).
    config: the dataset config (configs/<dataset>.py).

  Returns:
    {"params": ..., "batch_stats": ...} of float32 numpy arrays, our layouts (the
    ResNet's blocks stacked when config.model.scan_blocks).

  Raises:
    weights.MismatchError: missing, unexpected or wrongly shaped entries, all listed.
  """
  if EMBEDDING not in state_dict or np.ndim(state_dict[EMBEDDING]) != 2:
    raise weights.MismatchError("not a MicarVLMoE state dict", missing=[EMBEDDING])
  mc = model_lib.ModelConfig.from_config(config, int(np.shape(state_dict[EMBEDDING])[0]))
  flat = names.match_state_dict(
      state_dict, variable_shapes(mc), names.OFFICIAL,
      f"state dict does not fit the {config.dataset} config "
      f"(num_layers={mc.num_layers}, text_seq_len={mc.max_len}, V={mc.vocab_size})",
      constants=constants(mc))
  return block_layout.stack(flax.traverse_util.unflatten_dict(flat), mc)


def variables_to_official_state_dict(variables: dict[str, Any], mc: model_lib.ModelConfig
                                     ) -> dict[str, np.ndarray]:
  """Our variables (either ResNet layout) -> the reference's state dict (names, layouts,
  constants, BN counters)."""
  flat = flax.traverse_util.flatten_dict(
      block_layout.unstack(jax.tree.map(np.asarray, variables), mc))
  state_dict = names.to_state_dict(flat, names.OFFICIAL)
  state_dict.update(constants(mc))
  return state_dict
