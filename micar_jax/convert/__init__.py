"""PyTorch weights <-> micar_jax variables.

  python -m micar_jax.convert torchvision-resnet --weights=resnet101.pth --out=DIR
      ImageNet ResNet weights for `--config.model.vision_init_from=DIR`.
  python -m micar_jax.convert official --checkpoint=model_snapshot.pth \\
      --token2id=token2id.json --config=configs/covctr.py --out=DIR
      A released MicarVLMoE model for `--config.init_from=DIR`.
  python -m micar_jax.convert export-official --config=configs/covctr.py --workdir=RUN \\
      [--step=best|latest|N] --out=model_snapshot.pth|.safetensors
      A run's checkpoint as the reference's snapshot (micar_jax/convert/export.py),
      its vocabulary beside it as <stem>.token2id.json and <stem>.id2token.json.

Python API: `official_state_dict_to_variables`, `variables_to_official_state_dict`,
`read_state_dict`; the converted folders load with micar_jax.core.weights.
"""

from micar_jax.convert.io import read_state_dict
from micar_jax.convert.official import (
                                        official_state_dict_to_variables,
                                        variables_to_official_state_dict,
)

__all__ = ["official_state_dict_to_variables", "read_state_dict",
           "variables_to_official_state_dict"]
