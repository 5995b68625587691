"""COV-CTR chest CT: the reference's scripts/covctr/run_exp.sh.

  python -m micar_jax.main --config=configs/covctr.py --workdir=runs/covctr
"""

import ml_collections

from micar_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """COVCTR settings; `arg="tiny"` shrinks the model for tests."""
  c = defaults.base_config()
  c.dataset = "covctr"
  c.data_dir = "data/covctr"
  c.data.text_seq_len = 80
  c.model.num_layers = 2
  c.model.act_fn = "silu"
  c.train.batch_size = 16
  c.eval.batch_size = 16
  c.train.epochs = 100
  c.train.max_patience = 50
  return defaults.apply_arg(c, arg)
