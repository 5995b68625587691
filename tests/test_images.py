"""Tests for micar_jax.data.images (torchvision IMAGENET1K_V2 semantics)."""

import io

import numpy as np
import pytest
from PIL import Image

from micar_jax.data import images


@pytest.mark.parametrize("hw,size,expected", [
    ((480, 640), 232, (232, 309)),  # int(232 * 640 / 480) = 309 (floor)
    ((640, 480), 232, (309, 232)),
    ((100, 100), 232, (232, 232)),
    ((233, 1000), 232, (232, 995)),
])
def test_resized_size_rule(hw, size, expected):
  assert images.resized_size(*hw, size) == expected


def test_crop_offsets_round_half_to_even():
  assert images.crop_offsets(233, 225, 224) == (4, 0)  # 4.5 -> 4, 0.5 -> 0
  assert images.crop_offsets(235, 227, 224) == (6, 2)  # 5.5 -> 6, 1.5 -> 2
  with pytest.raises(ValueError):
    images.crop_offsets(200, 300, 224)


def test_preprocess_hand_computed_when_resize_is_identity():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
  out = images.preprocess(Image.fromarray(pixels), resize_size=6, image_size=4)
  # Shorter side already 6: no resize; crop offsets (1, round(1.5) = 2).
  expected = (pixels[1:5, 2:6].astype(np.float32) / 255 - [0.485, 0.456, 0.406]) / [
      0.229, 0.224, 0.225]
  assert out.shape == (4, 4, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out, expected, atol=1e-6)


def test_preprocess_uniform_image_stays_uniform_after_antialiased_resize():
  img = Image.new("RGB", (300, 500), (255, 0, 128))
  out = images.preprocess(img, 232, 224)
  np.testing.assert_allclose(out[0, 0], [(1 - .485) / .229, -.456 / .224, (128 / 255 - .406) / .225],
                             atol=1e-6)
  np.testing.assert_allclose(out, np.broadcast_to(out[0, 0], out.shape), atol=1e-6)


def test_decode_converts_grayscale_and_palette_to_rgb(tmp_path):
  Image.new("L", (5, 4), 7).save(tmp_path / "g.png")
  Image.new("P", (5, 4), 3).save(tmp_path / "p.png")
  for name in ("g.png", "p.png"):
    img = images.decode(tmp_path / name)
    assert img.mode == "RGB" and img.size == (5, 4)
  assert images.decode((tmp_path / "g.png").read_bytes()).getpixel((0, 0)) == (7, 7, 7)


def test_missing_and_corrupt_images_raise_image_error(tmp_path):
  (tmp_path / "bad.jpg").write_bytes(b"not an image")
  with pytest.raises(images.ImageError, match="bad.jpg"):
    images.load(tmp_path / "bad.jpg", 8, 8)
  with pytest.raises(images.ImageError, match="nope.png"):
    images.load(tmp_path / "nope.png", 8, 8)
  Image.new("RGB", (40, 40)).save(tmp_path / "t.png")
  (tmp_path / "trunc.png").write_bytes((tmp_path / "t.png").read_bytes()[:60])
  with pytest.raises(images.ImageError):
    images.load(tmp_path / "trunc.png", 8, 8)


def test_augment_is_seeded_and_sized():
  img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
  a = images.load(_png(img), 40, 32, rng=np.random.default_rng(5))
  b = images.load(_png(img), 40, 32, rng=np.random.default_rng(5))
  c = images.load(_png(img), 40, 32, rng=np.random.default_rng(6))
  assert a.shape == (32, 32, 3) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def _png(img):
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return buf.getvalue()


def _encoded(img, fmt):
  buf = io.BytesIO()
  img.save(buf, format=fmt)
  return buf.getvalue()


