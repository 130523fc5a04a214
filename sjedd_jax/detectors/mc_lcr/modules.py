"""MC-LCR's own layers in Flax NNX: SSRB, patch spectra, PAPDA, MLP-Mixer and the fusion heads.

Spec: ``/work/shared/spec/mc_lcr.md`` sections 2.2-2.6. The Xception backbone is separate
(``sjedd_jax.backbones.xception``); ``MCLCRHead`` takes its taps, a dict of arrays:

* ``"act2"`` (b1, NHWC, 64 channels), ``"block2_in"`` (b2, 128), ``"block3_in"`` (b3, 256):
  the shallow maps whose Gram statistics form the SSRB features;
* ``"gf"``: the global feature, GAP of block12 (1024) or of act4 (2048), shape (B, C)
  (an NHWC map is average-pooled here);

and the [0, 1] RGB image (before the backbone's normalisation) for the patch spectra.

Data flow (default sizes, 256 px input)::

  SSF_b1, SSF_b2, SSF_b3 = ssrb_features(taps)                   # 64, 128, 256
  AS, PS = patch_spectra(image01, 16)                             # (B, 256, 256) each
  AT, PT = PAPDA(AS, PS)                                          # (B, 256, 256) each
  AF, PF = MLPMixer_a(AT), MLPMixer_p(PT)                          # 256 each
  F_MM = [SSF_b1, SSF_b2, SSF_b3, GF, AF, PF]                     # 1984
  F_E = W_E dropout(F_MM) + b_E                                   # 1024
  z = normalize(W_z F_E + b_z)                                    # 128
  s = w_c . dropout(F_E) + b_c                                    # logit, P(fake) = sigmoid(s)

New layers use PyTorch's default initialisation (Linear: kaiming-uniform a = sqrt 5 and
U(+-1/sqrt(fan_in)) bias; LayerNorm 1/0, eps 1e-5; ``nn.MultiheadAttention``: xavier-uniform
fused in-projection, zero in/out biases). Parameters are float32; ``dtype="bfloat16"``
computes the linear layers in bf16, while the spectra, the SSRB statistics, the attention
softmax and the outputs ``logit``/``z`` stay float32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sjedd_jax.backbones.layers import dropout, torch_default_bias_init, torch_default_kernel_init

TAP_NAMES = ("act2", "block2_in", "block3_in")
SSRB_NORMS = ("none", "hw", "chw")
_GREY = (0.299, 0.587, 0.114)


def _dtype(dtype):
  return None if dtype is None else jnp.dtype(dtype)


def _linear(din: int, dout: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  """``torch.nn.Linear(din, dout)`` with its default initialisation."""
  return nnx.Linear(din, dout, dtype=dtype, kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(din), rngs=rngs)


def _layer_norm(dim: int, dtype, rngs: nnx.Rngs) -> nnx.LayerNorm:
  """``torch.nn.LayerNorm(dim)``: scale 1, bias 0, eps 1e-5, two-pass variance."""
  return nnx.LayerNorm(dim, epsilon=1e-5, use_fast_variance=False, dtype=dtype, rngs=rngs)


def _gelu(x: jax.Array) -> jax.Array:
  return jax.nn.gelu(x, approximate=False)  # torch.nn.GELU() (erf)


# ---------------------------------------------------------------------------
# SSRB (section 2.2)
# ---------------------------------------------------------------------------


def ssrb_features(F: jax.Array, norm: str = "hw") -> jax.Array:
  """Shallow style representation: row means of the normalised Gram matrix of a feature map.

  With F reshaped to (HW, C), G = F^T F and SSF_i = (1/C) sum_j G_ij / n, where
  n = 1 (``"none"``), HW (``"hw"``, the default) or CHW (``"chw"``). Computed in the
  O(HWC) form SSF = F^T (F 1_C) / (C n), in float32, without forming G.

  Args:
    F: (B, H, W, C) feature map (NHWC).
    norm: normalisation of G, one of ``"none"``, ``"hw"``, ``"chw"``.

  Returns:
    (B, C) float32.
  """
  if norm not in SSRB_NORMS:
    raise ValueError(f"ssrb_features: norm {norm!r} not one of {list(SSRB_NORMS)}")
  if F.ndim != 4:
    raise ValueError(f"ssrb_features: expected a (B, H, W, C) feature map, got shape {tuple(F.shape)}")
  _, h, w, c = F.shape
  n = {"none": 1.0, "hw": float(h * w), "chw": float(c * h * w)}[norm]
  Ff = F.astype(jnp.float32)
  rowsum = jnp.sum(Ff, axis=-1, keepdims=True)  # F 1_C, (B, H, W, 1)
  return jnp.sum(Ff * rowsum, axis=(1, 2)) / (c * n)


# ---------------------------------------------------------------------------
# Patch spectra (section 2.3)
# ---------------------------------------------------------------------------


def grey(image01: jax.Array) -> jax.Array:
  """(B, H, W, 3) RGB in [0, 1] -> (B, H, W) luma 0.299 R + 0.587 G + 0.114 B; (B, H, W, 1) passes."""
  if image01.ndim != 4 or image01.shape[-1] not in (1, 3):
    raise ValueError(f"patch_spectra: expected a (B, H, W, 3) or (B, H, W, 1) image, got shape {tuple(image01.shape)}")
  x = image01.astype(jnp.float32)
  if x.shape[-1] == 1:
    return x[..., 0]
  return x[..., 0] * _GREY[0] + x[..., 1] * _GREY[1] + x[..., 2] * _GREY[2]


def self_conjugate_mask(patch: int) -> np.ndarray:
  """(P^2,) bool: the bins (u, v) with u, v in {0, P/2} (row-major), whose DFT of a real patch is real."""
  special = {0, patch // 2} if patch % 2 == 0 else {0}
  m = np.zeros((patch, patch), bool)
  for u in special:
    for v in special:
      m[u, v] = True
  return m.reshape(-1)


def patch_spectra(image01: jax.Array, patch: int = 16) -> tuple[jax.Array, jax.Array]:
  """Amplitude and phase spectra of non-overlapping P x P patches of the grey image.

  Patch i (raster order: patch rows top to bottom, left to right within a row) has
  F_i = fft2(patch_i) / P^2; amplitude |F_i| and phase atan2(Im, Re) in (-pi, pi], both
  flattened row-major over (u, v) to P^2 values. Phase is made deterministic across
  backends: at the self-conjugate bins (u, v in {0, P/2}) the imaginary part is zero by
  construction, and elsewhere it is zeroed where |Im| < 1e-6 |F|; a zero imaginary part
  gives phase pi where Re < 0 and 0 otherwise. Computed in float32 under
  ``stop_gradient`` (no trainable parameter precedes it).

  Args:
    image01: (B, H, W, 3) RGB (or (B, H, W, 1) grey) in [0, 1], H and W multiples of ``patch``.
    patch: P.

  Returns:
    ``(amplitude, phase)``, each (B, N, P^2) float32 with N = (H / P) (W / P).
  """
  g = jax.lax.stop_gradient(grey(image01))
  b, h, w = g.shape
  if patch <= 0 or h % patch or w % patch:
    raise ValueError(f"patch_spectra: image {h}x{w} is not divisible into {patch}x{patch} patches")
  gh, gw = h // patch, w // patch
  p = g.reshape(b, gh, patch, gw, patch).transpose(0, 1, 3, 2, 4).reshape(b, gh * gw, patch, patch)
  f = jnp.fft.fft2(p, axes=(-2, -1)) / float(patch * patch)
  f = f.reshape(b, gh * gw, patch * patch)
  re, im = jnp.real(f), jnp.imag(f)
  amp = jnp.abs(f)
  real_bin = jnp.asarray(self_conjugate_mask(patch))
  im = jnp.where(real_bin | (jnp.abs(im) < 1e-6 * amp), 0.0, im)
  phase = jnp.where(im == 0.0, jnp.where(re < 0.0, jnp.pi, 0.0), jnp.arctan2(im, re))
  return jax.lax.stop_gradient(amp), jax.lax.stop_gradient(phase.astype(jnp.float32))


# ---------------------------------------------------------------------------
# PAPDA (section 2.4)
# ---------------------------------------------------------------------------


class MultiheadAttention(nnx.Module):
  """``torch.nn.MultiheadAttention(dim, heads)`` (batch first, no mask, no dropout).

  Fused in-projection ``in_proj_kernel`` (dim, 3 dim) = torch's ``in_proj_weight.T``
  (q, k, v column blocks) with ``in_proj_bias``; ``out_proj`` Linear. Scores are scaled
  by 1/sqrt(dim / heads); the softmax runs in float32.
  """

  def __init__(self, dim: int, heads: int, *, dtype=None, rngs: nnx.Rngs):
    if heads <= 0 or dim % heads:
      raise ValueError(f"MultiheadAttention: dim {dim} is not divisible by heads {heads}")
    self.dim, self.heads = dim, heads
    self.dtype = _dtype(dtype)
    # torch: xavier_uniform_ on the (3 dim, dim) weight = U(+-sqrt(6 / (4 dim))); zero biases.
    self.in_proj_kernel = nnx.Param(nnx.initializers.xavier_uniform()(rngs.params(), (dim, 3 * dim), jnp.float32))
    self.in_proj_bias = nnx.Param(jnp.zeros((3 * dim,), jnp.float32))
    self.out_proj = nnx.Linear(dim, dim, dtype=self.dtype, kernel_init=torch_default_kernel_init,
                               bias_init=nnx.initializers.zeros_init(), rngs=rngs)

  def __call__(self, query: jax.Array, key_value: jax.Array) -> jax.Array:
    """query (B, Nq, dim), key_value (B, Nk, dim) -> (B, Nq, dim); keys and values are the same tensor."""
    d = self.dim
    dt = jnp.result_type(query.dtype, jnp.float32) if self.dtype is None else self.dtype
    w = self.in_proj_kernel[...].astype(dt)
    bias = self.in_proj_bias[...].astype(dt)
    q = query.astype(dt) @ w[:, :d] + bias[:d]
    k = key_value.astype(dt) @ w[:, d:2 * d] + bias[d:2 * d]
    v = key_value.astype(dt) @ w[:, 2 * d:] + bias[2 * d:]
    b, nq, _ = q.shape
    nk = k.shape[1]
    dh = d // self.heads
    q = q.reshape(b, nq, self.heads, dh)
    k = k.reshape(b, nk, self.heads, dh)
    v = v.reshape(b, nk, self.heads, dh)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(dh)
    attn = jax.nn.softmax(scores, axis=-1).astype(dt)
    y = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, nq, d)
    return self.out_proj(y)


class PAPDA(nnx.Module):
  """Patch-wise amplitude/phase dual attention (Eqs. 5-8).

  E_as = AS W_a + b_a, E_ps = PS W_p + b_p (shared over patches, no positional embedding);
  AT = E_as + MHA_a(Q = LN_p(E_ps), K = V = LN_a(E_as)),
  PT = E_ps + MHA_p(Q = LN_a(E_as), K = V = LN_p(E_ps)); LN_a / LN_p are each one layer,
  used in both attentions; MHA_a and MHA_p have separate weights.

  Args:
    in_dim: spectrum length P^2 (256).
    dim: token width D (256).
    heads: attention heads (4).
  """

  def __init__(self, in_dim: int = 256, dim: int = 256, heads: int = 4, *, dtype=None, rngs: nnx.Rngs):
    dt = _dtype(dtype)
    self.embed_a = _linear(in_dim, dim, dt, rngs)
    self.embed_p = _linear(in_dim, dim, dt, rngs)
    self.ln_a = _layer_norm(dim, dt, rngs)
    self.ln_p = _layer_norm(dim, dt, rngs)
    self.mha_a = MultiheadAttention(dim, heads, dtype=dt, rngs=rngs)
    self.mha_p = MultiheadAttention(dim, heads, dtype=dt, rngs=rngs)

  def __call__(self, amplitude: jax.Array, phase: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B, N, in_dim) amplitude and phase -> amplitude tokens AT, phase tokens PT, each (B, N, dim)."""
    e_as = self.embed_a(amplitude)
    e_ps = self.embed_p(phase)
    n_as = self.ln_a(e_as)
    n_ps = self.ln_p(e_ps)
    at = e_as + self.mha_a(n_ps, n_as)
    pt = e_ps + self.mha_p(n_as, n_ps)
    return at, pt


