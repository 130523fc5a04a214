"""MC-LCR's own pieces: SSRB, patch spectra, PAPDA attention, heads, losses (spec mc_lcr.md sections 2-3, 9)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sjedd_jax.detectors.mc_lcr import losses, modules


def _count(module) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


# ---------------------------------------------------------------------------
# SSRB
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["none", "hw", "chw"])
def test_ssrb_efficient_form_equals_explicit_gram(norm):
  rng = np.random.default_rng(0)
  f = rng.normal(size=(3, 7, 5, 6)).astype(np.float32)
  got = np.asarray(modules.ssrb_features(jnp.asarray(f), norm))
  b, h, w, c = f.shape
  n = {"none": 1.0, "hw": h * w, "chw": c * h * w}[norm]
  for i in range(b):
    m = f[i].reshape(h * w, c).astype(np.float64)
    gram = m.T @ m / n  # (C, C)
    np.testing.assert_allclose(got[i], gram.mean(axis=1), rtol=1e-5, atol=1e-6)


def test_ssrb_rejects_bad_input():
  with pytest.raises(ValueError, match="norm"):
    modules.ssrb_features(jnp.zeros((1, 2, 2, 3)), "bogus")
  with pytest.raises(ValueError, match="B, H, W, C"):
    modules.ssrb_features(jnp.zeros((2, 3)))


# ---------------------------------------------------------------------------
# Patch spectra
# ---------------------------------------------------------------------------


def test_patch_spectra_match_numpy_fft_per_patch_in_raster_order():
  p = 8
  rng = np.random.default_rng(1)
  img = rng.uniform(size=(2, 16, 24, 3)).astype(np.float32)  # 2 x 3 patches, not square
  amp, phase = modules.patch_spectra(jnp.asarray(img), p)
  amp, phase = np.asarray(amp), np.asarray(phase)
  assert amp.shape == phase.shape == (2, 6, p * p)
  g = img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114
  special = modules.self_conjugate_mask(p)
  assert special.sum() == 4 and special.reshape(p, p)[0, 0] and special.reshape(p, p)[p // 2, p // 2]
  for bi in range(2):
    for r in range(2):
      for c in range(3):
        i = r * 3 + c  # raster order: patch rows, then columns
        ref = (np.fft.fft2(g[bi, r * p:(r + 1) * p, c * p:(c + 1) * p].astype(np.float64)) / p ** 2).reshape(-1)
        np.testing.assert_allclose(amp[bi, i], np.abs(ref), rtol=1e-4, atol=1e-6)
        # Generic bins: atan2 phase, compared on the circle.
        d = np.angle(np.exp(1j * (phase[bi, i] - np.angle(ref))))
        np.testing.assert_allclose(d[~special], 0.0, atol=1e-3)
        # Self-conjugate bins: exactly 0 or pi from the sign of the real part.
        want = np.where(ref.real[special] < 0, np.pi, 0.0).astype(np.float32)
        np.testing.assert_array_equal(phase[bi, i][special], want)
  assert np.all(phase > -np.pi) and np.all(phase <= np.pi)


def test_patch_spectra_raster_order_and_no_gradient():
  p = 4
  # Patch (r, c) of a 3 x 2 grid is the constant 0.1 (r * 2 + c + 1): its DC bin is that constant.
  vals = 0.1 * (np.arange(6) + 1).reshape(3, 2)
  img = np.repeat(np.repeat(vals, p, axis=0), p, axis=1)[None, :, :, None].astype(np.float32)
  amp, phase = modules.patch_spectra(jnp.asarray(img), p)
  np.testing.assert_allclose(np.asarray(amp)[0, :, 0], vals.reshape(-1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(amp)[0, :, 1:], 0.0, atol=1e-6)
  assert np.all(np.asarray(phase) == 0.0)  # zero bins have phase 0, positive DC has phase 0
  grad = jax.grad(lambda x: jnp.sum(modules.patch_spectra(x, p)[0]))(jnp.asarray(img))
  assert np.all(np.asarray(grad) == 0.0)
  with pytest.raises(ValueError, match="patches"):
    modules.patch_spectra(jnp.zeros((1, 10, 8, 3)), 4)


# ---------------------------------------------------------------------------
# Attention = torch.nn.MultiheadAttention
# ---------------------------------------------------------------------------


def test_multihead_attention_matches_torch():
  torch = pytest.importorskip("torch")
  dim, heads = 16, 4
  mha = modules.MultiheadAttention(dim, heads, rngs=nnx.Rngs(0))
  # Torch-default init: xavier bound sqrt(6 / (4 dim)), zero biases.
  w = np.asarray(mha.in_proj_kernel[...])
  assert np.abs(w).max() <= math.sqrt(6 / (4 * dim)) and np.abs(w).max() > 0.8 * math.sqrt(6 / (4 * dim))
  assert np.all(np.asarray(mha.in_proj_bias[...]) == 0) and np.all(np.asarray(mha.out_proj.bias[...]) == 0)
  rng = np.random.default_rng(2)
  for leaf in (mha.in_proj_bias, mha.out_proj.bias):  # random biases so they are tested too
    leaf[...] = jnp.asarray(rng.normal(size=leaf.shape).astype(np.float32))
  ref = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
  with torch.no_grad():
    ref.in_proj_weight.copy_(torch.from_numpy(np.asarray(mha.in_proj_kernel[...]).T.copy()))
    ref.in_proj_bias.copy_(torch.from_numpy(np.asarray(mha.in_proj_bias[...])))
    ref.out_proj.weight.copy_(torch.from_numpy(np.asarray(mha.out_proj.kernel[...]).T.copy()))
    ref.out_proj.bias.copy_(torch.from_numpy(np.asarray(mha.out_proj.bias[...])))
  q = rng.normal(size=(2, 5, dim)).astype(np.float32)
  kv = rng.normal(size=(2, 5, dim)).astype(np.float32)
  got = np.asarray(mha(jnp.asarray(q), jnp.asarray(kv)))
  with torch.no_grad():
    want = ref(torch.from_numpy(q), torch.from_numpy(kv), torch.from_numpy(kv), need_weights=False)[0].numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# Parameter counts and shapes
# ---------------------------------------------------------------------------


def test_default_parameter_counts_match_spec():
  head = nnx.eval_shape(lambda: modules.MCLCRHead(rngs=nnx.Rngs(0)))  # abstract: shapes only
  assert head.fused_dim == 1984 and head.num_tokens == 256 and head.token_dim == 256
  freq = _count(head.papda) + _count(head.mixer_a) + _count(head.mixer_p)
  heads = _count(head.embed) + _count(head.proj) + _count(head.classifier)
  assert _count(head.papda) == 2 * (256 * 256 + 256) + 2 * 512 + 2 * (4 * 256 * 256 + 4 * 256)  # 658,944
  assert _count(head.mixer_a) == 2 * (4 * (256 * 256 + 256) + 2 * 512) + 512  # 528,896
  assert freq == 1_716_736
  assert heads == 2_164_865
  assert _count(head) == freq + heads
  wide = nnx.eval_shape(lambda: modules.MCLCRHead(gf_dim=2048, papda=False, rngs=nnx.Rngs(0)))
  assert wide.fused_dim == 448 + 2048 and _count(wide) == 2496 * 1024 + 1024 + 131_200 + 1025


_TWIN = dict(image_size=64, patch=8, token_dim=64, heads=4, token_hidden=64, channel_hidden=64,
             mixer_depth=2, tap_channels=(32, 64, 128), gf_dim=384, fe_dim=256, z_dim=64)


def _twin_head(**kw):
  return modules.MCLCRHead(**{**_TWIN, **kw}, rngs=nnx.Rngs(0))


def _twin_inputs(b=4, seed=0):
  rng = np.random.default_rng(seed)
  taps = {"act2": rng.normal(size=(b, 29, 29, 32)), "block2_in": rng.normal(size=(b, 15, 15, 64)),
          "block3_in": rng.normal(size=(b, 8, 8, 128)), "gf": rng.normal(size=(b, 384))}
  taps = {k: jnp.asarray(v, jnp.float32) for k, v in taps.items()}
  return taps, jnp.asarray(rng.uniform(size=(b, 64, 64, 3)), jnp.float32)


@pytest.fixture(scope="module")
def twin():
  """The synthetic twin's head (spec section 9), its parameters and a jitted forward."""
  head = _twin_head()
  graphdef, params = nnx.split(head, nnx.Param)
  apply = jax.jit(lambda params, taps, img, train, rng: nnx.merge(graphdef, params)(taps, img, train=train, rng=rng),
                  static_argnames="train")
  return head, graphdef, params, apply


