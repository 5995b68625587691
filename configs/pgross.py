"""PEIR Gross pathology: the reference's scripts/pgross/run_exp.sh.

  python -m micar_jax.main --config=configs/pgross.py --workdir=runs/pgross
"""

import ml_collections

from micar_jax.config import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg="tiny"` shrinks the model to test size."""
  c = defaults.reference_config(
      "pgross", num_layers=3, act_fn="silu", text_seq_len=30, batch_size=16, epochs=100,
      max_patience=10)
  return defaults.apply_arg(c, arg)
