"""One run folder's shared pieces, and testing its best checkpoint.

`Run` is what training, testing, prediction and explanation all need: the
config (with a converted model's vocabulary filled in), the tokenizer, the
model config, the mesh and its logical rules, and the checkpoints.
"""

import os
from typing import Any, Callable, Iterable

import jax
import ml_collections
import numpy as np

from micar_jax import decode as decode_lib
from micar_jax import errors, evaluate
from micar_jax.core import checkpointing, sharding, weights
from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec, input_pipeline
from micar_jax.data import tokenizer as tokenizer_lib
from micar_jax.metrics import scores as scores_lib
from micar_jax.models import model as model_lib
from micar_jax.models import partitioning


class Run:
  """Everything one workdir's training, evaluation and prediction share.

  Attributes:
    config: the run's one config; a copy of the given one when a converted
      model (config.init_from) supplies the vocabulary, else the given one.
    batch_spec: the global train batch (config.train.batch_size rows, the
      tokenizer's text length), also the shapes the model is initialised for.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str):
    converted_vocab = os.path.join(config.init_from, "token2id.json")
    if config.init_from and not config.data.vocab_path and os.path.exists(converted_vocab):
      # A converted model carries its vocabulary (micar_jax.convert official).
      config = config.copy_and_resolve_references()
      config.data.vocab_path = converted_vocab
    self.config, self.workdir = config, workdir
    # Process 0 prints the status lines and user-facing output.
    self.is_lead = jax.process_index() == 0
    self.tokenizer = tokenizer_lib.load_or_build_tokenizer(config, config.data_dir, workdir)
    self.model_config = model_lib.ModelConfig.from_config(config, self.tokenizer.vocab_size)
    self.batch_spec = batch_spec.BatchSpec.from_config(config, self.tokenizer)
    checkpointing.check_run_config(workdir, checkpointing.run_config_of(self.model_config))
    devices = jax.devices()[:config.mesh.num_devices] if config.mesh.num_devices else None
    self.mesh = sharding.make_mesh(config, devices)
    self.rules = partitioning.logical_rules()
    self.batch_sharding = sharding.batch_sharding(self.mesh)
    self.checkpoints = checkpointing.Checkpoints(workdir)

  def put(self, batch: dict[str, np.ndarray], pad: bool = True) -> dict[str, jax.Array]:
    """Host batch (this process's rows) -> global arrays sharded over the batch axes.

    With `pad`, rows are appended (zeros, valid=False; `batch_spec.pad_rows`) up
    to a multiple of the mesh's batch shards, so any eval.batch_size works on any
    mesh; the outputs then have extra rows at the end.
    """
    arrays = {k: v for k, v in batch.items() if isinstance(v, np.ndarray)}
    return sharding.global_batch(arrays, self.mesh, pad=pad)

  def abstract_variables(self) -> dict[str, Any]:
    """Sharded ShapeDtypeStructs of {params, batch_stats} (a restore target)."""
    init = state_lib.make_variables_init_fn(self.model_config, self.batch_spec)
    return sharding.abstract_sharded(init, self.mesh, self.rules, jax.random.PRNGKey(0))

  def generate_fn(self) -> Callable[..., jax.Array]:
    """(variables, images [b, H, W, 3] or [b, V, H, W, 3], valid [b] bool) -> token ids [b, T]."""
    fn = decode_lib.make_generate_fn(self.model_config, self.config.eval)
    return lambda variables, images, valid: fn(variables["params"], variables["batch_stats"],
                                               images, valid)

  def best_variables(self) -> dict[str, Any]:
    """{params, batch_stats} of the best checkpoint, else of config.init_from."""
    restored = self.checkpoints.restore_best(self.abstract_variables())
    if restored is None and self.config.init_from:
          return weights.load_model_init(self.config.init_from, self.abstract_variables())
    if restored is None:
      raise errors.UserError(f"workdir {self.workdir} has no best checkpoint yet; run "
                             "--mode=train first (or pass --config.init_from=DIR)")
    return restored[0]

  def evaluate_split(self, variables: dict[str, Any], split: str, generate_fn: Callable,
                     suites, between: Callable[[Iterable], Iterable] = iter
                     ) -> tuple[list[dict], scores_lib.Scores]:
    """Generates a report per example of `split` and scores them with `suites`.

    `between` wraps the batches (e.g. stopping.StopSignals.between, which stops
    between two batches once a signal came).
    """
    batches, rows = input_pipeline.make_eval_batches(self.config, self.tokenizer, split)
    with partitioning.use_mesh(self.mesh, self.rules):
      examples = evaluate.generate_split(generate_fn, variables, between(batches), rows,
                                         self.tokenizer, self.put, self.config.eval.keep_after_eos)
    return examples, evaluate.score(examples, self.config, suites)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes the complete config to workdir/config.json (what `resolve_image` reads data_dir from).

  Unlike run_config.json, which holds what a checkpoint must agree with, this
  is every setting of the last training started in the folder, for a reader.
  """
  path = os.path.join(workdir, evaluate.CONFIG_FILE)
  if jax.process_index() == 0:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
      f.write(config.to_json_best_effort(indent=1, sort_keys=True) + "\n")
    os.replace(path + ".tmp", path)
  return path


def test_best(run: Run, generate_fn: Callable | None = None,
              variables: dict[str, Any] | None = None) -> dict[str, Any]:
  """Tests the best checkpoint (or the given variables); writes test/generated_reports.csv
  and test/scores.json."""
  generate_fn = generate_fn or run.generate_fn()
  variables = run.best_variables() if variables is None else variables
  examples, scores = run.evaluate_split(variables, "test", generate_fn, run.config.eval.suites)
  raw = evaluate.score(examples, run.config, run.config.eval.suites, against="report")
  out = {"label_references": scores.values, "raw_references": raw.values,
         "skipped": scores.skipped, "partial": scores.partial, "num_examples": len(examples)}
  test_dir = os.path.join(run.workdir, "test")
  # Image paths relative to the run (or data) folder: a moved run folder still finds them.
  stored = [dict(e, image=evaluate.stored_image(e["image"], run.workdir, run.config.data_dir))
            for e in examples]
  evaluate.write_reports_csv(os.path.join(test_dir, "generated_reports.csv"), stored)
  evaluate.write_json(os.path.join(test_dir, "scores.json"), out)
  evaluate.write_examples_jsonl(os.path.join(test_dir, "examples.jsonl"), stored, run.config,
                                run.config.eval.suites)
  if run.is_lead:
    print(evaluate.scores_table(scores, "test scores (against the label-derived references, as "
                                        "the paper reports them):"))
  print(f"reports: {os.path.join(test_dir, 'generated_reports.csv')}")
  print(f"scores: {os.path.join(test_dir, 'scores.json')}")
  return out
