"""Report tokenizers: the reference's word vocabulary and a SentencePiece option.

Both share the reference's special ids (`<pad>`=0, `<sos>`=1, `<eos>`=2,
`<unk>`=3) and its sequence layout (docs/reference_model.md §7): with
n = min(len(tokens), L - 2),

  input_ids = [<sos>] + tokens[:n] + [<eos>] + <pad>...   (length L)
  label_ids = tokens[:n] + [<eos>] + <pad>...             (length L)
  pad_mask  = input_ids != <pad>

so the position whose input is `<eos>` has label `<pad>`.
"""

import abc
import collections
import io
import json
import os
from collections.abc import Iterable, Sequence

import ml_collections
import numpy as np
from etils import epath

from micar_jax import errors
from micar_jax.data import sources

PAD, SOS, EOS, UNK = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<sos>", "<eos>", "<unk>")
# File written into the workdir by `load_or_build_tokenizer`, per kind.
VOCAB_FILES = {"word": "token2id.json", "sentencepiece": "sentencepiece.model"}


class Tokenizer(abc.ABC):
  """Maps reports to fixed-length id sequences and back."""

  def __init__(self, text_seq_len: int):
    if text_seq_len < 2:
      raise errors.ConfigError(f"text_seq_len must be >= 2 (<sos> + <eos>), got {text_seq_len}")
    self.text_seq_len = text_seq_len

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """Number of ids, specials included."""

  @abc.abstractmethod
  def tokenize(self, report: str) -> list[int]:
    """Ids of a report's tokens, no specials added."""

  @abc.abstractmethod
  def detokenize(self, ids: Sequence[int]) -> str:
    """Text of ids that contain no `<pad>`/`<sos>`/`<eos>`."""

  @abc.abstractmethod
  def save(self, path: str | os.PathLike) -> None:
    """Writes the vocabulary / model to `path`."""

  def encode(self, report: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encodes a report like the reference tokenizer's `__call__`.

    Args:
      report: cleaned report text.

    Returns:
      input_ids, pad_mask, label_ids: int32 arrays of shape [text_seq_len].
    """
    length = self.text_seq_len
    ids = self.tokenize(report)[: length - 2]
    n = len(ids)
    input_ids = np.full([length], PAD, np.int32)
    input_ids[0] = SOS
    input_ids[1 : n + 1] = ids
    input_ids[n + 1] = EOS
    label_ids = np.full([length], PAD, np.int32)
    label_ids[:n] = ids
    label_ids[n] = EOS
    pad_mask = (input_ids != PAD).astype(np.int32)
    return input_ids, pad_mask, label_ids

  def decode(self, ids: Iterable[int]) -> str:
    """Reference decoding: drops `<sos>`/`<eos>`/`<pad>` anywhere, keeps the rest.

    Words after the first `<eos>` survive (the reference's `decode_by_ids`).
    """
    return self.detokenize([int(i) for i in ids if int(i) not in (PAD, SOS, EOS)])

  def decode_clean(self, ids: Iterable[int]) -> str:
    """Decodes up to (excluding) the first `<eos>`; drops `<sos>`/`<pad>`."""
    kept = []
    for i in ids:
      if int(i) == EOS:
        break
      kept.append(int(i))
    return self.decode(kept)


class WordTokenizer(Tokenizer):
  """Whitespace word vocabulary, identical to the reference's `CustomTokenizer`."""

  def __init__(self, token2id: dict[str, int], text_seq_len: int):
    super().__init__(text_seq_len)
    for i, tok in enumerate(SPECIAL_TOKENS):
      if token2id.get(tok) != i:
        raise errors.UserError(f"vocabulary must map {tok!r} to {i}, got {token2id.get(tok)!r}")
    self.token2id = dict(token2id)
    self.id2token = {i: t for t, i in self.token2id.items()}
    if len(self.id2token) != len(self.token2id):
      raise errors.UserError("vocabulary ids are not unique")

  @classmethod
  def build(cls, reports: Iterable[str], min_frequency: int, text_seq_len: int) -> "WordTokenizer":
    """Builds the vocabulary: train words with count >= min_frequency, sorted."""
    counts = collections.Counter(tok for r in reports for tok in r.split())
    words = sorted(t for t, c in counts.items() if c >= min_frequency)
    token2id = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    # A corpus word spelled like a special token keeps the special id (the
    # reference would silently overwrite it and corrupt the specials).
    for word in words:
      if word not in token2id:
        token2id[word] = len(token2id)
    return cls(token2id, text_seq_len)

  @classmethod
  def load(cls, path: str | os.PathLike, text_seq_len: int) -> "WordTokenizer":
    """Loads a `token2id.json` (ours or an official one).

    Raises:
      errors.UserError: the file is unreadable, not JSON, or not a {word: id} object
        (one line naming the file).
    """
    try:
      token2id = json.loads(epath.Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
      raise errors.UserError(f"vocabulary {path} cannot be read ({e})") from None
    except json.JSONDecodeError as e:
      raise errors.UserError(f"vocabulary {path} is not JSON ({e}); expected a token2id.json "
                             'object such as {"<pad>": 0, "<unk>": 1, ...}') from None
    if not isinstance(token2id, dict):
      raise errors.UserError(f"vocabulary {path} holds a JSON {type(token2id).__name__}; "
                             "expected an object mapping each word to its integer id")
    bad = [t for t, i in token2id.items() if isinstance(i, bool) or not isinstance(i, int)]
    if bad:
      raise errors.UserError(f"vocabulary {path}: {len(bad)} entries have no integer id "
                             f"(first: {bad[0]!r}: {token2id[bad[0]]!r})")
    return cls(token2id, text_seq_len)

  @property
  def vocab_size(self) -> int:
    return len(self.token2id)

  def tokenize(self, report: str) -> list[int]:
    return [self.token2id.get(t, UNK) for t in report.split()]

  def detokenize(self, ids: Sequence[int]) -> str:
    return " ".join(self.id2token.get(i, "<unk>") for i in ids)

  def save(self, path: str | os.PathLike) -> None:
    _atomic_write(path, json.dumps(self.token2id, ensure_ascii=False).encode("utf-8"))


def _sentencepiece():
  """sentencepiece, imported on first use: word tokenizers and decoding run without it."""
  import sentencepiece  # pylint: disable=import-outside-toplevel
  return sentencepiece


class SentencePieceTokenizer(Tokenizer):
  """A SentencePiece (unigram or BPE) model with the reference's special ids."""

  def __init__(self, model_proto: bytes, text_seq_len: int):
    super().__init__(text_seq_len)
    self.model_proto = model_proto
    self._sp = None

  @property
  def sp(self) -> "sentencepiece.SentencePieceProcessor":  # noqa: F821 (imported lazily)
    # Created lazily so the tokenizer pickles cheaply into grain workers.
    if self._sp is None:
      self._sp = _sentencepiece().SentencePieceProcessor(model_proto=self.model_proto)
    return self._sp

  def __getstate__(self):
    return {"model_proto": self.model_proto, "text_seq_len": self.text_seq_len, "_sp": None}

  @classmethod
  def build(
      cls, reports: Iterable[str], vocab_size: int, model_type: str, text_seq_len: int
  ) -> "SentencePieceTokenizer":
    """Trains in memory; `vocab_size` is an upper bound (hard_vocab_limit=False)."""
    if model_type not in ("unigram", "bpe"):
      raise errors.ConfigError(f"sp_model_type must be 'unigram' or 'bpe', got {model_type!r}")
    sentences = [r for r in reports if r.strip()]
    if not sentences:
      raise errors.UserError("cannot train SentencePiece on an empty train split")
    buf = io.BytesIO()
    _sentencepiece().SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0,
        pad_id=PAD, bos_id=SOS, eos_id=EOS, unk_id=UNK,
        pad_piece="<pad>", bos_piece="<sos>", eos_piece="<eos>", unk_piece="<unk>",
        # Reports are already cleaned; identity keeps decode(encode(x)) == x.
        normalization_rule_name="identity", hard_vocab_limit=False, minloglevel=2)
    return cls(buf.getvalue(), text_seq_len)

  @classmethod
  def load(cls, path: str | os.PathLike, text_seq_len: int) -> "SentencePieceTokenizer":
    return cls(epath.Path(path).read_bytes(), text_seq_len)

  @property
  def vocab_size(self) -> int:
    return self.sp.get_piece_size()

  def tokenize(self, report: str) -> list[int]:
    return self.sp.encode(report, out_type=int)

  def detokenize(self, ids: Sequence[int]) -> str:
    return self.sp.decode(list(ids))

  def save(self, path: str | os.PathLike) -> None:
    _atomic_write(path, self.model_proto)


def _atomic_write(path: str | os.PathLike, data: bytes) -> None:
  # Several processes may build the same file; each renames a private temp.
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
  tmp.write_bytes(data)
  tmp.rename(path)


def load_tokenizer(kind: str, path: str | os.PathLike, text_seq_len: int) -> Tokenizer:
  """Loads a saved tokenizer of `kind` ("word" or "sentencepiece")."""
  if kind == "word":
    return WordTokenizer.load(path, text_seq_len)
  if kind == "sentencepiece":
    return SentencePieceTokenizer.load(path, text_seq_len)
  raise errors.ConfigError(f"config.data.tokenizer must be 'word' or 'sentencepiece', got {kind!r}")


def load_or_build_tokenizer(
    config: ml_collections.ConfigDict, data_dir: str | os.PathLike, workdir: str | os.PathLike
) -> Tokenizer:
  """Returns the run's tokenizer, building it from the train split on first use.

  Order: `config.data.vocab_path` if set; else the file saved in `workdir`
  (token2id.json / sentencepiece.model); else build from the train reports of
  `data_dir` (or the TFDS source, per config.data.source) and save it there.
  """
  kind = config.data.tokenizer
  seq_len = config.data.text_seq_len
  if kind not in VOCAB_FILES:
    raise errors.ConfigError(
        f"config.data.tokenizer must be one of {sorted(VOCAB_FILES)}, got {kind!r}")
  if config.data.vocab_path:
    if not epath.Path(config.data.vocab_path).is_file():
      raise errors.UserError(f"config data.vocab_path={config.data.vocab_path} is not a file")
    return load_tokenizer(kind, config.data.vocab_path, seq_len)
  path = epath.Path(workdir) / VOCAB_FILES[kind]
  if path.exists():
    return load_tokenizer(kind, path, seq_len)
  reports = sources.split_reports(config, "train", data_dir)
  if kind == "word":
    tok = WordTokenizer.build(reports, config.data.min_frequency, seq_len)
  else:
    tok = SentencePieceTokenizer.build(
        reports, config.data.sp_vocab_size, config.data.sp_model_type, seq_len)
  tok.save(path)
  return tok
