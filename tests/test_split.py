"""Tests for micar_jax.data.prepare.split: index-for-index scikit-learn parity.

Expected values were produced by scikit-learn 1.9.1 `train_test_split` (on a
DataFrame of row numbers) and are pinned here as regression values.
"""

import pytest

from micar_jax import errors
from micar_jax.data.prepare import split


@pytest.mark.parametrize("n,test_size,seed,train,test", [
    (20, 0.2, 9876, [0, 11, 16, 4, 14, 19, 18, 1, 13, 5, 12, 9, 8, 7, 3, 6], [15, 10, 2, 17]),
    (7, 0.5, 9876, [2, 6, 3], [4, 1, 0, 5]),
    (15, 0.66, 1234, [8, 4, 5, 6, 3], [13, 11, 0, 12, 14, 2, 10, 7, 1, 9]),
])
def test_shuffle_split_matches_sklearn(n, test_size, seed, train, test):
  assert split.shuffle_split(n, test_size, seed) == (train, test)


@pytest.mark.parametrize("n,test_size,holdout,seed,expected", [
    (12, 0.2, 0.5, 9876, ([5, 1, 0, 9, 2, 7, 3, 6, 11], [4], [10, 8])),
    (6, 0.2, 0.5, 9876, ([2, 4, 5, 3], [1], [0])),
    (20, 0.3, 0.66, 1234, ([4, 0, 8, 18, 17, 11, 10, 9, 7, 1, 19, 12, 6, 15], [14, 16],
                           [2, 13, 5, 3])),
    (101, 0.3, 0.66, 1234, (
        [4, 85, 10, 94, 84, 99, 36, 7, 77, 57, 78, 21, 18, 71, 87, 59, 22, 6, 44, 8, 41, 16, 45,
         20, 25, 86, 79, 31, 93, 5, 70, 32, 52, 13, 28, 46, 60, 14, 65, 12, 19, 2, 3, 0, 11, 67,
         98, 34, 37, 96, 50, 100, 73, 80, 69, 58, 91, 90, 43, 30, 26, 23, 49, 15, 24, 76, 53, 38,
         83, 47],
        [82, 17, 89, 27, 74, 95, 9, 61, 72, 56],
        [97, 51, 48, 40, 39, 35, 64, 88, 63, 62, 54, 68, 42, 81, 55, 92, 1, 66, 29, 75, 33])),
])
def test_three_way_split_matches_sklearn(n, test_size, holdout, seed, expected):
  parts = split.three_way_split(n, test_size, holdout, seed)
  assert (parts["train"], parts["val"], parts["test"]) == expected


def test_sizes_use_ceil_of_the_test_fraction():
  # COVCTR's 726 rows: ceil(0.2 * 726) = 146 held out, then ceil(0.5 * 146) = 73 test.
  parts = split.three_way_split(726, 0.2, 0.5, 9876)
  assert [len(parts[s]) for s in ("train", "val", "test")] == [580, 73, 73]
  assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(726))


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_few_rows_is_a_user_error(n):
  # scikit-learn refuses these too (an empty part).
  with pytest.raises(errors.UserError, match="cannot split"):
    split.three_way_split(n, 0.2, 0.5, 9876)
