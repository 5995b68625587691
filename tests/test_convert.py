"""Official state dict <-> variables: names, layouts, head layouts, error reports (no torch).

The reference modules are re-implemented here in numpy, straight from the
PyTorch code's definitions (einops `(d h)` split, `(h d)` merge, interleaved
RoPE on the first half of the rope slice, unweighted top-k expert sum), and fed
the numpy state dict; our modules get the converted variables.
"""

import dataclasses
import math

import flax.linen as nn
import flax.traverse_util
import jax
import numpy as np
import pytest

from micar_jax import errors
from micar_jax.convert import official
from micar_jax.core import weights
from micar_jax.models import attention, moe
from micar_jax.models import model as model_lib

VOCAB = 30


def _setup(load_config, stages=()):
  """Tiny covctr config (ResNet stages `stages` if given), its ModelConfig and a random
  reference state dict."""
  config = load_config("configs/covctr.py:tiny")
  config.model.resnet_stages = stages or config.model.resnet_stages
  mc = model_lib.ModelConfig.from_config(config, VOCAB)
  rng = np.random.default_rng(0)
  flat = {k: rng.standard_normal(s).astype(np.float32)
          for k, s in official.variable_shapes(mc).items()}
  variables = flax.traverse_util.unflatten_dict(flat)
  state_dict = official.variables_to_official_state_dict(variables, mc)
  return config, mc, state_dict


@pytest.fixture(scope="module")
def setup(load_config):
  """Tiny covctr config (a (1, 1, 1, 1) ResNet: nothing to scan), its ModelConfig and a
  random reference state dict."""
  return _setup(load_config)


