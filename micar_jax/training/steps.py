"""The train state, the loss, and the compiled train and evaluation steps.

Loss (docs/reference_model.md §5): token cross-entropy averaged over non-pad label
positions of the (global) batch, plus aux_loss_weight × the MoE load-balancing
loss (averaged over decoder layers) and router_z_loss_weight × the z-loss.
Rows with valid=False (padding of a partial batch, unreadable images) carry no
cross-entropy weight.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from micar_jax.core import sharding
from micar_jax.core.state import TrainState, make_init_fn
from micar_jax.data import batch_spec
from micar_jax.models import model as model_lib
from micar_jax.models import partitioning

Array = jax.Array


def cross_entropy(logits: Array, labels: Array, weights: Array) -> tuple[Array, Array]:
  """Σ weight·CE over tokens, and Σ weight: logits [b,T,V] f32, labels/weights [b,T]."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
  return jnp.sum(nll * weights), jnp.sum(weights)


def token_weights(batch: dict[str, Array]) -> Array:
  """1 on real label positions (label != <pad>=0) of valid rows: [b, T] float32."""
  w = (batch["labels"] != 0).astype(jnp.float32)
  if "valid" in batch:
    w = w * batch["valid"].astype(jnp.float32)[:, None]
  return w


def loss_terms(logits: Array, stats: dict[str, Array], batch: dict[str, Array], aux_w: float,
               z_w: float) -> dict[str, Array]:
  """The objective and its parts, all scalars: logits [b, T, V] f32, stats from the model.

  Returns:
    loss: ce + aux_w × MoE load-balancing loss + z_w × router z-loss;
    ce: token-mean cross-entropy, ce_sum / max(tokens, 1) (ce_sum, tokens: its sums,
      which validation averages over the whole split);
    regularization: the two weighted MoE terms of `loss`.
  """
  ce_sum, tokens = cross_entropy(logits, batch["labels"], token_weights(batch))
  ce = ce_sum / jnp.maximum(tokens, 1.0)
  aux, z = aux_w * stats["aux"], z_w * stats["z"]
  return {"loss": ce + aux + z, "ce": ce, "ce_sum": ce_sum, "tokens": tokens,
          "regularization": aux + z}


def make_loss_fn(mc: model_lib.ModelConfig, config: ml_collections.ConfigDict,
                 train: bool) -> Callable:
  """loss(params, batch_stats, batch, rngs) -> (loss, (terms, stats, batch_stats)).

  `terms` is `loss_terms`, `stats` the model's MoE statistics. With `train`,
  dropout is on (rngs needs "dropout") and BatchNorm normalises with and
  updates batch statistics (the returned batch_stats); otherwise the given
  batch_stats are used and returned unchanged.
  """
  model = model_lib.MicarVLMoE(mc)
  aux_w, z_w = config.train.aux_loss_weight, config.model.router_z_loss_weight

  def loss_fn(params: Any, batch_stats: Any, batch: dict[str, Array],
              rngs: dict[str, Array] | None = None):
    variables = {"params": params, "batch_stats": batch_stats}
    inputs = (batch["images"], batch["input_ids"], batch["pad_mask"], train)
    if train:
      (logits, stats), updates = model.apply(variables, *inputs, rngs=rngs,
                                             mutable=["batch_stats"])
      batch_stats = updates["batch_stats"]
    else:
      logits, stats = model.apply(variables, *inputs, rngs=rngs)
    terms = loss_terms(logits, stats, batch, aux_w, z_w)
    return terms["loss"], (terms, stats, batch_stats)

  return loss_fn


def all_finite(tree: Any) -> Array:
  """A bool scalar: every element of every floating-point leaf is finite."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


def make_train_step(mc: model_lib.ModelConfig, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict) -> Callable:
  """(state, batch) -> (state, metrics); dropout keys come from (seed, step).

  metrics["finite"] (bool scalar) is False when the loss, the gradient norm or
  the new BatchNorm statistics are not finite; the update is then not applied.
  Those three decide it before the optimizer runs, so the keep-or-replace select
  fuses into the optimizer's single elementwise pass instead of a second pass
  after a scan of the whole new state. They suffice: a finite gradient norm means
  finite gradients and squared gradients, hence finite AMSGrad moments, and the
  Adam-family step is bounded by about lr / sqrt(1 - b2) per element, so finite
  parameters (no saved state is ever non-finite) stay finite.
  """
  loss_fn = make_loss_fn(mc, config, train=True)
  base_key = jax.random.PRNGKey(config.seed)

  def train_step(state: TrainState, batch: dict[str, Array]):
    rngs = {"dropout": jax.random.fold_in(base_key, state.step)}
    (loss, (terms, stats, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, batch, rngs)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(batch_stats)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A non-finite step leaves the state as it was (only the step counter, which
    # names the batch, advances), so no saved state is ever non-finite; the loop
    # reads `finite` and decides whether to skip on or stop.
    kept = jax.tree.map(lambda new, old: jnp.where(finite, new, old),
                        (params, batch_stats, opt_state),
                        (state.params, state.batch_stats, state.opt_state))
    new_state = TrainState(step=state.step + 1, params=kept[0], batch_stats=kept[1],
                           opt_state=kept[2])
    metrics = {"loss": loss, "ce": terms["ce"],
               "aux_loss": stats["aux"], "z_loss": stats["z"], "expert_load": stats["load"],
               "dropped_fraction": stats["dropped"], "grad_norm": grad_norm, "finite": finite}
    return new_state, metrics

  return train_step


def jit_train_step(mc: model_lib.ModelConfig, tx: optax.GradientTransformation,
                   config: ml_collections.ConfigDict, state_shardings: Any,
                   mesh: jax.sharding.Mesh) -> Callable:
  """The train step as training jits it: the state keeps its shardings and is donated,
  the batch is split over the mesh's batch axes (also what bench times and plan compiles)."""
  return jax.jit(make_train_step(mc, tx, config),
                 in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=(state_shardings, None), donate_argnums=(0,))


def lower_train_step(mc: model_lib.ModelConfig, tx: optax.GradientTransformation,
                     config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                     rules: partitioning.LogicalRules,
                     spec: batch_spec.BatchSpec) -> jax.stages.Lowered:
  """`jit_train_step` lowered on shapes alone (no state, no batch exists yet).

  Training compiles this before it initialises anything (and checks its memory),
  the planner compiles it for TPU topologies, the benchmark reads its memory.

  Args:
    spec: the global train batch (`spec.abstract`, split over the batch axes);
      also the shapes the state is initialised for.
  """
  init_fn = make_init_fn(mc, tx, spec)
  state = sharding.abstract_sharded(init_fn, mesh, rules, jax.random.PRNGKey(config.seed))
  batch = spec.abstract(sharding.batch_sharding(mesh))
  jitted = jit_train_step(mc, tx, config, jax.tree.map(lambda s: s.sharding, state), mesh)
  with partitioning.use_mesh(mesh, rules):
    return jitted.lower(state, batch)


def make_eval_step(mc: model_lib.ModelConfig, config: ml_collections.ConfigDict) -> Callable:
  """(variables, batch) -> sums for the teacher-forced validation loss (BN in eval mode)."""
  loss_fn = make_loss_fn(mc, config, train=False)

  def eval_step(variables: dict[str, Any], batch: dict[str, Array]) -> dict[str, Array]:
    _, (terms, _, _) = loss_fn(variables["params"], variables["batch_stats"], batch)
    return {"ce_sum": terms["ce_sum"], "tokens": terms["tokens"],
            "aux": terms["regularization"]}

  return eval_step
