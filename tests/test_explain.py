"""--mode=explain: per-image attention / routing figures from the best checkpoint."""

import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from micar_jax import errors, main
from micar_jax.core import run as run_lib
from micar_jax.data.tokenizer import EOS, PAD, SOS, WordTokenizer
from micar_jax.inference import explain, predict
from micar_jax.inference import explain_figure as fig
from micar_jax.models import model as model_lib
from micar_jax.models import routing


@pytest.fixture(scope="module")
def run_dir(tiny_run, tiny_config):
  """A workdir whose best checkpoint is a freshly initialised tiny model (no training)."""
  tmp = tiny_run("explain")
  config = tiny_config(tmp)
  config.eval.explain_max_words = 5
  workdir = str(tmp / "run")
  run = run_lib.Run(config, workdir)
  run.checkpoints.close()
  mc = run.model_config
  images = tmp / "mine"
  images.mkdir()
  for i, name in enumerate(("a.png", "b.png")):
    shutil.copy(tmp / "data" / "images" / f"test_00000{i}.png", images / name)
  (images / "broken.png").write_bytes(b"not a png")
  return config, workdir, images, mc


def test_explain_writes_a_nonblank_figure_and_json_per_image(run_dir):
  config, workdir, images, mc = run_dir
  main.run(config, workdir, "explain", [str(images)])
  out = os.path.join(workdir, "explain")
  assert sorted(os.listdir(out)) == ["a.json", "a.png", "b.json", "b.png"]
  for stem in ("a", "b"):
    record = json.load(open(os.path.join(out, stem + ".json")))
    n = len(record["words"])
    assert record["report"] == " ".join(record["words"])  # word tokenizer: words joined
    attention = np.asarray(record["attention"])
    assert attention.shape == (n, mc.pool_size, mc.pool_size)
    np.testing.assert_allclose(attention.sum(axis=(1, 2)), 1.0, atol=1e-3)
    experts = np.asarray(record["experts"])
    assert experts.shape == (n, mc.num_layers, mc.top_k)
    assert np.all((experts >= 0) & (experts < mc.num_experts))
    with Image.open(os.path.join(out, stem + ".png")) as img:
      pixels = np.asarray(img.convert("RGB"))
    width, height = fig.figure_inches(min(n, 5), mc.num_layers, mc.num_experts)
    assert pixels.shape == (round(height * fig.DPI), round(width * fig.DPI), 3)
    assert pixels.shape[1] == round(fig.COLS * fig.PANEL_IN * fig.DPI)
    assert pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200
    # The first attention panel (the overlay) holds colours the network input lacks.
    dpi, panel_w = fig.DPI, int(fig.PANEL_IN * fig.DPI)
    inputs_top = int((fig.HEADER_IN + 0.3) * dpi)
    side = int((fig.INPUT_IN - 0.5) * dpi)
    crop = pixels[inputs_top:inputs_top + side, int((fig.INPUT_IN - 0.1) * dpi):][:, :side]
    panel_top = int((fig.HEADER_IN + fig.INPUT_IN) * dpi)
    overlay = pixels[panel_top:panel_top + panel_w, :panel_w].reshape(-1, 3)
    assert np.any(np.abs(overlay.astype(int) - overlay.mean(axis=0)).sum(-1) > 60)
    assert not np.array_equal(np.unique(crop.reshape(-1, 3), axis=0),
                              np.unique(overlay, axis=0))


def test_explain_and_predict_show_the_same_report(run_dir):
  config, workdir, images, _ = run_dir
  pngs = explain.explain(config, workdir, [str(images)])
  explained = [json.load(open(p[:-len(".png")] + ".json"))["report"] for p in pngs]
  out = predict.predict(config, workdir, [str(images)])
  predicted = [r["report"] for r in map(json.loads, open(out)) if r["report"] is not None]
  assert predicted == explained


def test_explain_rejects_bad_settings_and_unreadable_input(run_dir):
  config, workdir, images, _ = run_dir
  with pytest.raises(errors.UserError, match="no readable images"):
    explain.explain(config, workdir, [str(images / "broken.png")])
  with pytest.raises(errors.UserError, match="needs --images"):
    main.run(config, workdir, "explain", None)
  bad = config.copy_and_resolve_references()
  bad.eval.explain_heads = "7"
  with pytest.raises(errors.UserError, match="explain_heads=7 is out of range for 4 heads"):
    explain.explain(bad, workdir, [str(images)])
  # Two-view configs are explained now (below), but not with this one-view checkpoint.
  two_views = config.copy_and_resolve_references()
  two_views.data.num_views = 2
  with pytest.raises(errors.UserError, match="num_views: 1 -> 2"):
    explain.explain(two_views, workdir, [str(images)])


def test_select_parses_mean_and_indices():
  assert explain.select("mean", 3, "layers") is None
  assert explain.select(" Mean ", 3, "layers") is None
  assert explain.select("1", 3, "layers") == 1
  assert explain.select(-1, 3, "layers") == 2
  with pytest.raises(errors.UserError, match="'mean' or an integer"):
    explain.select("first", 3, "layers")


