"""The datasets micar_jax knows, one entry each: the single place per-dataset facts live.

Every step that differs by dataset reads its entry here: the prepare step (which
loader module reads the published files, or the generator's default split
sizes), the TFDS builder (one config per entry, images per example) and the run
configs (`defaults.reference_config` sets `data.num_views`, which the input
pipeline and the model read). A new dataset is one entry below plus its loader
module in `micar_jax/data/prepare/`, whose `load(request, bad)` returns
split -> examples (see `micar_jax.data.prepare.common.Request`).

This module imports nothing of micar_jax, so configs and every data module can read it.
"""

import dataclasses

# The splits of every prepared dataset, in file and report order.
SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset.

  Attributes:
    name: the `--dataset` / `config.dataset` value and the TFDS config name.
    loader: dotted module whose `load(request, bad)` reads the published files;
      "" for a dataset that is generated rather than read (synthetic).
    num_views: images per example (IU X-ray: frontal + lateral).
    generated_sizes: examples per split a generated dataset makes by default.
  """
  name: str
  loader: str
  num_views: int = 1
  generated_sizes: tuple[int, int, int] | None = None

  @property
  def generated(self) -> bool:
    """Made by a generator on first use (no files to download or prepare)."""
    return self.generated_sizes is not None


DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("covctr", "micar_jax.data.prepare.covctr"),
    Dataset("mmretinal", "micar_jax.data.prepare.mmretinal"),
    Dataset("pgross", "micar_jax.data.prepare.pgross"),
    Dataset("roco", "micar_jax.data.prepare.roco"),
    Dataset("iu_xray", "micar_jax.data.prepare.r2gen", num_views=2),
    Dataset("mimic_cxr", "micar_jax.data.prepare.r2gen"),
    Dataset("synthetic", "", generated_sizes=(480, 64, 64)),
)}
