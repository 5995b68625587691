"""MSVE: the multiscale vision encoder (ResNet + FPN + fusion + 7×7 pooling).

Resizing and pooling are defined by small interpolation / averaging matrices
(`bilinear_matrix`, `adaptive_pool_matrix`): PyTorch's semantics (bilinear,
align_corners=False; AdaptiveAvgPool2d bin edges) at any size. `resize_axis`
applies only their nonzeros, one axis at a time with channels minor: shifted
slices and a lerp for integer upsampling, a reshaped mean for whole pooling
windows, a gather otherwise (a dense einsum would be skinny matmuls over
millions of rows plus NCHW transposes).
"""

import functools
import math
import operator
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from micar_jax.models import layers, resnet
from micar_jax.models.model_config import ModelConfig

Array = jax.Array


@functools.lru_cache(maxsize=None)
def bilinear_matrix(out_size: int, in_size: int) -> np.ndarray:
  """[out, in] weights of torch bilinear interpolation, align_corners=False."""
  m = np.zeros((out_size, in_size), np.float64)  # exact for a float64 model
  scale = in_size / out_size
  for i in range(out_size):
    src = max((i + 0.5) * scale - 0.5, 0.0)
    lo = min(int(math.floor(src)), in_size - 1)
    hi = min(lo + 1, in_size - 1)
    frac = src - lo
    m[i, lo] += 1.0 - frac
    m[i, hi] += frac
  return m


@functools.lru_cache(maxsize=None)
def adaptive_pool_matrix(out_size: int, in_size: int) -> np.ndarray:
  """[out, in] weights of torch AdaptiveAvgPool (bins floor(i·n/o) .. ceil((i+1)·n/o))."""
  m = np.zeros((out_size, in_size), np.float64)  # exact for a float64 model
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    m[i, start:end] = 1.0 / (end - start)
  return m


MatrixFn = Callable[[int, int], np.ndarray]


@functools.lru_cache(maxsize=None)
def _upsample_taps(factor: int) -> np.ndarray:
  """[3, factor] weights of x[q-1], x[q], x[q+1] in output q·factor + r (bilinear).

  torch's source index of that output is q + (r + 0.5) / factor - 0.5; at the
  borders it clamps, which edge padding reproduces (both taps read the same
  pixel, the weights sum to 1).
  """
  taps = np.zeros((3, factor), np.float64)
  for r in range(factor):
    offset = (r + 0.5) / factor - 0.5
    if offset < 0:
      taps[0, r], taps[1, r] = -offset, 1.0 + offset
    else:
      taps[1, r], taps[2, r] = 1.0 - offset, offset
  return taps


