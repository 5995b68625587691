"""MSVE: the multiscale vision encoder (ResNet + FPN + fusion + 7×7 pooling).

Resizing and pooling are written as small interpolation / averaging matrices
applied with einsum: exact PyTorch semantics (bilinear, align_corners=False;
AdaptiveAvgPool2d bin edges) at any size, and matmul-friendly on accelerators.
"""

import functools
import math
from typing import Any

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


def resize_2d(x: Array, matrix_fn, out_hw: tuple[int, int]) -> Array:
  """Applies separable [out, in] matrices on H and W: [b, h, w, c] -> [b, oh, ow, c]."""
  mh = jnp.asarray(matrix_fn(out_hw[0], x.shape[1]), x.dtype)
  mw = jnp.asarray(matrix_fn(out_hw[1], x.shape[2]), x.dtype)
  return jnp.einsum("oh,pw,bhwc->bopc", mh, mw, x)


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
    c2, c3, c4, c5 = resnet.ResNet(cfg.stage_sizes, cfg.resnet_width, dtype,
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
