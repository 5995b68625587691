"""Image decoding and the reference's ImageNet preprocessing, without torch.

`preprocess` reproduces torchvision's `ResNet101_Weights.IMAGENET1K_V2.transforms()`
on PIL images: resize the shorter side to `resize_size` (PIL bilinear, which
antialiases), centre-crop `image_size`, scale to [0, 1], normalise with the
ImageNet mean/std. Output is float32 HWC rather than torch's CHW.

`decode` is the one way the project turns a file into pixels (prepare checks,
training, evaluation, predict and explain), so all of them accept and refuse
the same files. It decodes the whole image (a truncated file fails here, not
inside training) and converts every mode to 8-bit RGB:
- 8-bit modes (L, RGB, CMYK, YCbCr, palette without transparency) as PIL's
  `convert("RGB")`, i.e. as the reference reads them;
- modes wider than 8 bits (I;16, I;16B, I, F: 16-bit and float medical
  images) are windowed by their own range, min -> 0 and max -> 255, as medical
  viewers display them; `convert("RGB")` would clip them to almost all white.
  A constant image becomes black; non-finite float pixels become the minimum;
- alpha (RGBA, LA, PA, palette with transparency) is composited over black,
  so fully transparent pixels are black whatever colour they store.
Images with more than MAX_PIXELS pixels are refused with an ImageError.

EXIF orientation (the rotate/flip tag cameras and phones write) is not applied
by default: PIL's `Image.open`, and so torchvision's loader that the reference
trained with, ignores it, and the pixels are used as stored.
`apply_exif_orientation=True` (config data.apply_exif_orientation) turns them
as the tag says before any resizing (`PIL.ImageOps.exif_transpose`);
`exif_orientation` reads the tag, for prepare's count and predict's note.
"""

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from micar_jax import errors

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Random-resized-crop ranges for the optional train augmentation; milder than
# torchvision's (0.08, 1) because small lesions must stay in the crop.
AUGMENT_SCALE = (0.6, 1.0)
AUGMENT_RATIO = (3 / 4, 4 / 3)

# Largest accepted image (width * height). A 10000 x 10000 scan decodes to
# 300 MB of RGB and more while being windowed; beyond that it is refused.
MAX_PIXELS = 100_000_000
# PIL warns from ~89 MP and raises from ~179 MP (decompression-bomb guard);
# MAX_PIXELS is checked first and gives a clear error instead.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
# EXIF's Orientation tag: 1 is the identity, 2..8 a flip and/or a quarter turn.
ORIENTATION_TAG = 0x0112


class ImageError(errors.UserError, ValueError):
  """An image that is missing, unreadable or corrupt (a ValueError too, for older callers)."""


def _window(pixels: np.ndarray) -> np.ndarray:
  """[H, W] integer or float pixels -> uint8 [H, W], min..max mapped onto 0..255."""
  x = pixels.astype(np.float64)  # one working copy, updated in place (large scans)
  finite = np.isfinite(x)
  if not finite.any():
    return np.zeros(x.shape, np.uint8)
  lo, hi = x[finite].min(), x[finite].max()
  x[~finite] = lo
  if hi == lo:
    return np.zeros(x.shape, np.uint8)
  x -= lo
  x *= 255.0 / (hi - lo)
  return np.rint(x, out=x).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
  """Any PIL mode -> 8-bit RGB by the rules in the module docstring."""
  if img.mode == "RGB":
    return img
  if img.mode in _WIDE_MODES:
    return Image.fromarray(_window(np.asarray(img))).convert("RGB")
  if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
    rgba = np.asarray(img.convert("RGBA"), np.uint16)
    over_black = (rgba[..., :3] * rgba[..., 3:] + 127) // 255
    return Image.fromarray(over_black.astype(np.uint8))
  return img.convert("RGB")


def _orientation(img: Image.Image) -> int:
  """The EXIF orientation of an opened image, read from its header only; 1 if none or invalid.

  A PNG's tag counts where the PNG spec puts it, before the pixel data (PIL
  would decode the whole image to look further).
  """
  if img.format == "PNG" and "exif" not in img.info:
    return 1
  try:
    value = img.getexif().get(ORIENTATION_TAG, 1)
  except (OSError, ValueError, SyntaxError, TypeError, KeyError):
    return 1  # an unreadable EXIF block is no tag; the pixels may still be fine
  return value if isinstance(value, int) and 1 <= value <= 8 else 1


def exif_orientation(data: str | os.PathLike | bytes) -> int:
  """The EXIF orientation tag of an image file or encoded bytes (1..8); 1 when it has none.

  Reads the header only. An unreadable file gives 1 (`decode` says what is wrong with it).
  """
  try:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
      return _orientation(img)
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
    return 1


