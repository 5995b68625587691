"""ResNet v1.5 bottleneck backbone (torchvision layout), NHWC, returning C2..C5.

Stride 2 sits in the 3×3 conv of the first block of stages 2-4, padding is
explicit and symmetric as in PyTorch (XLA's "SAME" would pad stride-2 convs
asymmetrically), and BatchNorm follows PyTorch's statistics.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from micar_jax.models import layers

Array = jax.Array

# Bottleneck stage sizes by depth (torchvision v1.5).
RESNET_STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _conv_init():
  """torchvision's ResNet conv init: kaiming-normal, fan_out, relu gain."""
  init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
  return nn.with_logical_partitioning(init, (None, None, layers.CONV_IN, layers.CONV_OUT))


def conv(features: int, kernel: int, stride: int, dtype: Any, name: str) -> nn.Conv:
  """A bias-free conv with PyTorch's symmetric padding kernel // 2."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, dtype=dtype,
                 kernel_init=_conv_init(), name=name)


class Bottleneck(nn.Module):
  """1×1 → 3×3 (stride) → 1×1 (×4 channels), BN after each, projection shortcut.

  Attributes:
    width: channels of the 3×3 conv; the block outputs 4 * width.
    stride: spatial stride of the 3×3 conv and the shortcut.
    dtype: computation dtype.
  """

  width: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> Array:
    """[batch, h, w, c_in] -> [batch, h / stride, w / stride, 4 * width]."""
    out_ch = self.width * 4
    y = conv(self.width, 1, 1, self.dtype, "conv1")(x)
    y = nn.relu(layers.BatchNorm(name="bn1")(y, train))
    y = conv(self.width, 3, self.stride, self.dtype, "conv2")(y)
    y = nn.relu(layers.BatchNorm(name="bn2")(y, train))
    y = conv(out_ch, 1, 1, self.dtype, "conv3")(y)
    y = layers.BatchNorm(name="bn3")(y, train)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_ch:
      shortcut = conv(out_ch, 1, self.stride, self.dtype, "downsample_conv")(x)
      shortcut = layers.BatchNorm(name="downsample_bn")(shortcut, train)
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """Stem (7×7/2 conv, BN, ReLU, 3×3/2 max-pool) and four bottleneck stages.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 23, 3) for ResNet-101.
    width: stem width; stage k has bottleneck width width * 2**k.
    dtype: computation dtype.
  """

  stage_sizes: Sequence[int]
  width: int = 64
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool) -> list[Array]:
    """[batch, H, W, 3] -> [C2 (H/4), C3 (H/8), C4 (H/16), C5 (H/32)], NHWC.

    Channel widths are 4·width, 8·width, 16·width, 32·width (256..2048 at 64).
    """
    x = nn.Conv(self.width, (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False,
                dtype=self.dtype, kernel_init=_conv_init(), name="stem_conv")(x)
    x = nn.relu(layers.BatchNorm(name="stem_bn")(x, train))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    features = []
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = Bottleneck(self.width * 2**stage, stride, self.dtype,
                       name=f"stage{stage + 1}_block{block}")(x, train)
      features.append(x)
    return features
