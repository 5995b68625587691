"""MM-Retinal (MMR): the reference's scripts/mmretinal/run_exp.sh.

  python -m micar_jax.main --config=configs/mmr.py --workdir=runs/mmr
  python -m micar_jax.main --config=configs/mmr.py:tiny   # test-sized model
"""

import ml_collections

from micar_jax import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg="tiny"` shrinks the model to test size."""
  c = defaults.reference_config(
      "mmretinal", num_layers=3, act_fn="gelu", text_seq_len=60, batch_size=32, epochs=100,
      max_patience=50)
  return defaults.apply_arg(c, arg)
