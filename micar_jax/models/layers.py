"""Shared building blocks: initialisers, RMSNorm, BatchNorm, activations, SwiGLU.

Initialisers follow the reference (docs/reference_model.md §3.14): xavier-uniform
on every weight with two or more dimensions outside the vision encoder, PyTorch's
default U(±1/sqrt(fan_in)) on biases, ones on norm weights.
"""

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from micar_jax import errors
from micar_jax.models import partitioning

Array = jax.Array
Dtype = Any

# Logical axis names of parameters; `micar_jax.core.sharding` maps them to mesh axes.
EMBED = "embed"  # d_model
MLP = "mlp"  # d_ff and fusion hidden widths
LATENT = "latent"  # low-rank bottleneck of latent attention
HEADS = "heads"  # d_latent channels (heads x head_dim)
VOCAB = "vocab"
EXPERT = "expert"
VISION = "vision_embed"  # d_v, the visual token width
CONV_IN = "conv_in"
CONV_OUT = "conv_out"


def xavier_uniform(axes: Sequence[str | None], batch_axis: Sequence[int] = ()) -> Callable:
  """Xavier-uniform (symmetric in fan-in/fan-out) with logical axis names."""
  init = nn.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=tuple(batch_axis))
  return nn.with_logical_partitioning(init, tuple(axes))


def torch_default_uniform(fan_in: int, axes: Sequence[str | None]) -> Callable:
  """PyTorch's default Linear/Conv bias (and kaiming(a=√5) weight) init: U(±1/sqrt(fan_in))."""
  bound = 1.0 / (fan_in ** 0.5)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return nn.with_logical_partitioning(init, tuple(axes))


class Dense(nn.Module):
  """A Linear layer laid out like PyTorch's, initialised like the reference.

  Kernel `[in, out]` with xavier-uniform; optional bias with U(±1/sqrt(in)).

  Attributes:
    features: output width.
    axes: logical names of the kernel's (in, out) axes.
    use_bias: whether to add a bias.
    dtype: computation dtype (parameters stay float32).
  """

  features: int
  axes: tuple[str | None, str | None]
  use_bias: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., in] -> [..., features]."""
    fan_in = x.shape[-1]
    kernel = self.param("kernel", xavier_uniform(self.axes), (fan_in, self.features))
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param("bias", torch_default_uniform(fan_in, (self.axes[1],)), (self.features,))
      y = y + bias.astype(self.dtype)
    return y


def upcast(dtype: Dtype) -> Dtype:
  """The dtype norms, softmax, RoPE, the router and logits compute in: float32, or
  `dtype` when it is wider (a float64 model, used by the float64 parity check)."""
  return jnp.promote_types(dtype, jnp.float32)


class RMSNorm(nn.Module):
  """x * rsqrt(mean(x²) + eps) in float32 (or wider), cast back, times a weight (init 1).

  Attributes:
    axis_name: logical name of the normalised axis.
    eps: added inside the square root (reference: 1e-6).
  """

  axis_name: str | None = EMBED
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """[..., d] -> [..., d] in x's dtype."""
    weight = self.param(
        "scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)), (x.shape[-1],))
    xf = x.astype(upcast(x.dtype))
    normed = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return batch_sharded(normed.astype(x.dtype) * weight.astype(x.dtype))


class BatchNorm(nn.Module):
  """BatchNorm2d with PyTorch's semantics over NHWC inputs.

  Train mode normalises with the biased batch variance and updates the running
  variance with the unbiased one (as torch does); eval mode uses the running
  statistics. Under `jax.jit` with a batch-sharded input, each batch shard
  reduces its own rows and only per-channel vectors cross devices
  (`batch_moments`).

  Attributes:
    momentum: weight of the old running statistic (torch momentum 0.1 -> 0.9).
    eps: variance epsilon.
    channel_axis: logical name of the channel axis.
  """

  momentum: float = 0.9
  eps: float = 1e-5
  channel_axis: str | None = CONV_OUT

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """[batch, h, w, c] -> [batch, h, w, c]."""
    c = x.shape[-1]
    axes = (self.channel_axis,)
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, axes), (c,))
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, axes), (c,))
    ra_mean = self.variable("batch_stats", "mean",
                            nn.with_logical_partitioning(nn.initializers.zeros, axes), None, (c,))
    ra_var = self.variable("batch_stats", "var",
                           nn.with_logical_partitioning(nn.initializers.ones, axes), None, (c,))
    acc = upcast(x.dtype)
    if train:
      mean, var = batch_moments(x, acc)
      if not self.is_initializing():
        n = x.size // c
        unbiased = var * (n / max(n - 1, 1))
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * unbiased
    else:
      mean, var = ra_mean.value, ra_var.value
    # Per-channel factor first: one multiply-add per element on the upcast input, which
    # XLA fuses with the convert and the cast back (no float32 copy of x is kept).
    factor = jax.lax.rsqrt(var.astype(acc) + self.eps) * scale
    y = (x.astype(acc) - mean) * factor + bias
    return batch_sharded(y.astype(x.dtype))


