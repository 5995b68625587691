"""explain_figure: one colour scale, the crop mapped back, pixels restored."""

import numpy as np
from PIL import Image

from micar_jax.data import images as images_lib
from micar_jax.inference import explain_figure


def test_render_shares_one_colour_scale_and_marks_the_uniform_level():
  rng = np.random.default_rng(0)
  attention = rng.dirichlet(np.ones(49), size=3).reshape(3, 7, 7)
  expl = explain_figure.Explanation(["a", "b", "c"], attention, rng.integers(0, 4, (3, 1, 2)),
                                    0, "a b c")
  original = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
  box = explain_figure.crop_box(60, 80, 36, 32)
  fig = explain_figure.render(original, box, original[:32, :32], expl, 4, 24, "settings")
  overlays = [im for ax in fig.axes for im in ax.get_images()
              if im.get_array().ndim == 2 and im.get_cmap().name == explain_figure.CMAP]
  assert len(overlays) == 3
  assert {im.norm.vmax for im in overlays} == {float(attention.max())}
  assert all(im.norm is overlays[0].norm for im in overlays)
  texts = [t.get_text() for ax in fig.axes for t in ax.texts]
  assert "uniform 1/49" in texts
  sizes = [t.get_fontsize() for ax in fig.axes
           for t in [ax.title, *ax.get_xticklabels(), *ax.get_yticklabels(), *ax.texts]
           if t.get_text()]
  assert min(sizes) >= 9
  assert all(t.get_rotation() == 0 for ax in fig.axes for t in ax.get_xticklabels())


def test_crop_box_maps_the_centre_crop_back_to_the_original():
  # 60x80 -> shorter side 36: 36x48, centre 32 crop at (2, 8) -> scale 60/36.
  top, left, h, w = explain_figure.crop_box(60, 80, 36, 32)
  np.testing.assert_allclose((top, left, h, w), (2 * 60 / 36, 8 * 80 / 48, 32 * 60 / 36,
                                                 32 * 80 / 48))


def test_unnormalise_inverts_preprocessing():
  rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
  restored = explain_figure.unnormalise(images_lib.normalize(Image.fromarray(rgb)))
  np.testing.assert_array_equal(restored, rgb)


def test_render_shows_every_view_of_a_study():
  rng = np.random.default_rng(0)
  attention = rng.dirichlet(np.ones(2 * 49), size=2).reshape(2, 2, 7, 7)
  expl = explain_figure.Explanation(["a", "b"], attention, rng.integers(0, 4, (2, 1, 2)), 0, "a b")
  originals = [rng.integers(0, 256, (60, 80, 3), dtype=np.uint8) for _ in range(2)]
  boxes = [explain_figure.crop_box(60, 80, 36, 32)] * 2
  crops = np.stack([o[:32, :32] for o in originals])
  fig = explain_figure.render(originals, boxes, crops, expl, 4, 24, "settings")
  overlays = [im for ax in fig.axes for im in ax.get_images()
              if im.get_array().ndim == 2 and im.get_cmap().name == explain_figure.CMAP]
  assert len(overlays) == 4  # 2 words x 2 views, one colour scale
  assert all(im.norm is overlays[0].norm for im in overlays)
  titles = [ax.get_title() for ax in fig.axes]
  assert sum(t.startswith("view ") for t in titles) == 4  # each view's file and crop
  assert f"1: a v2 {attention[0, 1].sum():.0%}" in " ".join(titles)
  assert "uniform 1/98" in [t.get_text() for ax in fig.axes for t in ax.texts]
