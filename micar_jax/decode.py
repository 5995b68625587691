"""Report generation: greedy (the reference's behaviour) and true beam search.

The search loops are model-free: they drive two callables,

  start_fn(tokens [n]) -> (logits [n, V], cache)          position 0, builds the cache
  step_fn(tokens [n], cache, t) -> (logits [n, V], cache)  position t >= 1

so they can be tested with stub logits (the layout of flax's wmt `decode.py`).
`model_fns` binds them to MicarVLMoE with a KV cache: the image is encoded once
and the cross-attention keys/values are computed on the start step only.
`uncached_fns` reruns the whole decoder on the prefix every step instead (the
reference's way; for parity tests and benchmarks).

config.eval.decode selects "greedy" (cached; what the reference's beam search
computes, docs/reference_model.md §9), "greedy_uncached" or "beam" (true beam search).

Output layout (both searches): ids [batch, max_len + 1] int32, `<sos>` in
column 0 and the token chosen at step t in column t + 1. This is the
reference's `beam_search` result right-padded with `<pad>` to a fixed width:
the reference runs up to max_len steps and returns max_len + 1 ids when it
does not stop early, or pads to max_len when it does (docs/reference_model.md §9).
"""

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from micar_jax import errors
from micar_jax.data.tokenizer import EOS, PAD, SOS
from micar_jax.models import model as model_lib

Array = jax.Array
StartFn = Callable[[Array], tuple[Array, Any]]
StepFn = Callable[[Array, Any, Array], tuple[Array, Any]]

METHODS = ("greedy", "greedy_uncached", "beam")
# Score of impossible beam candidates; finite so that sums stay ordered.
NEG = -1e9


def greedy_search(start_fn: StartFn, step_fn: StepFn, batch_size: int, max_len: int,
                  valid: Array | None = None) -> tuple[Array, Any]:
  """Greedy decoding with the reference's stopping rule.

  Runs up to max_len steps; stops early only when every valid row emits `<eos>`
  at the same step. Tokens after a row's first `<eos>` are kept. `valid`
  [batch_size] bool (default all True) marks padding rows, which must not
  keep the loop running (the reference's batches hold no padding).

  Returns:
    ids [batch_size, max_len + 1] (`<sos>`, the chosen tokens, `<pad>` after a
    stop) and the final cache (which carries whatever step_fn records).
  """
  ids = jnp.full((batch_size, max_len + 1), PAD, jnp.int32).at[:, 0].set(SOS)
  ignored = _padding(valid, batch_size)

  def choose(ids, logits, t):
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return ids.at[:, t + 1].set(token), jnp.all((token == EOS) | ignored)

  logits, cache = start_fn(ids[:, 0])
  ids, done = choose(ids, logits, 0)

  def body(state):
    t, ids, cache, _ = state
    logits, cache = step_fn(ids[:, t], cache, t)
    ids, done = choose(ids, logits, t)
    return t + 1, ids, cache, done

  state = (jnp.int32(1), ids, cache, done)
  _, ids, cache, _ = jax.lax.while_loop(lambda s: (s[0] < max_len) & ~s[3], body, state)
  return ids, cache


def _padding(valid: Array | None, batch_size: int) -> Array:
  """[batch_size] bool: True for rows whose output nobody reads."""
  if valid is None:
    return jnp.zeros((batch_size,), bool)
  return ~jnp.asarray(valid, bool)


def length_penalty(length: Array, alpha: float) -> Array:
  """GNMT's ((5 + length) / 6) ** alpha; 1 when alpha is 0."""
  return ((5.0 + length.astype(jnp.float32)) / 6.0) ** alpha


