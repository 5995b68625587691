"""How far a config's compute dtype moves training from float32, on the same data.

  python -m micar_jax.tools.precision --config=configs/mmr.py:fast,tiny [--steps=5]

Builds the config twice, once as given and once with model.dtype=float32,
from the same seed (parameters are float32 in both, so both start identical),
trains both for --steps steps on the same random batch (same dropout keys),
and prints one JSON object:
  dtype                 the config's compute dtype;
  loss                  {dtype: [loss after each step]} for both runs;
  loss_rel_diff         |loss - loss_fp32| / |loss_fp32| after each step;
  logits_rel_diff       ||logits - logits_fp32|| / ||logits_fp32|| (Frobenius, eval
                        mode, on another random batch) at init and after training;
  argmax_agreement      share of positions where both pick the same token, likewise.
"""

from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import flags

from micar_jax import cli, errors
from micar_jax.config import defaults
from micar_jax.core import sharding
from micar_jax.data import batch_spec
from micar_jax.models import model as model_lib
from micar_jax.models import partitioning
from micar_jax.performance import bench, timing

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Declared only when run as a program, so importing this module defines no flags."""
  cli.define_config_flag(help_text="Config file whose dtype is compared.")
  flags.DEFINE_integer("steps", 5, "Train steps of each run.")


def eval_logits(mc: model_lib.ModelConfig, state: Any, batch: dict[str, np.ndarray]
                ) -> np.ndarray:
  """Eval-mode logits [b, T, V] float32 of the model at `state` on `batch`."""
  logits, _ = model_lib.MicarVLMoE(mc).apply(
      state.variables(), batch["images"], batch["input_ids"], batch["pad_mask"], False)
  return np.asarray(logits, np.float32)


def compare_logits(a: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
  """(relative Frobenius difference of a from ref, share of equal argmax tokens)."""
  rel = float(np.linalg.norm(a - ref) / np.linalg.norm(ref))
  return rel, float(np.mean(np.argmax(a, -1) == np.argmax(ref, -1)))


def train_and_probe(config: ml_collections.ConfigDict, steps: int
                    ) -> tuple[list[float], np.ndarray, np.ndarray]:
  """(loss after each step, eval logits at init, eval logits after the steps)."""
  vocab = config.model.vocab_size or defaults.DEFAULT_VOCAB
  config.model.vocab_size = vocab
  mc = model_lib.ModelConfig.from_config(config, vocab)
  mesh = sharding.make_mesh(config, jax.devices()[:1])
  rules = partitioning.logical_rules()
  spec = batch_spec.BatchSpec.from_config(config)
  probe = spec.with_batch_size(config.eval.batch_size).random(mc.vocab_size, seed=1)
  run = timing.compile_train(config, mc, mesh, rules, spec)
  with partitioning.use_mesh(mesh, rules):
    before = eval_logits(mc, run.state, probe)
    losses = [float(timing.time_steps(run, 1)[1]["loss"]) for _ in range(steps)]
    after = eval_logits(mc, run.state, probe)
  return losses, before, after


def compare(config: ml_collections.ConfigDict, steps: int) -> dict[str, Any]:
  """The JSON-ready comparison of config's dtype with float32 (module docstring)."""
  if steps < 1:
    raise errors.UserError(f"--steps must be >= 1, got {steps}")
  config = config.copy_and_resolve_references()
  dtype = config.model.dtype
  reference = config.copy_and_resolve_references()
  reference.model.dtype = "float32"
  loss, before, after = train_and_probe(config, steps)
  loss_ref, before_ref, after_ref = train_and_probe(reference, steps)
  init, trained = compare_logits(before, before_ref), compare_logits(after, after_ref)
  return {
      "dtype": dtype, "steps": steps, "loss": {dtype: loss, "float32": loss_ref},
      "loss_rel_diff": [abs(a - b) / abs(b) for a, b in zip(loss, loss_ref)],
      "logits_rel_diff": {"init": init[0], "trained": trained[0]},
      "argmax_agreement": {"init": init[1], "trained": trained[1]},
  }


def main(argv: Sequence[str]) -> None:
  cli.expect_no_arguments(argv)
  bench.print_json(lambda: compare(FLAGS.config, FLAGS.steps))


if __name__ == "__main__":
  cli.run(main, define_flags)
