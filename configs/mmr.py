"""MM-Retinal (MMR): the reference's scripts/mmretinal/run_exp.sh.

  python -m micar_jax.main --config=configs/mmr.py --workdir=runs/mmr
  python -m micar_jax.main --config=configs/mmr.py:fast     # fastest faithful settings
  python -m micar_jax.main --config=configs/mmr.py:tiny     # test-sized model
  python -m micar_jax.bench --config=configs/mmr.py:fast,tiny

`fast` computes matmuls and convolutions in bfloat16 (parameters, optimizer
state, norms, softmax and the router stay float32) and keeps everything else
faithful: sort + ragged_dot dispatch (dropless, like the reference), no remat.
Its difference from float32 (docs/performance.md, "The fast config") is
measured with `python -m micar_jax.tools.precision --config=configs/mmr.py:fast,tiny`.
"""

import ml_collections

from micar_jax.config import defaults


def fast(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The fastest settings that keep the reference's math: bf16 compute, dropless sort dispatch."""
  c.model.dtype = "bfloat16"
  c.model.moe_impl = "sort"
  c.model.capacity_factor = -1.0
  c.model.remat = False
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` is "", "fast", "tiny" or "fast,tiny" (fast settings at test size)."""
  c = defaults.reference_config(
      "mmretinal", num_layers=3, act_fn="gelu", text_seq_len=60, batch_size=32, epochs=100,
      max_patience=50)
  parts = [p for p in (arg or "").split(",") if p]
  if "fast" in parts:
    c = fast(c)
    parts.remove("fast")
  return defaults.apply_arg(c, ",".join(parts))