def beam_search(start_fn: StartFn, step_fn: StepFn, batch_size: int, max_len: int,
                beam_width: int, alpha: float = 0.0, valid: Array | None = None) -> Array:
  """Beam search over one pool of live and finished beams.

  A beam that emits `<eos>` is frozen: its only continuation is `<pad>` at no
  cost, so it keeps its score and length. Candidates are ranked by
  score / length_penalty(length), with length counting generated tokens up to
  and including `<eos>`. The loop stops when no live beam can still beat the
  best finished one (raw scores only fall and the penalty is largest at max_len).

  Returns:
    ids [batch_size, max_len + 1] of the best beam per example (`<pad>` after `<eos>`).
  """
  b, k = batch_size, beam_width
  ignored = _padding(valid, b)
  logits, cache = start_fn(jnp.full((b,), SOS, jnp.int32))
  expand = lambda x: jnp.repeat(x, k, axis=0)
  logits, cache = expand(logits), jax.tree.map(expand, cache)
  seqs = jnp.full((b, k, max_len + 1), PAD, jnp.int32).at[:, :, 0].set(SOS)
  # Only beam 0 is real at the start; the copies would otherwise fill the beam with duplicates.
  scores = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, NEG), (b, 1))
  finished = jnp.zeros((b, k), bool)
  lengths = jnp.zeros((b, k), jnp.int32)

  def advance(logits, t, seqs, scores, finished, lengths, cache):
    logp = jax.nn.log_softmax(logits.astype(jnp.float32)).reshape(b, k, -1)
    vocab = logp.shape[-1]
    frozen = jnp.where(jnp.arange(vocab) == PAD, 0.0, NEG)
    logp = jnp.where(finished[..., None], frozen, logp)
    cand = (scores[..., None] + logp).reshape(b, k * vocab)
    cand_len = jnp.repeat(jnp.where(finished, lengths, t + 1), vocab, axis=1)
    _, idx = jax.lax.top_k(cand / length_penalty(cand_len, alpha), k)
    parent, token = idx // vocab, (idx % vocab).astype(jnp.int32)
    was_finished = jnp.take_along_axis(finished, parent, axis=1)
    seqs = jnp.take_along_axis(seqs, parent[..., None], axis=1).at[:, :, t + 1].set(token)
    scores = jnp.take_along_axis(cand, idx, axis=1)
    lengths = jnp.where(was_finished, jnp.take_along_axis(lengths, parent, axis=1), t + 1)
    finished = was_finished | (token == EOS)
    rows = (jnp.arange(b)[:, None] * k + parent).reshape(-1)
    cache = jax.tree.map(lambda x: x[rows], cache)
    return seqs, scores, finished, lengths, cache

  def normalised(scores, finished, lengths):
    return scores / length_penalty(jnp.where(finished, lengths, max_len), alpha)

  def done(scores, finished, lengths):
    norm = normalised(scores, finished, lengths)
    best_finished = jnp.max(jnp.where(finished, norm, -jnp.inf), axis=1)
    best_live = jnp.max(jnp.where(finished, -jnp.inf, norm), axis=1)
    return jnp.all((best_finished >= best_live) | ignored)

  beams = advance(logits, 0, seqs, scores, finished, lengths, cache)

  def body(state):
    t, (seqs, scores, finished, lengths, cache), _ = state
    flat_tokens = seqs[:, :, t].reshape(-1)
    logits, cache = step_fn(flat_tokens, cache, t)
    beams = advance(logits, t, seqs, scores, finished, lengths, cache)
    return t + 1, beams, done(*beams[1:4])

  state = (jnp.int32(1), beams, done(*beams[1:4]))
  t, (seqs, scores, finished, lengths, _), _ = jax.lax.while_loop(
      lambda s: (s[0] < max_len) & ~s[2], body, state)
  # Live beams are complete candidates only if the loop ran all max_len steps.
  eligible = finished | (t == max_len)
  best = jnp.argmax(jnp.where(eligible, normalised(scores, finished, lengths), -jnp.inf), axis=1)
  return jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0]


def sequence_log_probs(logits: Array, ids: Array) -> Array:
  """Log-probability of generated sequences up to and including their first `<eos>`.

  Args:
    logits: [batch, T, V] teacher-forced logits for inputs ids[:, :T].
    ids: [batch, T + 1] in the search output layout.

  Returns:
    [batch] float32 sums of log p(ids[:, i + 1] | ids[:, :i + 1]).
  """
  targets = ids[:, 1:]
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)),
                             targets[..., None], axis=-1)[..., 0]
  is_eos = (targets == EOS).astype(jnp.int32)
  before_first_eos = (jnp.cumsum(is_eos, axis=1) - is_eos) == 0
  return jnp.sum(jnp.where(before_first_eos, logp, 0.0), axis=1)


def _decoder_model(mc: model_lib.ModelConfig) -> model_lib.MicarVLMoE:
  # Rematerialisation only matters for gradients.
  return model_lib.MicarVLMoE(dataclasses.replace(mc, remat=False), decode=True)