# ---------------------------------------------------------------------------
# MLP-Mixer (section 2.5)
# ---------------------------------------------------------------------------


class MixerLayer(nnx.Module):
  """One Mixer layer (Eqs. 9-10): token mixing U = T + MLP_tok(LN(T)^T)^T, channel mixing Y = U + MLP_ch(LN(U))."""

  def __init__(self, num_tokens: int, dim: int, token_hidden: int, channel_hidden: int, *,
               dtype=None, rngs: nnx.Rngs):
    dt = _dtype(dtype)
    self.token_norm = _layer_norm(dim, dt, rngs)
    self.token_fc1 = _linear(num_tokens, token_hidden, dt, rngs)
    self.token_fc2 = _linear(token_hidden, num_tokens, dt, rngs)
    self.channel_norm = _layer_norm(dim, dt, rngs)
    self.channel_fc1 = _linear(dim, channel_hidden, dt, rngs)
    self.channel_fc2 = _linear(channel_hidden, dim, dt, rngs)

  def __call__(self, t: jax.Array) -> jax.Array:
    y = jnp.swapaxes(self.token_norm(t), 1, 2)  # (B, D, N)
    y = self.token_fc2(_gelu(self.token_fc1(y)))
    u = t + jnp.swapaxes(y, 1, 2)
    return u + self.channel_fc2(_gelu(self.channel_fc1(self.channel_norm(u))))