def test_summarise_stops_at_first_eos_and_selects_layer_and_head():
  tok = WordTokenizer.build(["no lesion seen"], 1, 8)
  lesion, no = tok.token2id["lesion"], tok.token2id["no"]
  ids = np.array([SOS, no, lesion, EOS, no, PAD])  # steps 0..4
  steps_, layers, heads, grid = 5, 2, 3, 2
  rng = np.random.default_rng(0)
  cross = rng.random((steps_, layers, heads, grid * grid))
  experts = rng.integers(0, 4, (steps_, layers, 2))
  expl = explain.summarise(ids, cross, experts, tok, layer=1, head=None)
  assert expl.words == ["no", "lesion"]
  assert expl.after_eos == 1
  np.testing.assert_allclose(expl.attention, cross[:2, 1].mean(axis=1).reshape(2, grid, grid))
  np.testing.assert_array_equal(expl.experts, experts[:2])
  mean = explain.summarise(ids, cross, experts, tok, layer=None, head=2)
  np.testing.assert_allclose(mean.attention, cross[:2, :, 2].mean(axis=1).reshape(2, grid, grid))


def two_view_greedy(sharp_tiny_model):
  """Greedy decoding of 3 two-view examples -> (views, ids, cross, experts, steps that ran)."""
  c, mc, params, batch_stats, images = sharp_tiny_model
  max_steps = c.data.text_seq_len
  views = jnp.stack([images[:3], images[3:]], axis=1)  # [b, 2 views, H, W, 3]
  ids, cross, experts = explain.greedy_with_attention(mc, params, batch_stats, views)
  together = np.all(np.asarray(ids[:, 1:]) == EOS, axis=0)  # all rows stop at such a step
  steps = int(np.argmax(together)) + 1 if together.any() else max_steps
  return views, ids, cross, experts, np.arange(max_steps) < steps


def test_greedy_with_attention_records_each_step(sharp_tiny_model):
  c, mc, *_ = sharp_tiny_model
  max_steps = c.data.text_seq_len
  _, ids, cross, experts, ran = two_view_greedy(sharp_tiny_model)
  n_img = 2 * mc.pool_size ** 2
  assert ids.shape == (3, max_steps + 1)
  assert cross.shape == (3, max_steps, mc.num_layers, mc.num_heads, n_img)
  assert experts.shape == (3, max_steps, mc.num_layers, mc.top_k)
  # Steps after the stop record nothing.
  np.testing.assert_allclose(np.asarray(cross).sum(-1)[:, ran], 1.0, atol=1e-5)
  assert np.all(np.asarray(cross)[:, ~ran] == 0)
  chosen = np.asarray(experts)[:, ran]
  assert np.all((chosen >= 0) & (chosen < mc.num_experts))
  assert np.all(chosen[..., 0] != chosen[..., 1])


def test_reported_experts_are_the_ones_each_moe_layer_sowed(sharp_tiny_model):
  # Re-reading the generated report teacher-forced, every decoder layer's MoE must sow,
  # for the token at position t, the experts explain reports for step t.
  _, mc, params, batch_stats, _ = sharp_tiny_model
  views, ids, _, experts, ran = two_view_greedy(sharp_tiny_model)
  model = model_lib.MicarVLMoE(mc)
  _, sown = model.apply({"params": params, "batch_stats": batch_stats}, views, ids[:, :-1],
                        None, False, mutable=[routing.COLLECTION])
  routed = np.stack([sown[routing.COLLECTION][f"decoder_{i}"]["moe"][routing.EXPERTS][0]
                     for i in range(mc.num_layers)], axis=2)  # [b, T, L, top_k]
  assert len(np.unique(routed[:, ran])) > 1
  np.testing.assert_array_equal(np.asarray(experts)[:, ran], routed[:, ran])


def test_two_view_explain_shows_both_views_and_splits_the_attention(tiny_two_view_run):
  folder, config = tiny_two_view_run("explain_two_view")
  config.eval.explain_max_words = 3
  workdir = str(folder / "run")
  mc = run_lib.Run(config, workdir).model_config
  study = folder / "mine" / "s1"
  study.mkdir(parents=True)
  for v, view in enumerate(("test_000000", "test_000001")):
    shutil.copy(folder / "data" / "images" / f"{view}.png", study / f"{v}.png")
  (png,) = explain.explain(config, workdir, [str(folder / "mine")])
  assert os.path.basename(png) == "s1.png"
  record = json.load(open(png[:-len(".png")] + ".json"))
  assert record["study"] == "s1" and [os.path.basename(p) for p in record["images"]] == [
      "0.png", "1.png"]
  n = len(record["words"])
  attention = np.asarray(record["attention"])
  assert n and attention.shape == (n, 2, mc.pool_size, mc.pool_size)
  # Per word, the two views' maps together hold all of its attention.
  share = attention.sum(axis=(2, 3))
  np.testing.assert_allclose(share, record["view_share"], atol=1e-4)
  np.testing.assert_allclose(share.sum(axis=1), 1.0, atol=1e-3)
  assert np.all(share > 0)
  (predicted,) = map(json.loads, open(predict.predict(config, workdir, [str(study)])))
  assert predicted["report"] == record["report"]
  with Image.open(png) as img:
    pixels = np.asarray(img.convert("RGB"))
  width, height = fig.figure_inches(min(n, 3) * 2, mc.num_layers, mc.num_experts)
  assert pixels.shape == (round(height * fig.DPI), round(width * fig.DPI), 3)
  assert pixels.std() > 20


def test_summarise_splits_two_views_tokens_in_order():
  tok = WordTokenizer.build(["no lesion seen"], 1, 8)
  ids = np.array([SOS, tok.token2id["no"], EOS])
  cross = np.random.default_rng(0).random((2, 1, 1, 2 * 4))
  expl = explain.summarise(ids, cross, np.zeros((2, 1, 2), int), tok, None, None, num_views=2)
  np.testing.assert_allclose(expl.attention[0, 0], cross[0, 0, 0, :4].reshape(2, 2))
  np.testing.assert_allclose(expl.attention[0, 1], cross[0, 0, 0, 4:].reshape(2, 2))
