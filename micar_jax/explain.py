"""What the model looked at: `--mode=explain --images=PATHS|DIR` -> DIR/explain/<stem>.{png,json}.

Per image, the greedy report of the best checkpoint and, for each generated
word, the decoder's cross-attention over the pool_size x pool_size image grid
overlaid on the centre crop the network saw (one colour scale for all panels,
its colour bar marking the uniform level 1 / grid cells), next to the image as
read with the crop outlined, followed by the experts each MoE layer routed that
word to. The report text is `Tokenizer.decode_clean`'s, as --mode=predict writes it. Panels stop at the first `<eos>`; words the
reference would keep after it are only counted.

`greedy_with_attention` is the instrumented decoding: the cached greedy search
of `decode`, keeping what every step's layers sowed (the cross-attention
probabilities and the MoE's chosen experts), so the figures show the routing
the model actually used.

Config (config.eval): explain_layers / explain_heads ("mean" or an index,
negative counts from the end) pick or average decoder layers / heads;
explain_max_words caps the attention panels.
"""

import dataclasses
import functools
import json
import math
import os
import textwrap
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from micar_jax import decode, errors, evaluate, sharding
from micar_jax.data import images as images_lib
from micar_jax.data import input_pipeline
from micar_jax.data import tokenizer as tokenizer_lib
from micar_jax.models import model as model_lib
from micar_jax.models import routing

# Figure layout in inches (fixed, so the PNG size follows from the content).
DPI = 100
COLS = 6
PANEL_IN = 1.8
HEADER_IN = 1.5
# The row with the original image, the crop the network saw and the colour bar.
INPUT_IN = 2.9
ROUTING_PER_EXPERT_IN = 0.22
# Room for a routing plot's title and its word-number labels.
ROUTING_PAD_IN = 1.0
REPORT_WRAP, REPORT_LINES, NOTES_WRAP = 120, 5, 150
# Smallest font on the figure (points).
FONT = 9
# Attention overlay: a perceptually uniform map, light enough to read the image through.
CMAP, ALPHA = "viridis", 0.45
# At most this many numbered words under a routing plot (every k-th beyond it).
MAX_WORD_TICKS = 40
# Where a decoder layer's sown values live: attention's in "intermediates", the
# experts in routing.COLLECTION.
CROSS_ATTENTION = ("gated_fusion", "cross_attention", "attention_weights")
ROUTED_EXPERTS = ("moe", routing.EXPERTS)


@dataclasses.dataclass(frozen=True)
class Explanation:
  """One image's generated words and what each looked at.

  Attributes:
    words: generated words up to the first `<eos>` (`<pad>`/`<sos>` skipped).
    attention: [n_words, grid, grid] cross-attention (selected/averaged layers and heads).
    experts: [n_words, num_layers, top_k] routed expert ids, best first.
    after_eos: generated words after the first `<eos>` (not shown).
    report: the report text (`Tokenizer.decode_clean`: what --mode=predict writes).
  """
  words: list[str]
  attention: np.ndarray
  experts: np.ndarray
  after_eos: int
  report: str


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
              tokenizer: tokenizer_lib.Tokenizer, layer: int | None, head: int | None
              ) -> Explanation:
  """One row of `greedy_with_attention` as per-word attention grids.

  Args:
    ids: [T + 1] generated ids (`<sos>` first; step t chose ids[t + 1]).
    cross: [T, L, H, n_img] cross-attention of step t; n_img must be a square grid.
    experts: [T, L, top_k] routed experts of step t.
    tokenizer: maps ids to words.
    layer: decoder layer to show, None = mean over layers.
    head: attention head to show, None = mean over heads.
  """
  grid = math.isqrt(cross.shape[-1])
  if grid * grid != cross.shape[-1]:
    raise ValueError(f"{cross.shape[-1]} image tokens are not a square grid (one view only)")
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
  return Explanation(words, attention[steps].reshape(len(steps), grid, grid),
                     np.asarray(experts)[steps], after_eos, tokenizer.decode_clean(ids))


def unnormalise(image: np.ndarray) -> np.ndarray:
  """A preprocessed float32 [S, S, 3] crop back to the uint8 RGB pixels the network saw."""
  rgb = image * images_lib.IMAGENET_STD + images_lib.IMAGENET_MEAN
  return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def figure_inches(num_panels: int, num_layers: int, num_experts: int) -> tuple[float, float]:
  """(width, height) of a figure with `num_panels` word panels."""
  rows = math.ceil(num_panels / COLS)
  routing = num_layers * (num_experts * ROUTING_PER_EXPERT_IN + ROUTING_PAD_IN)
  return COLS * PANEL_IN, HEADER_IN + INPUT_IN + rows * PANEL_IN + routing


