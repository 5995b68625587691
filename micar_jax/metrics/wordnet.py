"""Finds nltk's WordNet 3.0 offline, and builds it from Debian's files.

nltk's METEOR needs the `wordnet` corpus, which the nltk downloader fetches
from the network. Offline, Debian's `wordnet-base` and `wordnet-sense-index`
packages ship the same WordNet 3.0 database under /usr/share/wordnet, minus
the `lexnames` table that nltk's reader requires; `prepare_wordnet` copies
those files into an nltk data folder and writes the table.

Setup: `apt-get install --no-install-recommends wordnet-base
wordnet-sense-index`, then either pass any writable folder as `wordnet_dir`
(built there on first use) or build one explicitly:

  python -m micar_jax.metrics.wordnet DEST [SOURCE]
"""

import os
import pathlib
import shutil
import sys
from typing import Any

DEBIAN_WORDNET = "/usr/share/wordnet"

# The database files nltk's WordNetCorpusReader opens (3.10 also reads
# index.sense for its sense-key map).
_FILES = (
    "adj.exc", "adv.exc", "noun.exc", "verb.exc", "cntlist.rev",
    "data.adj", "data.adv", "data.noun", "data.verb",
    "index.adj", "index.adv", "index.noun", "index.verb", "index.sense",
)

# WordNet 3.0 lexicographer files (lexnames(5WN)), in index order, with their
# syntactic category: 1 noun, 2 verb, 3 adjective, 4 adverb.
_LEXNAMES = (
    [("adj.all", 3), ("adj.pert", 3), ("adv.all", 4)]
    + [(f"noun.{n}", 1) for n in (
        "Tops act animal artifact attribute body cognition communication "
        "event feeling food group location motive object person phenomenon "
        "plant possession process quantity relation shape state substance "
        "time").split()]
    + [(f"verb.{n}", 2) for n in (
        "body change cognition communication competition consumption contact "
        "creation emotion motion perception possession social stative "
        "weather").split()]
    + [("adj.ppl", 3)]
)


def lexnames_text() -> str:
  """Returns the 45-line `lexnames` file: `index<TAB>name<TAB>category`."""
  return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(_LEXNAMES))


def prepare_wordnet(dest: str | os.PathLike, source: str | os.PathLike = DEBIAN_WORDNET) -> pathlib.Path:
  """Builds an nltk data folder holding WordNet 3.0 from Debian's files.

  Files are copied, not linked: nltk >= 3.9 refuses paths that leave its data
  root. An empty `omw-1.4` folder is created because nltk 3.7 insists on it.

  Args:
    dest: the nltk data folder to create or complete (36 MB are written).
    source: folder with the WordNet database files.

  Returns:
    `dest` as a path, ready for `load_wordnet(dest)`.

  Raises:
    FileNotFoundError: when a database file is missing from `source`.
  """
  source, dest = pathlib.Path(source), pathlib.Path(dest)
  missing = [f for f in _FILES if not (source / f).is_file()]
  if missing:
    raise FileNotFoundError(
        f"{source} lacks WordNet files {', '.join(missing)}; install Debian's "
        "wordnet-base and wordnet-sense-index")
  corpus = dest / "corpora" / "wordnet"
  corpus.mkdir(parents=True, exist_ok=True)
  (dest / "corpora" / "omw-1.4").mkdir(exist_ok=True)
  for f in _FILES:
    shutil.copyfile(source / f, corpus / f)
  (corpus / "lexnames").write_text(lexnames_text())
  return dest


def load_wordnet(wordnet_dir: str | os.PathLike | None = None,
                 build_from: str | os.PathLike | None = DEBIAN_WORDNET) -> tuple[Any, str]:
  """Loads nltk's WordNet from nltk's search paths or `wordnet_dir`.

  nltk's own search path covers `$NLTK_DATA`, ~/nltk_data and the usual system
  folders; `wordnet_dir` (an nltk data folder, e.g. from `prepare_wordnet`) is
  searched first. If `wordnet_dir` holds no WordNet yet but `build_from` has
  the Debian files, the folder is built there first (once; 36 MB).

  Args:
    wordnet_dir: optional extra nltk data folder (`~` expanded); "" or None for none.
    build_from: Debian WordNet folder to build `wordnet_dir` from; None never
      builds.

  Returns:
    `(reader, "")` with a loaded WordNet reader, or `(None, reason)` with a
    one-line reason when nltk or the corpus is unavailable.
  """
  try:
    import nltk  # pylint: disable=g-import-not-at-top
    from nltk.corpus import wordnet  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, "nltk is not installed"
  if wordnet_dir:
    wordnet_dir = os.path.expanduser(os.fspath(wordnet_dir))
    built = pathlib.Path(wordnet_dir, "corpora", "wordnet", "lexnames").is_file()
    if not built and build_from and pathlib.Path(build_from, "data.noun").is_file():
      try:
        prepare_wordnet(wordnet_dir, build_from)
      except OSError as e:
        return None, f"cannot build WordNet in {wordnet_dir} from {build_from}: {e}"
    if wordnet_dir not in nltk.data.path:
      nltk.data.path.insert(0, wordnet_dir)
  try:
    wordnet.ensure_loaded()
  except (LookupError, OSError, AssertionError, ValueError) as e:
    # nltk's LookupError is a multi-line banner; keep its "Resource ..." line.
    lines = str(e).strip().splitlines()
    detail = next((l.strip() for l in lines if "Resource" in l), type(e).__name__)
    return None, (f"nltk WordNet not found ({detail}); see micar_jax.metrics.wordnet "
                  "to build it from Debian's wordnet-base")
  return wordnet, ""


def main(argv: list[str]) -> int:
  """CLI: `python -m micar_jax.metrics.wordnet DEST [SOURCE]`."""
  if len(argv) not in (2, 3):
    print("usage: python -m micar_jax.metrics.wordnet DEST [SOURCE]", file=sys.stderr)
    return 2
  try:
    dest = prepare_wordnet(*argv[1:])
  except OSError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  reader, reason = load_wordnet(dest)
  if reader is None:
    print(f"error: {reason}", file=sys.stderr)
    return 1
  print(f"WordNet {reader.get_version()} ready in {dest}; pass it as wordnet_dir")
  return 0


if __name__ == "__main__":
  # absl parsing gives --help; main returns the exit status.
  from micar_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
