"""The one declaration of every config setting: key, default, check and a one-line doc.

`defaults.base_config` builds the config from `SETTINGS` (in this order),
`validation.validate` checks each value with its `check`, and
docs/configuration.md's tables are generated from it (settings_doc.py;
tests/test_settings.py keeps the page equal to them). Values are the
reference's shared settings (github.com/AI-14/micar-vl-moe, scripts/*/run_exp.sh);
a deviation from the reference is a setting with a `Switch`, off by default.

The model's hyper-parameters are declared on `models.model_config.ModelConfig`'s
fields (default, doc, what they accept); the `model.*` settings here are built
from them, plus the few `config.model` keys that are no such field
(`_MODEL_OTHERS`).
"""

import dataclasses
from typing import Any

import ml_collections

from micar_jax.config import checks
from micar_jax.data import registry
from micar_jax.models import model_config

# Where the dataset configs look for torchvision's ResNet-101 IMAGENET1K_V2 weights,
# converted with `python -m micar_jax.convert torchvision-resnet` (the reference's start).
IMAGENET_RESNET101 = "weights/resnet101_imagenet1k_v2"
# model.vision_init_from value that trains the ResNet from random weights.
SCRATCH = "scratch"

_DATASET = "mmretinal"
# The dataset made by a generator (its split sizes are a setting).
_GENERATED = next(d for d in registry.DATASETS.values() if d.generated)
_DEFAULT = object()


@dataclasses.dataclass(frozen=True)
class Switch:
  """Marks a setting whose default is the reference's behaviour and the alternatives not.

  Attributes:
    alternatives: the other values and what they do, as the switch table shows them.
    note: shown after the reference value, e.g. what it means.
    reference: the dataset configs' value when it is not the default.
  """
  alternatives: str
  note: str = ""
  reference: Any = _DEFAULT


@dataclasses.dataclass(frozen=True)
class Setting:
  """One config key.

  Attributes:
    key: dotted path below the config root, e.g. "train.epochs".
    default: the value `defaults.base_config` gives it.
    check: what it accepts.
    doc: one line on what it does.
    switch: set for a deviation from the reference (see `Switch`).
  """
  key: str
  default: Any
  check: checks.Check
  doc: str
  switch: Switch | None = None

  @property
  def reference(self) -> Any:
    """The value the dataset configs use (the default unless the switch names another)."""
    if self.switch is None or self.switch.reference is _DEFAULT:
      return self.default
    return self.switch.reference


_num, _choice, _text, _flag = checks.number, checks.choice, checks.text, checks.flag
_Reg = checks.Registry
_S = Setting  # keeps each declaration to a few lines

# The config.model keys that are not a declared ModelConfig field (the ResNet's
# shape, the vocabulary size the tokenizer may give, the start weights, a loss
# weight), each listed under the field it comes before on the page.
_MODEL_OTHERS: dict[str, tuple[Setting, ...]] = {
    "resnet_width": (
        _S("model.vocab_size", 0, _num(int, 0),
           'Vocabulary size V; 0 means "take it from the tokenizer".'),
        _S("model.resnet_depth", 101,
           _choice(_Reg("micar_jax.models.resnet", "RESNET_STAGES"), int),
           "ResNet depth; ignored when resnet_stages is set."),
        _S("model.resnet_stages", (),
           checks.int_tuple(None, "() or stage sizes >= 1, e.g. (1, 1, 1, 1)"),
           "Explicit bottleneck stage sizes, e.g. (1, 1, 1, 1) for tests; () = from depth."),
    ),
    "d_v": (
        # A missing folder is refused when training starts, with the convert command.
        _S("model.vision_init_from", "", _text(),
           f'Converted torchvision ResNet weights; "" or "{SCRATCH}" = random init.',
           Switch(f'`"{SCRATCH}"` (random ResNet)', "\\*\\* (ImageNet IMAGENET1K_V2)",
                  IMAGENET_RESNET101)),
    ),
    "capacity_factor": (
        _S("model.router_z_loss_weight", 0.0, _num(float, 0),
           "Router z-loss weight (ST-MoE); 0 disables it (reference).", Switch("e.g. `1e-3`")),
    ),
}


