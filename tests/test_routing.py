"""Routing math: top-k choice, k-major capacity slots, auxiliary losses."""

import jax.numpy as jnp
import numpy as np
import pytest

from micar_jax import errors
from micar_jax.models import routing

K = 2


def test_capacity_positions_are_k_major():
  ids = jnp.asarray([[0, 1], [0, 2], [1, 0]])
  # First choices fill the buffers first: expert 0 gets t0 (slot 0), t1 (1), then t2's
  # second choice (2); expert 1 gets t2's first choice (0) before t0's second (1).
  np.testing.assert_array_equal(routing.capacity_positions(ids, 3), [[0, 1], [1, 0], [0, 2]])
  assert routing.expert_capacity(10, 2, 4, 1.0) == 5
  assert routing.expert_capacity(10, 2, 4, -1.0) == 10


def test_entropy_aux_loss_on_known_router_outputs():
  logits = jnp.log(jnp.asarray([[0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]]))
  probs, _, ids = routing.route(logits, K)
  out = routing.aux_losses(logits, probs, ids, "entropy")
  p_mean = np.array([0.4, 0.1, 0.1, 0.4])
  np.testing.assert_allclose(out["aux"], np.sum(p_mean * np.log(p_mean + 1e-8)), rtol=1e-6)
  uniform = jnp.zeros((6, 4))
  up, _, ui = routing.route(uniform, K)
  np.testing.assert_allclose(routing.aux_losses(uniform, up, ui, "entropy")["aux"], -np.log(4),
                             rtol=1e-6)
  np.testing.assert_allclose(out["z"], np.mean(np.log(np.exp(np.asarray(logits)).sum(-1)) ** 2),
                             atol=1e-6)


def test_switch_aux_loss_is_one_when_balanced():
  logits = jnp.log(jnp.asarray([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]]))
  probs, _, ids = routing.route(logits, K)
  out = routing.aux_losses(logits, probs, ids, "switch")
  # Loads: experts 0,1 once and 2,3 once -> f = 1/4 each; P mean = 1/4 each -> 4·Σ f·P = 1.
  np.testing.assert_allclose(out["load"], [0.25] * 4)
  np.testing.assert_allclose(out["aux"], 1.0, rtol=1e-6)
  with pytest.raises(errors.ConfigError, match="unknown moe_aux_loss"):
    routing.aux_losses(logits, probs, ids, "gshard")


def test_combine_weights_sum_ignores_the_gates():
  gates = jnp.asarray([[0.75, 0.25], [0.5, 0.5]])
  np.testing.assert_array_equal(routing.combine_weights(gates, "sum"), np.ones((2, 2)))
  np.testing.assert_array_equal(routing.combine_weights(gates, "weighted"), gates)
  with pytest.raises(errors.ConfigError, match="unknown moe_combine 'max'"):
    routing.combine_weights(gates, "max")


def test_route_renormalises_the_top_k_best_first():
  logits = jnp.log(jnp.asarray([[0.1, 0.6, 0.1, 0.2]]))
  probs, gates, ids = routing.route(logits, K)
  np.testing.assert_allclose(probs, [[0.1, 0.6, 0.1, 0.2]], rtol=1e-6)
  np.testing.assert_array_equal(ids, [[1, 3]])
  np.testing.assert_allclose(gates, [[0.75, 0.25]], rtol=1e-6)
