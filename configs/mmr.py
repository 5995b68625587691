"""MM-Retinal (MMR): the reference's scripts/mmretinal/run_exp.sh.

  python -m micar_jax.main --config=configs/mmr.py --workdir=runs/mmr
  python -m micar_jax.main --config=configs/mmr.py:tiny   # test-sized model
"""

import ml_collections

from micar_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """MMR settings; `arg="tiny"` shrinks the model for tests."""
  c = defaults.base_config()
  c.dataset = "mmretinal"
  c.data_dir = "data/mmretinal"
  c.data.text_seq_len = 60
  c.model.num_layers = 3
  c.model.act_fn = "gelu"
  c.train.batch_size = 32
  c.eval.batch_size = 32
  c.train.epochs = 100
  c.train.max_patience = 50
  return defaults.apply_arg(c, arg)
