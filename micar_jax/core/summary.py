"""Parameter table of a config's model, computed from shapes only (jax.eval_shape), and its
training FLOPs per image."""

import collections
import dataclasses
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from micar_jax.core import state as state_lib
from micar_jax.data import batch_spec
from micar_jax.data import tokenizer as tokenizer_lib
from micar_jax.models import flops
from micar_jax.models import model as model_lib

# The image side of `abstract_variables` when no batch is given.
DEFAULT_IMAGE_SIZE = 224


def saved_vocab_size(config: ml_collections.ConfigDict, workdir: str) -> int | None:
  """The vocabulary size of the tokenizer a run would use, if it exists already.

  config.data.vocab_path when set, else the tokenizer file saved in `workdir`
  (token2id.json / sentencepiece.model); None when neither exists (nothing is built).
  """
  path = config.data.vocab_path or os.path.join(
      workdir, tokenizer_lib.VOCAB_FILES.get(config.data.tokenizer, ""))
  if not os.path.isfile(path):
    return None
  return tokenizer_lib.load_tokenizer(config.data.tokenizer, path,
                                      config.data.text_seq_len).vocab_size


def abstract_variables(mc: model_lib.ModelConfig,
                       spec: batch_spec.BatchSpec | None = None) -> dict:
  """Shapes and dtypes of the model's variables, without allocating them.

  Args:
    mc: the model.
    spec: the batch the model is initialised for; by default DEFAULT_IMAGE_SIZE
      images of mc's views and text length (no parameter depends on the image size).
  """
  if spec is None:
    spec = batch_spec.BatchSpec(1, DEFAULT_IMAGE_SIZE, mc.num_views, mc.max_len)
  init = state_lib.make_variables_init_fn(mc, spec)
  return nn.meta.unbox(jax.eval_shape(init, jax.random.PRNGKey(0)))


def parameter_table(params: dict, depth: int = 2) -> list[tuple[str, int]]:
  """(module path truncated to `depth` levels, parameter count) in tree order."""
  counts: dict[str, int] = collections.OrderedDict()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    keys = [getattr(k, "key", str(k)) for k in path]
    name = "/".join(keys[:depth])
    counts[name] = counts.get(name, 0) + int(np.prod(leaf.shape))
  return list(counts.items())


def format_summary(params: dict, depth: int = 2) -> str:
  """The table as text, ending with `total_params=<N>` (trainable parameters)."""
  rows = parameter_table(params, depth)
  width = max(len(name) for name, _ in rows)
  lines = [f"{'module'.ljust(width)}  {'params':>13}"]
  lines += [f"{name.ljust(width)}  {count:>13,}" for name, count in rows]
  total = sum(count for _, count in rows)
  lines.append(f"total_params={total}")
  return "\n".join(lines)


def model_flops_per_image(mc: model_lib.ModelConfig, spec: batch_spec.BatchSpec) -> int:
  """Training FLOPs per image: 3 x the forward pass, counting only the routed experts.

  The forward pass is traced with the sort dispatch whatever mc.moe_impl says,
  since capacity buffers would count padding slots (and dropless einsum every
  expert) as model work. One row of `spec` is traced.
  """
  sorted_mc = dataclasses.replace(mc, moe_impl="sort", remat=False)
  model = model_lib.MicarVLMoE(sorted_mc)
  row = spec.with_batch_size(1)
  inputs = row.abstract(keys=("images", "input_ids"))
  forward = flops.count_flops(lambda v, x, t: model.apply(v, x, t, None),
                              abstract_variables(sorted_mc, row), inputs["images"],
                              inputs["input_ids"])
  return 3 * forward