def batch_moments(x: Array, acc: Dtype) -> tuple[Array, Array]:
  """Per-channel mean and biased variance [c] of x [b, ..., c] in one pass over x.

  The rows split into G groups, one per batch shard of the context mesh (G = 1
  without one, or when b does not split), so a group's reduction stays on its
  device. Each group reduces E[x - s] and E[(x - s)²] together, in `acc`, from
  x upcast inside the reduction, shifted by s, one of its own pixels (no
  gradient): with s near the data, E[(x-s)²] - E[x-s]² does not cancel the
  variance's digits when a channel's mean is large against its spread. The G
  groups' means and variances then combine exactly (Chan et al.): mean of the
  group means, mean of the group variances plus the variance of the group means.
  """
  b, c = x.shape[0], x.shape[-1]
  groups = 1
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    _, shards = partitioning.batch_axes(mesh)
    groups = shards if b % shards == 0 else 1
  # [G, b/G, ..., c]: each group is one shard's contiguous batch rows, on its device.
  xg = x.reshape((groups, b // groups) + x.shape[1:])
  centre = (slice(None), 0) + tuple(n // 2 for n in x.shape[1:-1])
  shift = jax.lax.stop_gradient(xg[centre].astype(acc))  # [G, c]: the first image's centre
  d = xg.astype(acc) - shift.reshape((groups,) + (1,) * (x.ndim - 1) + (c,))
  # Two reductions of the same elementwise input: XLA fuses them into one read of x.
  reduce_axes = tuple(range(1, x.ndim))
  m1, m2 = jnp.mean(d, axis=reduce_axes), jnp.mean(jnp.square(d), axis=reduce_axes)
  group_mean, group_var = shift + m1, jnp.maximum(m2 - jnp.square(m1), 0.0)
  if groups == 1:
    return group_mean[0], group_var[0]
  # [2, G, c] to every device in one collective; the combination is then local.
  stats = partitioning.constrain(jnp.stack([group_mean, group_var]), (None, None, None))
  mean = jnp.mean(stats[0], axis=0)
  return mean, jnp.mean(stats[1], axis=0) + jnp.mean(jnp.square(stats[0] - mean), axis=0)


def batch_sharded(x: Array) -> Array:
  """Keeps an activation [batch, ...] split over the batch axes only.

  Without it, the partitioner may follow an fsdp-sharded weight into its
  activations (channels split over "fsdp") and then has to regather them
  ("Involuntary full rematerialization") to meet the batch-sharded neighbours.
  """
  return partitioning.constrain(x, ("batch",) + (None,) * (x.ndim - 1))


def telu(x: Array) -> Array:
  """TeLU: x * tanh(exp(x))."""
  return x * jnp.tanh(jnp.exp(x))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "silu": nn.silu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "selu": nn.selu,
    "telu": telu,
}


def activation(name: str) -> Callable[[Array], Array]:
  """Looks up an activation by its config name (silu, gelu, selu, telu)."""
  if name not in ACTIVATIONS:
    raise errors.ConfigError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


class SwiGLU(nn.Module):
  """w2(act(w1 x) * w3 x) without biases, dropout on the output.

  Attributes:
    d_ff: hidden width.
    act_fn: activation name (gelu makes it a GeGLU).
    dropout: output dropout rate.
    dtype: computation dtype.
  """

  d_ff: int
  act_fn: str
  dropout: float
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """[batch, tokens, d_model] -> [batch, tokens, d_model]."""
    act = activation(self.act_fn)
    h = act(Dense(self.d_ff, (EMBED, MLP), dtype=self.dtype, name="w1")(x))
    h = h * Dense(self.d_ff, (EMBED, MLP), dtype=self.dtype, name="w3")(x)
    y = Dense(x.shape[-1], (MLP, EMBED), dtype=self.dtype, name="w2")(h)
    return nn.Dropout(self.dropout)(y, deterministic=not train)