def test_twin_output_shapes_and_switches(twin):
  head, _, params, apply = twin
  assert head.num_tokens == 64 and head.fused_dim == 736
  taps, img = _twin_inputs()
  out = apply(params, taps, img, True, jax.random.PRNGKey(1))
  shapes = {k: v.shape for k, v in out.items()}
  assert shapes == {"logit": (4,), "z": (4, 64), "f_e": (4, 256), "f_mm": (4, 736), "ssf": (4, 224),
                    "af": (4, 64), "pf": (4, 64)}
  assert out["logit"].dtype == jnp.float32 and out["z"].dtype == jnp.float32
  np.testing.assert_allclose(np.linalg.norm(np.asarray(out["z"]), axis=1), 1.0, rtol=1e-5)
  # Dropout: same key, same output; other key, other logits; eval is deterministic and key-free.
  again = apply(params, taps, img, True, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(np.asarray(out["logit"]), np.asarray(again["logit"]))
  other = apply(params, taps, img, True, jax.random.PRNGKey(2))
  assert not np.allclose(np.asarray(out["logit"]), np.asarray(other["logit"]))
  ev = apply(params, taps, img, False, None)
  np.testing.assert_allclose(np.asarray(ev["f_mm"]), np.asarray(out["f_mm"]), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="rng"):
    apply(params, taps, img, True, None)
  with pytest.raises(ValueError, match="gf"):
    apply(params, {**taps, "gf": taps["gf"][:, :100]}, img, False, None)
  # Table 5 switches (abstract evaluation: shapes only).
  for kw, dim, keys in [(dict(ssrb=False), 512, {"af", "pf"}), (dict(papda=False), 608, {"ssf"}),
                        (dict(ssrb=False, papda=False), 384, set())]:
    o = jax.eval_shape(lambda t, i: _twin_head(**kw)(t if kw.get("ssrb", True) else {"gf": t["gf"]},
                                                      i if kw.get("papda", True) else None, train=False), taps, img)
    assert o["f_mm"].shape == (4, dim) and keys == set(o) - {"logit", "z", "f_e", "f_mm"}


def test_branch_contributions_split_the_inference_logit(twin):
  head, _, params, apply = twin
  taps, img = _twin_inputs()
  ev = apply(params, taps, img, False, None)
  parts = np.asarray(head.branch_contributions(ev["f_mm"]))
  assert parts.shape == (4, 5) and head.branch_names == ("ssf", "gf", "af", "pf")
  np.testing.assert_allclose(parts.sum(-1), np.asarray(ev["logit"]), rtol=1e-4, atol=1e-5)
  # A part switched off contributes 0; the others still sum to the logit.
  h = _twin_head(papda=False)
  f = jnp.asarray(np.random.default_rng(3).normal(size=(2, h.fused_dim)), jnp.float32)
  parts = np.asarray(h.branch_contributions(f))
  assert h.branch_names == ("ssf", "gf") and np.all(parts[:, 2:4] == 0)
  logit = np.asarray(h.classifier(h.embed(f)))[:, 0]
  np.testing.assert_allclose(parts.sum(-1), logit, rtol=1e-4, atol=1e-5)
  # The per-class gap of each part (the zero reference cancels).
  from sjedd_jax.detectors import mc_lcr
  gap = mc_lcr.branch_gap(np.array([[1.0, 2, 3, 4, 5], [3.0, 2, 1, 0, 5]]), np.array([0, 1]))
  assert gap == {"ssf": 2.0, "gf": 0.0, "af": -2.0, "pf": -4.0}


def test_twin_gradients_and_bfloat16(twin):
  _, graphdef, params, apply = twin
  taps, img = _twin_inputs()
  y = jnp.asarray([0, 1, 0, 1])

  def loss(params, taps):
    out = nnx.merge(graphdef, params)(taps, img, train=True, rng=jax.random.PRNGKey(0))
    return jnp.sum(losses.task_losses(out, y) * 0.5)

  g_params, g_taps = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, taps)
  for leaf in jax.tree.leaves(g_params):
    assert np.all(np.isfinite(np.asarray(leaf)))
  assert np.abs(np.asarray(g_params["papda"]["embed_a"]["kernel"][...])).max() > 0
  for name in ("act2", "block2_in", "block3_in", "gf"):  # SSF and GF pass gradients to the backbone
    assert np.abs(np.asarray(g_taps[name])).max() > 0
  # bfloat16 compute with the same float32 parameters.
  bf_graphdef = nnx.graphdef(nnx.eval_shape(lambda: _twin_head(dtype="bfloat16")))
  o16 = jax.jit(lambda p: nnx.merge(bf_graphdef, p)(taps, img, train=False))(params)
  o32 = apply(params, taps, img, False, None)
  assert o16["logit"].dtype == jnp.float32 and o16["z"].dtype == jnp.float32
  assert o16["f_e"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(o16["z"]), np.asarray(o32["z"]), atol=0.05)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