def test_bad_files_name_their_problem(tmp_path):
  (tmp_path / "empty.png").write_bytes(b"")
  (tmp_path / "notes.png").write_text("findings: none")
  rng = np.random.default_rng(0)
  jpeg = _encoded(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
  (tmp_path / "trunc.jpg").write_bytes(jpeg[:len(jpeg) // 2])
  with Image.open(tmp_path / "trunc.jpg") as img:
    img.verify()  # what prepare used to check: passes on a truncated file
  cases = {"empty.png": "empty image file", "notes.png": "corrupt image",
           "trunc.jpg": "corrupt image", "gone.png": "missing image"}
  for name, kind in cases.items():
    with pytest.raises(images.ImageError, match=f"^{kind} {tmp_path / name}"):
      images.decode(tmp_path / name)


def test_16_bit_grayscale_is_windowed_by_its_range_not_clipped():
  # A CT-like 16-bit ramp 1000..13285: convert("RGB") makes every pixel 255.
  ramp = (np.arange(64 * 64).reshape(64, 64) * 3 + 1000).astype(np.uint16)
  for img in (Image.fromarray(ramp),  # I;16
              Image.frombytes("I;16B", (64, 64), ramp.astype(">u2").tobytes()),
              Image.fromarray(ramp.astype(np.int32))):  # I
    decoded = np.asarray(images.decode(_encoded(img, "PNG") if img.mode == "I;16" else
                                       _encoded(img, "TIFF")))
    assert decoded.dtype == np.uint8 and decoded.shape == (64, 64, 3)
    expected = np.rint((ramp - 1000.0) * 255 / (ramp.max() - 1000.0)).astype(np.uint8)
    np.testing.assert_array_equal(decoded[..., 1], expected)
  assert (np.asarray(Image.fromarray(ramp).convert("RGB")) == 255).all()


def test_float_image_window_ignores_non_finite_and_constant_is_black():
  x = np.array([[-1.0, 0.0, 1.0, np.nan]], np.float32)
  decoded = np.asarray(images.to_rgb(Image.fromarray(x)))[0, :, 0]
  np.testing.assert_array_equal(decoded, [0, 128, 255, 0])
  flat = Image.fromarray(np.full((3, 3), 4000, np.uint16))
  assert not np.asarray(images.to_rgb(flat)).any()


def test_alpha_is_composited_over_black():
  rgba = np.zeros((1, 4, 4), np.uint8)
  rgba[..., :3] = 200
  rgba[..., 3] = [0, 128, 255, 64]
  want = [0, 100, 200, 50]  # round(200 * alpha / 255)
  decoded = np.asarray(images.decode(_encoded(Image.fromarray(rgba, "RGBA"), "PNG")))
  np.testing.assert_array_equal(decoded[0, :, 0], want)
  la = Image.fromarray(rgba[..., [0, 3]], "LA")
  np.testing.assert_array_equal(np.asarray(images.decode(_encoded(la, "PNG")))[0, :, 2], want)
  palette = Image.new("P", (2, 1))
  palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
  palette.putpixel((1, 0), 1)
  palette.info["transparency"] = 0  # index 0 (red) is transparent
  np.testing.assert_array_equal(np.asarray(images.decode(_encoded(palette, "PNG")))[0],
                                [[0, 0, 0], [0, 255, 0]])


def test_cmyk_jpeg_decodes_to_rgb():
  img = images.decode(_encoded(Image.new("CMYK", (8, 8), (0, 255, 0, 0)), "JPEG"))
  assert img.mode == "RGB" and img.size == (8, 8)


def test_6000_square_image_works_and_over_the_limit_is_refused(tmp_path, monkeypatch):
  path = tmp_path / "big.png"
  Image.new("L", (6000, 6000), 9).save(path)
  assert images.load(path, 36, 32).shape == (32, 32, 3)
  monkeypatch.setattr(images, "MAX_PIXELS", 6000 * 6000 - 1)
  with pytest.raises(images.ImageError, match=r"^image too large .*big.png \(6000 x 6000 pixels; "
                     r"the limit is 35,999,999"):
    images.decode(path)
  # Past PIL's own decompression-bomb limit the error is the same kind, with no PIL warning.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
  with pytest.raises(images.ImageError, match=r"^image too large "):
    images.decode(path)


def _exif_jpeg(path, orientation):
  """A 6 x 4 JPEG (landscape as stored) whose EXIF orientation tag is `orientation`."""
  rows = np.linspace(0, 255, 4, dtype=np.uint8)[:, None, None]
  cols = np.linspace(0, 255, 6, dtype=np.uint8)[None, :, None]
  pixels = np.concatenate(np.broadcast_arrays(rows, cols, 255 - rows), axis=-1)
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(pixels).save(path, format="JPEG", quality=100, exif=exif)


def test_exif_orientation_is_not_applied_by_default_and_the_switch_applies_it(tmp_path):
  _exif_jpeg(tmp_path / "r.jpg", 6)
  with Image.open(tmp_path / "r.jpg") as img:
    stored = np.asarray(img.convert("RGB"))  # what torchvision's PIL loader gives
  assert stored.shape == (4, 6, 3)
  assert images.exif_orientation(tmp_path / "r.jpg") == 6
  assert images.exif_orientation((tmp_path / "r.jpg").read_bytes()) == 6
  np.testing.assert_array_equal(np.asarray(images.decode(tmp_path / "r.jpg")), stored)
  turned = np.asarray(images.decode(tmp_path / "r.jpg", apply_exif_orientation=True))
  np.testing.assert_array_equal(turned, np.rot90(stored, k=-1))  # 6: a quarter turn clockwise
  default = images.load(tmp_path / "r.jpg", 4, 4)
  np.testing.assert_array_equal(default, images.preprocess(Image.fromarray(stored), 4, 4))
  applied = images.load(tmp_path / "r.jpg", 4, 4, apply_exif_orientation=True)
  np.testing.assert_array_equal(applied, images.preprocess(Image.fromarray(turned), 4, 4))
  # No tag, or the identity: 1, and the switch changes nothing.
  Image.fromarray(stored).save(tmp_path / "plain.png")
  _exif_jpeg(tmp_path / "one.jpg", 1)
  assert images.exif_orientation(tmp_path / "plain.png") == 1
  assert images.exif_orientation(tmp_path / "one.jpg") == 1
  np.testing.assert_array_equal(
      np.asarray(images.decode(tmp_path / "plain.png", apply_exif_orientation=True)), stored)
  assert images.exif_orientation(tmp_path / "nowhere.jpg") == 1
