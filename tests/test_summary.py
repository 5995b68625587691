"""--mode=summary's parameter table: shapes only, with the run folder's vocabulary."""

import json

from micar_jax.core import summary
from micar_jax.data import batch_spec
from micar_jax.models import model as model_lib


def test_the_run_folders_token2id_sets_the_vocabulary(tmp_path, tiny_config):
  config = tiny_config(tmp_path)
  assert summary.saved_vocab_size(config, str(tmp_path)) is None  # nothing saved: nothing built
  vocab = {"<pad>": 0, "<sos>": 1, "<eos>": 2, "<unk>": 3, "lesion": 4, "none": 5}
  (tmp_path / "token2id.json").write_text(json.dumps(vocab))
  size = summary.saved_vocab_size(config, str(tmp_path))
  assert size == len(vocab)
  mc = model_lib.ModelConfig.from_config(config, size)
  params = summary.abstract_variables(mc, batch_spec.BatchSpec.from_config(config))["params"]
  assert params["gen_logits"]["kernel"].shape[-1] == len(vocab)
  assert summary.format_summary(params).splitlines()[-1].startswith("total_params=")
