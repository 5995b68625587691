"""IU X-ray in R2Gen's format, with R2Gen's published settings.

Both views go through the MSVE and their visual tokens are concatenated
(R2Gen's approach): 2 x 49 image tokens per report.

  python -m micar_jax.main --config=configs/iu_xray.py --workdir=runs/iu_xray
"""

import ml_collections

from micar_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """IU X-ray settings (R2Gen run_iu_xray.sh); `arg="tiny"` for tests."""
  c = defaults.base_config()
  c.dataset = "iu_xray"
  c.data_dir = "data/iu_xray"
  c.seed = 9223
  c.data.num_views = 2
  c.data.min_frequency = 3
  c.data.text_seq_len = 60
  c.model.num_layers = 3
  c.model.act_fn = "silu"
  c.train.batch_size = 16
  c.eval.batch_size = 16
  c.train.epochs = 100
  c.train.max_patience = 50
  c.train.weight_decay = 5e-5
  return defaults.apply_arg(c, arg)