def crop_box(height: int, width: int, resize_size: int, image_size: int
             ) -> tuple[float, float, float, float]:
  """(top, left, height, width) in original pixels of the centre crop the network saw."""
  new_h, new_w = images_lib.resized_size(height, width, resize_size)
  top, left = images_lib.crop_offsets(new_h, new_w, image_size)
  sy, sx = height / new_h, width / new_w
  return top * sy, left * sx, image_size * sy, image_size * sx


def render(original: np.ndarray, box: tuple[float, float, float, float], crop: np.ndarray,
           expl: Explanation, num_experts: int, max_words: int, header: str) -> Figure:
  """The explanation figure: report, inputs with colour bar, attention panels, routing.

  Every attention panel shares one colour scale, from 0 to the largest weight
  shown, so panels compare; the colour bar marks the uniform level 1 / n_img
  (attention spread evenly over the image grid).

  Args:
    original: uint8 [H, W, 3] the image as read from its file.
    box: `crop_box` of the crop within `original`.
    crop: uint8 [S, S, 3] the centre crop the network saw.
    expl: the image's explanation.
    num_experts: experts per MoE layer (rows of the routing plots).
    max_words: at most this many attention panels.
    header: the settings line under the report.
  """
  n_panels = min(len(expl.words), max_words)
  num_layers = expl.experts.shape[1] if expl.experts.ndim == 3 else 0
  width, height = figure_inches(n_panels, num_layers, num_experts)
  fig = Figure(figsize=(width, height), dpi=DPI)

  def axes(left, top, w, h):  # inches from the top-left corner -> figure fractions
    return fig.add_axes((left / width, 1 - (top + h) / height, w / width, h / height))

  lines = textwrap.wrap(expl.report or "(empty report)", REPORT_WRAP)
  if len(lines) > REPORT_LINES:
    lines = lines[:REPORT_LINES - 1] + [lines[REPORT_LINES - 1][:REPORT_WRAP - 4] + " ..."]
  notes = [header, "(Nx): a panel's peak over the uniform level",
           "panels stop at the first <eos>"]
  if expl.after_eos:
    notes.append(f"{expl.after_eos} word(s) after it not shown")
  if n_panels < len(expl.words):
    notes.append(f"first {n_panels} of {len(expl.words)} words")
  fig.text(0.1 / width, 1 - 0.1 / height, "\n".join(lines), va="top", ha="left", fontsize=FONT + 1)
  fig.text(0.1 / width, 1 - (HEADER_IN - 0.1) / height,
           "\n".join(textwrap.wrap("; ".join(notes), NOTES_WRAP)), va="bottom", ha="left",
           fontsize=FONT, color="dimgray")

  # Inputs: the file as read (crop outlined) and the crop at display size.
  side = INPUT_IN - 0.5
  ax = axes(0.1, HEADER_IN + 0.3, side, side)
  ax.imshow(original)
  top, left, h, w = box
  ax.add_patch(Rectangle((left - 0.5, top - 0.5), w, h, fill=False, edgecolor="red", lw=1.5))
  ax.set_title(f"image {original.shape[1]}x{original.shape[0]} (red: crop)", fontsize=FONT)
  ax.set_axis_off()
  ax = axes(side + 0.4, HEADER_IN + 0.3, side, side)
  ax.imshow(crop, interpolation="bilinear")
  ax.set_title(f"network input {crop.shape[1]}x{crop.shape[0]}", fontsize=FONT)
  ax.set_axis_off()

  n_img = expl.attention[0].size if n_panels else 1
  shown = expl.attention[:n_panels]
  uniform = 1.0 / n_img
  norm = Normalize(0.0, max(float(shown.max()) if n_panels else 0.0, 2 * uniform))
  cax = axes(2 * side + 1.9, HEADER_IN + 0.3, 0.2, side)
  bar = fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), cax=cax)
  bar.ax.tick_params(labelsize=FONT)
  bar.set_label("attention weight (shared by all panels)", fontsize=FONT)
  bar.ax.axhline(uniform, color="white", lw=2)
  bar.ax.axhline(uniform, color="black", lw=1, ls="--")
  bar.ax.text(-0.5, uniform, f"uniform 1/{n_img}", transform=bar.ax.get_yaxis_transform(),
              va="center", ha="right", fontsize=FONT)

  size = crop.shape[0]
  pad = 0.3  # per panel, for the word above it
  grid_top = HEADER_IN + INPUT_IN
  for i in range(n_panels):
    row, col = divmod(i, COLS)
    ax = axes(col * PANEL_IN + 0.05, grid_top + row * PANEL_IN + pad,
              PANEL_IN - 0.1, PANEL_IN - pad - 0.05)
    ax.imshow(crop, interpolation="bilinear")
    ax.imshow(expl.attention[i], cmap=CMAP, norm=norm, alpha=ALPHA, interpolation="bilinear",
              extent=(-0.5, size - 0.5, size - 0.5, -0.5))
    peak = float(expl.attention[i].max()) / uniform
    ax.set_title(f"{i + 1}: {expl.words[i]} ({peak:.1f}x)", fontsize=FONT)
    ax.set_axis_off()

  top = grid_top + math.ceil(n_panels / COLS) * PANEL_IN
  plot_h = num_experts * ROUTING_PER_EXPERT_IN
  n_words = len(expl.words)
  every = max(1, math.ceil(n_words / MAX_WORD_TICKS))
  for layer in range(num_layers):
    chosen = np.zeros((num_experts, n_words))
    top_k = expl.experts.shape[-1]
    for t in range(n_words):
      # Darker = preferred: the router's first choice gets top_k, the last 1.
      chosen[expl.experts[t, layer], t] = np.arange(top_k, 0, -1)
    ax = axes(0.7, top + 0.3, width - 0.9, plot_h)
    ax.imshow(chosen, cmap="Greys", vmin=0, vmax=top_k, aspect="auto", interpolation="nearest")
    ax.set_title(f"decoder layer {layer}: routed experts per word (black = first choice)",
                 fontsize=FONT)
    ax.set_yticks(range(num_experts), [str(e) for e in range(num_experts)], fontsize=FONT)
    ax.set_ylabel("expert", fontsize=FONT)
    ticks = range(0, n_words, every)
    ax.set_xticks(ticks, [str(t + 1) for t in ticks], fontsize=FONT)
    ax.set_xlabel("word number (as numbered on the panels)", fontsize=FONT)
    top += plot_h + ROUTING_PAD_IN
  return fig


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


