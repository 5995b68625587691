"""Numerical parity of micar_jax with the reference PyTorch model.

  python -m micar_jax.tools.parity --reference_src=PATH [--config=configs/covctr.py]
      [--image_size=64] [--batch=2] [--vocab_size=229] [--decode_len=0]
      [--train_steps=N [--train_dtype=float64] [--train_tolerance=1e-9]]

PATH is a checkout of the reference code (github.com/AI-14/micar-vl-moe). Needs
torch, torchvision, einops and rotary-embedding-torch (never project
dependencies: run it in a separate environment). The tool builds the
reference `CaptionModel` for the config's dataset settings with random weights
(the backbone without ImageNet weights: there is no network), randomises the
BatchNorm statistics and all norm weights so that they matter, converts its
state dict with `micar_jax.convert`, and compares in eval mode on the same
random images and token ids:
  * teacher-forced logits: max |Δ| / max |logits| (fails above --tolerance);
  * the auxiliary load-balancing loss (mean over decoder layers);
  * greedy generation (micar_jax.decode, KV-cached) against the reference's
    `beam_search` (which computes greedy decoding: its beams never diverge),
    token by token.
With --train_steps=N it compares N optimizer steps instead, in float64 by
default (micar_jax.tools.parity_train).
Exit status 0 when everything agrees, 1 otherwise, 2 for a usage problem.
"""

import dataclasses
import os
import time

import numpy as np
from absl import flags

from micar_jax import cli, errors
from micar_jax.data.tokenizer import EOS, PAD, SOS
from micar_jax.tools import parity_train
from micar_jax.tools.torch_reference import build_reference, import_torch, random_inputs

_DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "configs", "covctr.py")


def define_flags() -> None:
  """Declares the flags (only when run as a program: tests import this module)."""
  flags.DEFINE_string("reference_src", None, "Checkout of the reference code.")
  cli.define_config_flag(required=False, default=_DEFAULT_CONFIG, help_text="Dataset config.")
  flags.DEFINE_integer("image_size", 224, "Square image side (64 keeps CPU runs short).")
  flags.DEFINE_integer("batch", 2, "Images per comparison.")
  flags.DEFINE_integer("vocab_size", 229, "Vocabulary size of the random model.")
  flags.DEFINE_integer("decode_len", 0, "Greedy steps (0 = text_seq_len).")
  flags.DEFINE_integer("seed", 0, "Seed of the weights and inputs.")
  flags.DEFINE_float("tolerance", 1e-4, "Largest allowed max|Δlogits| / max|logits|.")
  flags.DEFINE_integer("train_steps", 0, "Compare N optimizer steps instead of inference "
                       "(micar_jax.tools.parity_train).")
  flags.DEFINE_enum("train_dtype", "float64", ["float64", "float32"],
                    "Precision of both sides for --train_steps.")
  flags.DEFINE_float("train_tolerance", 1e-9, "Largest allowed per-tensor max|Δ| / max|ref| "
                     "and relative loss difference after each train step.")
  flags.DEFINE_bool("train_noise_floor", False, "Also run the reference in channels-last "
                    "layout (another summation order in every convolution) and accept "
                    "errors up to 10x the spread between the two reference runs.")


def same_generation(reference: np.ndarray, ours: np.ndarray) -> tuple[bool, str]:
  """Compares reference `beam_search` ids with ours ([b, steps + 1], <pad> after a stop).

  The reference returns steps + 1 columns, or pads to `steps` columns when every
  row emitted <eos> at one early step; our extra columns must then be <pad>.

  Returns:
    (identical, a description of the first difference or "").
  """
  width = reference.shape[1]
  if not np.all(ours[:, width:] == PAD):
    return False, f" (ours continues after the reference stopped at {width} columns)"
  diff = np.argwhere(reference != ours[:, :width])
  if not len(diff):
    return True, ""
  row, t = map(int, diff[0])
  return False, (f" (first difference: image {row}, position {t}: reference "
                 f"{reference[row, t]}, ours {ours[row, t]})")


