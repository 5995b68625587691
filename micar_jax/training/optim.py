"""The reference's optimiser: AdamW(amsgrad=True), two learning rates, StepLR.

docs/reference_model.md §5: `torch.optim.AdamW(amsgrad=True)` with betas
(0.9, 0.999), eps 1e-8 and decoupled weight decay on every parameter; the
vision encoder (top-level params key "vis_enc") uses `train.v_lr`, the rest
`train.lr`; both decay by `train.gamma` every `train.lr_step_epochs` epochs
(0 = epochs // 2), stepped once per epoch.

optax's `scale_by_amsgrad` takes the running maximum of the *bias-corrected*
second moment, whereas torch takes the maximum of the raw second moment and
divides by the current step's bias correction afterwards. The two differ while
the maximum holds an old value, so `scale_by_torch_amsgrad` restates torch's
order. Per update (t = 1, 2, ...; lr is the group's scheduled rate):

  p ← p·(1 − lr·wd)                         (uses p before the Adam step)
  m ← β1·m + (1 − β1)·g;  v ← β2·v + (1 − β2)·g²;  v̂ ← max(v̂, v)
  p ← p − lr/(1 − β1ᵗ) · m / (√v̂ / √(1 − β2ᵗ) + ε)

The chain scale_by_torch_amsgrad → add_decayed_weights(wd) →
scale_by_learning_rate(schedule) yields the same −lr·(adam + wd·p).
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

Array = jax.Array

# Top-level params key of the vision encoder (MSVE), optimised with v_lr.
VISION_KEY = "vis_enc"
_VISION, _REST = "vision", "rest"

BETAS = (0.9, 0.999)
EPS = 1e-8


class ScaleByTorchAmsgradState(NamedTuple):
  """count: updates applied so far; mu, nu, nu_max: trees shaped like params."""

  count: Array
  mu: Any
  nu: Any
  nu_max: Any


def _bias_correction(beta: float, count: Array) -> Array:
  """1 − betaᶜᵒᵘⁿᵗ in float32 without cancellation.

  torch evaluates this in float64; the direct float32 form loses ~1e-5
  relative accuracy for beta = 0.999 (0.999 itself is inexact in float32),
  while −expm1(count·log(beta)) stays within a few ulps.
  """
  # log(beta) in Python float64, rounded once to float32 (float64 under jax_enable_x64).
  dtype = jnp.result_type(float)
  return -jnp.expm1(count.astype(dtype) * jnp.asarray(math.log(beta), dtype))


def scale_by_torch_amsgrad(b1: float = BETAS[0], b2: float = BETAS[1],
                           eps: float = EPS) -> optax.GradientTransformation:
  """AMSGrad scaling in torch.optim.Adam(W)'s order (max of the raw second moment).

  Args:
    b1: decay of the first moment.
    b2: decay of the second moment.
    eps: added to the bias-corrected √v̂ (outside the root, as torch).

  Returns:
    A transformation whose update is m̂ / (√v̂ / √(1 − b2ᵗ) + eps), m̂ = m / (1 − b1ᵗ).
  """

  def init_fn(params):
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    return ScaleByTorchAmsgradState(count=jnp.zeros([], jnp.int32), mu=zeros(), nu=zeros(),
                                    nu_max=zeros())

  def update_fn(updates, state, params=None):
    del params
    mu = jax.tree.map(lambda g, m: b1 * m + (1.0 - b1) * g, updates, state.mu)
    nu = jax.tree.map(lambda g, v: b2 * v + (1.0 - b2) * g * g, updates, state.nu)
    nu_max = jax.tree.map(jnp.maximum, state.nu_max, nu)
    count = optax.safe_increment(state.count)
    bc1 = _bias_correction(b1, count)
    bc2_sqrt = jnp.sqrt(_bias_correction(b2, count))
    out = jax.tree.map(lambda m, v: (m / bc1) / (jnp.sqrt(v) / bc2_sqrt + eps), mu, nu_max)
    return out, ScaleByTorchAmsgradState(count=count, mu=mu, nu=nu, nu_max=nu_max)

  return optax.GradientTransformation(init_fn, update_fn)


def lr_step_epochs(config: ml_collections.ConfigDict) -> int:
  """StepLR period in epochs: train.lr_step_epochs, or epochs // 2 (at least 1)."""
  return config.train.lr_step_epochs or max(1, config.train.epochs // 2)


def step_lr_schedule(base_lr: float, config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.Schedule:
  """base_lr · gamma^((step // steps_per_epoch) // lr_step_epochs), step = updates done."""
  if steps_per_epoch < 1:
    raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
  period = lr_step_epochs(config)
  gamma = config.train.gamma

  def schedule(step):
    decays = (jnp.asarray(step, jnp.int32) // steps_per_epoch) // period
    dtype = jnp.result_type(float)  # float32; float64 under jax_enable_x64
    return base_lr * jnp.power(jnp.asarray(gamma, dtype), decays.astype(dtype))

  return schedule


def param_labels(params: Any) -> Any:
  """"vision" for every leaf under the top-level key "vis_enc", else "rest" (same tree)."""

  def label(path, _):
    return _VISION if getattr(path[0], "key", None) == VISION_KEY else _REST

  return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """The reference's AdamW(amsgrad) with per-group StepLR, optional global-norm clipping.

  Args:
    config: reads train.{lr, v_lr, weight_decay, gamma, lr_step_epochs, epochs, grad_clip}.
    steps_per_epoch: optimizer updates per epoch (the schedule steps at epoch ends).

  Returns:
    A transformation for a params tree whose top-level key "vis_enc" holds the
    vision encoder; leaves may be plain arrays or logical-partitioning boxes.
  """
  t = config.train

  def group(base_lr: float) -> optax.GradientTransformation:
    return optax.chain(scale_by_torch_amsgrad(), optax.add_decayed_weights(t.weight_decay),
                       optax.scale_by_learning_rate(
                           step_lr_schedule(base_lr, config, steps_per_epoch)))

  tx = optax.partition({_VISION: group(t.v_lr), _REST: group(t.lr)}, param_labels)
  if t.grad_clip > 0:
    # Clipping sees the whole gradient (both groups), as torch's clip_grad_norm_.
    tx = optax.chain(optax.clip_by_global_norm(t.grad_clip), tx)
  return tx


def learning_rates(config: ml_collections.ConfigDict, steps_per_epoch: int,
                   step: int | Array) -> dict[str, Array]:
  """{"lr": ..., "v_lr": ...} in force for the update after `step` updates (for logging)."""
  return {"lr": step_lr_schedule(config.train.lr, config, steps_per_epoch)(step),
          "v_lr": step_lr_schedule(config.train.v_lr, config, steps_per_epoch)(step)}