def to_record(expl: Explanation) -> dict[str, Any]:
  """The JSON form of an explanation: report, words, after_eos, attention (5 decimals), experts."""
  return {"report": expl.report, "words": expl.words, "after_eos": expl.after_eos,
          "attention": np.round(expl.attention.astype(np.float64), 5).tolist(),
          "experts": expl.experts.tolist()}


def _write(out_dir: str, stem: str, path: str, crop: np.ndarray, expl: Explanation,
           config: ml_collections.ConfigDict, num_experts: int, max_words: int,
           header: str) -> str:
  png = os.path.join(out_dir, stem + ".png")
  original = np.asarray(images_lib.decode(path))
  box = crop_box(*original.shape[:2], config.data.resize_size, config.data.image_size)
  render(original, box, crop, expl, num_experts, max_words, header).savefig(png, dpi=DPI)
  record = dict(to_record(expl), image=path, settings=header)
  with open(os.path.join(out_dir, stem + ".json"), "w", encoding="utf-8") as f:
    json.dump(record, f)
  return png


def explain(config: ml_collections.ConfigDict, workdir: str, images: Sequence[str]) -> list[str]:
  """Writes DIR/explain/<stem>.png and .json per readable image with the best checkpoint.

  Returns:
    The PNG paths, in input order.

  Raises:
    errors.UserError: multi-view config, bad explain settings, or no readable image.
  """
  if config.data.num_views != 1:
    raise errors.UserError("--mode=explain supports single-view configs (data.num_views=1) only")
  from micar_jax import run as run_lib  # pylint: disable=g-import-not-at-top
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
  written, used = [], set()
  with sharding.use_mesh(run.mesh, run.rules):
    for batch in input_pipeline.predict_batches(config, paths):
      ids, cross, experts = decode_batch(run, variables, batch["images"], batch["valid"])
      for row, path in enumerate(batch["paths"]):
        expl = summarise(ids[row], cross[row], experts[row], run.tokenizer, layer, head)
        written.append(_write(out_dir, _out_stem(path, used), path,
                              unnormalise(batch["images"][row]), expl, config,
                              mc.num_experts, max_words, header))
  if not written:
    raise errors.UserError(f"no readable images in {', '.join(images)}")
  logging.info("wrote %d explanations", len(written))
  print(f"explanations: {out_dir} ({len(written)} images)")
  return written
