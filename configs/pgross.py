"""PEIR Gross pathology: the reference's scripts/pgross/run_exp.sh.

  python -m micar_jax.main --config=configs/pgross.py --workdir=runs/pgross
"""

import ml_collections

from micar_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """PGROSS settings; `arg="tiny"` shrinks the model for tests."""
  c = defaults.base_config()
  c.dataset = "pgross"
  c.data_dir = "data/pgross"
  c.data.text_seq_len = 30
  c.model.num_layers = 3
  c.model.act_fn = "silu"
  c.train.batch_size = 16
  c.eval.batch_size = 16
  c.train.epochs = 100
  c.train.max_patience = 10
  return defaults.apply_arg(c, arg)
