"""Image decoding and the reference's ImageNet preprocessing, without torch.

`preprocess` reproduces torchvision's `ResNet101_Weights.IMAGENET1K_V2.transforms()`
on PIL images: resize the shorter side to `resize_size` (PIL bilinear, which
antialiases), centre-crop `image_size`, scale to [0, 1], normalise with the
ImageNet mean/std. Output is float32 HWC rather than torch's CHW.
"""

import io
import os

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Random-resized-crop ranges for the optional train augmentation; milder than
# torchvision's (0.08, 1) because small lesions must stay in the crop.
AUGMENT_SCALE = (0.6, 1.0)
AUGMENT_RATIO = (3 / 4, 4 / 3)


class ImageError(ValueError):
  """An image that is missing, unreadable or corrupt."""


def decode(data: str | os.PathLike | bytes) -> Image.Image:
  """Opens an image file path or encoded bytes as an RGB PIL image.

  Raises:
    ImageError: the file is missing, unreadable or not a decodable image.
  """
  what = "<bytes>" if isinstance(data, bytes) else os.fspath(data)
  try:
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(src) as img:
      return img.convert("RGB")
  except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise ImageError(f"cannot read image {what}: {type(e).__name__}: {e}") from None


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
) -> np.ndarray:
  """Decodes and preprocesses one image; augments when `rng` is given.

  Returns:
    float32 [image_size, image_size, 3].

  Raises:
    ImageError: missing or corrupt image.
  """
  img = decode(data)
  if rng is None:
    return preprocess(img, resize_size, image_size)
  return augment(img, image_size, rng)
