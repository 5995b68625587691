"""Command line: `python -m micar_jax.data.prepare --dataset=NAME --raw_dir=RAW --out_dir=OUT [--strict]`.

RAW is the dataset as downloaded; docs/datasets.md gives, per dataset, where to
get it and the exact files and folders RAW must hold. OUT gets
{train,val,test}.jsonl, images/ and (when rows were left out) skipped.tsv.
`--dataset=synthetic` takes `--sizes=TRAIN,VAL,TEST --seed=N --image_size=PX` instead of --raw_dir.
"""

from absl import flags

from micar_jax import cli, errors
from micar_jax.data import prepare, registry

# The dataset made by a generator; --sizes, --seed and --image_size are its flags.
_GENERATED = next(d for d in registry.DATASETS.values() if d.generated)

_DATASET = flags.DEFINE_enum("dataset", None, list(prepare.DATASETS), "Dataset to prepare.")
_RAW_DIR = flags.DEFINE_string(
    "raw_dir", None, "The dataset as downloaded; the files it must hold, per dataset: "
    "docs/datasets.md.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output folder (must not exist or be empty).")
_STRICT = flags.DEFINE_bool("strict", False, "Fail on the first bad row instead of leaving it out.")
_SIZES = flags.DEFINE_list("sizes", list(map(str, _GENERATED.generated_sizes)),
                          "synthetic: train,val,test examples.")
_SEED = flags.DEFINE_integer("seed", 0, "synthetic: random seed.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "synthetic: image side in pixels.")


def _run() -> prepare.Result:
  if not _DATASET.value or not _OUT_DIR.value:
    raise errors.UserError("--dataset and --out_dir are required")
  if registry.DATASETS[_DATASET.value].generated:
    try:
      sizes = tuple(int(s) for s in _SIZES.value)
    except ValueError:
      sizes = ()
    if len(sizes) != 3 or min(sizes) < 0:
      raise errors.UserError(f"--sizes must be three counts TRAIN,VAL,TEST, got {_SIZES.value}")
    return prepare.prepare_synthetic(_OUT_DIR.value, sizes, _SEED.value, _IMAGE_SIZE.value)
  if not _RAW_DIR.value:
    raise errors.UserError(f"--raw_dir is required for --dataset={_DATASET.value}")
  return prepare.prepare(_DATASET.value, _RAW_DIR.value, _OUT_DIR.value, _STRICT.value)


def main(argv) -> None:
  cli.expect_no_arguments(argv)
  for line in _run().summary:
    print(line)


if __name__ == "__main__":
  cli.run(main)
