"""Tests for micar_jax.training.optim against a NumPy statement of torch's AdamW(amsgrad=True)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from micar_jax.config import defaults
from micar_jax.training import optim

B1, B2, EPS = 0.9, 0.999, 1e-8
# Gradient scale per step: large early, then small, so the raw second moment
# decays below its running maximum (the AMSGrad branch matters), with a
# rebound in between.
GRAD_SCALES = (3.0, 1.0, 0.1, 0.05, 2.0, 0.02, 0.05, 1.0, 0.01, 0.3, 0.02)
SHAPES = {"vis_enc": {"conv": {"kernel": (3, 3, 2, 4)}, "bn": {"scale": (4,), "bias": (4,)}},
          "proj": {"kernel": (4, 3), "bias": (3,)},
          "text_embs": {"embedding": (5, 3)},
          "out_norm": {"scale": (3,)}}


def _config(**train):
  c = defaults.base_config()
  c.train.lr, c.train.v_lr, c.train.weight_decay = 0.05, 0.02, 0.1
  c.train.epochs = 4  # StepLR period epochs // 2 = 2
  for k, v in train.items():
    setattr(c.train, k, v)
  return c


def _toy(seed=0):
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: rng.normal(size=s).astype(np.float32), SHAPES,
                        is_leaf=lambda x: isinstance(x, tuple))
  grads = []
  for scale in GRAD_SCALES:
    g = jax.tree.map(lambda p: (scale * rng.normal(size=p.shape)).astype(np.float32), params)
    g["text_embs"]["embedding"][rng.integers(0, 5)] = 0.0  # an unused embedding row
    grads.append(g)
  return params, grads


def _numpy_torch_adamw(params, grads, lr_of, wd, amsgrad_on_bias_corrected=False):
  """torch.optim.AdamW(amsgrad=True) step by step in float64.

  lr_of(top_level_key, t) is the group's rate at update t (1-based). With
  amsgrad_on_bias_corrected the max is taken of v / (1 − β2ᵗ) instead (optax's
  scale_by_amsgrad), used only to check that the toy problem tells them apart.
  """
  out = {}
  for top, sub in params.items():
    flat, tree = jax.tree.flatten(sub)
    gflat = [jax.tree.leaves(g[top]) for g in grads]
    res = []
    for i, p0 in enumerate(flat):
      p = p0.astype(np.float64)
      m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
      for t, gs in enumerate(gflat, start=1):
        g, lr = gs[i].astype(np.float64), lr_of(top, t)
        bc1, bc2 = 1 - B1**t, 1 - B2**t
        p = p * (1 - lr * wd)
        m = m + (1 - B1) * (g - m)
        v = B2 * v + (1 - B2) * g * g
        if amsgrad_on_bias_corrected:
          vmax = np.maximum(vmax, v / bc2)
          denom = np.sqrt(vmax) + EPS
        else:
          vmax = np.maximum(vmax, v)
          denom = np.sqrt(vmax) / np.sqrt(bc2) + EPS
        p = p - lr / bc1 * m / denom
      res.append(p)
    out[top] = jax.tree.unflatten(tree, res)
  return out


def _run(tx, params, grads):
  state = tx.init(params)
  update = jax.jit(tx.update)
  p = jax.tree.map(jnp.asarray, params)
  for g in grads:
    upd, state = update(g, state, p)
    p = optax.apply_updates(p, upd)
  return p


def _max_abs_diff(a, b):
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _step_lr(c, spe):
  """The reference's StepLR: group lr at update t (1-based), stepped per epoch."""
  def lr_of(top, t):
    base = c.train.v_lr if top == "vis_enc" else c.train.lr
    return base * c.train.gamma**(((t - 1) // spe) // (c.train.epochs // 2))
  return lr_of


def test_matches_torch_adamw_amsgrad_two_groups_with_lr_decay():
  c, spe = _config(), 3  # lr ×0.1 from update 7 (epoch 2), inside the 11 steps
  params, grads = _toy()
  got = _run(optim.make_optimizer(c, spe), params, grads)
  want = _numpy_torch_adamw(params, grads, _step_lr(c, spe), c.train.weight_decay)
  assert _max_abs_diff(got, want) < 2e-6
  # The toy problem separates torch's max placement from optax's, and the two lrs.
  optax_like = _numpy_torch_adamw(params, grads, _step_lr(c, spe), c.train.weight_decay,
                                  amsgrad_on_bias_corrected=True)
  assert _max_abs_diff(got, optax_like) > 1e-3
  swapped = _config(lr=c.train.v_lr, v_lr=c.train.lr)
  assert _max_abs_diff(got, _numpy_torch_adamw(params, grads, _step_lr(swapped, spe),
                                               c.train.weight_decay)) > 1e-3


def test_weight_decay_applies_to_every_parameter():
  # Zero gradients: Adam contributes nothing and each leaf shrinks by (1 − lr·wd) per step.
  c = _config()
  params, _ = _toy()
  zeros = [jax.tree.map(np.zeros_like, params)] * 2
  got = _run(optim.make_optimizer(c, 100), params, zeros)
  for top, sub in got.items():
    lr = c.train.v_lr if top == "vis_enc" else c.train.lr
    for new, old in zip(jax.tree.leaves(sub), jax.tree.leaves(params[top])):
      np.testing.assert_allclose(new, old * (1 - lr * c.train.weight_decay)**2, rtol=1e-6)


def test_step_lr_schedule_at_epoch_boundaries():
  c = defaults.base_config()  # epochs 100, lr 1e-4, v_lr 5e-5, gamma 0.1
  spe = 7
  lrs = lambda step: {k: float(v) for k, v in optim.learning_rates(c, spe, step).items()}
  assert lrs(0) == pytest.approx({"lr": 1e-4, "v_lr": 5e-5}, rel=1e-6)
  assert lrs(50 * spe - 1) == pytest.approx({"lr": 1e-4, "v_lr": 5e-5}, rel=1e-6)
  # The 51st epoch (0-based 50) runs at ×0.1, through the last epoch.
  assert lrs(50 * spe) == pytest.approx({"lr": 1e-5, "v_lr": 5e-6}, rel=1e-6)
  assert lrs(100 * spe - 1) == pytest.approx({"lr": 1e-5, "v_lr": 5e-6}, rel=1e-6)
  c.train.epochs = 30  # ROCO: ×0.1 from epoch 15 (0-based)
  assert lrs(15 * spe - 1)["lr"] == pytest.approx(1e-4, rel=1e-6)
  assert lrs(15 * spe)["lr"] == pytest.approx(1e-5, rel=1e-6)
  c.train.lr_step_epochs = 10
  assert [lrs(e * spe)["lr"] for e in (9, 10, 19, 20)] == pytest.approx(
      [1e-4, 1e-5, 1e-5, 1e-6], rel=1e-6)


def test_global_norm_clipping():
  c, spe = _config(grad_clip=1.0), 100
  params, grads = _toy(seed=1)
  norms = [float(optax.tree.norm(g)) for g in grads]
  assert min(norms) < 1.0 < max(norms)
  clipped = [jax.tree.map(lambda x, n=n: x * min(1.0, 1.0 / n), g) for g, n in zip(grads, norms)]
  got = _run(optim.make_optimizer(c, spe), params, grads)
  lr_of = _step_lr(c, spe)
  assert _max_abs_diff(got, _numpy_torch_adamw(params, clipped, lr_of, 0.1)) < 2e-6
  assert _max_abs_diff(got, _numpy_torch_adamw(params, grads, lr_of, 0.1)) > 1e-3


def test_state_shards_like_logically_partitioned_params():
  # state_lib.make_init_fn passes logically-partitioned params to tx.init; the
  # moments must inherit the params' logical axes (masked-out leaves included).
  c = _config()
  params, grads = _toy()
  names = lambda x: ("mlp" if x.shape[0] % 2 == 0 else None,) + (None,) * (x.ndim - 1)
  boxed = jax.tree.map(lambda x: nn.Partitioned(jnp.asarray(x), names=names(x)), params)
  tx = optim.make_optimizer(c, 3)
  mesh = jax.make_mesh((2,), ("data",), devices=jax.devices()[:2])
  shardings = nn.logical_to_mesh_sharding(
      nn.get_partition_spec(jax.eval_shape(tx.init, boxed)), mesh, [("mlp", "data")])
  state = nn.meta.unbox(jax.jit(tx.init, out_shardings=shardings)(boxed))
  rest, vision = (state.inner_states[k].inner_state[0] for k in ("rest", "vision"))
  assert rest.nu_max["proj"]["kernel"].sharding.spec == jax.sharding.PartitionSpec("data", None)
  assert vision.mu["vis_enc"]["bn"]["scale"].sharding.spec == jax.sharding.PartitionSpec("data")
  updates, _ = jax.jit(tx.update)(grads[0], state, nn.meta.unbox(boxed))
  assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_rejects_bad_steps_per_epoch():
  with pytest.raises(ValueError, match="steps_per_epoch"):
    optim.make_optimizer(_config(), 0)
