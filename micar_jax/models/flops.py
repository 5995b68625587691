"""Model FLOPs counted from the traced program, active experts only.

Walks the jaxpr of a function and adds 2·MACs of every convolution, dot
product and ragged dot (whose rows are only the tokens routed to each expert,
so a top-k MoE counts k experts per token, not E); a scan's body counts once
per iteration. Element-wise work is not counted, as usual for MFU.
"""

import math
from typing import Any, Callable

import jax
from jax.extend import core as jex_core


def _dot_flops(eqn) -> int:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  (lhs_contract, _), (lhs_batch, _) = eqn.params["dimension_numbers"]
  contract = math.prod(lhs.shape[d] for d in lhs_contract)
  out = math.prod(eqn.outvars[0].aval.shape)
  return 2 * out * contract


def _conv_flops(eqn) -> int:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  dn = eqn.params["dimension_numbers"]
  out = eqn.outvars[0].aval
  kernel_spatial = math.prod(rhs.shape[d] for d in dn.rhs_spec[2:])
  in_features = rhs.shape[dn.rhs_spec[1]]
  return 2 * math.prod(out.shape) * kernel_spatial * in_features


def _ragged_dot_flops(eqn) -> int:
  lhs, rhs = (v.aval for v in eqn.invars[:2])
  # lhs [m, k] rows grouped by expert, rhs [E, k, n]: each row meets one expert.
  return 2 * lhs.shape[0] * lhs.shape[1] * rhs.shape[-1]


_COUNTERS = {"dot_general": _dot_flops, "conv_general_dilated": _conv_flops,
             "ragged_dot": _ragged_dot_flops, "ragged_dot_general": _ragged_dot_flops}


def _jaxpr_flops(jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    counter = _COUNTERS.get(eqn.primitive.name)
    if counter is not None:
      total += counter(eqn)
    # A scan runs its body `length` times (the scanned ResNet blocks).
    trips = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    for sub in jex_core.jaxprs_in_params(eqn.params):
      total += trips * _jaxpr_flops(sub)
  return total


def count_flops(fn: Callable, *args: Any) -> int:
  """FLOPs of one call of `fn(*args)` (args may be ShapeDtypeStructs)."""
  return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)
