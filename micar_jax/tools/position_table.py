"""Writes the reference's sinusoidal position table, computed by torch as the reference does.

  pip install -e ".[torch]"
  python -m micar_jax.tools.position_table --out=micar_jax/models/reference_sinusoid_512.npy

The reference builds its table once on the CPU in float32 torch
(architecture/blocks.py, PositionalEmbedding): exp, sin and cos there are
torch's vectorised float32 functions, which round differently from numpy's in
about a quarter of the entries (up to 7.6e-6). The model reads this file so
its table equals the reference's bit for bit (docs/reference_model.md §13);
torch gives the same bits at every CPU capability level (default, AVX2, AVX512).
"""

import math

import numpy as np
from absl import flags

from micar_jax import cli, errors

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("out", "micar_jax/models/reference_sinusoid_512.npy",
                      "Where to write the [length, d_model] float32 table (.npy).")
  flags.DEFINE_integer("length", 256, "Positions (rows) in the table.")
  flags.DEFINE_integer("d_model", 512, "Model width (columns).")


def torch_table(length: int, d_model: int) -> np.ndarray:
  """[length, d_model] float32: the reference's operations, in its order and dtypes."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise errors.UserError("the table is computed by torch: pip install -e \".[torch]\"") from None
  pos = torch.arange(0, length, dtype=torch.float).unsqueeze(1)
  div_term = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
  pe = torch.zeros(length, d_model)
  pe[:, 0::2] = torch.sin(pos * div_term)
  pe[:, 1::2] = torch.cos(pos * div_term)
  return pe.numpy()


def main(argv: list[str]) -> None:
  cli.expect_no_arguments(argv)
  np.save(FLAGS.out, torch_table(FLAGS.length, FLAGS.d_model))
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  cli.run(main, define_flags)
