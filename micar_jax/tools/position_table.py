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

import numpy as np
from absl import flags

from micar_jax import cli, errors
from micar_jax.convert import official

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("out", "micar_jax/models/reference_sinusoid_512.npy",
                      "Where to write the [length, d_model] float32 table (.npy).")
  flags.DEFINE_integer("length", 256, "Positions (rows) in the table.")
  flags.DEFINE_integer("d_model", 512, "Model width (columns).")


def main(argv: list[str]) -> None:
  cli.expect_no_arguments(argv)
  table = official.torch_position_table(FLAGS.length, FLAGS.d_model)
  if table is None:
    raise errors.UserError('the table is computed by torch: pip install -e ".[torch]"')
  np.save(FLAGS.out, table)
  print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
  cli.run(main, define_flags)
