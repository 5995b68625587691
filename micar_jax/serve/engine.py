"""The model behind the web app: a run's best checkpoint, decoding images in batches.

Every input, a test example or an upload, goes through one `Batcher`, whose
batch function runs explain's instrumented greedy decoding once for the
whole batch (one jitted call of shape [b, S, S, 3], or [b, V, S, S, 3] for a
multi-view config's studies, b a power of two up to eval.batch_size, each
compiled once by `warm_up`).
The report is cut at its first `<eos>`: words the reference keeps after it
depend on which other images share the batch (it stops when all rows have
ended), so an image's report would change with the traffic. Cut, it is what
`--mode=predict` writes for that image on its own. With config.eval.decode
other than "greedy" the report comes from predict's generate function and the
words explained are the greedy ones.
The per-word view is `explain.summarise` of the recorded attention and experts.
`load_best` swaps in a newer best checkpoint between two batches (a run that
is still training saves one after each better validation).
"""

import collections
import dataclasses
import io
import threading
from typing import Any, Hashable, Sequence

import ml_collections
import numpy as np
from PIL import Image

from micar_jax import evaluate
from micar_jax.core import run as run_lib
from micar_jax.data import images as images_lib
from micar_jax.inference import explain, explain_figure
from micar_jax.models import partitioning
from micar_jax.serve import batcher as batcher_lib

CACHE_SIZE = 512


@dataclasses.dataclass(frozen=True)
class Decoded:
  """One input's decoding (an image, or a study of V views).

  Attributes:
    report: the report as `--mode=predict` writes it for this input alone.
    crop: uint8 [S, S, 3] the centre crop the network saw ([V, S, S, 3] for a study).
    ids: [T + 1] greedy ids (`<sos>` first).
    cross: [T, L, H, n_img] cross-attention of each step.
    experts: [T, L, top_k] experts each step was routed to.
  """
  report: str
  crop: np.ndarray
  ids: np.ndarray
  cross: np.ndarray
  experts: np.ndarray


