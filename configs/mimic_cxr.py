"""MIMIC-CXR in R2Gen's format, with R2Gen's published settings.

  python -m micar_jax.main --config=configs/mimic_cxr.py --workdir=runs/mimic_cxr
"""

import ml_collections

from micar_jax.config import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg="tiny"` shrinks the model to test size."""
  c = defaults.reference_config(
      "mimic_cxr", num_layers=3, act_fn="silu", text_seq_len=100, batch_size=16, epochs=30,
      max_patience=50)
  # R2Gen run_mimic_cxr.sh: seed 456789, vocabulary threshold 10, StepLR(1, 0.8).
  c.seed = 456789
  c.data.min_frequency = 10
  c.train.lr_step_epochs = 1
  c.train.gamma = 0.8
  return defaults.apply_arg(c, arg)
