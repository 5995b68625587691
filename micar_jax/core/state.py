"""The model's state: what a train step changes, and how it is created.

`TrainState` holds the step counter, parameters, BatchNorm statistics and
optimizer state; the init functions build it (with logically-partitioned
leaves) from the model config and the batch spec. Every mode reads or
restores this state: training creates and updates it, evaluation and
inference restore its variables, the planner and benchmark compile it.
"""

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from micar_jax.data import batch_spec
from micar_jax.models import model as model_lib

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  """Everything a step changes: step counter, parameters, BN statistics, optimizer state."""

  step: Array
  params: Any
  batch_stats: Any
  opt_state: Any

  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def make_variables_init_fn(mc: model_lib.ModelConfig,
                           spec: batch_spec.BatchSpec) -> Callable[[Array], Any]:
  """init(rng) -> {params, batch_stats} with logically-partitioned (boxed) leaves.

  The model is traced on `spec.dummy()` (one zero row). Only these two
  collections are kept: what layers sow for inspection (the MoE's expert
  choices) is not model state.
  """
  model = model_lib.MicarVLMoE(mc)
  return lambda rng: model.init(rng, *spec.dummy(), mutable=["params", "batch_stats"])


def make_init_fn(mc: model_lib.ModelConfig, tx: optax.GradientTransformation,
                 spec: batch_spec.BatchSpec) -> Callable[[Array], TrainState]:
  """init(rng) -> TrainState with logically-partitioned (boxed) leaves."""
  init_variables = make_variables_init_fn(mc, spec)

  def init(rng: Array) -> TrainState:
    variables = init_variables(rng)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      batch_stats=variables["batch_stats"], opt_state=tx.init(params))

  return init
