"""COV-CTR chest CT: the reference's scripts/covctr/run_exp.sh.

  python -m micar_jax.main --config=configs/covctr.py --workdir=runs/covctr
"""

import ml_collections

from micar_jax.config import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg="tiny"` shrinks the model to test size."""
  c = defaults.reference_config(
      "covctr", num_layers=2, act_fn="silu", text_seq_len=80, batch_size=16, epochs=100,
      max_patience=50)
  return defaults.apply_arg(c, arg)
