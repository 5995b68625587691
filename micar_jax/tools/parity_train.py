"""Train-step parity: N optimizer steps of the reference recipe on both sides.

  python -m micar_jax.tools.parity --reference_src=PATH --train_steps=N
      [--train_dtype=float64] [--train_tolerance=1e-9] [--image_size=64] ...

Both models start from the same weights (the reference's random ones with
randomised norms, converted with `micar_jax.convert`) and take N steps on the
same random batches (a new batch per step):
  * reference: its own loss (`utils.losses.Losses.compute_loss`: cross-entropy
    ignoring <pad> + 0.01 × the decoder's mean load-balancing loss) and its
    optimizer (AdamW, amsgrad, the vision encoder at v_lr and the rest at lr,
    weight decay), model in train mode (BatchNorm on batch statistics);
  * ours: `steps.make_train_step` with `optim.make_optimizer`, unchanged.
Dropout is 0 on both sides (it draws different random numbers). After each
step every trained tensor and BatchNorm statistic is compared in the
reference's names: max|Δ| / max|reference| per tensor, plus the two losses.

float64 (the default: `jax_enable_x64`, torch `.double()`, our
`model.dtype="float64"`) takes float32 rounding out of the comparison, so a
real difference in the math stands out. The reference runs as published except
for its RMSNorm, which rounds its input through float32 (`x.float()`) even in a
double model and here runs in the input's dtype. Its constants (the positional
table, the RoPE frequencies) are compared with ours bit for bit and kept; one
that differs (the positional table of a d_model other than 512, see
docs/reference_model.md §13) is set to ours, and the report names every such
shared piece. In float32 the trajectories part slowly for legitimate
reasons (near-tied maxima in GatedFusion's token max, conv biases before
BatchNorm whose true gradient is 0 and which AdamW turns into ±lr steps).

Even in float64 two correct implementations differ by rounding: every
convolution sums in its own order, and train-mode BatchNorm over few values
per channel (2×2 maps at 64 px) amplifies those last-bit differences layer by
layer. `noise_floor` measures how far: the reference runs again with its
model and images in channels-last memory layout, which changes the summation
order of every convolution and nothing else, and the comparison accepts up to
10× the spread between the two reference runs.
"""

import gc
import json
import os
import tempfile
import time
from typing import Any

import numpy as np

from micar_jax import errors
from micar_jax.data.tokenizer import PAD
from micar_jax.tools import torch_reference

# The reference optimises these modules at lr; `vis_enc` at v_lr.
_REST_MODULES = ("proj", "text_embs", "encoder", "decoder", "gen_logits")
_WORST = 5


def reference_optimizer(torch, model, config):
  """The reference trainer's AdamW: two parameter groups, amsgrad, weight decay."""
  t = config.train
  rest = [p for name in _REST_MODULES for p in getattr(model, name).parameters()]
  groups = [{"params": list(model.vis_enc.parameters()), "lr": t.v_lr},
            {"params": rest, "lr": t.lr}]
  grouped = {id(p) for g in groups for p in g["params"]}
  if any(p.requires_grad and id(p) not in grouped for p in model.parameters()):
    raise ValueError("the reference model has trainable parameters outside "
                     f"vis_enc and {', '.join(_REST_MODULES)}")
  return torch.optim.AdamW(groups, weight_decay=t.weight_decay, amsgrad=True)


def train_batches(batch: int, image_size: int, seq_len: int, vocab_size: int, seed: int,
                  steps: int) -> list[dict[str, np.ndarray]]:
  """`steps` batches: images [b, 3, S, S] (NCHW), input_ids, pad_mask, labels [b, T].

  Labels are the ids shifted left with <pad> appended, as the reference's
  tokenizer builds them.
  """
  out = []
  for i in range(steps):
    images, ids, pad_mask = torch_reference.random_inputs(batch, image_size, seq_len, vocab_size,
                                                 seed + 1 + i)
    labels = np.concatenate([ids[:, 1:], np.full((batch, 1), PAD, ids.dtype)], axis=1)
    out.append({"images": images, "input_ids": ids, "pad_mask": pad_mask, "labels": labels})
  return out


def relative_errors(reference: dict[str, np.ndarray], ours: dict[str, np.ndarray]
                    ) -> list[tuple[str, float, float]]:
  """(name, max|Δ| / max|reference|, max|Δ|) per reference tensor, worst first."""
  rows = []
  for name, ref in reference.items():
    delta = float(np.max(np.abs(np.asarray(ours[name], np.float64) - ref)))
    scale = float(np.max(np.abs(ref)))
    rows.append((name, delta / scale if scale else delta, delta))
  return sorted(rows, key=lambda r: -r[1])