def encode(mc: model_lib.ModelConfig, params: Any, batch_stats: Any, images: Array) -> Array:
  """Images [b, H, W, 3] or [b, V, H, W, 3] -> memory [b, n_img, d_model] (BN running stats)."""
  model = model_lib.MicarVLMoE(mc)
  return model.apply({"params": params, "batch_stats": batch_stats}, images, False,
                     method=model.encode)


def model_fns(mc: model_lib.ModelConfig, params: Any, memory: Array,
              mutable: tuple[str, ...] = ("cache",)) -> tuple[StartFn, StepFn]:
  """Cached start/step functions of the model for the search loops.

  The start step passes `memory`, so every layer caches its image keys/values
  and the fusion's global image vector; later steps read them from the cache.
  The search's cache is the dict of `mutable` collections (add "intermediates"
  to receive what the layers sowed); steps read its "cache".
  """
  step_model = _decoder_model(mc)

  def call(tokens, memory, variables, t):
    (logits, _), out = step_model.apply(
        {"params": params, **variables}, tokens[:, None], memory, None, False, t,
        method=step_model.decode_tokens, mutable=list(mutable))
    return logits[:, 0], out

  start = lambda tokens: call(tokens, memory, {}, jnp.int32(0))
  step = lambda tokens, state, t: call(tokens, None, {"cache": state["cache"]}, t)
  return start, step


def uncached_fns(mc: model_lib.ModelConfig, params: Any, memory: Array) -> tuple[StartFn, StepFn]:
  """Start/step functions that rerun the full decoder each step (the reference's way).

  The "cache" is the [b, max_len] prefix buffer; positions after t hold `<pad>`,
  which the causal mask hides from position t (with a dropless MoE).
  """
  model = model_lib.MicarVLMoE(mc)

  def logits_at(prefix, t):
    logits, _ = model.apply({"params": params}, prefix, memory, None, False,
                            method=model.decode_tokens)
    return jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)

  def start(tokens):
    prefix = jnp.full((tokens.shape[0], mc.max_len), PAD, jnp.int32).at[:, 0].set(tokens)
    return logits_at(prefix, 0), prefix

  def step(tokens, prefix, t):
    prefix = prefix.at[:, t].set(tokens)
    return logits_at(prefix, t), prefix

  return start, step


@functools.lru_cache(maxsize=32)
def _compiled(mc: model_lib.ModelConfig, method: str, beam_width: int, alpha: float) -> Callable:
  """One jitted generate function per (model, method, width, alpha), reused across calls."""
  if method not in METHODS:
    raise errors.ConfigError(
        f"unknown eval.decode {method!r}; expected one of {', '.join(METHODS)}")
  if method == "beam" and beam_width < 1:
    raise errors.ConfigError(f"eval.beam_width must be >= 1, got {beam_width}")

  def generate_ids(params, batch_stats, images, valid=None):
    memory = encode(mc, params, batch_stats, images)
    b = memory.shape[0]
    if method == "greedy_uncached":
      return greedy_search(*uncached_fns(mc, params, memory), b, mc.max_len, valid)[0]
    fns = model_fns(mc, params, memory)
    if method == "greedy":
      return greedy_search(*fns, b, mc.max_len, valid)[0]
    return beam_search(*fns, b, mc.max_len, beam_width, alpha, valid)

  return jax.jit(generate_ids)


def make_generate_fn(mc: model_lib.ModelConfig, decode_cfg: ml_collections.ConfigDict
                     ) -> Callable[..., Array]:
  """A jitted (params, batch_stats, images [b,(V,)H,W,3], valid [b] = all) -> ids [b, max_len + 1].

  Rows with valid=False (the padding of a last batch) never change the other
  rows' reports; their own ids are meaningless.

  Args:
    mc: model configuration (its max_len = text_seq_len is the step count).
    decode_cfg: `config.eval`: decode ("greedy" | "greedy_uncached" | "beam"),
      beam_width, length_penalty.
  """
  return _compiled(mc, decode_cfg.decode, int(decode_cfg.beam_width),
                   float(decode_cfg.length_penalty))


def generate(config: ml_collections.ConfigDict, params: Any, batch_stats: Any, images: Array,
             valid: Array | None = None) -> Array:
  """Generates report ids [b, text_seq_len + 1] for images with the method config.eval names."""
  vocab = config.model.vocab_size or nn.meta.unbox(params)["gen_logits"]["kernel"].shape[-1]
  mc = model_lib.ModelConfig.from_config(config, vocab)
  return make_generate_fn(mc, config.eval)(params, batch_stats, images, valid)
