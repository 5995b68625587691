"""Tests for micar_jax.config.settings: one declaration per setting, and the page generated from it."""

import dataclasses
import pathlib
import re
import subprocess
import sys

import ml_collections
import pytest

from micar_jax.config import defaults, settings, settings_doc
from micar_jax.metrics import scores
from micar_jax.models import model_config

DOC = pathlib.Path(__file__).parent.parent / settings_doc.DOC
# The configs that reproduce a reference run script (configs/synthetic.py is a demo).
REFERENCE_CONFIGS = ("covctr", "mmr", "pgross", "roco", "iu_xray", "mimic_cxr")


def _leaves(config, prefix=""):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from _leaves(value, f"{prefix}{key}.")
    else:
      yield prefix + key, value


def test_base_config_is_the_declarations_with_their_types():
  got = dict(_leaves(defaults.base_config()))  # ConfigDict lists keys sorted
  assert sorted(got) == sorted(settings.BY_KEY)
  for key, value in got.items():
    default = settings.BY_KEY[key].default
    assert value == default and type(value) is type(default), key


def test_keys_are_unique():
  assert len(settings.BY_KEY) == len(settings.SETTINGS)


@pytest.mark.parametrize("setting", settings.SETTINGS, ids=lambda s: s.key)
def test_every_default_passes_its_own_check_and_has_a_one_line_doc(setting):
  assert setting.check.accepts(setting.default), setting.check.expect()
  assert setting.doc and "\n" not in setting.doc


@pytest.mark.parametrize("key,registry", [
    ("model.moe_impl", "models.moe.DISPATCH"),
    ("model.moe_combine", "models.routing.COMBINES"),
    ("model.moe_aux_loss", "models.routing.AUX_LOSSES"),
    ("model.act_fn", "models.layers.ACTIVATIONS"),
    ("model.resnet_depth", "models.resnet.RESNET_STAGES"),
    ("eval.decode", "decode.METHODS"),
    ("eval.suites", "metrics.scores.SUITES"),
    ("eval.rouge_aggregate", "metrics.reference.ROUGE_AGGREGATES"),
    ("eval.coco_tokenize", "metrics.coco.TOKENIZERS"),
    ("dataset", "data.registry.DATASETS"),
])
def test_choices_are_read_from_the_code_s_registries(key, registry):
  check = settings.BY_KEY[key].check
  assert str(check.source) == registry
  names = check.source.names()
  assert names and all(check.accepts((n,) if key == "eval.suites" else n) for n in names)
  assert not check.accepts(("no_such",) if key == "eval.suites" else "no_such")


def test_a_new_model_config_field_is_a_setting_with_its_check_and_switch(monkeypatch):
  @dataclasses.dataclass(frozen=True, kw_only=True)
  class Wider(model_config.ModelConfig):
    gate_width: int = model_config.setting(16, "Gate width.", lo=1, hi=64, hi_open=True)
    gate_act: str = model_config.setting(
        "silu", "Gate activation.", choices="micar_jax.models.layers.ACTIVATIONS",
        switch='`"gelu"`', switch_note="(reference)")

  monkeypatch.setattr(model_config, "ModelConfig", Wider)
  built = settings._model_settings()  # pylint: disable=protected-access
  assert [s.key for s in built[:-2]] == [
      s.key for s in settings.SETTINGS if s.key.startswith("model.")]
  width, act = built[-2:]
  assert (width.key, width.default, width.doc) == ("model.gate_width", 16, "Gate width.")
  assert width.check.expect() == "an integer in [1, 64)" and not width.check.accepts(64)
  assert str(act.check.source) == "models.layers.ACTIVATIONS" and act.check.accepts("gelu")
  assert (act.switch.alternatives, act.switch.note, act.reference) == (
      '`"gelu"`', "(reference)", "silu")


def test_model_settings_keep_the_page_order():
  keys = [s.key.removeprefix("model.") for s in settings.SETTINGS if s.key.startswith("model.")]
  assert keys[:6] == ["vocab_size", "resnet_depth", "resnet_stages", "resnet_width",
                      "vision_init_from", "d_v"]
  assert keys.index("router_z_loss_weight") == keys.index("capacity_factor") - 1


def test_metric_options_are_eval_settings_passed_by_name():
  assert set(scores.option_names()) == {
      "wordnet_dir", "rouge_aggregate", "coco_tokenize", "meteor_timeout_s", "ratescore_dir"}
  for name in scores.option_names():
    assert f"eval.{name}" in settings.BY_KEY
  config = defaults.base_config()
  assert scores.options_from(config.eval) == {
      n: config.eval[n] for n in scores.option_names()}


def test_unknown_metric_option_is_refused():
  with pytest.raises(TypeError, match="unknown metric option"):
    scores.compute_scores(["a"], ["a"], suites=("reference",), rouge_agregate="mean")


def test_the_page_holds_the_generated_tables():
  page = DOC.read_text(encoding="utf-8")
  assert page == settings_doc.render(page), (
      "docs/configuration.md is stale: run python -m micar_jax.config.settings_doc --write")


def _switch_rows(page):
  block = page.split("; switches -->\n")[1].split("<!-- end switches -->")[0]
  for line in block.splitlines()[2:]:
    key, reference, _ = (c.strip() for c in line.strip("|").split(" | "))
    yield key.strip("`"), re.match(r"`([^`]*)`", reference).group(1)


def test_every_switch_names_a_setting_and_its_reference_value(load_config):
  rows = list(_switch_rows(DOC.read_text(encoding="utf-8")))
  assert len(rows) == sum(s.switch is not None for s in settings.SETTINGS) > 10
  configs = [load_config(f"configs/{name}.py") for name in REFERENCE_CONFIGS]
  for key, shown in rows:
    setting = settings.BY_KEY[key]
    assert shown == settings_doc.show(setting.reference), key
    if key != "model.vision_init_from":  # base_config leaves it "" (random init)
      assert setting.reference == setting.default, key
    for config in configs:
      section, _, name = key.rpartition(".")
      assert (config[section] if section else config)[name] == setting.reference, key


def test_loading_a_config_imports_no_jax():
  code = ("import sys; from micar_jax.config import defaults, validation; "
          "defaults.base_config(); print('jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"