def test_reference_names_and_shapes(setup):
  _, mc, sd = setup
  d, dk, lat, e, f = mc.d_model, mc.d_model // mc.num_heads, mc.d_latent, mc.num_experts, mc.d_ff
  w = mc.resnet_width
  expected = {
      "vis_enc.layer1.0.weight": (w, 3, 7, 7),
      "vis_enc.layer1.1.running_var": (w,),
      "vis_enc.layer1.4.0.downsample.0.weight": (4 * w, w, 1, 1),
      "vis_enc.layer1.4.0.downsample.1.num_batches_tracked": (),
      "vis_enc.layer2.0.0.conv2.weight": (2 * w, 2 * w, 3, 3),
      "vis_enc.layer4.0.0.bn3.weight": (32 * w,),
      "vis_enc.fpn_c3.0.weight": (mc.d_v, 8 * w, 1, 1),
      "vis_enc.fusion.1.running_mean": (mc.d_v,),
      "proj.0.weight": (mc.d_v,),
      "proj.1.weight": (d, mc.d_v),
      "text_embs.embedding.weight": (VOCAB, d),
      "text_embs.pe.pe": (1, mc.max_len, d),
      "encoder.layers.0.self_attention.qkv_down_norm_up.2.weight": (3 * lat, 3 * dk),
      "encoder.layers.0.self_attention.rope.freqs": (mc.qk_rope_dim // 4,),
      "encoder.layers.0.ff.w2.weight": (d, f),
      "decoder.layers.0.gated_fusion.cross_attention.kv_down_norm_up.0.weight": (2 * dk, d),
      "decoder.layers.0.gated_fusion.gate.2.bias": (d,),
      "decoder.layers.0.gated_fusion.fusion.3.weight": (d, d),
      "decoder.layers.0.moe.gate.gate.weight": (e, d),
      f"decoder.layers.0.moe.experts.{e - 1}.w2.weight": (d, f),
      "gen_logits.0.weight": (d,),
      "gen_logits.1.weight": (VOCAB, d),
  }
  assert {k: np.shape(sd[k]) for k in expected} == expected
  assert not any(k.startswith(("encoder.layers.1", "decoder.layers.1")) for k in sd)


# (1, 3, 1, 4): stages 2 and 4 scan their blocks 1..n-1 (model.scan_blocks, the default).
@pytest.mark.parametrize("stages", [(), (1, 3, 1, 4)])
def test_round_trip_is_exact(setup, load_config, stages):
  config, mc, sd = _setup(load_config, stages) if stages else setup
  variables = official.official_state_dict_to_variables(sd, config)
  backbone = variables["params"]["vis_enc"]["backbone"]
  if stages:
    assert backbone["stage4_blocks"]["conv1"]["kernel"].shape[0] == 3
    np.testing.assert_array_equal(backbone["stage2_blocks"]["bn1"]["scale"][1],
                                  sd["vis_enc.layer2.0.2.bn1.weight"])
  else:
    assert not any(k.endswith("_blocks") for k in backbone)
  again = official.variables_to_official_state_dict(variables, mc)
  assert sorted(again) == sorted(sd)
  for k in sd:
    np.testing.assert_array_equal(again[k], sd[k], err_msg=k)
  assert variables["params"]["text_embs"]["embedding"].shape == (VOCAB, mc.d_model)


def test_layout_permutations(setup):
  config, mc, sd = setup
  v = official.official_state_dict_to_variables(sd, config)
  p, s = v["params"], v["batch_stats"]
  np.testing.assert_array_equal(p["proj"]["kernel"], sd["proj.1.weight"].T)
  np.testing.assert_array_equal(p["decoder_0"]["moe"]["router"],
                                sd["decoder.layers.0.moe.gate.gate.weight"].T)
  np.testing.assert_array_equal(p["decoder_0"]["moe"]["w2"][2],
                                sd["decoder.layers.0.moe.experts.2.w2.weight"].T)
  np.testing.assert_array_equal(s["vis_enc"]["backbone"]["stage1_block0"]["bn2"]["var"],
                                sd["vis_enc.layer1.4.0.bn2.running_var"])
  np.testing.assert_array_equal(p["vis_enc"]["fpn_c4"]["bn"]["scale"],
                                sd["vis_enc.fpn_c4.1.weight"])
  # A conv kernel computes the same as PyTorch's OIHW weight on NCHW input.
  x = np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)
  w = sd["vis_enc.layer1.0.weight"]
  ref = jax.lax.conv_general_dilated(x, w, (2, 2), ((3, 3), (3, 3)),
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
  conv = nn.Conv(w.shape[0], (7, 7), strides=(2, 2), padding=((3, 3), (3, 3)), use_bias=False)
  ours = conv.apply({"params": {"kernel": p["vis_enc"]["backbone"]["stem_conv"]["kernel"]}},
                    x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(np.asarray(ours), np.asarray(ref).transpose(0, 2, 3, 1),
                             rtol=1e-5, atol=1e-5)


# ---- numpy re-implementations of the reference modules ----

def np_rms(x, w):
  return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * w


def np_linear(x, w, b=None):
  return x @ w.T + (0 if b is None else b)


def np_split_d_h(x, h):
  """einops `b s (d h) -> b h s d`: element [b, i, s, j] = x[b, s, j*h + i]."""
  dh = x.shape[-1] // h
  channel = np.arange(dh)[None, :] * h + np.arange(h)[:, None]  # [h, dh]
  return x[:, :, channel].transpose(0, 2, 1, 3)


def np_merge_h_d(x):
  """einops `b h s d -> b s (h d)`: head i fills channels i*dh .. (i+1)*dh."""
  b, h, s, dh = x.shape
  out = np.empty((b, s, h * dh), x.dtype)
  for i in range(h):
    out[:, :, i * dh:(i + 1) * dh] = x[:, i]
  return out


def np_rope(t, rope_dim, theta):
  """rotary-embedding-torch RotaryEmbedding(dim=rope_dim // 2), positions 0..s-1."""
  dim = rope_dim // 2
  freqs = 1.0 / theta ** (np.arange(0, dim, 2)[: dim // 2] / dim)
  angles = np.repeat(np.arange(t.shape[-2])[:, None] * freqs[None, :], 2, axis=-1)  # [s, dim]
  head, tail = t[..., :dim], t[..., dim:]
  pairs = head.reshape(*head.shape[:-1], dim // 2, 2)
  rotated_half = np.stack([-pairs[..., 1], pairs[..., 0]], -1).reshape(head.shape)
  return np.concatenate([head * np.cos(angles) + rotated_half * np.sin(angles), tail], -1)


def np_attend(mc, q, k, v, wo, mask=None):
  h, nope = mc.num_heads, mc.qk_nope_dim
  q, k, v = (np_split_d_h(t, h) for t in (q, k, v))
  qr, kr = (np_rope(t[..., nope:], mc.qk_rope_dim, mc.rope_theta) for t in (q, k))
  scores = (np.einsum("bnid,bnjd->bnij", q[..., :nope], k[..., :nope])
            + np.einsum("bnid,bnjd->bnij", qr, kr)) / math.sqrt(nope + mc.qk_rope_dim)
  if mask is not None:
    scores = np.where(mask[:, None] == 0, -1e9, scores)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np_linear(np_merge_h_d(np.einsum("bnij,bnjd->bnid", probs, v)), wo)


def np_mhla(sd, prefix, mc, x, mask):
  g = lambda n: sd[f"{prefix}.{n}"].astype(np.float64)
  lat = np_linear(np_rms(np_linear(x, g("qkv_down_norm_up.0.weight")),
                         g("qkv_down_norm_up.1.weight")), g("qkv_down_norm_up.2.weight"))
  q, k, v = np.split(lat, 3, axis=-1)
  return np_attend(mc, q, k, v, g("wo.weight"), mask)


def np_cmhla(sd, prefix, mc, x, img):
  g = lambda n: sd[f"{prefix}.{n}"].astype(np.float64)
  down_norm_up = lambda t, n: np_linear(np_rms(np_linear(t, g(f"{n}.0.weight")),
                                               g(f"{n}.1.weight")), g(f"{n}.2.weight"))
  k, v = np.split(down_norm_up(img, "kv_down_norm_up"), 2, axis=-1)
  return np_attend(mc, down_norm_up(x, "q_down_norm_up"), k, v, g("wo.weight"))


def test_self_attention_head_layout_matches_reference(setup):
  config, mc, sd = setup
  params = official.official_state_dict_to_variables(sd, config)["params"]
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 5, mc.d_model)).astype(np.float32)
  mask = np.tril(np.ones((5, 5), np.int32))[None].repeat(2, 0)
  mask[1, :, 3:] = 0  # key padding on the second row
  ref = np_mhla(sd, "decoder.layers.0.self_attention", mc, x.astype(np.float64), mask)
  ours = attention.LatentSelfAttention(mc).apply(
      {"params": params["decoder_0"]["self_attention"]}, x, mask[:, None].astype(bool), False)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4)


def test_cross_attention_head_layout_matches_reference(setup):
  config, mc, sd = setup
  params = official.official_state_dict_to_variables(sd, config)["params"]
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 4, mc.d_model)).astype(np.float32)
  img = rng.standard_normal((2, 9, mc.d_model)).astype(np.float32)
  prefix = "decoder.layers.0.gated_fusion.cross_attention"
  ref = np_cmhla(sd, prefix, mc, x.astype(np.float64), img.astype(np.float64))
  ours = attention.LatentCrossAttention(mc).apply(
      {"params": params["decoder_0"]["gated_fusion"]["cross_attention"]}, x, img, False)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-4, atol=1e-4)