def _supcontrast_numpy(z, y, temperature, base_temperature):
  """HobbitLong/SupContrast losses.py (single view, labels), restated in numpy float64."""
  z = z.astype(np.float64)
  b = z.shape[0]
  mask = (y[:, None] == y[None, :]).astype(np.float64)
  adc = z @ z.T / temperature
  logits = adc - adc.max(axis=1, keepdims=True)
  logits_mask = 1.0 - np.eye(b)
  mask = mask * logits_mask
  exp_logits = np.exp(logits) * logits_mask
  log_prob = logits - np.log(exp_logits.sum(1, keepdims=True))
  mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
  return float((-(temperature / base_temperature) * mean_log_prob_pos).mean())


_supcon_jit = jax.jit(losses.supcon, static_argnames=("denominator", "reduction"))  # tau, scale traced


def test_supcon_matches_supcontrast_formula():
  rng = np.random.default_rng(3)
  for trial, (b, d, k) in enumerate([(16, 8, 2), (12, 5, 3)]):
    z = rng.normal(size=(b, d))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    y = np.concatenate([np.repeat(np.arange(k), 2), rng.integers(0, k, b - 2 * k)])  # every class >= 2
    rng.shuffle(y)
    for tau in (0.1, 0.5):
      got = float(_supcon_jit(jnp.asarray(z, jnp.float32), jnp.asarray(y), tau=tau))
      assert got == pytest.approx(_supcontrast_numpy(z, y, tau, tau), rel=1e-5), (trial, tau)
    got = float(_supcon_jit(jnp.asarray(z, jnp.float32), jnp.asarray(y), tau=0.1, scale=0.1 / 0.07))
    assert got == pytest.approx(_supcontrast_numpy(z, y, 0.1, 0.07), rel=1e-5)
  # Unnormalised, large-norm z: the max subtraction keeps it finite and exact.
  z = 5.0 * rng.normal(size=(10, 4))
  y = np.array([0, 1] * 5)
  got = float(_supcon_jit(jnp.asarray(z, jnp.float32), jnp.asarray(y), tau=0.1))
  assert got == pytest.approx(_supcontrast_numpy(z, y, 0.1, 0.1), rel=2e-4)


