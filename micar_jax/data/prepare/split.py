"""Seeded shuffle splits, index-for-index identical to scikit-learn's `train_test_split`.

The reference preprocessors split with `train_test_split(df, test_size=p,
shuffle=True, random_state=seed)`. For a float `p` scikit-learn's ShuffleSplit
takes `n_test = ceil(p * n)`, `n_train = n - n_test`, draws
`perm = RandomState(seed).permutation(n)` and returns rows `perm[n_test:]`
(train) and `perm[:n_test]` (test), in permutation order. Reproducing that here
keeps the project free of scikit-learn.
"""

import math

import numpy as np

from micar_jax import errors


def shuffle_split(n: int, test_size: float, seed: int) -> tuple[list[int], list[int]]:
  """Splits positions 0..n-1 as `train_test_split(range(n), test_size, random_state=seed)`.

  Args:
    n: number of rows.
    test_size: fraction in (0, 1) of rows that go to the second part.
    seed: the `random_state` integer.

  Returns:
    (train, test) lists of positions, in the order scikit-learn returns them.

  Raises:
    UserError: either part would be empty (scikit-learn raises too).
  """
  if not 0 < test_size < 1:
    raise ValueError(f"test_size must be in (0, 1), got {test_size}")
  # Same float expression as scikit-learn, so the rounding matches exactly.
  n_test = math.ceil(test_size * n)
  n_train = n - n_test
  if n_train <= 0 or n_test <= 0:
    raise errors.UserError(
        f"cannot split {n} rows with test_size={test_size}: one part would be empty")
  perm = np.random.RandomState(seed).permutation(n)
  return perm[n_test:].tolist(), perm[:n_test].tolist()


def three_way_split(n: int, test_size: float, holdout_test_size: float,
                    seed: int) -> dict[str, list[int]]:
  """The reference's two-step split: train vs. held-out, then held-out into val vs. test.

  Args:
    n: number of rows.
    test_size: held-out fraction of all rows (first call).
    holdout_test_size: test fraction of the held-out rows (second call).
    seed: `random_state` of both calls.

  Returns:
    {"train", "val", "test"} -> positions into 0..n-1, in reference row order.
  """
  train, held_out = shuffle_split(n, test_size, seed)
  val, test = shuffle_split(len(held_out), holdout_test_size, seed)
  return {"train": train, "val": [held_out[i] for i in val], "test": [held_out[i] for i in test]}
