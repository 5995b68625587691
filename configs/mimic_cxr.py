"""MIMIC-CXR in R2Gen's format, with R2Gen's published settings.

  python -m micar_jax.main --config=configs/mimic_cxr.py --workdir=runs/mimic_cxr
"""

import ml_collections

from micar_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """MIMIC-CXR settings (R2Gen run_mimic_cxr.sh); `arg="tiny"` for tests."""
  c = defaults.base_config()
  c.dataset = "mimic_cxr"
  c.data_dir = "data/mimic_cxr"
  c.seed = 456789
  c.data.min_frequency = 10
  c.data.text_seq_len = 100
  c.model.num_layers = 3
  c.model.act_fn = "silu"
  c.train.batch_size = 16
  c.eval.batch_size = 16
  c.train.epochs = 30
  c.train.max_patience = 50
  # R2Gen's MIMIC schedule: StepLR(step_size=1, gamma=0.8).
  c.train.lr_step_epochs = 1
  c.train.gamma = 0.8
  return defaults.apply_arg(c, arg)
