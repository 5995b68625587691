"""ROCO radiology: the reference's scripts/roco/run_exp.sh.

  python -m micar_jax.main --config=configs/roco.py --workdir=runs/roco
"""

import ml_collections

from micar_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """ROCO settings; `arg="tiny"` shrinks the model for tests."""
  c = defaults.base_config()
  c.dataset = "roco"
  c.data_dir = "data/roco"
  c.data.text_seq_len = 60
  c.model.num_layers = 3
  c.model.act_fn = "silu"
  c.train.batch_size = 16
  c.eval.batch_size = 16
  c.train.epochs = 30
  c.train.max_patience = 10
  return defaults.apply_arg(c, arg)
