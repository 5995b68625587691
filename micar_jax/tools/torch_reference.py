"""The reference's CaptionModel built from a checkout, and shared random inputs.

Both parity checks (inference in `parity`, training in `parity_train`) start from
this: the reference model with random weights (its ImageNet download replaced by
the same architecture without weights) and the same random batch on both sides.
"""

import os
import sys

import numpy as np

from micar_jax import errors
from micar_jax.data.tokenizer import EOS, PAD, SOS


def import_torch():
  """torch, torchvision (checked together with the reference's other packages)."""
  try:
    import einops  # noqa: F401  (the reference needs it)
    import rotary_embedding_torch  # noqa: F401  (the reference needs it)
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.UserError(
        f"the parity check needs {e.name}: pip install torch torchvision einops "
        "rotary-embedding-torch==0.8.6 (in a separate environment)") from None
  return torch, torchvision


def build_reference(reference_src: str, config, vocab_size: int, seed: int):
  """The reference CaptionModel for `config`'s settings, random weights, eval mode."""
  m = config.model
  if tuple(m.resnet_stages) not in ((), (3, 4, 23, 3)) or m.resnet_depth != 101 \
      or m.resnet_width != 64:
    raise errors.UserError("the reference's backbone is a ResNet-101: the config needs "
                           "model.resnet_depth=101, resnet_stages=(), resnet_width=64")
  torch, torchvision = import_torch()
  sys.path.insert(0, os.path.abspath(reference_src))
  try:
    from architecture import blocks, models  # pylint: disable=g-import-not-at-top

    from configs import cfg as ref_cfg  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise errors.UserError(f"{reference_src} is not a checkout of the reference code "
                           f"({e})") from None
  # The reference asks torchvision for ImageNet weights (a download); every weight is
  # randomised here anyway, so build the same architecture without them.
  blocks.resnet101 = lambda weights=None, **kw: torchvision.models.resnet101(weights=None, **kw)
  ref_config = ref_cfg.Configs(
      d_v=m.d_v, num_heads=m.num_heads, num_layers=m.num_layers, d_model=m.d_model,
      d_latent=m.d_latent, qk_nope_dim=m.qk_nope_dim, qk_rope_dim=m.qk_rope_dim, d_ff=m.d_ff,
      act_fn=m.act_fn, attention_dropout=m.attention_dropout, dropout=m.dropout,
      num_experts=m.num_experts, k=m.top_k, text_seq_len=config.data.text_seq_len)
  torch.manual_seed(seed)
  model = models.CaptionModel(ref_config, vocab_size)
  # Fresh BatchNorm and RMSNorm are identities (stats 0/1, weights 1): make them matter.
  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        module.running_mean.normal_(0.0, 0.1)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.normal_(0.0, 0.1)
      elif isinstance(module, blocks.RMSNorm):
        module.weight.uniform_(0.5, 1.5)
  return model.eval()


def random_inputs(batch: int, image_size: int, seq_len: int, vocab_size: int, seed: int):
  """Images [b, 3, S, S] (NCHW), ids [b, T] (<sos> first, the last row padded), pad mask."""
  rng = np.random.default_rng(seed)
  images = rng.standard_normal((batch, 3, image_size, image_size)).astype(np.float32)
  ids = rng.integers(4, vocab_size, (batch, seq_len)).astype(np.int32)
  ids[:, 0] = SOS
  ids[-1, seq_len // 2:] = PAD
  ids[-1, seq_len // 2 - 1] = EOS
  return images, ids, (ids != PAD).astype(np.int32)
