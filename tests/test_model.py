"""The full model: exact parameter counts, shapes, masks, cached decoding, bf16."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from micar_jax.config import defaults
from micar_jax.core import summary
from micar_jax.models import model as model_lib

REFERENCE_COUNTS = [  # (L, activation, text length, V, trainable parameters of the reference)
    (2, "silu", 80, 229, 156_003_520),    # covctr
    (3, "gelu", 60, 2046, 191_150_848),   # mmr
    (3, "silu", 30, 1679, 190_775_040),   # pgross
    (3, "silu", 60, 16740, 206_197_504),  # roco
]


@pytest.mark.parametrize("layers_,act,seq,vocab,want", REFERENCE_COUNTS)
def test_parameter_counts_equal_the_reference(layers_, act, seq, vocab, want):
  c = defaults.base_config()
  c.model.num_layers, c.model.act_fn, c.data.text_seq_len = layers_, act, seq
  params = summary.abstract_variables(model_lib.ModelConfig.from_config(c, vocab))["params"]
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params)) == want
  assert summary.format_summary(params).splitlines()[-1] == f"total_params={want}"


@pytest.fixture(scope="module")
def tiny():
  c = defaults.tiny(defaults.base_config())
  c.data.text_seq_len = 8
  mc = model_lib.ModelConfig.from_config(c, 20)
  model = model_lib.MicarVLMoE(mc)
  rng = np.random.RandomState(0)
  images = jnp.asarray(rng.randn(2, 32, 32, 3).astype(np.float32))
  ids = jnp.asarray(rng.randint(4, 20, size=(2, 8)).astype(np.int32))
  variables = nn.meta.unbox(jax.jit(model.init)(jax.random.PRNGKey(0), images, ids))
  return mc, model, variables, images, ids


def test_forward_shapes_and_stats(tiny):
  mc, model, variables, images, ids = tiny
  logits, stats = jax.jit(model.apply)(variables, images, ids, jnp.ones_like(ids))
  assert logits.shape == (2, 8, mc.vocab_size) and logits.dtype == jnp.float32
  assert stats["load"].shape == (mc.num_layers, mc.num_experts)
  assert stats["dropped"].shape == (mc.num_layers,)
  assert -np.log(mc.num_experts) - 1e-5 <= float(stats["aux"]) <= 0
  memory = model.apply(variables, images, method=model.encode)
  assert memory.shape == (2, mc.pool_size**2, mc.d_model)


def test_two_views_concatenate_visual_tokens(tiny):
  mc, model, variables, images, _ = tiny
  two = jnp.stack([images, images[::-1]], axis=1)
  memory = jax.jit(lambda v, x: model.apply(v, x, method=model.encode))(variables, two)
  assert memory.shape == (2, 2 * mc.pool_size**2, mc.d_model)


def test_causal_and_padding_masks(tiny):
  _, model, variables, images, ids = tiny
  apply = jax.jit(model.apply)
  pad = jnp.asarray([[1] * 8, [1] * 5 + [0] * 3])
  base, _ = apply(variables, images, ids, pad)
  # Changing a later token never changes earlier logits (causal).
  later = ids.at[:, 6].set(4)
  np.testing.assert_allclose(apply(variables, images, later, pad)[0][:, :6], base[:, :6],
                             atol=1e-5)
  # Padded keys are invisible to real positions of row 1 ...
  padded = ids.at[1, 5:].set(7)
  np.testing.assert_allclose(apply(variables, images, padded, pad)[0][1, :5], base[1, :5],
                             atol=1e-5)
  # ... but the MoE statistics, like the reference's, include padding tokens.
  full, _ = apply(variables, images, ids, jnp.ones_like(ids))
  assert not np.allclose(full[1, 5:], base[1, 5:])


def test_cached_decoding_equals_teacher_forcing(tiny):
  mc, model, variables, images, ids = tiny
  want, _ = model.apply(variables, images, ids, None)
  memory = model.apply(variables, images, method=model.encode)
  step_model = model_lib.MicarVLMoE(mc, decode=True)
  cache = step_model.init(jax.random.PRNGKey(0), ids[:, :1], memory, None, False, jnp.int32(0),
                          method=step_model.decode_tokens)["cache"]
  def step(cache, token, mem, t):
    return step_model.apply({"params": variables["params"], "cache": cache}, token, mem, None,
                            False, t, method=step_model.decode_tokens, mutable=["cache"])

  first, later = jax.jit(step), jax.jit(lambda c, tok, t: step(c, tok, None, t))
  outs = []
  for t in range(ids.shape[1]):
    if t == 0:
      (logits, _), upd = first(cache, ids[:, :1], memory, jnp.int32(0))
    else:
      (logits, _), upd = later(cache, ids[:, t:t + 1], jnp.int32(t))
    cache = upd["cache"]
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), want, atol=2e-4, rtol=1e-4)


def test_bf16_stays_close_to_fp32(tiny):
  mc, _, variables, images, ids = tiny
  bf16 = model_lib.MicarVLMoE(dataclasses.replace(mc, dtype="bfloat16"))
  fp32 = model_lib.MicarVLMoE(mc)
  a, _ = jax.jit(fp32.apply)(variables, images, ids, None)
  b, _ = jax.jit(bf16.apply)(variables, images, ids, None)
  assert b.dtype == jnp.float32
  pa, pb = jax.nn.softmax(a), jax.nn.softmax(b)
  assert float(jnp.max(jnp.abs(pa - pb))) < 0.05
  assert float(jnp.mean(jnp.argmax(a, -1) == jnp.argmax(b, -1))) >= 0.8


def test_train_mode_updates_batch_stats_and_uses_dropout(tiny):
  _, model, variables, images, ids = tiny
  train = jax.jit(lambda key: model.apply(variables, images, ids, None, True,
                                          rngs={"dropout": key}, mutable=["batch_stats"]))
  (a, _), upd = train(jax.random.PRNGKey(1))
  (b, _), _ = train(jax.random.PRNGKey(2))
  assert not np.allclose(a, b)
  assert jax.tree.structure(upd["batch_stats"]) == jax.tree.structure(variables["batch_stats"])
