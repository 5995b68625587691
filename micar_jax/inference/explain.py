"""What the model looked at: `--mode=explain --images=PATHS|DIR` -> DIR/explain/<stem>.{png,json}.

Per image, the greedy report of the best checkpoint and, for each generated
word, the decoder's cross-attention over the pool_size x pool_size image grid
overlaid on the centre crop the network saw (one colour scale for all panels,
its colour bar marking the uniform level 1 / grid cells), next to the image as
read with the crop outlined, followed by the experts each MoE layer routed that
word to (drawn by `explain_figure`). The report text is
`Tokenizer.decode_clean`'s, as --mode=predict writes it. Panels stop at the
first `<eos>`; words the reference would keep after it are only counted.

`greedy_with_attention` is the instrumented decoding: the cached greedy search
of `decode`, keeping what every step's layers sowed (the cross-attention
probabilities and the MoE's chosen experts), so the figures show the routing
the model actually used.

With config.data.num_views > 1 the inputs are studies (as --mode=predict
takes them) and each figure, explain/<study>.{png,json}, shows every view: the
encoder concatenates the views' pool_size² tokens in view order, so a word's
cross-attention splits into one grid per view, and the grids of all views of
a word sum to its whole attention (1).

Config (config.eval): explain_layers / explain_heads ("mean" or an index,
negative counts from the end) pick or average decoder layers / heads;
explain_max_words caps the attention panels.
"""

import functools
import json
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from micar_jax import decode, errors, evaluate
from micar_jax.data import images as images_lib
from micar_jax.data import predict_inputs
from micar_jax.data import tokenizer as tokenizer_lib
from micar_jax.inference import explain_figure
from micar_jax.models import model as model_lib
from micar_jax.models import partitioning, routing

# Where a decoder layer's sown values live: attention's in "intermediates", the
# experts in routing.COLLECTION.
CROSS_ATTENTION = ("gated_fusion", "cross_attention", "attention_weights")
ROUTED_EXPERTS = ("moe", routing.EXPERTS)


def _sown(tree: dict[str, Any], path: tuple[str, ...]) -> jax.Array:
  """The single value sown at `path` (flax keeps a module's sows in a tuple)."""
  (value,) = functools.reduce(lambda node, key: node[key], path, tree)
  return value


def _step_records(sown: dict[str, Any], num_layers: int) -> dict[str, jax.Array]:
  """One cached decode step's sows -> cross [b, L, H, n_img] and experts [b, L, top_k]."""
  layers = [f"decoder_{i}" for i in range(num_layers)]
  return {
      # attention_weights: [b, H, 1 query, n_img]; experts: [b, 1 token, top_k].
      "cross": jnp.stack([_sown(sown["intermediates"], (layer, *CROSS_ATTENTION))[:, :, 0]
                          for layer in layers], axis=1),
      "experts": jnp.stack([_sown(sown[routing.COLLECTION], (layer, *ROUTED_EXPERTS))[:, 0]
                            for layer in layers], axis=1),
  }


