"""Synthetic fundus-like dataset: the embedded default, trains on a CPU in minutes.

The data is generated on first use (`micar_jax.data.synthetic`) in
<workdir>/data, whose absolute path the run prints: each image's lesions fully
determine its templated report, so only a model that looks at the image scores
well. `--config.data_dir=DIR` puts (or finds) it elsewhere.

  python -m micar_jax.main --config=configs/synthetic.py --workdir=runs/synthetic
"""

import ml_collections

from micar_jax.config import defaults


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """A small MMR-shaped model on the synthetic dataset."""
  c = defaults.base_config()
  c.dataset = "synthetic"
  c.data_dir = ""  # "": <workdir>/data (micar_jax.main sets it).
  c.data.image_size = 64
  c.data.resize_size = 64
  c.data.text_seq_len = 40
  c.data.min_frequency = 1
  c.model.resnet_stages = (1, 1, 1, 1)
  c.model.resnet_width = 8
  c.model.d_v = 64
  c.model.d_model = 64
  c.model.d_latent = 96
  c.model.num_heads = 4
  c.model.qk_nope_dim = 12
  c.model.qk_rope_dim = 12
  c.model.d_ff = 128
  c.model.num_layers = 2
  c.model.act_fn = "gelu"
  c.train.batch_size = 16
  c.eval.batch_size = 32
  c.train.epochs = 12
  c.train.max_patience = 12
  c.train.lr = 1e-3
  c.train.v_lr = 1e-3
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  return defaults.apply_arg(c, arg)