def _model_check(d: model_config.Declared) -> checks.Check:
  """The check a ModelConfig field's plain description stands for."""
  if d.choices is not None:
    if isinstance(d.choices, str):
      module, _, attr = d.choices.rpartition(".")
      return _choice(_Reg(module, attr), d.kind)
    return _choice(d.choices, d.kind)
  if d.kind is bool:
    return _flag()
  if d.kind is str:
    return _text()
  return _num(d.kind, d.lo, d.hi, d.lo_open, d.hi_open)


def _model_settings() -> tuple[Setting, ...]:
  """The model.* settings: ModelConfig's declared fields, in field order, and `_MODEL_OTHERS`."""
  fields = dataclasses.fields(model_config.ModelConfig)
  unplaced = set(_MODEL_OTHERS) - {f.name for f in fields}
  if unplaced:
    raise ValueError(f"_MODEL_OTHERS names no ModelConfig field: {sorted(unplaced)}")
  out: list[Setting] = []
  for f in fields:
    out += _MODEL_OTHERS.get(f.name, ())
    d = model_config.declared(f)
    if d is not None:
      switch = None if d.switch is None else Switch(d.switch, d.switch_note)
      out.append(Setting(f"model.{f.name}", f.default, _model_check(d), d.doc, switch))
  return tuple(out)

