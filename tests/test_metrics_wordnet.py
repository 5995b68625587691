"""Tests for micar_jax.metrics.wordnet (offline nltk WordNet)."""

import os
import pathlib
import subprocess
import sys

import pytest

from micar_jax.metrics import wordnet

_HAS_DEBIAN = pathlib.Path(wordnet.DEBIAN_WORDNET, "index.sense").is_file()


def test_lexnames_table_layout():
  lines = wordnet.lexnames_text().splitlines()
  assert len(lines) == 45
  rows = [line.split("\t") for line in lines]
  assert [int(r[0]) for r in rows] == list(range(45))
  assert rows[3] == ["03", "noun.Tops", "1"]
  assert rows[21] == ["21", "noun.possession", "1"]
  assert rows[40] == ["40", "verb.possession", "2"]
  assert rows[44] == ["44", "adj.ppl", "3"]
  category = {"noun": "1", "verb": "2", "adj": "3", "adv": "4"}
  assert all(r[2] == category[r[1].split(".")[0]] for r in rows)


def test_prepare_names_missing_files(tmp_path):
  (tmp_path / "src").mkdir()
  (tmp_path / "src" / "data.noun").write_text("")
  with pytest.raises(FileNotFoundError, match="lacks WordNet files adj.exc"):
    wordnet.prepare_wordnet(tmp_path / "dest", tmp_path / "src")


def test_cli_usage_and_errors(tmp_path, capsys):
  assert wordnet.main(["wordnet"]) == 2
  assert wordnet.main(["wordnet", str(tmp_path / "dest"), str(tmp_path)]) == 1
  assert "error:" in capsys.readouterr().err


@pytest.mark.skipif(not _HAS_DEBIAN, reason="Debian wordnet-base/wordnet-sense-index not installed")
def test_built_folder_is_wordnet_30(tmp_path):
  reader, reason = wordnet.load_wordnet(tmp_path)  # built on first use
  assert reader is not None, reason
  corpus = tmp_path / "corpora" / "wordnet"
  assert (corpus / "lexnames").read_text() == wordnet.lexnames_text()
  assert (tmp_path / "corpora" / "omw-1.4").is_dir()
  assert not any(p.is_symlink() for p in corpus.iterdir())
  assert reader.get_version() == "3.0"
  assert reader.synset("dog.n.01").offset() == 2084071


def test_missing_wordnet_gives_a_reason(tmp_path):
  # A fresh interpreter, so a WordNet loaded by other tests cannot leak in.
  code = ("from micar_jax.metrics.wordnet import load_wordnet; "
          f"r, why = load_wordnet({str(tmp_path / 'empty')!r}, build_from=None); "
          "print('FOUND' if r is not None else why)")
  root = pathlib.Path(wordnet.__file__).parents[2]
  env = dict(os.environ, HOME=str(tmp_path), NLTK_DATA=str(tmp_path / "none"),
             PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, timeout=120).stdout.strip()
  if out == "FOUND":
    pytest.skip("WordNet is installed in a system nltk data folder")
  assert out.startswith("nltk WordNet not found (Resource 'wordnet' not found.)")
  assert "\n" not in out
