"""Tests for micar_jax.data.prepare.cleaning.

Expected outputs were produced by the reference cleaners themselves
(MicarVLMoE preprocessors/*.py and R2Gen's modules/tokenizers.py) and are
pinned here, quirks included.
"""

import pytest

from micar_jax.data.prepare import cleaning


@pytest.mark.parametrize("fn,raw,expected", [
    (cleaning.clean_covctr,
     'Bilateral ground-glass opacities (GGO); "patchy" consolidation, lower lobes.\r\nNo effusion',
     "bilateral groundglass opacities ggo , patchy consolidation , lower lobes .\r\nno effusion ."),
    (cleaning.clean_covctr, "Ünïcødé Lung.", "ünïcødé lung ."),
    (cleaning.clean_mmretinal,
     "Same patient as Figure 2-3A. Drusen: hard & soft [x].\nA shows macula",
     "drusen hard  soft x . macula ."),
    (cleaning.clean_mmretinal, "fig. 12-4b and c, 1. Vessels 2. Optic disc..",
     "and c vessels . optic disc ."),
    (cleaning.clean_pgross,
     "Heart: Gross: Mitral-valve prolapse; <thick> leaflets. 2. Normal @ 45?",
     "mitral-valve prolapse thick leaflets . normal  45 ."),
    (cleaning.clean_pgross, "Kidney:", " ."),
    (cleaning.clean_roco, "CT of a 45-year-old man:\tmass 3.5 cm, 12mm nodule.\nSee 2.5 kg",
     "ct of a xxxx man: mass xxxx ,  xxxx nodule .  see xxxx ."),
    (cleaning.clean_roco, "MRI 5 M. Done", "mri xxxx .  done ."),
    (cleaning.clean_iu_xray, "1. The heart is normal.. 2. No effusion. . XXXX",
     "the heart is normal . no effusion .  . xxxx ."),
    (cleaning.clean_iu_xray, 'Lungs "clear"/stable\\ (no change); ', "lungs clearstable no change ."),
    (cleaning.clean_mimic_cxr, "FINDINGS:\n\n  Heart  __ size normal....  1. No PTX",
     "findings heart  size normal . no ptx ."),
    (cleaning.clean_mimic_cxr, "a.  b__c", "a . bc ."),
])
def test_matches_reference_output(fn, raw, expected):
  assert fn(raw) == expected


def test_sentence_class_is_a_range_that_keeps_hyphens():
  # ":-[" is a range: ; < = > ? @ go, "-" stays (docs/reference_model.md §10.2).
  assert cleaning.clean_r2gen_variant("a;b<c=d>e?f@g-h") == "abcdefg-h ."


def test_variant_differs_from_r2gen_only_by_dot_space_dot():
  assert cleaning.clean_iu_xray("no effusion. . ok") == "no effusion .  . ok ."
  assert cleaning.clean_r2gen_variant("no effusion. . ok") == "no effusion . ok ."


def test_covctr_keeps_inner_newlines_and_empty_report_raises():
  assert cleaning.clean_covctr("a\nb") == "a\nb ."
  with pytest.raises(IndexError):
    cleaning.clean_covctr("  ")