def compare(reference_src: str, config, image_size: int, batch: int, vocab_size: int,
            decode_len: int, seed: int, tolerance: float) -> bool:
  """Runs both models and prints the figures; True when they agree."""
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top

  from micar_jax import convert, decode  # pylint: disable=g-import-not-at-top
  from micar_jax.models import model as model_lib  # pylint: disable=g-import-not-at-top
  seq_len = config.data.text_seq_len
  steps = decode_len or seq_len
  if not 0 < steps <= seq_len:
    raise errors.UserError(f"--decode_len must be in 1..text_seq_len={seq_len}")
  torch, _ = import_torch()
  with config.unlocked():
    config.model.dtype = "float32"
    config.model.capacity_factor = -1.0  # the reference drops no token
  ref = build_reference(reference_src, config, vocab_size, seed)
  state_dict = {k: v.detach().cpu().numpy() for k, v in ref.state_dict().items()}
  variables = convert.official_state_dict_to_variables(state_dict, config)
  mc = model_lib.ModelConfig.from_config(config, vocab_size)
  ours = model_lib.MicarVLMoE(mc)
  images, ids, pad_mask = random_inputs(batch, image_size, seq_len, vocab_size, seed)
  nhwc = images.transpose(0, 2, 3, 1)

  clock = time.perf_counter()
  with torch.no_grad():
    ref_logits, ref_aux = ref(torch.from_numpy(images), torch.from_numpy(ids).long(),
                              torch.from_numpy(pad_mask).long())
  ref_seconds, clock = time.perf_counter() - clock, time.perf_counter()
  forward = jax.jit(lambda v, x, t, p: ours.apply(v, x, t, p, False))
  logits, stats = jax.block_until_ready(forward(variables, nhwc, ids, pad_mask))
  our_seconds = time.perf_counter() - clock
  ref_logits, logits = ref_logits.numpy(), np.asarray(logits)
  delta = float(np.max(np.abs(logits - ref_logits)))
  scale = float(np.max(np.abs(ref_logits)))
  ratio = delta / scale
  logits_ok = ratio <= tolerance
  print(f"config: {config.dataset} (num_layers={mc.num_layers}, act_fn={mc.act_fn}, "
        f"text_seq_len={seq_len}), V={vocab_size}, images {batch}x3x{image_size}x{image_size}, "
        f"seed {seed}", flush=True)
  print(f"logits: max|Δ| = {delta:.3e}, max|logits| = {scale:.3e}, ratio = {ratio:.3e} "
        f"(tolerance {tolerance:.0e}): {'OK' if logits_ok else 'FAIL'} "
        f"[reference {ref_seconds:.1f} s, ours {our_seconds:.1f} s incl. compile]", flush=True)
  print(f"aux loss: reference {float(ref_aux):.7f}, ours {float(stats['aux']):.7f}, "
        f"|Δ| = {abs(float(ref_aux) - float(stats['aux'])):.2e}", flush=True)

  clock = time.perf_counter()
  with torch.no_grad():
    ref_ids = ref.beam_search(torch.from_numpy(images), SOS, EOS, PAD, 3, steps).numpy()
  ref_seconds, clock = time.perf_counter() - clock, time.perf_counter()
  # Decoding `steps` positions needs a PE table and KV cache of that length only.
  generate = decode.make_generate_fn(
      dataclasses.replace(mc, max_len=steps),
      ml_collections.ConfigDict({"decode": "greedy", "beam_width": 1, "length_penalty": 0.0}))
  ours_ids = np.asarray(generate(variables["params"], variables["batch_stats"], nhwc))
  our_seconds = time.perf_counter() - clock
  same, detail = same_generation(ref_ids, ours_ids)
  print(f"greedy (cached, micar_jax.decode): {steps} steps x {batch} images, token-identical "
        f"to the reference beam_search: {'yes' if same else 'NO'}{detail} "
        f"[reference {ref_seconds:.1f} s, ours {our_seconds:.1f} s incl. compile]", flush=True)
  return logits_ok and same


def main(argv: list[str]) -> int:
  cli.expect_no_arguments(argv)
  f = flags.FLAGS
  if not f.reference_src:
    raise errors.UserError("--reference_src=PATH (a checkout of the reference code) is required")
  if f.train_steps:
    ok = parity_train.compare_training(f.reference_src, f.config, f.image_size, f.batch,
                                       f.vocab_size, f.seed, f.train_steps, f.train_dtype,
                                       f.train_tolerance, f.train_noise_floor)
  else:
    ok = compare(f.reference_src, f.config, f.image_size, f.batch, f.vocab_size,
                 f.decode_len, f.seed, f.tolerance)
  return 0 if ok else 1


if __name__ == "__main__":
  cli.run(main, define_flags)