SETTINGS: tuple[Setting, ...] = (
    _S("dataset", _DATASET, _choice(_Reg("micar_jax.data.registry", "DATASETS")),
      "Dataset name (data/registry.py); selects the prepare step and the TFDS builder."),
    _S("data_dir", "data/mmretinal", _text(),
      "Folder written by `python -m micar_jax.data.prepare` ({train,val,test}.jsonl)."),
    _S("seed", 115111211, _num(int, 0, 2**32 - 1),
      "Global seed (run scripts: 115111211) for init, dropout and shuffling."),
    # data
    _S("data.image_size", 224, _num(int, 1),
      "Side length of the square crop fed to the vision encoder."),
    _S("data.resize_size", 232, _num(int, 1),
      "Shorter image side before the centre crop (torchvision IMAGENET1K_V2: 232)."),
    _S("data.text_seq_len", 60, _num(int, 2),
      "Token positions incl. `<sos>`/`<eos>`; reports are truncated to text_seq_len - 2."),
    _S("data.min_frequency", 3, _num(int, 1),
      "Word-level vocabulary: minimum train-split frequency of a kept word."),
    _S("data.tokenizer", "word", _choice(_Reg("micar_jax.data.tokenizer", "VOCAB_FILES")),
      "Report tokenizer; \"word\" is the reference's word-level vocabulary.",
      Switch('`"sentencepiece"` (`data.sp_model_type`, `data.sp_vocab_size`)')),
    _S("data.sp_model_type", "unigram", _choice(("unigram", "bpe")),
      'SentencePiece model type when tokenizer="sentencepiece".'),
    _S("data.sp_vocab_size", 4000, _num(int, 1),
      "SentencePiece vocabulary size (an upper bound on tiny corpora)."),
    _S("data.vocab_path", "", checks.path(),
      "Optional token2id.json to load instead of building from the train split."),
    _S("data.num_views", registry.DATASETS[_DATASET].num_views, _num(int, 1),
      "Images per example, from the dataset's registry entry (IU X-ray: frontal + lateral)."),
    _S("data.augment", False, _flag(),
      "Train-time augmentation (random resized crop + flip); the reference has none.",
      Switch("`True`")),
    _S("data.apply_exif_orientation", False, _flag(),
      "Turn images as their EXIF orientation tag says before resizing; the reference ignores it.",
      Switch("`True` (PIL's exif_transpose)")),
    _S("data.worker_count", 0, _num(int, 0),
      "grain worker processes for decoding (0 = in the main process)."),
    _S("data.worker_buffer_size", 2, _num(int, 1), "Per-worker prefetch buffer (batches)."),
    _S("data.source", "jsonl", _choice(("jsonl", "tfds")),
      '"jsonl" (prepared folder) or "tfds" (array_record built by micar_jax.data.tfds_builders).'),
    _S("data.tfds_data_dir", "", _text(),
      'TFDS data_dir for source="tfds" ("" = ~/tensorflow_datasets).'),
    _S("data.synthetic_sizes", _GENERATED.generated_sizes,
      checks.int_tuple(3, "3 integers >= 1 (train, val, test)"),
      "Generated datasets only: examples made for (train, val, test)."),
    *_model_settings(),
    # train
    _S("train.batch_size", 32, _num(int, 1), "Global batch size."),
    _S("train.epochs", 100, _num(int, 1), "Epochs."),
    _S("train.max_patience", 50, _num(int, 1),
      "Early stop after this many consecutive epochs without a better val score."),
    _S("train.lr", 1e-4, _num(float, 0, lo_open=True),
      "Learning rate of everything but the vision encoder."),
    _S("train.v_lr", 5e-5, _num(float, 0), "Learning rate of the vision encoder (MSVE)."),
    _S("train.weight_decay", 5e-5, _num(float, 0),
      "Decoupled AdamW weight decay on every parameter."),
    _S("train.gamma", 0.1, _num(float, 0, lo_open=True),
      "StepLR factor, applied every lr_step_epochs epochs."),
    _S("train.lr_step_epochs", 0, _num(int, 0),
      "StepLR period in epochs; 0 = epochs // 2 (the reference)."),
    _S("train.aux_loss_weight", 0.01, _num(float, 0),
      "Weight of the MoE auxiliary loss in the total loss."),
    _S("train.grad_clip", 0.0, _num(float, 0),
      "Global-norm gradient clipping; 0 disables it (reference).",
      Switch("global-norm clipping")),
    _S("train.max_steps", 0, _num(int, 0), "Stop after this many steps (smoke runs); 0 = no limit."),
    _S("train.memory_check", "refuse",
      _choice(_Reg("micar_jax.training.memory_check", "MEMORY_CHECKS")),
      "Before training, compare the step's memory with the free memory: refuse, warn or off."),
    _S("train.log_every", 10, _num(int, 1), "Log training metrics every this many steps."),
    _S("train.checkpoint_every", 200, _num(int, 1),
      "Save the latest checkpoint every this many steps (and at each epoch end)."),
    _S("train.skip_nonfinite_steps", 0, _num(int, 0),
      "Non-finite steps skipped (and counted) before training stops; 0 = stop at the first."),
    _S("train.max_zero_grad_steps", 10, _num(int, 0),
      "Stop after this many steps in a row with gradient norm exactly 0; 0 never stops."),
    _S("train.keep_last_partial_batch", False, _flag(),
      "Keep the last partial training batch (reference) instead of dropping it.",
      Switch("`True`", "\\*")),
    _S("train.select_suite", "reference", _text(),
      "Metric suite that scores the validation set for checkpoint selection."),
    _S("train.select_key", "ref/score", _text(),
      "Key of select_suite that picks the best checkpoint (higher is better)."),
    # eval
    _S("eval.batch_size", 32, _num(int, 1), "Eval / decode batch size."),
    _S("eval.decode", "greedy", _choice(_Reg("micar_jax.decode", "METHODS")),
      "Decoder; greedy is what the reference's beam_search computes (KV-cached).",
      Switch('`"beam"` (true beam search, `eval.beam_width`, `eval.length_penalty`)')),
    _S("eval.beam_width", 3, _num(int, 1), 'Beam width for decode="beam".'),
    _S("eval.length_penalty", 0.0, _num(float),
      "Length penalty alpha for beam search ((5+len)/6)**alpha; 0 = none."),
    _S("eval.keep_after_eos", True, _flag(),
      "Keep tokens after the first `<eos>` in hypotheses (reference) or cut there.",
      Switch("`False` (cut hypotheses at the first `<eos>`)")),
    _S("eval.suites", ("reference", "coco"),
      checks.some_of(_Reg("micar_jax.metrics.scores", "SUITES")),
      "Metric suites (docs/metrics.md); each reads the eval.* options it names."),
    _S("eval.wordnet_dir", "~/.cache/micar_jax/nltk_data", _text(),
      'nltk data folder for WordNet, built from Debian\'s files on first use; "" = nltk\'s paths.'),
    _S("eval.coco_tokenize", "whitespace", _choice(_Reg("micar_jax.metrics.coco", "TOKENIZERS")),
      'Tokenisation for the coco suite: "whitespace" (as decoded) or "jury".'),
    _S("eval.meteor_timeout_s", 300.0, _num(float, 0, lo_open=True),
      "Longest wait (s) for one reply of Java METEOR; past it coco/meteor is skipped."),
    _S("eval.ratescore_dir", "", _text(),
      'Folder with the RaTEScore model folders; "" skips RaTEScore.'),
    _S("eval.rouge_aggregate", "bootstrap",
      _choice(_Reg("micar_jax.metrics.reference", "ROUGE_AGGREGATES")),
      "ref/rougeL as jury's median of 1000 resampled means, or the plain mean over pairs.",
      Switch('`"mean"`', "(jury's seeded median)")),
    _S("eval.val_loss_mean", "batch", _choice(_Reg("micar_jax.evaluate", "VAL_LOSS_MEANS")),
      'Logged validation loss: "batch" = mean of per-batch losses, "token" = over all tokens.',
      Switch('`"token"` (over all the split\'s tokens)', "(mean of batch losses)")),
    _S("eval.explain_layers", "mean", checks.index_or_mean(),
      '--mode=explain: decoder layer whose cross-attention is shown ("mean" or an index).'),
    _S("eval.explain_heads", "mean", checks.index_or_mean(),
      '--mode=explain: attention head shown ("mean" or an index).'),
    _S("eval.explain_max_words", 24, _num(int, 1),
      "--mode=explain: most per-word attention panels in a figure."),
    # serve
    _S("serve.max_wait_ms", 20.0, _num(float, 0),
      "--mode=serve: how long a request waits for others to share its batch."),
    _S("serve.max_upload_mb", 20.0, _num(float, 0, lo_open=True),
      "--mode=serve: largest accepted upload, per file, in MiB."),
    _S("serve.max_files", 64, _num(int, 1), "--mode=serve: most files in one upload."),
    # mesh
    _S("mesh.num_devices", 0, _num(int, 0),
      "Devices the mesh uses (the first N of jax.devices()); 0 = all of them."),
    _S("mesh.data", -1, checks.mesh_axis(),
      "Data-parallel axis size (-1 fills the remaining devices)."),
    _S("mesh.fsdp", 1, checks.mesh_axis(), "Fully-sharded data-parallel axis size."),
    _S("mesh.expert", 1, checks.mesh_axis(), "Expert-parallel axis size."),
    _S("mesh.tensor", 1, checks.mesh_axis(), "Tensor-parallel axis size."),
    _S("init_from", "", checks.path(),
      "Orbax checkpoint of a whole model (e.g. from `micar_jax.convert official`)."),
)

BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}


def build() -> ml_collections.ConfigDict:
  """A ConfigDict of every setting at its default, sections in declaration order."""
  config = ml_collections.ConfigDict()
  for setting in SETTINGS:
    *sections, name = setting.key.split(".")
    node = config
    for section in sections:
      if section not in node:
        node[section] = ml_collections.ConfigDict()
      node = node[section]
    node[name] = setting.default
  return config