def _patch_reference_for_float64(torch, blocks, model, constants: dict[str, np.ndarray]
                                 ) -> list[str]:
  """Takes float32 rounding out of the reference's RMSNorm; shares only the constants that
  differ from ours (module docstring). Returns what was shared, one line each, for the report."""
  # pylint: disable-next=protected-access
  blocks.RMSNorm.forward = lambda self, x: self._norm(x) * self.weight
  shared = ["RMSNorm runs in the input's dtype (the reference casts to float32 inside its "
            "float64 model)"]
  state = model.state_dict()
  with torch.no_grad():
    for name, value in constants.items():
      theirs = state[name].detach().numpy()
      if np.array_equal(theirs, np.asarray(value, theirs.dtype)):
        continue
      delta = float(np.max(np.abs(theirs - np.asarray(value, theirs.dtype))))
      shared.append(f"{name} set to ours (differed by up to {delta:.3g})")
      state[name].copy_(torch.from_numpy(np.array(value)))
  return shared


def _reference_run(torch, model, optimizer, batches, vocab_size: int, names: list[str],
                   out_dir: str, layout) -> list[tuple[float, str, float]]:
  """Takes the reference steps; (loss, saved tensors' .npz path, seconds) per step.

  The tensors after each step (float64) go to disk so that the reference model
  and its optimizer can be freed before ours is built: in float64 the two sides
  together would need twice the memory.
  """
  from utils.losses import Losses  # pylint: disable=g-import-not-at-top,import-error
  xe = torch.nn.CrossEntropyLoss(ignore_index=PAD)
  dtype = next(model.parameters()).dtype
  out = []
  for i, b in enumerate(batches, 1):
    clock = time.perf_counter()
    images = torch.from_numpy(b["images"]).to(dtype).contiguous(memory_format=layout)
    logits, lb_loss = model(images,
                            torch.from_numpy(b["input_ids"]).long(),
                            torch.from_numpy(b["pad_mask"]).long())
    loss = Losses.compute_loss(xe, vocab_size, logits, torch.from_numpy(b["labels"]).long(),
                               lb_loss)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - clock
    state = model.state_dict()
    path = os.path.join(out_dir, f"reference_{str(layout).split('.')[-1]}_step{i}.npz")
    np.savez(path, **{n: state[n].detach().numpy().astype(np.float64) for n in names})
    out.append((float(loss.item()), path, seconds))
  return out


def _reference_side(reference_src: str, config, mc, batches, vocab_size: int, seed: int,
                    dtype: str, out_dir: str, channels_last: bool = False):
  """The reference's start (as our variables, numpy) and its steps (`_reference_run`),
  in channels-last memory layout when asked (module docstring: the noise floor)."""
  from micar_jax.convert import official  # pylint: disable=g-import-not-at-top
  torch, _ = torch_reference.import_torch()
  ref = torch_reference.build_reference(reference_src, config, vocab_size, seed)
  if dtype == "float64":
    from architecture import blocks  # pylint: disable=g-import-not-at-top,import-error
    ref = ref.double()
    for line in _patch_reference_for_float64(torch, blocks, ref, official.constants(mc)):
      print(f"  shared with the reference: {line}")
  layout = torch.channels_last if channels_last else torch.contiguous_format
  ref = ref.to(memory_format=layout).train()
  optimizer = reference_optimizer(torch, ref, config)
  names = [n for n, p in ref.named_parameters() if p.requires_grad]
  names += [n for n, _ in ref.named_buffers() if n.endswith((".running_mean", ".running_var"))]
  start = official.official_state_dict_to_variables(
      {k: v.detach().numpy() for k, v in ref.state_dict().items()}, config)
  return start, _reference_run(torch, ref, optimizer, batches, vocab_size, names, out_dir,
                               layout)