def test_stacked_experts_match_reference(setup):
  config, mc, sd = setup
  params = official.official_state_dict_to_variables(sd, config)["params"]
  x = np.random.default_rng(4).standard_normal((1, 6, mc.d_model)).astype(np.float32)
  tokens = x[0].astype(np.float64)
  g = lambda n: sd[f"decoder.layers.0.moe.{n}"].astype(np.float64)
  logits = np_linear(tokens, g("gate.gate.weight"))
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  top = np.argsort(-probs, axis=-1)[:, : mc.top_k]
  silu = lambda t: t / (1 + np.exp(-t))
  ref = np.zeros_like(tokens)
  for e in range(mc.num_experts):
    ffn = np_linear(silu(np_linear(tokens, g(f"experts.{e}.w1.weight")))
                    * np_linear(tokens, g(f"experts.{e}.w3.weight")), g(f"experts.{e}.w2.weight"))
    ref += ffn * np.any(top == e, axis=-1, keepdims=True)
  mean_p = probs.mean(0)
  module = moe.MoE(dataclasses.replace(mc, act_fn="silu", dropout=0.0, moe_impl="sort"))
  ours, stats = module.apply({"params": params["decoder_0"]["moe"]}, x, False)
  np.testing.assert_allclose(np.asarray(ours)[0], ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(float(stats["aux"]), np.sum(mean_p * np.log(mean_p + 1e-8)),
                             rtol=1e-5)


def test_mismatches_are_reported_together(setup):
  config, _, sd = setup
  bad = dict(sd)
  del bad["decoder.layers.0.moe.experts.1.w3.weight"]
  del bad["vis_enc.fusion.1.running_var"]
  bad["decoder.layers.0.moe.extra.weight"] = np.zeros(3, np.float32)
  bad["proj.1.weight"] = np.zeros((3, 4), np.float32)
  bad["encoder.layers.0.self_attention.rope.freqs"] = sd[
      "encoder.layers.0.self_attention.rope.freqs"] * 2
  with pytest.raises(weights.MismatchError) as info:
    official.official_state_dict_to_variables(bad, config)
  e = info.value
  assert isinstance(e, errors.UserError)
  assert e.missing == ["vis_enc.fusion.1.running_var", "decoder.layers.0.moe.experts.1.w3.weight"]
  assert e.unexpected == ["decoder.layers.0.moe.extra.weight"]
  assert any(w.startswith("proj.1.weight (3, 4) expected") for w in e.wrong)
  assert any(w.startswith("encoder.layers.0.self_attention.rope.freqs differs") for w in e.wrong)
  message = str(e)
  assert "\n" not in message
  assert "2 missing" in message and "1 unexpected" in message and "2 wrong" in message


def test_config_mismatch_is_named(setup, load_config):
  _, _, sd = setup
  config = load_config("configs/covctr.py:tiny")
  config.data.text_seq_len = 60
  config.model.num_layers = 2
  with pytest.raises(weights.MismatchError) as info:
    official.official_state_dict_to_variables(sd, config)
  assert "encoder.layers.1.norm_sa.weight" in info.value.missing
  assert any(w.startswith("text_embs.pe.pe (1, 80, 32) expected (1, 60, 32)")
             for w in info.value.wrong)


def test_not_a_model_state_dict(setup):
  config, _, _ = setup
  with pytest.raises(weights.MismatchError, match="not a MicarVLMoE state dict: 1 missing: "
                                                "text_embs.embedding.weight"):
    official.official_state_dict_to_variables({"conv1.weight": np.zeros((8, 3, 7, 7))}, config)
