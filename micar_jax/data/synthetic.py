"""A seeded synthetic fundus dataset whose reports are a function of the image.

Each image is a fundus-like disc with an optic disc on the nasal side (right of
the image for a right eye) and, in each of four quadrants, optionally 1-3
small or large lesions of one kind (dark red hemorrhages, yellow-white hard
exudates, near-black pigmented lesions). The report names the eye and every
finding in a fixed quadrant order, worded like the cleaned MM-Retinal reports,
so a model can only score well by looking at the image:

  color image of the fundus of the right eye . two small hemorrhages in the
  superior temporal region . one large hard exudate in the inferior nasal region .

The layout is that of a prepared dataset: out_dir/{train,val,test}.jsonl with
`{"image": "images/<name>.png", "report": <text>}` lines (paths relative to
out_dir, so the folder can be moved), images in out_dir/images/.
"""

import json
import os
import shutil

import ml_collections
import numpy as np
from PIL import Image

from micar_jax.data import jsonl, registry

QUADRANTS = ("superior temporal", "inferior temporal", "superior nasal", "inferior nasal")
# name: (singular, plural, RGB colour).
KINDS = (
    ("hemorrhage", "hemorrhages", (140, 10, 10)),
    ("hard exudate", "hard exudates", (255, 250, 210)),
    ("pigmented lesion", "pigmented lesions", (45, 32, 25)),
)  # Colours stay > 20 per channel away from each other, the retina and the disc.
SIZES = (("small", 0.028), ("large", 0.055))  # (word, radius / image side)
COUNT_WORDS = ("one", "two", "three")
# Lesion centres of one quadrant in (temporal->nasal, inferior->superior) units
# of the image side, for the superior nasal quadrant; other quadrants mirror
# them. Spaced so that large lesions, jitter included, never touch each other,
# the optic disc or the macula.
SLOTS = np.array([[0.10, 0.32], [0.25, 0.25], [0.15, 0.12]])
FINDING_PROB = 0.35
FUNDUS_RADIUS, DISC_OFFSET, DISC_RADIUS = 0.45, 0.28, 0.08
RETINA_RGB, DISC_RGB = np.array([190, 78, 36]), np.array([245, 205, 125])


def _sample(rng: np.random.Generator) -> dict:
  """Draws one image's findings: eye side and per-quadrant (kind, size, count)."""
  findings = []
  for q in range(len(QUADRANTS)):
    if rng.random() < FINDING_PROB:
      findings.append((q, int(rng.integers(len(KINDS))), int(rng.integers(len(SIZES))),
                       int(rng.integers(1, 4))))
  return {"right_eye": bool(rng.random() < 0.5), "findings": findings}


def report(spec: dict) -> str:
  """The templated report of a sampled spec (a function of the image content)."""
  eye = "right" if spec["right_eye"] else "left"
  if not spec["findings"]:
    return f"color image of the fundus of the {eye} eye in a normal person ."
  parts = [f"color image of the fundus of the {eye} eye"]
  for q, kind, size, count in spec["findings"]:
    noun = KINDS[kind][0] if count == 1 else KINDS[kind][1]
    parts.append(f"{COUNT_WORDS[count - 1]} {SIZES[size][0]} {noun} in the {QUADRANTS[q]} region")
  return " . ".join(parts) + " ."


def _render(spec: dict, size: int, rng: np.random.Generator) -> np.ndarray:
  """Draws a spec as a uint8 [size, size, 3] image."""
  yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
  centre = 0.5 + rng.uniform(-0.015, 0.015, 2)
  dx, dy = xx - centre[0], yy - centre[1]
  r = np.sqrt(dx**2 + dy**2)
  # Vignetting: the fundus darkens towards its rim.
  shade = np.clip(1.0 - 0.4 * (r / FUNDUS_RADIUS) ** 2, 0, 1) * rng.uniform(0.85, 1.1)
  img = shade[..., None] * RETINA_RGB
  img[r > FUNDUS_RADIUS] = 0
  nasal_sign = 1.0 if spec["right_eye"] else -1.0
  # The macula, a darker spot at the centre.
  img[r < 0.06] *= 0.75
  disc = (dx - nasal_sign * DISC_OFFSET) ** 2 + dy**2 < DISC_RADIUS**2
  img[disc] = DISC_RGB
  for q, kind, size_idx, count in spec["findings"]:
    u_sign = nasal_sign if "nasal" in QUADRANTS[q] else -nasal_sign
    v_sign = -1.0 if "superior" in QUADRANTS[q] else 1.0  # Image rows grow downwards.
    slots = rng.choice(len(SLOTS), count, replace=False)
    radius = SIZES[size_idx][1]
    for s in slots:
      cx = u_sign * SLOTS[s, 0] + rng.uniform(-0.015, 0.015)
      cy = v_sign * SLOTS[s, 1] + rng.uniform(-0.015, 0.015)
      img[(dx - cx) ** 2 + (dy - cy) ** 2 < radius**2] = KINDS[kind][2]
  img += rng.normal(0, 5, img.shape)
  return np.clip(img, 0, 255).astype(np.uint8)


def generate(out_dir: str, sizes: tuple[int, int, int], seed: int, image_size: int) -> None:
  """Writes a synthetic dataset to out_dir atomically (temp dir + rename).

  Args:
    out_dir: destination; must not exist yet (or be an empty folder).
    sizes: examples in (train, val, test).
    seed: the same seed writes byte-identical files.
    image_size: side of the square PNG images.
  """
  out_dir = os.path.abspath(out_dir)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f"{out_dir} already exists and is not empty")
  tmp = jsonl.make_stage_dir(out_dir)
  try:
    os.makedirs(os.path.join(tmp, "images"))
    rng = np.random.default_rng(seed)
    for split, n in zip(registry.SPLITS, sizes):
      lines = []
      for i in range(n):
        spec = _sample(rng)
        name = f"{split}_{i:06d}.png"
        Image.fromarray(_render(spec, image_size, rng)).save(
            os.path.join(tmp, "images", name), compress_level=1)
        lines.append(json.dumps({"image": f"images/{name}", "report": report(spec)}))
      with open(os.path.join(tmp, f"{split}.jsonl"), "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    os.rename(tmp, out_dir)
  except OSError:
    shutil.rmtree(tmp, ignore_errors=True)
    # Another process may have finished the same dataset first.
    if not os.path.exists(os.path.join(out_dir, "train.jsonl")):
      raise
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def data_dir_in(workdir: str) -> str:
  """Where a run generates the synthetic dataset when config.data_dir is "": <workdir>/data."""
  return os.path.abspath(os.path.join(workdir, "data"))


def ensure_synthetic(config: ml_collections.ConfigDict) -> None:
  """Generates config.data_dir unless it already holds a dataset.

  Uses config.data.synthetic_sizes, config.seed and config.data.resize_size
  (so the reference resize is a no-op and the crop sees the whole fundus
  when resize_size == image_size).
  """
  if not config.data_dir:
    raise ValueError("config.data_dir is empty: set it (the run sets it to <workdir>/data)")
  if os.path.exists(os.path.join(config.data_dir, "train.jsonl")):
    return
  generate(config.data_dir, tuple(config.data.synthetic_sizes), config.seed,
           config.data.resize_size)
