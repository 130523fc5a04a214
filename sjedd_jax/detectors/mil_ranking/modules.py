"""The contrastive-MIL head on a CNN's feature maps (spec section 2, items 1-7), Flax NNX.

Input: a dict of NHWC backbone maps {"C3", "C4", "C5"} (strides 8/16/32).

1. ``FPN``: lateral 1x1 convs to d, top-down nearest upsampling + add, a 3x3
   output conv on the chosen level (P4 by default; P3/P5 options). Only the
   laterals the level needs are built (P5 uses C5 alone, P4 uses C4 and C5).
2. Tokens: the level's h x w x d map as T (N = h w rows), each row l2-normalised;
   U = T plus a 2-D sine positional encoding (DETR: d/2 features per axis,
   normalised coordinates x 2 pi, temperature 10000) [I]; L learnable class
   tokens V ~ N(0, 0.02) [I].
3. ``Encoder`` phi: pre-LN transformer over [U; V] (N + L tokens) with a final
   LayerNorm (DETR's pre-norm encoder) [I: SeqFakeFormer's 2 layers, 4 heads,
   FFN 512, ReLU, dropout 0.1]. ``pos_mode="qk"`` adds the positions to queries
   and keys in every layer instead of once at the input (DETR's way).
4. Similarity: S = max(U^ U^T, 0) with U^ = U~ row-normalised, in [0, 1]; the
   head returns u, its strict upper triangle sorted ascending (B, n), which
   ``losses`` consumes (``return_similarity=True`` adds "S" (B, N, N)).
5. Patch head: U~ back to h x w x d, Conv3x3(d->d) + ReLU, Conv1x1(d->L), global
   average pool -> f^U (B, L).
6. Class head: group-wise linear f^V_i = <W_i, V~_i> + b_i (Query2Label).
7. Fusion: f = (f^U + f^V) / 2.

Dropout takes an explicit key (``rng``); nothing draws randomness from module
state at call time. Parameters are float32; ``dtype`` sets the compute dtype of
the convolutions and the encoder (outputs fU, fV, f, u are float32).

Note [I]: the sine encoding has norm sqrt(d/2) (~11 at d = 256) against unit
token rows, so at the input it dominates the content until phi learns to use
both; ``pos_scale`` scales it and ``pos_encoding="none"`` drops it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sjedd_jax.backbones import layers
from sjedd_jax.detectors.mil_ranking import losses

LEVELS = ("P3", "P4", "P5")
_INPUTS = {"P3": ("C3", "C4", "C5"), "P4": ("C4", "C5"), "P5": ("C5",)}
# torchvision FeaturePyramidNetwork: kaiming_uniform_(a=1) = U(+-sqrt(3 / fan_in)), bias 0.
_fpn_init = nnx.initializers.variance_scaling(1.0, "fan_in", "uniform")
_xavier = nnx.initializers.xavier_uniform()


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
  """x / max(||x||, eps) along ``axis`` (computed in float32)."""
  xf = x.astype(jnp.float32)
  return (xf / jnp.maximum(jnp.linalg.norm(xf, axis=axis, keepdims=True), eps)).astype(x.dtype)


def resize_nearest(x: jax.Array, height: int, width: int) -> jax.Array:
  """``F.interpolate(mode="nearest", size=(height, width))`` on NHWC: src = floor(dst * in / out)."""
  h, w = x.shape[1], x.shape[2]
  if (h, w) == (height, width):
    return x
  rows = (jnp.arange(height) * h) // height
  cols = (jnp.arange(width) * w) // width
  return x[:, rows][:, :, cols]


def sine_position_encoding(height: int, width: int, dim: int, temperature: float = 10000.0) -> jax.Array:
  """DETR's ``PositionEmbeddingSine(dim // 2, normalize=True)`` for an unpadded map: (h w, dim).

  Channels: dim/2 for y then dim/2 for x, each interleaving sin/cos of
  coord / temperature^(2 floor(k/2) / (dim/2)), coord = (i + 1) / (size + 1e-6) * 2 pi.
  """
  if dim % 4:
    raise ValueError(f"sine position encoding needs dim divisible by 4, got {dim}")
  npf = dim // 2
  scale = 2.0 * math.pi
  y = (jnp.arange(height, dtype=jnp.float32) + 1.0) / (height + 1e-6) * scale
  x = (jnp.arange(width, dtype=jnp.float32) + 1.0) / (width + 1e-6) * scale
  k = jnp.arange(npf, dtype=jnp.float32)
  dim_t = temperature ** (2.0 * jnp.floor(k / 2.0) / npf)

  def embed(c):  # (size,) -> (size, npf), [sin, cos, sin, cos, ...]
    a = c[:, None] / dim_t
    return jnp.stack([jnp.sin(a[:, 0::2]), jnp.cos(a[:, 1::2])], axis=-1).reshape(c.shape[0], npf)

  py = jnp.broadcast_to(embed(y)[:, None, :], (height, width, npf))
  px = jnp.broadcast_to(embed(x)[None, :, :], (height, width, npf))
  return jnp.concatenate([py, px], axis=-1).reshape(height * width, dim)


class FPN(nnx.Module):
  """Standard FPN, one output level: laterals 1x1 -> d, top-down nearest + add, 3x3 output conv.

  Args:
    in_channels: {"C3": c3, "C4": c4, "C5": c5} (only the keys the level needs are read).
    dim: d (256).
    level: "P4" (stride 16, default), "P3" or "P5".
  Call: ``fpn(features) -> (B, h, w, d)``.
  """

  def __init__(self, in_channels: Mapping[str, int], dim: int = 256, level: str = "P4", *,
               dtype: Any = None, rngs: nnx.Rngs):
    if level not in LEVELS:
      raise ValueError(f"FPN level must be one of {LEVELS}, got {level!r}")
    self.level = level
    self.inputs = _INPUTS[level]
    missing = [k for k in self.inputs if k not in in_channels]
    if missing:
      raise ValueError(f"FPN level {level} needs in_channels for {missing}; got {sorted(in_channels)}")
    self.lateral = nnx.Dict({
        k: nnx.Conv(int(in_channels[k]), dim, (1, 1), padding="VALID", kernel_init=_fpn_init,
                    dtype=dtype, rngs=rngs)
        for k in self.inputs})
    self.output = nnx.Conv(dim, dim, (3, 3), padding=((1, 1), (1, 1)), kernel_init=_fpn_init,
                           dtype=dtype, rngs=rngs)

  def __call__(self, features: Mapping[str, jax.Array]) -> jax.Array:
    missing = [k for k in self.inputs if k not in features]
    if missing:
      raise KeyError(f"FPN level {self.level} needs feature map(s) {missing}; got {sorted(features)}")
    top = None
    for k in reversed(self.inputs):  # C5 first
      lat = self.lateral[k](features[k])
      top = lat if top is None else lat + resize_nearest(top, lat.shape[1], lat.shape[2]).astype(lat.dtype)
    return self.output(top)


class EncoderLayer(nnx.Module):
  """Pre-LN transformer layer (DETR ``forward_pre``): x + drop(MHA(LN x)); x + drop(FFN(LN x))."""

  def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.1, *,
               layer_norm_eps: float = 1e-5, dtype: Any = None, rngs: nnx.Rngs):
    if dim % heads:
      raise ValueError(f"encoder width {dim} is not divisible by {heads} heads")
    self.heads = heads
    self.dropout = float(dropout)
    self.dtype = dtype

    def linear(i, o):
      return nnx.Linear(i, o, kernel_init=_xavier, dtype=dtype, rngs=rngs)

    self.norm1 = nnx.LayerNorm(dim, epsilon=layer_norm_eps, dtype=dtype, rngs=rngs)
    self.q_proj, self.k_proj, self.v_proj = linear(dim, dim), linear(dim, dim), linear(dim, dim)
    self.out_proj = linear(dim, dim)
    self.norm2 = nnx.LayerNorm(dim, epsilon=layer_norm_eps, dtype=dtype, rngs=rngs)
    self.linear1 = linear(dim, ffn_dim)
    self.linear2 = linear(ffn_dim, dim)

  def __call__(self, x: jax.Array, pos: jax.Array | None, train: bool, rng: jax.Array | None) -> jax.Array:
    b, t, d = x.shape
    hd = d // self.heads
    drop = _Dropout(rng, self.dropout, train,
                    [(b, self.heads, t, t), (b, t, d), (b, t, self.linear1.out_features), (b, t, d)])
    h = self.norm1(x)
    qk_in = h if pos is None else h + pos.astype(h.dtype)
    q = self.q_proj(qk_in).reshape(b, t, self.heads, hd)
    k = self.k_proj(qk_in).reshape(b, t, self.heads, hd)
    v = self.v_proj(h).reshape(b, t, self.heads, hd)
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k).astype(jnp.float32) / math.sqrt(hd)
    attn = jax.nn.softmax(logits, axis=-1)
    attn = drop(0, attn).astype(v.dtype)
    a = jnp.einsum("bhqk,bkhc->bqhc", attn, v).reshape(b, t, d)
    x = x + drop(1, self.out_proj(a))
    h = self.norm2(x)
    h = drop(2, jax.nn.relu(self.linear1(h)))
    return x + drop(3, self.linear2(h))


class _Dropout:
  """The four dropout masks of one encoder layer from ONE uniform draw of the layer's key.

  Inverted dropout as ``layers.dropout`` (keep with probability 1 - rate, scale by
  1 / (1 - rate)); the masks are consecutive slices of a single ``jax.random.uniform``.
  One draw instead of four: every random call is a threefry program that XLA:CPU
  compiles separately, and four of them per layer made the encoder the costliest part
  of compiling the training step (3.6 s of 4 s for the twin's head).
  """

  def __init__(self, rng: jax.Array | None, rate: float, train: bool, shapes):
    self.rate, self.on = float(rate), bool(train) and rate > 0
    self.masks = None
    if not self.on:
      return
    if rng is None:
      raise ValueError("dropout in training needs a key (pass the step's rng)")
    sizes = [math.prod(s) for s in shapes]
    u = jax.random.uniform(rng, (sum(sizes),), jnp.float32)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    self.masks = [u[o:o + n].reshape(shape) >= self.rate for o, n, shape in zip(offsets, sizes, shapes)]

  def __call__(self, i: int, x: jax.Array) -> jax.Array:
    if not self.on:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    return jnp.where(self.masks[i], x / (1.0 - self.rate), jnp.zeros_like(x)).astype(x.dtype)


class Encoder(nnx.Module):
  """phi: ``num_layers`` pre-LN layers, then a final LayerNorm (``final_norm``)."""

  def __init__(self, dim: int = 256, num_layers: int = 2, heads: int = 4, ffn_dim: int = 512,
               dropout: float = 0.1, *, final_norm: bool = True, layer_norm_eps: float = 1e-5,
               dtype: Any = None, rngs: nnx.Rngs):
    self.blocks = nnx.List([EncoderLayer(dim, heads, ffn_dim, dropout, layer_norm_eps=layer_norm_eps,
                                         dtype=dtype, rngs=rngs) for _ in range(num_layers)])
    self.norm = (nnx.LayerNorm(dim, epsilon=layer_norm_eps, dtype=dtype, rngs=rngs)
                 if final_norm else None)

  def __call__(self, x: jax.Array, pos: jax.Array | None = None, train: bool = False,
               rng: jax.Array | None = None) -> jax.Array:
    keys = (jax.random.split(rng, len(self.blocks)) if rng is not None and len(self.blocks)
            else [None] * len(self.blocks))
    for block, key in zip(self.blocks, keys):
      x = block(x, pos, train, key)
    return x if self.norm is None else self.norm(x)


class PatchHead(nnx.Module):
  """f^U: Conv3x3(d->d) + ReLU, Conv1x1(d->L), global average pool; (B, h, w, d) -> (B, L)."""

  def __init__(self, dim: int, num_components: int, *, dtype: Any = None, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(dim, dim, (3, 3), padding=((1, 1), (1, 1)),
                          kernel_init=layers.torch_default_kernel_init,
                          bias_init=layers.torch_default_bias_init(dim * 9), dtype=dtype, rngs=rngs)
    self.conv2 = nnx.Conv(dim, num_components, (1, 1), padding="VALID",
                          kernel_init=layers.torch_default_kernel_init,
                          bias_init=layers.torch_default_bias_init(dim), dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv2(jax.nn.relu(self.conv1(x)))
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


class GroupLinear(nnx.Module):
  """f^V_i = <W_i, V~_i> + b_i; (B, L, d) -> (B, L). Init U(+-1/sqrt(d)) as Query2Label."""

  def __init__(self, dim: int, num_components: int, *, rngs: nnx.Rngs):
    bound = 1.0 / math.sqrt(dim)
    kw, kb = jax.random.split(rngs.params())
    self.weight = nnx.Param(jax.random.uniform(kw, (num_components, dim), jnp.float32, -bound, bound))
    self.bias = nnx.Param(jax.random.uniform(kb, (num_components,), jnp.float32, -bound, bound))

  def __call__(self, v: jax.Array) -> jax.Array:
    return jnp.einsum("bld,ld->bl", v.astype(jnp.float32), self.weight[...]) + self.bias[...]


class MILHead(nnx.Module):
  """Items 1-7 of section 2 on backbone maps; ``__call__(features, train, rng) -> dict``.

  Args:
    in_channels: {"C3": c3, "C4": c4, "C5": c5} or the tuple (c3, c4, c5).
    num_components: L (5; 1 for binary detection).
    dim: FPN / token width d (256).
    fpn_level: "P4" (default), "P3" or "P5".
    num_layers, num_heads, ffn_dim, dropout: encoder phi (2, 4, 512, 0.1).
    pos_encoding: "sine" (default) or "none".
    pos_mode: "input" (added to U once, default) or "qk" (to queries/keys in every layer).
    pos_scale: factor on the positional encoding (1.0).
    pos_temperature: sine temperature (10000).
    class_token_std: init std of the class tokens (0.02).
    normalize_tokens: l2-normalise the rows of T (the paper; True).
    final_norm: LayerNorm after the last encoder layer (DETR pre-norm; True).
    layer_norm_eps: LayerNorm epsilon (1e-5, torch's default).
    return_similarity: also return "S" (B, N, N).
    dtype: compute dtype (None = float32); parameters stay float32.
  Returns (call): {"fU", "fV", "f"} (B, L) float32 logits and "u" (B, n) float32, the
    sorted strict upper triangle of S, n = N(N-1)/2 (and "S" if asked).
  """

  def __init__(self, in_channels: Mapping[str, int] | Sequence[int], num_components: int = 5, *,
               dim: int = 256, fpn_level: str = "P4", num_layers: int = 2, num_heads: int = 4,
               ffn_dim: int = 512, dropout: float = 0.1, pos_encoding: str = "sine",
               pos_mode: str = "input", pos_scale: float = 1.0, pos_temperature: float = 10000.0,
               class_token_std: float = 0.02, normalize_tokens: bool = True, final_norm: bool = True,
               layer_norm_eps: float = 1e-5, return_similarity: bool = False, dtype: Any = None,
               rngs: nnx.Rngs):
    if not isinstance(in_channels, Mapping):
      in_channels = dict(zip(("C3", "C4", "C5"), in_channels))
    if pos_encoding not in ("sine", "none"):
      raise ValueError(f"pos_encoding must be 'sine' or 'none', got {pos_encoding!r}")
    if pos_mode not in ("input", "qk"):
      raise ValueError(f"pos_mode must be 'input' or 'qk', got {pos_mode!r}")
    if num_components < 1:
      raise ValueError(f"num_components must be >= 1, got {num_components}")
    self.num_components = int(num_components)
    self.dim = int(dim)
    self.pos_encoding = pos_encoding
    self.pos_mode = pos_mode
    self.pos_scale = float(pos_scale)
    self.pos_temperature = float(pos_temperature)
    self.normalize_tokens = bool(normalize_tokens)
    self.return_similarity = bool(return_similarity)
    self.dtype = dtype
    self.fpn = FPN(in_channels, dim, fpn_level, dtype=dtype, rngs=rngs)
    self.class_tokens = nnx.Param(
        class_token_std * jax.random.normal(rngs.params(), (num_components, dim), jnp.float32))
    self.encoder = Encoder(dim, num_layers, num_heads, ffn_dim, dropout, final_norm=final_norm,
                           layer_norm_eps=layer_norm_eps, dtype=dtype, rngs=rngs)
    self.patch_head = PatchHead(dim, num_components, dtype=dtype, rngs=rngs)
    self.class_head = GroupLinear(dim, num_components, rngs=rngs)

  def __call__(self, features: Mapping[str, jax.Array], train: bool = False,
               rng: jax.Array | None = None) -> dict[str, jax.Array]:
    fmap = self.fpn(features)
    b, h, w, d = fmap.shape
    n_tok, num = h * w, self.num_components
    t = fmap.reshape(b, n_tok, d)
    if self.normalize_tokens:
      t = l2_normalize(t)
    pos = None
    if self.pos_encoding == "sine":
      pos = self.pos_scale * sine_position_encoding(h, w, d, self.pos_temperature)
      pos = jnp.concatenate([pos, jnp.zeros((num, d), pos.dtype)], axis=0)[None]  # class tokens: none
    v = jnp.broadcast_to(self.class_tokens[...].astype(t.dtype)[None], (b, num, d))
    x = jnp.concatenate([t, v], axis=1)
    if pos is not None and self.pos_mode == "input":
      x = x + pos.astype(x.dtype)
      pos = None
    x = self.encoder(x, pos, train, rng)
    u_tok, v_tok = x[:, :n_tok], x[:, n_tok:]
    uh = l2_normalize(u_tok.astype(jnp.float32))
    s = jax.nn.relu(jnp.einsum("bnd,bmd->bnm", uh, uh))
    f_u = self.patch_head(u_tok.reshape(b, h, w, d))
    f_v = self.class_head(v_tok)
    out = {"fU": f_u, "fV": f_v, "f": 0.5 * (f_u + f_v), "u": losses.sorted_upper_triangle(s)}
    if self.return_similarity:
      out["S"] = s
    return out
