"""Report cleaners, character for character those of the reference preprocessors.

Each function takes the raw report text and returns the cleaned text the
reference writes to its CSVs. The rules are listed in docs/reference_model.md §10;
quirks are kept on purpose because the official vocabularies and metric
references were built from their output:

* the R2Gen-style sentence cleaner deletes the character range `:`..`[`
  (which includes `; < = > ? @` and `A`-`Z`) but keeps `-`;
* its empty-sentence filter never fires, so empty sentences survive as `. .`;
* list-number removal (`1. `, ` 2. `...) also fires inside sentences.
"""

import re

# The reference writes this class as "[.,?;*!%^&_+():-\[\]{}]": `:-\[` there is
# a range, so `-` survives while `:`..`[` (0x3A..0x5B) is deleted.
_SENTENCE_JUNK = re.compile(r"[.,?*!%^&_+(){}\]:-\[]")

# Applied in order: squeeze runs of dots, then drop list numbering "1. ".."5. ".
_DOT_RUNS = ((r"..", "."),) * 3
_NUMBERING = (("1. ", ""),) + tuple((f". {k}. ", ". ") for k in range(2, 6)) + tuple(
    (f" {k}. ", ". ") for k in range(2, 6))

_MIMIC_SQUEEZE = (("\n", " "),) + (("__", "_"),) * 7 + (("  ", " "),) * 6 + (("..", "."),) * 8

# MM-Retinal figure cross-references and panel markers ("Same patient as
# Figure 2-3A.", "Fig. 4-1b", "a shows"), each with an optional "." or ",".
_FIGURE_REFS = re.compile(
    r"""\b(?:
          same\ (?:person|patient|eye)\ as\ (?:fig(?:ure|s)\.|figures?)?
            \ \d{1,2}-\d{1,2}[a-zA-Z]?(?:\ and\ [a-zA-Z])?
        | fig(?:ure|s)?\.?\ \d{1,2}-\d{1,2}[a-zA-Z]?
        | [a-z]\ (?:for|is|shows)
        )\b[.,]?""",
    re.IGNORECASE | re.VERBOSE)

_ROCO_AGE = re.compile(r"\b\d{1,3}[-\s]?(year[-\s]?old)\b", re.IGNORECASE)
_ROCO_MEASURE = re.compile(r"\b\d+(?:\.\d+)?\s?(mm|cm|m|kg|g|mg|ml)\b", re.IGNORECASE)


def _replace_all(text: str, pairs: tuple[tuple[str, str], ...]) -> str:
  for old, new in pairs:
    text = text.replace(old, new)
  return text


def _clean_sentence(sentence: str) -> str:
  sentence = _replace_all(sentence, (('"', ""), ("/", ""), ("\\", ""), ("'", "")))
  return _SENTENCE_JUNK.sub("", sentence.strip().lower())


def _sentences_to_report(text: str) -> str:
  # Every sentence is kept, even an empty one (the reference's filter is a no-op).
  sentences = text.strip().lower().split(". ")
  return " . ".join(_clean_sentence(s) for s in sentences) + " ."


def clean_iu_xray(report: str) -> str:
  """R2Gen's `clean_report_iu_xray` (IU X-ray)."""
  return _sentences_to_report(_replace_all(report, _DOT_RUNS + _NUMBERING))


def clean_mimic_cxr(report: str) -> str:
  """R2Gen's `clean_report_mimic_cxr` (MIMIC-CXR)."""
  return _sentences_to_report(_replace_all(report, _MIMIC_SQUEEZE + _NUMBERING))


def clean_r2gen_variant(report: str) -> str:
  """MicarVLMoE's copy of the IU cleaner (PEIR Gross, MM-Retinal): R2Gen's plus `. .` -> `.`."""
  return _sentences_to_report(_replace_all(report, _DOT_RUNS + _NUMBERING + ((". .", "."),)))


def clean_covctr(report: str) -> str:
  """COVCTR English report cleaner. `report` must contain a non-blank character."""
  text = _replace_all(report, (('"', ""), ("(", ""), (")", ""), (",", " ,"), ("-", ""),
                               (";", " ,"), (".", " ."))).strip().lower()
  return text if text[-1] == "." else text + " ."


def clean_mmretinal(report: str) -> str:
  """MM-Retinal caption cleaner: drop figure references, end with `.`, then the R2Gen variant."""
  text = _FIGURE_REFS.sub(" ", report)
  text = re.sub(r"\s+", " ", text).strip()
  # After the whitespace collapse only the end of the text can lack a full stop.
  if text and text[-1] != ".":
    text += "."
  return clean_r2gen_variant(text.lower())


def clean_pgross(caption: str) -> str:
  """PEIR Gross caption cleaner: the text after the last `:`, then the R2Gen variant."""
  return clean_r2gen_variant(caption.split(":")[-1].strip())


def clean_roco(caption: str) -> str:
  """ROCO caption cleaner: mask ages and measurements, split `.` and `,` into tokens."""
  text = re.sub(r"\n|\t", " ", caption)
  text = _ROCO_AGE.sub("xxxx", text)
  text = _ROCO_MEASURE.sub("xxxx", text)
  text = re.sub(r"\s+", " ", text).strip()
  if not text.endswith("."):
    text += "."
  text = text[:-1].replace(".", " . ").replace(",", " , ") + " ."
  return text.strip().lower()
