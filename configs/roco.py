"""ROCO radiology: the reference's scripts/roco/run_exp.sh.

  python -m micar_jax.main --config=configs/roco.py --workdir=runs/roco
"""

import ml_collections

from micar_jax.config import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg="tiny"` shrinks the model to test size."""
  c = defaults.reference_config(
      "roco", num_layers=3, act_fn="silu", text_seq_len=60, batch_size=16, epochs=30,
      max_patience=10)
  return defaults.apply_arg(c, arg)
