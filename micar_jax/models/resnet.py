"""ResNet v1.5 bottleneck backbone (torchvision layout), NHWC, returning C2..C5.

Stride 2 sits in the 3×3 conv of the first block of stages 2-4, padding is
explicit and symmetric as in PyTorch (XLA's "SAME" would pad stride-2 convs
asymmetrically), and BatchNorm follows PyTorch's statistics.

With `scan_blocks`, blocks 1..n-1 of a stage of n >= 3 blocks (identical in
shape: only block 0 strides and projects) run as one `nn.scan` named
`stage{s}_blocks`, their variables stacked on a leading axis of n-1. XLA then
compiles one block body per stage instead of n-1 copies, and the optimizer
sees one array per stacked weight. `micar_jax.models.block_layout` converts
between this layout and the per-block one (`stage{s}_block{b}`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from micar_jax.models import layers

Array = jax.Array

# Bottleneck stage sizes by depth (torchvision v1.5).
RESNET_STAGES = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# A stage is scanned when it repeats at least this many identical blocks: a
# 1-step scan would only rename a block's variables and add a leading axis.
MIN_SCANNED = 2


def scanned(num_blocks: int, scan_blocks: bool) -> bool:
  """Whether blocks 1..num_blocks-1 of a stage run as one scan (see module doc)."""
  return scan_blocks and num_blocks - 1 >= MIN_SCANNED


def block_name(stage: int, block: int) -> str:
  """The variables' name of one unscanned block; stage counts from 1."""
  return f"stage{stage}_block{block}"


def scan_name(stage: int) -> str:
  """The variables' name of a stage's scanned blocks 1..n-1; stage counts from 1."""
  return f"stage{stage}_blocks"


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


class _ScanStep(Bottleneck):
  """A stride-1 identity-shortcut Bottleneck as an `nn.scan` body: (x, None) -> (x, None).

  `train` is an attribute, not an argument, so it stays a Python bool under
  the scan (BatchNorm branches on it).
  """

  train: bool = False

  def __call__(self, x: Array, _: None) -> tuple[Array, None]:  # pytype: disable=signature-mismatch
    """[batch, h, w, 4 * width] -> ([batch, h, w, 4 * width], None)."""
    return super().__call__(x, self.train), None


def scan_blocks_module(width: int, length: int, dtype: Any, train: bool, name: str) -> nn.Module:
  """`length` stacked stride-1 Bottlenecks applied in turn, as one scan.

  Params and batch_stats gain a leading axis of `length`; its logical name is
  None (replicated), so a stacked conv kernel [length, kh, kw, c_in, c_out]
  shards like one block's kernel. Each step draws its own init key. ResNet
  blocks are not rematerialised (model.remat covers the transformer blocks),
  scanned or not.
  """
  scan = nn.scan(_ScanStep, variable_axes={"params": 0, "batch_stats": 0},
                 split_rngs={"params": True}, length=length,
                 metadata_params={nn.PARTITION_NAME: None})
  return scan(width, 1, dtype, train, name=name)


class ResNet(nn.Module):
  """Stem (7×7/2 conv, BN, ReLU, 3×3/2 max-pool) and four bottleneck stages.

  Attributes:
    stage_sizes: blocks per stage, e.g. (3, 4, 23, 3) for ResNet-101.
    width: stem width; stage k has bottleneck width width * 2**k.
    dtype: computation dtype.
    scan_blocks: run blocks 1..n-1 of each stage of n >= 3 blocks as one scan
      (see the module doc); same function, stacked variables.
  """

  stage_sizes: Sequence[int]
  width: int = 64
  dtype: Any = jnp.float32
  scan_blocks: bool = True

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
      width = self.width * 2**stage
      x = Bottleneck(width, 2 if stage > 0 else 1, self.dtype,
                     name=block_name(stage + 1, 0))(x, train)
      if scanned(num_blocks, self.scan_blocks):
        x, _ = scan_blocks_module(width, num_blocks - 1, self.dtype, train,
                                  scan_name(stage + 1))(x, None)
      else:
        for block in range(1, num_blocks):
          x = Bottleneck(width, 1, self.dtype, name=block_name(stage + 1, block))(x, train)
      features.append(x)
    return features
