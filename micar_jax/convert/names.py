"""Which PyTorch state-dict entry feeds which of our variables, and how it is laid out.

Two naming styles share one table: "official" (the reference `CaptionModel`,
docs/checkpoint_layout.md) and "torchvision" (a plain torchvision ResNet, whose
names are the official backbone names without the `vis_enc.layerK.J.` regrouping).

Layouts (PyTorch -> ours):
  copy     vectors and the embedding table, unchanged;
  linear   `[out, in]` -> Dense kernel `[in, out]`;
  conv     `[out, in, kh, kw]` -> Conv kernel `[kh, kw, in, out]`;
  experts  E entries `experts.e.wN.weight [out, in]` -> one stacked `[E, in, out]`.

Attention kernels need nothing more than `linear`: our attention splits heads
`(d h)` and merges them `(h d)` exactly as the reference does, so channel c
of every projection means the same thing on both sides.
"""

import dataclasses
import re
from typing import Sequence

import numpy as np

from micar_jax.core.weights import MismatchError

OFFICIAL = "official"
TORCHVISION = "torchvision"

# Our module name -> the reference's (Sequential indices included).
_MODULES = {
    "qkv_down": "qkv_down_norm_up.0", "qkv_norm": "qkv_down_norm_up.1",
    "qkv_up": "qkv_down_norm_up.2",
    "q_down": "q_down_norm_up.0", "q_norm": "q_down_norm_up.1", "q_up": "q_down_norm_up.2",
    "kv_down": "kv_down_norm_up.0", "kv_norm": "kv_down_norm_up.1",
    "kv_up": "kv_down_norm_up.2",
    "gate_in": "gate.0", "gate_out": "gate.2", "fusion_in": "fusion.0", "fusion_out": "fusion.3",
    "conv": "0", "bn": "1",  # FPN laterals and the fusion unit: Sequential(conv, bn, relu)
    "downsample_conv": "downsample.0", "downsample_bn": "downsample.1",
    "proj_norm": "proj.0", "proj": "proj.1", "out_norm": "gen_logits.0",
    "gen_logits": "gen_logits.1",
}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "embedding.weight",
           "mean": "running_mean", "var": "running_var"}
_LAYER = re.compile(r"(encoder|decoder)_(\d+)$")
_BLOCK = re.compile(r"stage(\d)_block(\d+)$")
_EXPERT_WEIGHTS = ("w1", "w2", "w3")


@dataclasses.dataclass(frozen=True)
class Entry:
  """One of our variables and the reference entries it is made of.

  Attributes:
    path: our path, collection first, e.g. ("params", "proj", "kernel").
    keys: reference names (one, or E for stacked experts).
    layout: copy | linear | conv | experts.
  """

  path: tuple[str, ...]
  keys: tuple[str, ...]
  layout: str


def _backbone_module(segment: str, style: str) -> str:
  """Our backbone module -> torchvision's (`conv1`, `layer2.0`) or the name under vis_enc."""
  if segment in ("stem_conv", "stem_bn"):
    tv = "conv1" if segment == "stem_conv" else "bn1"
    return tv if style == TORCHVISION else f"layer1.{0 if tv == 'conv1' else 1}"
  match = _BLOCK.match(segment)
  if not match:
    raise KeyError(segment)
  stage, block = int(match.group(1)), match.group(2)
  if style == TORCHVISION:
    return f"layer{stage}.{block}"
  # The reference wraps torchvision's children in Sequentials: layer1 holds the stem
  # (conv, bn, relu, maxpool) before resnet.layer1 at index 4, the others at index 0.
  return f"layer{stage}.{4 if stage == 1 else 0}.{block}"


def reference_entry(path: Sequence[str], shape: Sequence[int], style: str = OFFICIAL) -> Entry:
  """Maps one of our variables to its reference entries.

  Args:
    path: ("params" | "batch_stats", module..., leaf).
    shape: our array's shape (the experts' leading axis gives E).
    style: OFFICIAL (whole model) or TORCHVISION (paths inside vis_enc/backbone,
      given without that prefix).

  Raises:
    KeyError: the path has no reference counterpart.
  """
  _, *modules, leaf = path
  if modules[-1:] == ["moe"] and leaf in _EXPERT_WEIGHTS:
    prefix = ".".join(_rename(modules, style))
    keys = tuple(f"{prefix}.experts.{e}.{leaf}.weight" for e in range(shape[0]))
    return Entry(tuple(path), keys, "experts")
  if modules[-1:] == ["moe"] and leaf == "router":
    return Entry(tuple(path), (".".join(_rename(modules, style)) + ".gate.gate.weight",), "linear")
  name = ".".join([*_rename(modules, style), _LEAVES[leaf]])
  layout = "copy"
  if leaf == "kernel":
    layout = {2: "linear", 4: "conv"}[len(shape)]
  return Entry(tuple(path), (name,), layout)


