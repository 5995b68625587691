"""The explanation figure: report, the image with its crop, attention panels, routing.

`explain` decides what to show (`Explanation`); this module only draws it, so
the web app (`serve`) and `--mode=explain` share one picture.
"""

import dataclasses
import math
import textwrap

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from micar_jax.data import images as images_lib

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
# Room right of a multi-view input row for the colour bar, its labels and the uniform mark.
MULTI_VIEW_BAR_IN = 3.2
# At most this many numbered words under a routing plot (every k-th beyond it).
MAX_WORD_TICKS = 40


@dataclasses.dataclass(frozen=True)
class Explanation:
  """One image's generated words and what each looked at.

  Attributes:
    words: generated words up to the first `<eos>` (`<pad>`/`<sos>` skipped).
    attention: [n_words, grid, grid] cross-attention (selected/averaged layers and heads);
      [n_words, V, grid, grid] for a multi-view study (a word's grids sum to its total).
    experts: [n_words, num_layers, top_k] routed expert ids, best first.
    after_eos: generated words after the first `<eos>` (not shown).
    report: the report text (`Tokenizer.decode_clean`: what --mode=predict writes).
  """
  words: list[str]
  attention: np.ndarray
  experts: np.ndarray
  after_eos: int
  report: str


def unnormalise(image: np.ndarray) -> np.ndarray:
  """A preprocessed float32 [S, S, 3] crop back to the uint8 RGB pixels the network saw."""
  rgb = image * images_lib.IMAGENET_STD + images_lib.IMAGENET_MEAN
  return np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)


def figure_inches(num_panels: int, num_layers: int, num_experts: int) -> tuple[float, float]:
  """(width, height) of a figure with `num_panels` word panels."""
  rows = math.ceil(num_panels / COLS)
  routing = num_layers * (num_experts * ROUTING_PER_EXPERT_IN + ROUTING_PAD_IN)
  return COLS * PANEL_IN, HEADER_IN + INPUT_IN + rows * PANEL_IN + routing


def _draw_input(ax, original: np.ndarray, box: tuple[float, float, float, float],
                what: str) -> None:
  """The file as read with the crop the network saw outlined in red."""
  ax.imshow(original)
  top, left, h, w = box
  ax.add_patch(Rectangle((left - 0.5, top - 0.5), w, h, fill=False, edgecolor="red", lw=1.5))
  ax.set_title(f"{what} {original.shape[1]}x{original.shape[0]} (red: crop)", fontsize=FONT)
  ax.set_axis_off()


def crop_box(height: int, width: int, resize_size: int, image_size: int
             ) -> tuple[float, float, float, float]:
  """(top, left, height, width) in original pixels of the centre crop the network saw."""
  new_h, new_w = images_lib.resized_size(height, width, resize_size)
  top, left = images_lib.crop_offsets(new_h, new_w, image_size)
  sy, sx = height / new_h, width / new_w
  return top * sy, left * sx, image_size * sy, image_size * sx


Box = tuple[float, float, float, float]