def compare_training(reference_src: str, config, image_size: int, batch: int, vocab_size: int,
                     seed: int, steps: int, dtype: str, tolerance: float,
                     noise_floor: bool = False) -> bool:
  """Runs `steps` train steps on both sides, prints a table and JSON; True when they agree.

  Agreement: every tensor's max|Δ| / max|reference| and the losses' relative
  difference stay within `tolerance` after every step, or, with `noise_floor`,
  within 10 × the reference's own spread: the same error measured between the
  reference and the reference in channels-last layout (another summation order
  in every convolution, so it shows how far rounding noise alone carries:
  BatchNorm statistics over few values, as at 64 px where the last stage is 2×2,
  amplify it).
  """
  if dtype not in ("float32", "float64"):
    raise errors.UserError(f"--train_dtype must be float32 or float64, got {dtype!r}")
  if steps < 1:
    raise errors.UserError(f"--train_steps must be >= 1, got {steps}")
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_enable_x64", dtype == "float64")
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from micar_jax.convert import official  # pylint: disable=g-import-not-at-top
  from micar_jax.models import model as model_lib  # pylint: disable=g-import-not-at-top
  from micar_jax.training import optim  # pylint: disable=g-import-not-at-top
  from micar_jax.training import steps as steps_lib  # pylint: disable=g-import-not-at-top
  with config.unlocked():
    config.model.dtype = dtype
    config.model.capacity_factor = -1.0  # the reference drops no token
    config.model.dropout = config.model.attention_dropout = 0.0
    config.train.grad_clip = 0.0  # the reference does not clip
  mc = model_lib.ModelConfig.from_config(config, vocab_size)
  batches = train_batches(batch, image_size, config.data.text_seq_len, vocab_size, seed, steps)
  print(f"train-step parity, {dtype}: config {config.dataset} (num_layers={mc.num_layers}, "
        f"text_seq_len={mc.max_len}), V={vocab_size}, images {batch}x3x{image_size}x"
        f"{image_size}, seed {seed}, {steps} steps, lr {config.train.lr:g}, "
        f"v_lr {config.train.v_lr:g}, weight decay {config.train.weight_decay:g}", flush=True)
  with tempfile.TemporaryDirectory() as out_dir:
    start, reference = _reference_side(reference_src, config, mc, batches, vocab_size, seed,
                                       dtype, out_dir)
    gc.collect()  # the reference model and optimizer are gone: free their memory now
    floors = [None] * steps
    if noise_floor:
      _, perturbed = _reference_side(reference_src, config, mc, batches, vocab_size, seed,
                                     dtype, out_dir, channels_last=True)
      gc.collect()
      floors = [_spread(a, b) for a, b in zip(reference, perturbed)]
    variables = jax.tree.map(lambda a: jnp.asarray(a, dtype), start)
    del start
    # Every step falls in the first epoch: both learning rates stay at their base value,
    # as the reference's StepLR (stepped per epoch) keeps them.
    tx = optim.make_optimizer(config, steps_per_epoch=steps)
    state = steps_lib.TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"],
                                 batch_stats=variables["batch_stats"],
                                 opt_state=tx.init(variables["params"]))
    del variables
    # Donating the state keeps one copy of the float64 weights and optimizer moments.
    train_step = jax.jit(steps_lib.make_train_step(mc, tx, config), donate_argnums=0)
    report, ok = [], True
    for i, (b, (ref_loss, path, ref_seconds), floor) in enumerate(
        zip(batches, reference, floors), 1):
      clock = time.perf_counter()
      ours_batch = dict(b, images=jnp.asarray(b["images"].transpose(0, 2, 3, 1), dtype))
      state, metrics = jax.block_until_ready(train_step(state, ours_batch))
      our_seconds = time.perf_counter() - clock
      ours = official.variables_to_official_state_dict(jax.device_get(state.variables()), mc)
      with np.load(path) as ref_tensors:
        rows = relative_errors(dict(ref_tensors), ours)
      loss = float(metrics["loss"])
      loss_rel = abs(loss - ref_loss) / abs(ref_loss)
      limit = max(tolerance, 10 * max(floor.values())) if floor else tolerance
      ok = ok and rows[0][1] <= limit and loss_rel <= limit
      report.append({"step": i, "loss_reference": ref_loss, "loss_ours": loss,
                     "loss_abs_diff": abs(loss - ref_loss), "loss_rel_diff": loss_rel,
                     "tensors": len(rows), "max_rel_err": rows[0][1], "noise_floor": floor,
                     "worst": [{"tensor": n, "rel_err": r, "max_abs_diff": d}
                               for n, r, d in rows[:_WORST]]})
      _print_step(report[-1], ref_seconds, our_seconds)
  print(f"largest relative error over {steps} steps: "
        f"{max(r['max_rel_err'] for r in report):.3e} (tolerance {tolerance:.0e}): "
        f"{'OK' if ok else 'FAIL'}", flush=True)
  print("JSON " + json.dumps({"dtype": dtype, "image_size": image_size, "batch": batch,
                              "tolerance": tolerance, "ok": ok, "steps": report}), flush=True)
  return ok


def _spread(reference: tuple[float, str, float], perturbed: tuple[float, str, float]
            ) -> dict[str, float]:
  """The reference against itself in channels-last layout: largest tensor and loss errors."""
  with np.load(reference[1]) as a, np.load(perturbed[1]) as b:
    rows = relative_errors(dict(a), dict(b))
  return {"max_rel_err": rows[0][1],
          "loss_rel_diff": abs(perturbed[0] - reference[0]) / abs(reference[0])}


def _print_step(row: dict[str, Any], ref_seconds: float, our_seconds: float) -> None:
  print(f"step {row['step']}: loss reference {row['loss_reference']:.15f}, ours "
        f"{row['loss_ours']:.15f}, |Δ| {row['loss_abs_diff']:.2e} "
        f"(relative {row['loss_rel_diff']:.2e}) [reference {ref_seconds:.1f} s, ours "
        f"{our_seconds:.1f} s]; worst of {row['tensors']} tensors, max|Δ| / max|reference|:",
        flush=True)
  if row["noise_floor"]:
    print(f"    reference vs itself in channels-last layout: largest tensor error "
          f"{row['noise_floor']['max_rel_err']:.3e}, loss "
          f"{row['noise_floor']['loss_rel_diff']:.2e}", flush=True)
  for w in row["worst"]:
    print(f"    {w['rel_err']:.3e}  (max|Δ| {w['max_abs_diff']:.2e})  {w['tensor']}", flush=True)

