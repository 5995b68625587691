"""IU X-ray in R2Gen's format, with R2Gen's published settings.

Both views go through the MSVE and their visual tokens are concatenated
(R2Gen's approach): 2 x 49 image tokens per report.

  python -m micar_jax.main --config=configs/iu_xray.py --workdir=runs/iu_xray
"""

import ml_collections

from micar_jax.config import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg="tiny"` shrinks the model to test size."""
  c = defaults.reference_config(
      "iu_xray", num_layers=3, act_fn="silu", text_seq_len=60, batch_size=16, epochs=100,
      max_patience=50)
  # R2Gen run_iu_xray.sh: seed 9223, vocabulary threshold 3 (the two views come from the registry).
  c.seed = 9223
  return defaults.apply_arg(c, arg)