def render(original: np.ndarray | list[np.ndarray], box: Box | list[Box], crop: np.ndarray,
           expl: Explanation, num_experts: int, max_words: int, header: str) -> Figure:
  """The explanation figure: report, inputs with colour bar, attention panels, routing.

  Every attention panel shares one colour scale, from 0 to the largest weight
  shown, so panels compare; the colour bar marks the uniform level 1 / n_img
  (attention spread evenly over the image grid).

  A multi-view study (expl.attention [n_words, V, grid, grid]) shows each
  view's file with its crop outlined and, per word, one panel per view (titled
  with the view's share of the word's attention).

  Args:
    original: uint8 [H, W, 3] the image as read from its file (a list of V for a study).
    box: `crop_box` of the crop within `original` (a list of V for a study).
    crop: uint8 [S, S, 3] the centre crop the network saw ([V, S, S, 3] for a study).
    expl: the image's explanation.
    num_experts: experts per MoE layer (rows of the routing plots).
    max_words: at most this many attention panels.
    header: the settings line under the report.
  """
  n_panels = min(len(expl.words), max_words)
  views = expl.attention.shape[1] if expl.attention.ndim == 4 else 1
  num_layers = expl.experts.shape[1] if expl.experts.ndim == 3 else 0
  width, height = figure_inches(n_panels * views, num_layers, num_experts)
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
  if views == 1:
    side = INPUT_IN - 0.5
    _draw_input(axes(0.1, HEADER_IN + 0.3, side, side), original, box, "image")
    ax = axes(side + 0.4, HEADER_IN + 0.3, side, side)
    ax.imshow(crop, interpolation="bilinear")
    ax.set_title(f"network input {crop.shape[1]}x{crop.shape[0]}", fontsize=FONT)
    ax.set_axis_off()
    bar_left = 2 * side + 1.9
  else:
    # Every view's file and crop side by side, leaving room for the colour bar.
    gap = 0.15
    side = min(INPUT_IN - 0.5, (width - MULTI_VIEW_BAR_IN - gap * (2 * views - 1)) / (2 * views))
    for v in range(views):
      left = 0.1 + 2 * v * (side + gap)
      _draw_input(axes(left, HEADER_IN + 0.3, side, side), original[v], box[v], f"view {v + 1}")
      ax = axes(left + side + gap, HEADER_IN + 0.3, side, side)
      ax.imshow(crop[v], interpolation="bilinear")
      ax.set_title(f"view {v + 1} input {crop.shape[2]}x{crop.shape[1]}", fontsize=FONT)
      ax.set_axis_off()
    bar_left = 0.1 + 2 * views * (side + gap) + 1.0

  n_img = expl.attention[0].size if n_panels else 1
  shown = expl.attention[:n_panels]
  uniform = 1.0 / n_img
  norm = Normalize(0.0, max(float(shown.max()) if n_panels else 0.0, 2 * uniform))
  cax = axes(bar_left, HEADER_IN + 0.3, 0.2, side)
  bar = fig.colorbar(ScalarMappable(norm=norm, cmap=CMAP), cax=cax)
  bar.ax.tick_params(labelsize=FONT)
  bar.set_label("attention weight (shared by all panels)", fontsize=FONT)
  bar.ax.axhline(uniform, color="white", lw=2)
  bar.ax.axhline(uniform, color="black", lw=1, ls="--")
  bar.ax.text(-0.5, uniform, f"uniform 1/{n_img}", transform=bar.ax.get_yaxis_transform(),
              va="center", ha="right", fontsize=FONT)

  size = crop.shape[-2]
  pad = 0.3  # per panel, for the word above it
  grid_top = HEADER_IN + INPUT_IN
  for k in range(n_panels * views):
    i, v = divmod(k, views)
    row, col = divmod(k, COLS)
    ax = axes(col * PANEL_IN + 0.05, grid_top + row * PANEL_IN + pad,
              PANEL_IN - 0.1, PANEL_IN - pad - 0.05)
    ax.imshow(crop if views == 1 else crop[v], interpolation="bilinear")
    attention = expl.attention[i] if views == 1 else expl.attention[i, v]
    ax.imshow(attention, cmap=CMAP, norm=norm, alpha=ALPHA, interpolation="bilinear",
              extent=(-0.5, size - 0.5, size - 0.5, -0.5))
    peak = float(attention.max()) / uniform
    if views == 1:
      ax.set_title(f"{i + 1}: {expl.words[i]} ({peak:.1f}x)", fontsize=FONT)
    else:
      share = float(attention.sum())
      ax.set_title(f"{i + 1}: {expl.words[i]} v{v + 1} {share:.0%} ({peak:.1f}x)", fontsize=FONT)
    ax.set_axis_off()

  top = grid_top + math.ceil(n_panels * views / COLS) * PANEL_IN
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