def test_supcon_reference_values_of_the_spec():
  y = jnp.asarray([0] * 8 + [1] * 8)
  e = np.zeros((16, 4), np.float32)
  e[:, 0] = 1.0
  same = jnp.asarray(e)
  sep = jnp.asarray(np.where(np.asarray(y)[:, None] == 1, -e, e))
  assert float(losses.supcon(same, y)) == pytest.approx(math.log(15), rel=1e-6)
  assert float(losses.supcon(sep, y)) == pytest.approx(math.log(7 + 8 * math.exp(-20)), rel=1e-6)
  assert float(losses.supcon(same, y, denominator="negatives")) == pytest.approx(math.log(8), rel=1e-6)
  assert float(losses.supcon(sep, y, denominator="negatives")) == pytest.approx(math.log(8) - 20, rel=1e-6)
  assert float(losses.supcon(same, y, reduction="sum")) == pytest.approx(16 * math.log(15), rel=1e-6)
  assert float(losses.supcon(same, y, scale=0.1 / 0.07)) == pytest.approx(math.log(15) / 0.7, rel=1e-6)


def test_supcon_excludes_anchors_without_positives_and_stays_finite():
  rng = np.random.default_rng(4)
  z = rng.normal(size=(7, 3)).astype(np.float32)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  y = np.array([0, 0, 1, 1, 1, 2, 0])  # anchor 5 has no positive
  got = float(losses.supcon(jnp.asarray(z), jnp.asarray(y)))
  keep = np.arange(7) != 5
  s = z.astype(np.float64) @ z.T.astype(np.float64) / 0.1
  per = []
  for i in np.flatnonzero(keep):
    den = np.log(sum(np.exp(s[i, a]) for a in range(7) if a != i))
    per.append(-np.mean([s[i, p] - den for p in range(7) if p != i and y[p] == y[i]]))
  assert got == pytest.approx(np.mean(per), rel=1e-5)
  # One class only: no valid anchor in the negatives-only form -> 0 and finite gradients.
  one = jnp.zeros(7, jnp.int32)
  assert float(losses.supcon(jnp.asarray(z), one, denominator="negatives")) == 0.0
  for den in ("all", "negatives"):
    g = jax.grad(lambda z: losses.supcon(z, jnp.asarray(y), denominator=den))(jnp.asarray(z))
    assert np.all(np.isfinite(np.asarray(g)))
  with pytest.raises(ValueError, match="denominator"):
    losses.supcon(jnp.asarray(z), jnp.asarray(y), denominator="pos")