@functools.partial(jax.jit, static_argnums=0)
def greedy_with_attention(mc: model_lib.ModelConfig, params: Any, batch_stats: Any,
                          images: jax.Array, valid: jax.Array | None = None
                          ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Greedy decoding that also records what each step looked at.

  Args:
    mc: model configuration.
    params, batch_stats: the model's variables.
    images: [b, H, W, 3] or [b, V, H, W, 3].
    valid: [b] bool, False for padding rows (they do not delay the stop); default all True.

  Returns:
    ids [b, T + 1] (as `decode.greedy_search`), cross-attention probabilities
    [b, T, L, H, n_img] of the query at position t, and the experts [b, T, L, top_k]
    each MoE layer routed that token to (as it sowed them, best first); steps after
    an early stop are zeros.
  """
  memory = decode.encode(mc, params, batch_stats, images)
  b, n_img = memory.shape[:2]
  sown_collections = tuple(dict.fromkeys(("intermediates", routing.COLLECTION)))
  start, step = decode.model_fns(mc, params, memory, ("cache", *sown_collections))
  records = {"cross": jnp.zeros((b, mc.max_len, mc.num_layers, mc.num_heads, n_img)),
             "experts": jnp.zeros((b, mc.max_len, mc.num_layers, mc.top_k), jnp.int32)}

  def record(out, records, t):
    logits, sown = out
    step_records = _step_records(sown, mc.num_layers)
    records = {key: records[key].at[:, t].set(value) for key, value in step_records.items()}
    return logits, {"cache": sown["cache"], "records": records}

  ids, state = decode.greedy_search(
      lambda tokens: record(start(tokens), records, 0),
      lambda tokens, state, t: record(step(tokens, state, t), state["records"], t),
      b, mc.max_len, valid)
  return ids, state["records"]["cross"], state["records"]["experts"]


def decode_batch(run: Any, variables: dict[str, Any], images: np.ndarray, valid: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`greedy_with_attention` of host images [b, H, W, 3] on `run`'s mesh (inside its context).

  Args:
    run: the `run.Run` (model config, mesh placement).
    variables: {params, batch_stats}.
    images: float32 [b, H, W, 3], preprocessed.
    valid: [b] bool, False for padding rows.

  Returns:
    Host arrays ids [b', T + 1], cross [b', T, L, H, n_img], experts [b', T, L, top_k];
    b' >= b (rows padded to the mesh's batch shards come last).
  """
  outs = greedy_with_attention(run.model_config, variables["params"], variables["batch_stats"],
                               *evaluate.device_images(run.put, {"images": images, "valid": valid}))
  return tuple(evaluate.to_host(x) for x in outs)


def select(value: Any, size: int, what: str) -> int | None:
  """Parses a "mean" / index setting: None means average, else an index in [0, size).

  Raises:
    errors.UserError: neither "mean" nor an integer in [-size, size).
  """
  if str(value).strip().lower() == "mean":
    return None
  try:
    index = int(str(value).strip())
  except ValueError:
    raise errors.UserError(f"config.eval.explain_{what} must be 'mean' or an integer, "
                           f"got {value!r}") from None
  if not -size <= index < size:
    raise errors.UserError(f"config.eval.explain_{what}={index} is out of range for {size} {what}")
  return index % size


def _reduce(x: np.ndarray, axis: int, index: int | None) -> np.ndarray:
  return x.mean(axis=axis) if index is None else np.take(x, index, axis=axis)


def summarise(ids: np.ndarray, cross: np.ndarray, experts: np.ndarray,
              tokenizer: tokenizer_lib.Tokenizer, layer: int | None, head: int | None,
              num_views: int = 1) -> explain_figure.Explanation:
  """One row of `greedy_with_attention` as per-word attention grids.

  Args:
    ids: [T + 1] generated ids (`<sos>` first; step t chose ids[t + 1]).
    cross: [T, L, H, n_img] cross-attention of step t; n_img must be num_views square
      grids (the views' tokens one after another).
    experts: [T, L, top_k] routed experts of step t.
    tokenizer: maps ids to words.
    layer: decoder layer to show, None = mean over layers.
    head: attention head to show, None = mean over heads.
    num_views: views per example; above 1 the attention is [n_words, V, grid, grid].
  """
  per_view = cross.shape[-1] // num_views
  grid = math.isqrt(per_view)
  if grid * grid != per_view or per_view * num_views != cross.shape[-1]:
    raise ValueError(f"{cross.shape[-1]} image tokens are not {num_views} square grid(s)")
  attention = _reduce(_reduce(cross, 1, layer), 1, head)  # [T, n_img]
  steps, after_eos, seen_eos = [], 0, False
  for t, token in enumerate(int(i) for i in ids[1:]):
    if token == tokenizer_lib.EOS:
      seen_eos = True
    elif token not in (tokenizer_lib.PAD, tokenizer_lib.SOS):
      if seen_eos:
        after_eos += 1
      else:
        steps.append(t)
  words = [tokenizer.detokenize([int(ids[t + 1])]) for t in steps]
  views = (num_views,) if num_views > 1 else ()
  return explain_figure.Explanation(words, attention[steps].reshape(len(steps), *views, grid, grid),
                     np.asarray(experts)[steps], after_eos, tokenizer.decode_clean(ids))


def _settings(config: ml_collections.ConfigDict, num_layers: int, num_heads: int
              ) -> tuple[int | None, int | None, int]:
  layer = select(config.eval.explain_layers, num_layers, "layers")
  head = select(config.eval.explain_heads, num_heads, "heads")
  max_words = int(config.eval.explain_max_words)
  if max_words < 1:
    raise errors.UserError(f"config.eval.explain_max_words must be >= 1, got {max_words}")
  return layer, head, max_words


def _describe(index: int | None, size: int, what: str) -> str:
  return f"mean of {size} {what}{'s' * (size != 1)}" if index is None else f"{what} {index}"


def _out_stem(path: str, used: set[str]) -> str:
  # Same-named images from different folders must not overwrite each other.
  stem = os.path.splitext(os.path.basename(path))[0]
  name, n = stem, 1
  while name in used:
    n += 1
    name = f"{stem}-{n}"
  used.add(name)
  return name


def to_record(expl: explain_figure.Explanation) -> dict[str, Any]:
  """The JSON form of an explanation: report, words, after_eos, attention (5 decimals), experts."""
  return {"report": expl.report, "words": expl.words, "after_eos": expl.after_eos,
          "attention": np.round(expl.attention.astype(np.float64), 5).tolist(),
          "experts": expl.experts.tolist()}


def _original(path: str, config: ml_collections.ConfigDict
              ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
  # The figure shows the image as the model saw it (turned only if the config says so).
  original = np.asarray(images_lib.decode(path, config.data.apply_exif_orientation))
  return original, explain_figure.crop_box(*original.shape[:2], config.data.resize_size,
                                           config.data.image_size)


def _write(out_dir: str, stem: str, path: str | list[str], stored_image: str | list[str],
           crop: np.ndarray, expl: explain_figure.Explanation,
           config: ml_collections.ConfigDict, num_experts: int, max_words: int, header: str
           ) -> str:
  """Writes <stem>.png and <stem>.json; the JSON names the image as `stored_image`.

  A study (path a list of V view files, crop [V, S, S, 3]) gets a figure with
  every view; its JSON names the study and adds each word's share per view.
  """
  png = os.path.join(out_dir, stem + ".png")
  if isinstance(path, str):
    original, box = _original(path, config)
    figure = explain_figure.render(original, box, crop, expl, num_experts, max_words, header)
    extra = {"image": stored_image}
  else:
    originals, boxes = zip(*(_original(p, config) for p in path))
    figure = explain_figure.render(list(originals), list(boxes), crop, expl, num_experts,
                                   max_words, header)
    share = expl.attention.reshape(*expl.attention.shape[:2], -1).sum(-1)  # [n_words, V]
    extra = {"study": stem, "images": stored_image,
             "view_share": np.round(share.astype(np.float64), 5).tolist()}
  figure.savefig(png, dpi=explain_figure.DPI)
  record = dict(to_record(expl), **extra, settings=header)
  with open(os.path.join(out_dir, stem + ".json"), "w", encoding="utf-8") as f:
    json.dump(record, f)
  return png


def explain(config: ml_collections.ConfigDict, workdir: str, images: Sequence[str]) -> list[str]:
  """Writes DIR/explain/<stem>.png and .json per readable image with the best checkpoint.

  With config.data.num_views > 1: DIR/explain/<study>.png and .json per readable
  study (`predict_inputs.list_studies`).

  Returns:
    The PNG paths, in input order.

  Raises:
    errors.UserError: bad explain settings, or no readable image (study).
  """
  from micar_jax.core import run as run_lib  # pylint: disable=g-import-not-at-top
  run = run_lib.Run(config, workdir)
  mc = run.model_config
  layer, head, max_words = _settings(config, mc.num_layers, mc.num_heads)
  decoding = ("greedy decoding" if config.eval.decode.startswith("greedy") else
              f"greedy decoding (predict uses eval.decode={config.eval.decode})")
  header = (f"{decoding}; attention: {_describe(layer, mc.num_layers, 'layer')}, "
            f"{_describe(head, mc.num_heads, 'head')}, one colour scale for all panels")
  variables = run.best_variables()
  out_dir = os.path.join(workdir, "explain")
  os.makedirs(out_dir, exist_ok=True)
  paths = images[0] if len(images) == 1 else list(images)
  written, used, skipped = [], set(), []
  num_views = config.data.num_views
  with partitioning.use_mesh(run.mesh, run.rules):
    for batch in predict_inputs.predict_batches(config, paths, skipped):
      ids, cross, experts = decode_batch(run, variables, batch["images"], batch["valid"])
      for row, path in enumerate(batch["paths"]):
        expl = summarise(ids[row], cross[row], experts[row], run.tokenizer, layer, head,
                         num_views)
        stored = evaluate.stored_image(path, workdir, run.config.data_dir)
        # Study names are unique already (list_studies).
        stem = batch["studies"][row].name if num_views > 1 else _out_stem(path, used)
        written.append(_write(out_dir, stem, path, stored,
                              explain_figure.unnormalise(batch["images"][row]), expl, config,
                              mc.num_experts, max_words, header))
  what = "images" if num_views == 1 else "studies"
  if not written:
    reasons = "; ".join(reason for _, reason in skipped[:3]) if num_views > 1 else ""
    raise errors.UserError(f"no readable {what} in {', '.join(images)}"
                           + (f" ({reasons})" if reasons else ""))
  logging.info("wrote %d explanations", len(written))
  print(f"explanations: {out_dir} ({len(written)} {what})")
  for name, reason in skipped[:3] if num_views > 1 else ():
    print(f"  skipped study {name}: {reason}")
  return written