def _rename(modules: Sequence[str], style: str) -> list[str]:
  """Our module path -> the reference's dotted components (vis_enc/backbone regrouped)."""
  out = []
  for i, m in enumerate(modules):
    layer = _LAYER.match(m)
    if m == "backbone":
      continue
    if (i > 0 and modules[i - 1] == "backbone") or (style == TORCHVISION and i == 0):
      out.append(_backbone_module(m, style))
    elif layer:
      out.append(f"{layer.group(1)}.layers.{layer.group(2)}")
    else:
      out.append(_MODULES.get(m, m))
  return out


def to_ours(layout: str, arrays: Sequence[np.ndarray]) -> np.ndarray:
  """Reference arrays -> our array, C-contiguous (see the module docstring for layouts)."""
  if layout == "experts":
    return np.stack([np.asarray(a).T for a in arrays])
  (a,) = arrays
  a = np.asarray(a)
  if layout == "linear":
    a = a.T
  elif layout == "conv":
    a = a.transpose(2, 3, 1, 0)
  return np.ascontiguousarray(a)


def to_reference(layout: str, array: np.ndarray) -> list[np.ndarray]:
  """Our array -> the reference arrays, inverse of `to_ours`.

  Results are C-contiguous: safetensors' numpy writer ignores strides.
  """
  a = np.asarray(array)
  if layout == "experts":
    parts = [a[e].T for e in range(a.shape[0])]
  elif layout == "linear":
    parts = [a.T]
  elif layout == "conv":
    parts = [a.transpose(3, 2, 0, 1)]
  else:
    parts = [a]
  return [np.ascontiguousarray(p) for p in parts]


def reference_shape(layout: str, shape: Sequence[int]) -> tuple[int, ...]:
  """The shape each reference entry must have for our `shape`."""
  s = tuple(shape)
  if layout == "experts":
    return (s[2], s[1])
  if layout == "linear":
    return (s[1], s[0])
  if layout == "conv":
    return (s[3], s[2], s[0], s[1])
  return s


def match_state_dict(state_dict: dict[str, np.ndarray], shapes: dict[tuple[str, ...], tuple],
                     style: str, what: str, constants: dict[str, np.ndarray] | None = None,
                     ignored_prefixes: Sequence[str] = ()) -> dict[tuple[str, ...], np.ndarray]:
  """Builds our flat variables from a state dict, or reports every mismatch at once.

  Args:
    state_dict: reference name -> array.
    shapes: our flat variable path (collection first) -> shape.
    style: OFFICIAL or TORCHVISION naming.
    what: start of the error message, e.g. "model_snapshot.pth does not fit configs/covctr.py".
    constants: reference entries that are not variables (RoPE freqs, the PE table):
      optional, but when present they must equal these values.
    ignored_prefixes: reference names to drop silently (torchvision's `fc.`).

  Returns:
    path -> float32 array in our layout.

  Raises:
    MismatchError: listing missing, unexpected and wrongly shaped entries together.
  """
  missing, wrong, used, out = [], [], set(), {}
  for path, shape in shapes.items():
    entry = reference_entry(path, shape, style)
    want = reference_shape(entry.layout, shape)
    absent = [k for k in entry.keys if k not in state_dict]
    missing += absent
    used.update(k for k in entry.keys if k in state_dict)
    bad = [f"{k} {tuple(np.shape(state_dict[k]))} expected {want}" for k in entry.keys
           if k in state_dict and tuple(np.shape(state_dict[k])) != want]
    wrong += bad
    if not absent and not bad:
      arrays = [state_dict[k] for k in entry.keys]
      out[entry.path] = to_ours(entry.layout, arrays).astype(np.float32)
  for name, value in (constants or {}).items():
    if name not in state_dict:
      continue
    used.add(name)
    got = np.asarray(state_dict[name], np.float32)
    if got.shape != value.shape:
      wrong.append(f"{name} {got.shape} expected {value.shape}")
    elif not np.allclose(got, value, rtol=1e-5, atol=1e-5):
      wrong.append(f"{name} differs from our constant by {np.max(np.abs(got - value)):.3g}")
  bn = {k[: -len("running_mean")] for k in used if k.endswith(".running_mean")}
  unexpected = sorted(
      k for k in state_dict if k not in used and not k.startswith(tuple(ignored_prefixes))
      and not (k.endswith(".num_batches_tracked") and k[: -len("num_batches_tracked")] in bn))
  if missing or unexpected or wrong:
    raise MismatchError(what, missing, unexpected, wrong)
  return out


def to_state_dict(flat: dict[tuple[str, ...], np.ndarray], style: str) -> dict[str, np.ndarray]:
  """Our flat variables -> a reference state dict (with BatchNorm's num_batches_tracked)."""
  state_dict = {}
  for path, value in flat.items():
    entry = reference_entry(path, np.shape(value), style)
    state_dict.update(zip(entry.keys, to_reference(entry.layout, value)))
  for name in [k for k in state_dict if k.endswith(".running_mean")]:
    state_dict[name[: -len("running_mean")] + "num_batches_tracked"] = np.array(0, np.int64)
  return state_dict