class MLPMixer(nnx.Module):
  """A stack of Mixer layers, a final LayerNorm and the mean over tokens (Eq. 11).

  Args:
    num_tokens: N (256 patches).
    dim: token width D (256).
    token_hidden: token-mixing MLP width (256).
    channel_hidden: channel-mixing MLP width (256).
    depth: number of Mixer layers (2).
  Call: (B, N, D) tokens -> (B, D) feature (AF or PF).
  """

  def __init__(self, num_tokens: int = 256, dim: int = 256, token_hidden: int = 256,
               channel_hidden: int = 256, depth: int = 2, *, dtype=None, rngs: nnx.Rngs):
    if depth < 1:
      raise ValueError(f"MLPMixer: depth must be >= 1, got {depth}")
    dt = _dtype(dtype)
    self.num_tokens = num_tokens
    self.layers = nnx.List([MixerLayer(num_tokens, dim, token_hidden, channel_hidden, dtype=dt, rngs=rngs)
                            for _ in range(depth)])
    self.norm = _layer_norm(dim, dt, rngs)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    if tokens.ndim != 3 or tokens.shape[1] != self.num_tokens:
      raise ValueError(f"MLPMixer: expected (B, {self.num_tokens}, D) tokens, got shape {tuple(tokens.shape)}")
    t = tokens
    for layer in self.layers:
      t = layer(t)
    return jnp.mean(self.norm(t), axis=1)