@functools.lru_cache(maxsize=None)
def _matrix_taps(matrix_fn: MatrixFn, out_size: int, in_size: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """The nonzeros of each row of an [out, in] matrix: (index [K, out], weight [K, out]).

  K is the most nonzeros of any row; shorter rows are padded with weight 0.
  """
  m = matrix_fn(out_size, in_size)
  k = int(np.max(np.count_nonzero(m, axis=1)))
  index, weight = np.zeros((k, out_size), np.int32), np.zeros((k, out_size), np.float64)
  for o in range(out_size):
    cols = np.flatnonzero(m[o])
    index[:len(cols), o], weight[:len(cols), o] = cols, m[o, cols]
  return index, weight


def _along(w: np.ndarray, axis: int, ndim: int, dtype: Any) -> Array:
  """A [n] weight vector shaped to broadcast along `axis` of an ndim array."""
  shape = [1] * ndim
  shape[axis] = w.shape[0]
  return jnp.asarray(w.reshape(shape), dtype)


def resize_axis(x: Array, matrix_fn: MatrixFn, out_size: int, axis: int) -> Array:
  """Applies matrix_fn(out_size, n) [out, n] along `axis` of x, channels staying minor.

  Only the matrix's nonzeros are read, in x's layout: no transposes and no
  skinny matmuls (the matrices have 1-2 nonzeros a row for bilinear, one window
  for pooling). Integer upsampling lerps shifted slices of the edge-padded input
  (elementwise, so its gradient is too); pooling windows that tile the axis are
  a reshape and a mean; any other size gathers each row's nonzeros. Sums run in
  float32 (or wider) and are cast back to x's dtype.

  Args:
    x: [..., n, ..., c] with n at `axis` (1 or 2 of [b, h, w, c]).
    matrix_fn: `bilinear_matrix` or `adaptive_pool_matrix`.
    out_size: the new length of `axis`.
    axis: the resized axis.

  Returns:
    x with `axis` resized to out_size, equal to the matrix product up to rounding.
  """
  n = x.shape[axis]
  acc = layers.upcast(x.dtype)
  xf = x.astype(acc)
  new_shape = x.shape[:axis] + (out_size,) + x.shape[axis + 1:]
  if matrix_fn is bilinear_matrix and out_size % n == 0:
    factor = out_size // n
    padded = jnp.pad(xf, [(1, 1) if a == axis else (0, 0) for a in range(x.ndim)], mode="edge")
    taps = _upsample_taps(factor)
    # Output q·factor + r: Σ_j taps[j, r] · x[q + j - 1], interleaved by the reshape.
    y = functools.reduce(operator.add, (
        jnp.expand_dims(jax.lax.slice_in_dim(padded, j, j + n, axis=axis), axis + 1)
        * _along(taps[j], axis + 1, x.ndim + 1, acc) for j in range(3)))
  elif matrix_fn is adaptive_pool_matrix and n % out_size == 0:
    windows = xf.reshape(x.shape[:axis] + (out_size, n // out_size) + x.shape[axis + 1:])
    y = jnp.mean(windows, axis=axis + 1)
  else:
    index, weight = _matrix_taps(matrix_fn, out_size, n)
    y = functools.reduce(operator.add, (
        jnp.take(xf, index[j], axis=axis) * _along(weight[j], axis, x.ndim, acc)
        for j in range(len(index))))
  return y.reshape(new_shape).astype(x.dtype)


def resize_2d(x: Array, matrix_fn: MatrixFn, out_hw: tuple[int, int]) -> Array:
  """Applies separable [out, in] matrices on H, then W: [b, h, w, c] -> [b, oh, ow, c]."""
  return resize_axis(resize_axis(x, matrix_fn, out_hw[0], 1), matrix_fn, out_hw[1], 2)


def upsample(x: Array, out_hw: tuple[int, int]) -> Array:
  """Bilinear resize like F.interpolate(mode="bilinear", align_corners=False)."""
  if x.shape[1:3] == tuple(out_hw):
    return x
  return resize_2d(x, bilinear_matrix, out_hw)


class ConvBNReLU(nn.Module):
  """Conv (bias) → BatchNorm → ReLU, the FPN lateral and fusion unit.

  Weights and biases use PyTorch's Conv2d default, U(±1/sqrt(fan_in)).

  Attributes:
    features: output channels (d_v).
    kernel: 1 (lateral) or 3 (fusion, padding 1).
    dtype: computation dtype.
  """

  features: int
  kernel: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """[b, h, w, c_in] -> [b, h, w, features]."""
    fan_in = x.shape[-1] * self.kernel * self.kernel
    pad = self.kernel // 2
    y = nn.Conv(
        self.features, (self.kernel, self.kernel), padding=((pad, pad), (pad, pad)),
        dtype=self.dtype,
        kernel_init=layers.torch_default_uniform(
            fan_in, (None, None, layers.CONV_IN, layers.VISION)),
        bias_init=layers.torch_default_uniform(fan_in, (layers.VISION,)),
        name="conv")(x)
    y = layers.BatchNorm(channel_axis=layers.VISION, name="bn")(y, train)
    return nn.relu(y)


class MSVE(nn.Module):
  """ResNet C2..C5 → FPN laterals → top-down sum → fusion → adaptive pool.

  Reads from `cfg`: stage_sizes (ResNet blocks per stage), resnet_width (stem
  width), d_v (FPN / fusion channels), pool_size (output grid side; tokens =
  pool_size²) and compute_dtype.

  Attributes:
    cfg: the model configuration.
  """

  cfg: ModelConfig

  @nn.compact
  def __call__(self, images: Array, train: bool) -> Array:
    """[batch, H, W, 3] normalised images -> [batch, pool_size², d_v] tokens (raster order)."""
    cfg, dtype = self.cfg, self.cfg.compute_dtype
    c2, c3, c4, c5 = resnet.ResNet(cfg.stage_sizes, cfg.resnet_width, dtype, cfg.scan_blocks,
                                   name="backbone")(images.astype(dtype), train)
    lateral = lambda i, c: ConvBNReLU(cfg.d_v, 1, dtype, name=f"fpn_c{i}")(c, train)
    p5 = lateral(5, c5)
    p4 = lateral(4, c4) + upsample(p5, c4.shape[1:3])
    p3 = lateral(3, c3) + upsample(p4, c3.shape[1:3])
    p2 = lateral(2, c2) + upsample(p3, c2.shape[1:3])
    hw = p2.shape[1:3]
    fused = p2 + upsample(p3, hw) + upsample(p4, hw) + upsample(p5, hw)
    fused = ConvBNReLU(cfg.d_v, 3, dtype, name="fusion")(fused, train)
    pooled = resize_2d(fused, adaptive_pool_matrix, (cfg.pool_size, cfg.pool_size))
    return pooled.reshape(pooled.shape[0], -1, cfg.d_v)
