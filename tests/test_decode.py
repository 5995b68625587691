"""Decoding: greedy stopping rule, cached = uncached, beam search."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from micar_jax import decode, errors, evaluate
from micar_jax.core import sharding
from micar_jax.data.tokenizer import EOS, PAD, SOS
from micar_jax.models import model as model_lib
from micar_jax.models import partitioning

T = 8  # decoding steps; also the text_seq_len of conftest's sharp_tiny_model


def scripted(tokens: np.ndarray, vocab: int = 8):
  """start/step functions whose row r emits tokens[r, t] at step t."""
  table = jnp.asarray(tokens)
  logits = lambda t: 10.0 * jax.nn.one_hot(table[:, t], vocab)
  return (lambda first: (logits(0), None)), (lambda prev, cache, t: (logits(t), cache))


def markov(probs: dict[int, dict[int, float]], vocab: int = 6):
  """start/step functions with p(next | previous token) from `probs` (uniform elsewhere)."""
  table = np.full((vocab, vocab), 1.0 / vocab)
  for prev, row in probs.items():
    table[prev] = 1e-6
    for token, p in row.items():
      table[prev, token] = p
  logp = jnp.log(jnp.asarray(table, jnp.float32))
  return (lambda first: (logp[first], None)), (lambda prev, cache, t: (logp[prev], cache))


def expected(rows: list[list[int]]) -> np.ndarray:
  out = np.full((len(rows), T + 1), PAD)
  for r, row in enumerate(rows):
    out[r, :len(row) + 1] = [SOS] + row
  return out


@pytest.mark.parametrize("script,steps", [
    ([[5, EOS, 6, EOS, 7, 5, 5, 5], [EOS, 5, 6, EOS, 6, 6, 6, 6]], 4),  # all rows <eos> at step 3
    ([[EOS, 5, 5, 5, 5, 5, 5, 5], [EOS, 4, 4, 4, 4, 4, 4, 4]], 1),      # ... at step 0
    ([[5, EOS, 6, 6, 6, 6, 6, EOS], [EOS, 5, 6, EOS, 6, 6, 6, 6]], T),  # never together
])
def test_greedy_stops_only_when_every_row_emits_eos_at_once(script, steps):
  ids, _ = jax.jit(lambda: decode.greedy_search(*scripted(np.array(script)), 2, T))()
  np.testing.assert_array_equal(ids, expected([row[:steps] for row in script]))


def test_beam_search_keeps_the_better_finished_beam():
  # Greedy takes 3 (0.55) and then wanders; 4 (0.45) then <eos> (0.9) is more likely.
  fns = markov({SOS: {3: 0.55, 4: 0.45}, 3: {3: 0.34, 4: 0.33, EOS: 0.33},
                4: {EOS: 0.9, 3: 0.05, 5: 0.05}})
  greedy, _ = jax.jit(lambda: decode.greedy_search(*fns, 1, T))()
  np.testing.assert_array_equal(greedy, expected([[3] * T]))
  beam = jax.jit(lambda: decode.beam_search(*fns, 1, T, beam_width=2))()
  np.testing.assert_array_equal(beam, expected([[4, EOS]]))


@pytest.mark.parametrize("alpha,want", [(0.0, [EOS]), (1.0, [3, EOS])])
def test_length_penalty_can_favour_the_longer_report(alpha, want):
  # log 0.5 alone vs (log 0.49 + log 0.99) / (7/6)**alpha.
  fns = markov({SOS: {EOS: 0.5, 3: 0.49}, 3: {EOS: 0.99, 4: 0.01}})
  beam = jax.jit(lambda: decode.beam_search(*fns, 1, T, beam_width=2, alpha=alpha))()
  np.testing.assert_array_equal(beam, expected([want]))


def eval_config(c, **overrides):
  e = c.eval.copy_and_resolve_references()
  e.update(overrides)
  return e


def score(mc, params, batch_stats, images, ids):
  """Teacher-forced log-probability of ids [b, T'+1] (model max_len = T')."""
  model = model_lib.MicarVLMoE(mc)
  logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, images,
                          ids[:, :-1], None)
  return decode.sequence_log_probs(logits, ids)


def test_cached_greedy_equals_uncached(sharp_tiny_model):
  c, mc, params, batch_stats, images = sharp_tiny_model
  cached = decode.generate(c, params, batch_stats, images)
  uncached = decode.make_generate_fn(mc, eval_config(c, decode="greedy_uncached"))(
      params, batch_stats, images)
  assert cached.shape == (6, T + 1) and np.all(cached[:, 0] == SOS)
  assert len({tuple(row) for row in np.asarray(cached)}) > 1  # not one report for all images
  np.testing.assert_array_equal(cached, uncached)


def test_beam_search_on_the_model(sharp_tiny_model):
  c, mc, params, batch_stats, images = sharp_tiny_model
  greedy = np.asarray(decode.make_generate_fn(mc, c.eval)(params, batch_stats, images))
  width = lambda k: eval_config(c, decode="beam", beam_width=k)
  one = np.asarray(decode.make_generate_fn(mc, width(1))(params, batch_stats, images))
  # Width 1 is greedy up to the first <eos>; the finished beam then only pads.
  for g, b in zip(greedy, one):
    stop = int(np.argmax(g == EOS)) if EOS in g else T
    np.testing.assert_array_equal(b[:stop + 1], g[:stop + 1])
    assert np.all(b[stop + 1:] == PAD)
  three = decode.make_generate_fn(mc, width(3))(params, batch_stats, images)
  both = jax.jit(score, static_argnums=0)(
      mc, params, batch_stats, jnp.concatenate([images, images]),
      jnp.concatenate([jnp.asarray(greedy), three]))
  assert np.all(both[6:] >= both[:6] - 1e-5), both


def test_exhaustive_beam_search_equals_brute_force(sharp_tiny_model):
  _, mc, params, batch_stats, images = sharp_tiny_model
  horizon, vocab = 3, mc.vocab_size
  short = dataclasses.replace(mc, max_len=horizon)
  model = model_lib.MicarVLMoE(short)
  prefixes = jnp.asarray([[SOS, a, b] for a, b in itertools.product(range(vocab), repeat=2)])

  @jax.jit
  def run(params, batch_stats, images):
    memory = decode.encode(short, params, batch_stats, images)
    beam = decode.beam_search(*decode.model_fns(short, params, memory), 2, horizon,
                              beam_width=vocab ** (horizon - 1))
    # Log-probabilities of every continuation of every prefix [<sos>, t1, t2], per image.
    logits, _ = model.apply({"params": params}, jnp.tile(prefixes, (2, 1)),
                            jnp.repeat(memory, len(prefixes), axis=0),
                            method=model.decode_tokens)
    return score(short, params, batch_stats, images, beam), jax.nn.log_softmax(logits)

  beam_scores, logp = run(params, batch_stats, images[:2])
  logp = np.asarray(logp).reshape(2, vocab, vocab, horizon, vocab)
  ends = np.arange(vocab) == EOS
  for row in range(2):
    l0, l1, l2 = logp[row, 0, 0, 0], logp[row, :, 0, 1], logp[row, :, :, 2]
    total = l0[:, None, None] + np.where(
        ends[:, None, None], 0.0, l1[:, :, None] + np.where(ends[None, :, None], 0.0, l2))
    np.testing.assert_allclose(beam_scores[row], total.max(), atol=1e-4)


def test_unknown_method_is_a_clear_error(sharp_tiny_model):
  c, mc, *_ = sharp_tiny_model
  with pytest.raises(errors.ConfigError, match="unknown eval.decode 'sample'"):
    decode.make_generate_fn(mc, eval_config(c, decode="sample"))


def test_padding_rows_do_not_delay_the_greedy_stop():
  # Rows 0-1 emit <eos> together at step 1; padding row 2 never does.
  script = np.array([[5, EOS] + [6] * (T - 2), [4, EOS] + [6] * (T - 2), [7] * T])
  valid = jnp.asarray([True, True, False])
  ids, _ = jax.jit(lambda v: decode.greedy_search(*scripted(script), 3, T, v))(valid)
  np.testing.assert_array_equal(ids[:2], expected([[5, EOS], [4, EOS]]))


@pytest.mark.parametrize("method", ["greedy", "greedy_uncached", "beam"])
@pytest.mark.parametrize("num_devices", [1, 8])
def test_a_padded_last_batch_gives_the_unpadded_reports(sharp_tiny_model, method, num_devices):
  c, mc, params, batch_stats, images = sharp_tiny_model
  generate_fn = decode.make_generate_fn(mc, eval_config(c, decode=method, beam_width=2))
  # Three real rows that all stop at the same early step (image 0 and two near-copies).
  noise = np.random.RandomState(1).randn(3, 32, 32, 3).astype(np.float32)
  real = np.asarray(images[:1]) + 1e-3 * noise
  unpadded = np.asarray(generate_fn(params, batch_stats, jnp.asarray(real)))
  if method != "beam":  # the zero images never emit <eos> where these rows stop
    assert np.all(unpadded[:, -1] == PAD), "the real rows must stop early for this test to bite"
  # The eval pipeline pads the last batch with zero images (valid=False) ...
  batch = {"images": np.concatenate([real, np.zeros((2, 32, 32, 3), np.float32)]),
           "valid": np.arange(5) < 3}
  config = c.copy_and_resolve_references()
  config.mesh.data = num_devices
  mesh = sharding.make_mesh(config, jax.devices()[:num_devices])
  with partitioning.use_mesh(mesh, partitioning.logical_rules()):
    # ... and `put` pads it again to a multiple of the mesh's batch shards.
    padded = generate_fn(params, batch_stats, *evaluate.device_images(
        lambda b: sharding.global_batch(b, mesh, pad=True), batch))
  assert padded.shape[0] == (5 if num_devices == 1 else 8)
  np.testing.assert_array_equal(np.asarray(padded)[:3], unpadded)