# ---------------------------------------------------------------------------
# Fusion and heads (section 2.6)
# ---------------------------------------------------------------------------


class MCLCRHead(nnx.Module):
  """Everything of MC-LCR after the Xception backbone: SSRB, frequency branch, fusion, heads.

  Args:
    image_size: input size, an int (square) or (H, W); sets the token count N = HW / P^2.
    patch: patch size P of the spectra (16).
    token_dim: PAPDA/Mixer token width D; None means P^2 (256).
    heads: PAPDA attention heads (4).
    token_hidden, channel_hidden: Mixer MLP widths (256, 256).
    mixer_depth: Mixer layers per branch (2).
    tap_channels: channels of the taps act2, block2_in, block3_in ((64, 128, 256)).
    gf_dim: width of GF: 1024 (block12, the default) or 2048 (act4).
    fe_dim: width of F_E (1024).
    z_dim: width of the contrastive embedding z (128).
    dropout_rate: rate of the dropout on F_MM and on F_E (0.5).
    ssrb: keep the three SSF in F_MM (False: Table 5 row 2).
    papda: keep the frequency branch, AF and PF (False: Table 5 row 3).
    gf: keep GF in F_MM (False together with ``ssrb=False``: the frequency branch alone,
      spec section 9 check 3; then no backbone tap is read).
    ssrb_norm: normalisation of the Gram matrix, "none" / "hw" (default) / "chw".
    dtype: compute dtype of the linear layers (None: float32).

  Call: ``head(taps, image01, train=..., rng=...)`` with ``taps`` holding ``"gf"`` (when ``gf``) (and
  ``"act2"``, ``"block2_in"``, ``"block3_in"`` when ``ssrb``) and the [0, 1] image
  (needed when ``papda``); ``rng`` is required when training with dropout (split
  into the two dropout sites). Returns a dict: ``logit`` (B,), ``z`` (B, z_dim) unit
  vectors, ``f_e`` (B, fe_dim), ``f_mm`` (B, fused_dim) and, when enabled, ``ssf``
  (B, sum of tap channels), ``af`` and ``pf`` (B, D). ``logit`` and ``z`` are float32.
  """

  def __init__(self, *, image_size: int | Sequence[int] = 256, patch: int = 16, token_dim: int | None = None,
               heads: int = 4, token_hidden: int = 256, channel_hidden: int = 256, mixer_depth: int = 2,
               tap_channels: Sequence[int] = (64, 128, 256), gf_dim: int = 1024, fe_dim: int = 1024,
               z_dim: int = 128, dropout_rate: float = 0.5, ssrb: bool = True, papda: bool = True,
               gf: bool = True, ssrb_norm: str = "hw", dtype=None, rngs: nnx.Rngs):
    if ssrb_norm not in SSRB_NORMS:
      raise ValueError(f"MCLCRHead: ssrb_norm {ssrb_norm!r} not one of {list(SSRB_NORMS)}")
    if len(tuple(tap_channels)) != len(TAP_NAMES):
      raise ValueError(f"MCLCRHead: tap_channels needs {len(TAP_NAMES)} values (for {TAP_NAMES}), got {tap_channels}")
    if not 0.0 <= dropout_rate < 1.0:
      raise ValueError(f"MCLCRHead: dropout_rate must be in [0, 1), got {dropout_rate}")
    if not (ssrb or papda or gf):
      raise ValueError("MCLCRHead: ssrb, papda and gf are all off: F_MM would be empty")
    hw = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(hw) != 2 or patch <= 0 or hw[0] % patch or hw[1] % patch:
      raise ValueError(f"MCLCRHead: image_size {image_size} is not divisible into {patch}x{patch} patches")
    dt = _dtype(dtype)
    self.dtype = dt
    self.image_hw = hw
    self.patch = patch
    self.num_tokens = (hw[0] // patch) * (hw[1] // patch)
    self.token_dim = patch * patch if token_dim is None else int(token_dim)
    self.tap_channels = tuple(int(c) for c in tap_channels)
    self.gf_dim = int(gf_dim)
    self.dropout_rate = float(dropout_rate)
    self.use_ssrb = bool(ssrb)
    self.use_papda = bool(papda)
    self.use_gf = bool(gf)
    self.ssrb_norm = ssrb_norm
    if self.use_papda:
      self.papda = PAPDA(patch * patch, self.token_dim, heads, dtype=dt, rngs=rngs)
      self.mixer_a = MLPMixer(self.num_tokens, self.token_dim, token_hidden, channel_hidden, mixer_depth,
                              dtype=dt, rngs=rngs)
      self.mixer_p = MLPMixer(self.num_tokens, self.token_dim, token_hidden, channel_hidden, mixer_depth,
                              dtype=dt, rngs=rngs)
    else:
      self.papda = self.mixer_a = self.mixer_p = None
    self.fused_dim = ((sum(self.tap_channels) if self.use_ssrb else 0) + (self.gf_dim if self.use_gf else 0)
                      + (2 * self.token_dim if self.use_papda else 0))
    self.embed = _linear(self.fused_dim, fe_dim, dt, rngs)  # F_E
    self.proj = _linear(fe_dim, z_dim, dt, rngs)  # z
    self.classifier = _linear(fe_dim, 1, dt, rngs)  # logit

  @property
  def branch_names(self) -> tuple[str, ...]:
    """The parts of F_MM in order (those switched on): "ssf", "gf", "af", "pf"."""
    return tuple(n for n, on in (("ssf", self.use_ssrb), ("gf", self.use_gf), ("af", self.use_papda),
                                 ("pf", self.use_papda)) if on)

  def branch_contributions(self, f_mm: jax.Array) -> jax.Array:
    """The inference logit split exactly over the parts of F_MM: (B, 5) = [SSF, GF, AF, PF, bias]
    (0 for a part switched off), in float32.

    With dropout off, logit = w_c . (W_E f_mm + b_E) + b_c is linear in F_MM (no activation between
    F_MM, F_E and the logit), so part k contributes (W_E^T w_c)[k] . f_mm[k] and the bias is
    w_c . b_E + b_c; the five sum to the logit (up to rounding). A contribution is measured from a
    zero feature, not from an average real face.
    """
    k_e = self.embed.kernel[...].astype(jnp.float32)                 # (fused, fe)
    k_c = self.classifier.kernel[...].astype(jnp.float32)[:, 0]      # (fe,)
    v = k_e @ k_c                                                    # (fused,)
    bias = self.embed.bias[...].astype(jnp.float32) @ k_c + self.classifier.bias[...].astype(jnp.float32)[0]
    sizes = {"ssf": sum(self.tap_channels), "gf": self.gf_dim, "af": self.token_dim, "pf": self.token_dim}
    f = f_mm.astype(jnp.float32)
    cols, start = {}, 0
    for name in self.branch_names:
      n = sizes[name]
      cols[name] = f[:, start:start + n] @ v[start:start + n]
      start += n
    zero = jnp.zeros(f.shape[:1], jnp.float32)
    return jnp.stack([cols.get(n, zero) for n in ("ssf", "gf", "af", "pf")] + [zero + bias], axis=-1)

  def frequency_features(self, image01: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[0, 1] image -> (AF, PF), each (B, D)."""
    if tuple(image01.shape[1:3]) != self.image_hw:
      raise ValueError(f"MCLCRHead: image is {tuple(image01.shape[1:3])}, the head was built for {self.image_hw}")
    amp, phase = patch_spectra(image01, self.patch)
    at, pt = self.papda(amp, phase)
    return self.mixer_a(at), self.mixer_p(pt)

  def __call__(self, taps: Mapping[str, jax.Array], image01: jax.Array | None = None, *, train: bool,
               rng: jax.Array | None = None) -> dict[str, jax.Array]:
    gf = None
    if self.use_gf:
      if "gf" not in taps:
        raise ValueError(f"MCLCRHead: taps lack 'gf'; got keys {sorted(taps)}")
      gf = taps["gf"]
      if gf.ndim == 4:
        gf = jnp.mean(gf.astype(jnp.float32), axis=(1, 2))
      if gf.ndim != 2 or gf.shape[-1] != self.gf_dim:
        raise ValueError(f"MCLCRHead: tap 'gf' has shape {tuple(taps['gf'].shape)}, expected (B, {self.gf_dim})")
    out: dict[str, jax.Array] = {}
    parts = []
    if self.use_ssrb:
      ssf = []
      for name, c in zip(TAP_NAMES, self.tap_channels):
        if name not in taps:
          raise ValueError(f"MCLCRHead: taps lack {name!r} (needed by SSRB); got keys {sorted(taps)}")
        if taps[name].ndim != 4 or taps[name].shape[-1] != c:
          raise ValueError(f"MCLCRHead: tap {name!r} has shape {tuple(taps[name].shape)}, expected (B, H, W, {c})")
        ssf.append(ssrb_features(taps[name], self.ssrb_norm))
      out["ssf"] = jnp.concatenate(ssf, axis=-1)
      parts.append(out["ssf"])
    if gf is not None:
      parts.append(gf.astype(jnp.float32))
    if self.use_papda:
      if image01 is None:
        raise ValueError("MCLCRHead: the frequency branch (papda=True) needs the [0, 1] image")
      out["af"], out["pf"] = self.frequency_features(image01)
      parts += [out["af"].astype(jnp.float32), out["pf"].astype(jnp.float32)]
    f_mm = jnp.concatenate(parts, axis=-1)
    out["f_mm"] = f_mm
    k_mm = k_e = None
    if train and self.dropout_rate > 0.0:
      if rng is None:
        raise ValueError("MCLCRHead: training with dropout needs rng (the step's dropout key)")
      k_mm, k_e = jax.random.split(rng)
    f_e = self.embed(dropout(f_mm, self.dropout_rate, k_mm, train))
    out["f_e"] = f_e
    h = self.proj(f_e).astype(jnp.float32)
    out["z"] = h / jnp.maximum(jnp.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
    out["logit"] = self.classifier(dropout(f_e, self.dropout_rate, k_e, train))[..., 0].astype(jnp.float32)
    return out