class Engine:
  """Decodes images (or studies) for the web app; thread-safe.

  Args:
    config: the run config.
    workdir: the run folder (its best checkpoint, or config.init_from, is used).
    max_wait_s: how long a request waits for others to share its batch.

  Attributes:
    best_step: the step of the best checkpoint served (None: config.init_from's weights).
    num_views: images per input (config.data.num_views).
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, max_wait_s: float):
    self.run = run_lib.Run(config, workdir)
    self.config = self.run.config
    self.num_views = int(self.config.data.num_views)
    self._abstract = self.run.abstract_variables()
    self.best_step: int | None = None
    self._bad_steps: set[int] = set()
    if not self.load_best():
      # No best checkpoint: config.init_from's weights, or the one-line "no best checkpoint yet".
      self.variables = self.run.best_variables()
    mc = self.run.model_config
    self.num_layers, self.num_heads, self.num_experts = mc.num_layers, mc.num_heads, mc.num_experts
    # The view's defaults are explain's settings (checked here, once).
    self.default_layer = str(self.config.eval.explain_layers)
    self.default_head = str(self.config.eval.explain_heads)
    explain.select(self.default_layer, mc.num_layers, "layers")
    explain.select(self.default_head, mc.num_heads, "heads")
    self._generate_fn = None if self.config.eval.decode == "greedy" else self.run.generate_fn()
    self.batcher = batcher_lib.Batcher(
        self._decode_batch, batcher_lib.power_of_two_sizes(int(self.config.eval.batch_size)),
        max_wait_s)
    self._cache: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()
    self._lock = threading.Lock()

  def load_best(self) -> bool:
    """Loads the newest intact best checkpoint if it is newer than the one served.

    The variables are swapped in whole, so a batch runs on one checkpoint; the
    shapes and shardings are the restore target's, so no batch size recompiles.

    Returns:
      Whether a newer checkpoint was loaded (`best_step` is its step).

    Raises:
      checkpointing.CorruptCheckpointError: no best step is intact.
    """
    ckpts = self.run.checkpoints
    # The manager lists the steps it saw when created: the trainer saves new ones since.
    ckpts.best.reload()
    steps = sorted(ckpts.best.all_steps(), reverse=True)
    if not steps or steps[0] in self._bad_steps or (
        self.best_step is not None and steps[0] <= self.best_step):
      return False
    skipped = len(ckpts.unusable)
    restored = ckpts.restore_best(self._abstract)
    bad = {int(u.split(":", 1)[0].split("/")[1]) for u in ckpts.unusable[skipped:]}
    self._bad_steps |= bad
    step = next((s for s in steps if s not in bad), None)
    if restored is None or step is None or (self.best_step is not None and step <= self.best_step):
      return False
    self.variables, self.best_step = restored[0], step
    return True

  def preprocess(self, data: str | bytes | Sequence[str | bytes]) -> np.ndarray:
    """An image (file or encoded bytes) -> float32 [S, S, 3], as predict and explain load it;
    a study (its V views in order) -> float32 [V, S, S, 3].

    Raises:
      images_lib.ImageError: not a decodable image, or a study of the wrong view count.
    """
    if isinstance(data, (str, bytes)):
      return images_lib.load(data, self.config.data.resize_size, self.config.data.image_size,
                             apply_exif_orientation=self.config.data.apply_exif_orientation)
    if len(data) != self.num_views:
      raise images_lib.ImageError(f"a study needs config.data.num_views={self.num_views} "
                                  f"images (one per view), got {len(data)}")
    return np.stack([self.preprocess(view) for view in data])

  def _decode_batch(self, images: np.ndarray, n: int) -> list[Decoded]:
    valid = np.arange(len(images)) < n  # padding rows never delay the batch's stop
    variables = self.variables  # one checkpoint per batch, while `load_best` swaps them
    with partitioning.use_mesh(self.run.mesh, self.run.rules):
      ids, cross, experts = explain.decode_batch(self.run, variables, images, valid)
      report_ids = ids if self._generate_fn is None else evaluate.to_host(self._generate_fn(
          variables, *evaluate.device_images(self.run.put,
                                                  {"images": images, "valid": valid})))
    return [Decoded(self.run.tokenizer.decode_clean(report_ids[i]), explain_figure.unnormalise(images[i]), ids[i],
                    cross[i], experts[i]) for i in range(n)]

  def submit(self, image: np.ndarray):
    """Queues a preprocessed input (`preprocess`'s array); a future of its `Decoded`."""
    return self.batcher.submit(image)

  def remember(self, key: Hashable, value: Any) -> None:
    """Keeps `value` under `key` (the least recently used of CACHE_SIZE entries goes)."""
    with self._lock:
      self._cache[key] = value
      self._cache.move_to_end(key)
      while len(self._cache) > CACHE_SIZE:
        self._cache.popitem(last=False)

  def recall(self, key: Hashable) -> Any:
    """The value remembered under `key`, or None."""
    with self._lock:
      value = self._cache.get(key)
      if value is not None:
        self._cache.move_to_end(key)
      return value

  def view(self, decoded: Decoded, layer: Any, head: Any) -> dict[str, Any]:
    """The per-word view of `decoded`: explain's record for these layer/head settings
    (words, attention [n_words, grid, grid] or [n_words, V, grid, grid] for a study,
    experts [n_words, L, top_k]) plus `generated`, the report as predict writes it.

    Args:
      decoded: an image's decoding.
      layer: "mean" or a decoder layer index (negative counts from the end).
      head: "mean" or a head index.

    Raises:
      errors.UserError: a bad layer or head.
    """
    layer_index = explain.select(layer, self.num_layers, "layers")
    head_index = explain.select(head, self.num_heads, "heads")
    expl = explain.summarise(decoded.ids, decoded.cross, decoded.experts, self.run.tokenizer,
                             layer_index, head_index, self.num_views)
    return dict(explain.to_record(expl), generated=decoded.report,
                layer="mean" if layer_index is None else layer_index,
                head="mean" if head_index is None else head_index,
                num_layers=self.num_layers, num_heads=self.num_heads,
                num_experts=self.num_experts, num_views=self.num_views)

  def warm_up(self, stop: threading.Event | None = None) -> None:
    """Compiles the batch function for every batch size, so no request waits for it.

    Args:
      stop: once set, returns after the compile in progress.
    """
    for batch in self.batcher.sizes:
      if stop is not None and stop.is_set():
        break
      spec = self.run.batch_spec.with_batch_size(batch)
      self._decode_batch(spec.zeros(("images",))["images"], 0)

  def close(self) -> None:
    self.batcher.close()
    self.run.checkpoints.close()


def png_bytes(crop: np.ndarray) -> bytes:
  """uint8 [S, S, 3] -> PNG file bytes."""
  out = io.BytesIO()
  Image.fromarray(crop).save(out, format="PNG")
  return out.getvalue()