def decode(data: str | os.PathLike | bytes, apply_exif_orientation: bool = False) -> Image.Image:
  """Opens an image file path or encoded bytes, fully decoded, as 8-bit RGB.

  Args:
    data: the file's path or its bytes.
    apply_exif_orientation: turn the pixels as the file's EXIF orientation tag
      says (see the module docstring); by default they are used as stored.

  Raises:
    ImageError: the file is missing, empty, not an image, truncated or corrupt,
      or larger than MAX_PIXELS. The message starts with the kind of problem
      ("missing image", "empty image file", "corrupt image", "image too large")
      and the file.
  """
  what = "<bytes>" if isinstance(data, bytes) else os.fspath(data)
  if not isinstance(data, bytes) and not os.path.isfile(what):
    raise ImageError(f"missing image {what}")
  if (len(data) if isinstance(data, bytes) else os.path.getsize(what)) == 0:
    raise ImageError(f"empty image file {what} (0 bytes)")
  try:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else what) as img:
      if img.width * img.height > MAX_PIXELS:
        raise ImageError(f"image too large {what} ({img.width} x {img.height} pixels; the limit is "
                         f"{MAX_PIXELS:,}, micar_jax.data.images.MAX_PIXELS)")
      orientation = _orientation(img)
      img.load()
      if apply_exif_orientation and orientation != 1:
        img = ImageOps.exif_transpose(img)
      return to_rgb(img)
  except ImageError:
    raise
  except Image.DecompressionBombError:
    raise ImageError(f"image too large {what} (over {MAX_PIXELS:,} pixels, "
                     "micar_jax.data.images.MAX_PIXELS)") from None
  except Image.UnidentifiedImageError:
    raise ImageError(f"corrupt image {what} (not a format PIL can identify)") from None
  except (OSError, ValueError, SyntaxError) as e:
    raise ImageError(f"corrupt image {what} ({type(e).__name__}: {e})") from None


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
  """torchvision's output size when resizing the shorter side to `size`.

  Returns:
    (new_height, new_width): shorter side = size, longer = int(size * long / short).
  """
  short, long = (width, height) if width <= height else (height, width)
  new_long = int(size * long / short)
  return (new_long, size) if width <= height else (size, new_long)


def crop_offsets(height: int, width: int, crop: int) -> tuple[int, int]:
  """torchvision `center_crop` offsets (top, left), rounded half to even."""
  if crop > height or crop > width:
    raise ValueError(f"crop {crop} exceeds the resized image {height}x{width}")
  return int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))


def normalize(img: Image.Image) -> np.ndarray:
  """[H, W, 3] uint8 RGB -> float32 [H, W, 3] in ImageNet-normalised units."""
  x = np.asarray(img, dtype=np.uint8).astype(np.float32) / np.float32(255.0)
  return (x - IMAGENET_MEAN) / IMAGENET_STD


def preprocess(img: Image.Image, resize_size: int, image_size: int) -> np.ndarray:
  """The reference evaluation transform.

  Args:
    img: RGB PIL image of any size.
    resize_size: shorter side after resizing (232 for IMAGENET1K_V2).
    image_size: side of the square centre crop (224).

  Returns:
    float32 [image_size, image_size, 3].
  """
  new_h, new_w = resized_size(img.height, img.width, resize_size)
  if (new_h, new_w) != (img.height, img.width):
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
  top, left = crop_offsets(new_h, new_w, image_size)
  return normalize(img.crop((left, top, left + image_size, top + image_size)))


def augment(img: Image.Image, image_size: int, rng: np.random.Generator) -> np.ndarray:
  """Random resized crop (area AUGMENT_SCALE, aspect AUGMENT_RATIO) + horizontal flip.

  Returns:
    float32 [image_size, image_size, 3].
  """
  h, w = img.height, img.width
  crop_h, crop_w = h, w
  for _ in range(10):
    area = h * w * rng.uniform(*AUGMENT_SCALE)
    ratio = np.exp(rng.uniform(np.log(AUGMENT_RATIO[0]), np.log(AUGMENT_RATIO[1])))
    cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      crop_h, crop_w = ch, cw
      break
  top = int(rng.integers(0, h - crop_h + 1))
  left = int(rng.integers(0, w - crop_w + 1))
  img = img.resize((image_size, image_size), Image.Resampling.BILINEAR,
                   box=(left, top, left + crop_w, top + crop_h))
  if rng.random() < 0.5:
    img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return normalize(img)


def load(
    data: str | os.PathLike | bytes,
    resize_size: int,
    image_size: int,
    rng: np.random.Generator | None = None,
    apply_exif_orientation: bool = False,
) -> np.ndarray:
  """Decodes and preprocesses one image; augments when `rng` is given.

  The one way training, evaluation, predict, explain and serve load an image;
  `apply_exif_orientation` is config data.apply_exif_orientation (see `decode`).

  Returns:
    float32 [image_size, image_size, 3].

  Raises:
    ImageError: missing or corrupt image.
  """
  img = decode(data, apply_exif_orientation)
  if rng is None:
    return preprocess(img, resize_size, image_size)
  return augment(img, image_size, rng)