def test_bce_and_task_losses():
  s = jnp.asarray([-800.0, -1.0, 0.0, 2.0, 800.0])
  y = jnp.asarray([0, 1, 0, 1, 1])
  p = jax.nn.sigmoid(jnp.asarray([-1.0, 0.0, 2.0]))
  ref = (0.0 - math.log(p[0]) - math.log(1 - p[1]) - math.log(p[2]) + 0.0) / 5
  assert float(losses.bce_with_logits(s, y)) == pytest.approx(ref, rel=1e-6)
  z = jnp.asarray(np.eye(5, 3, dtype=np.float32))
  out = losses.task_losses({"logit": s, "z": z}, y)
  assert out.shape == (2,)
  assert float(out[1]) == pytest.approx(float(losses.supcon(z, y)))
  with pytest.raises(ValueError, match="shape"):
    losses.bce_with_logits(s, y[:3])


def test_supcon_sharded_batch_equals_single_device():
  devices = jax.devices()
  assert len(devices) >= 4, "tests/conftest.py provides 4 CPU devices"
  mesh = jax.sharding.Mesh(np.array(devices[:4]), ("data",))
  rng = np.random.default_rng(5)
  z = rng.normal(size=(16, 8)).astype(np.float32)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  y = np.array([0] * 8 + [1] * 8)
  rng.shuffle(y)
  single = float(jax.jit(losses.supcon)(jnp.asarray(z), jnp.asarray(y)))
  zs = jax.device_put(z, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data", None)))
  ys = jax.device_put(y, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  assert len(zs.sharding.device_set) == 4
  sharded = float(jax.jit(losses.supcon)(zs, ys))
  assert sharded == pytest.approx(single, rel=1e-6)
  assert sharded == pytest.approx(_supcontrast_numpy(z, y, 0.1, 0.1), rel=1e-5)
