"""OpenAI CLIP (ViT image tower + causal text tower) in Flax NNX.

Numerically the same model as OpenAI's ``clip/model.py`` and transformers'
``CLIPModel`` (with ``hidden_act="quick_gelu"``):

* image tower: patch conv without bias, class token, positional embedding,
  ``ln_pre``, pre-LN residual blocks (multi-head attention, QuickGELU MLP),
  ``ln_post`` on the class token, projection;
* text tower: token + positional embeddings, causal residual blocks,
  ``ln_final``, pooling at the end-of-text token (the largest id, so
  ``argmax(ids)``), projection.

Both ``encode_*`` methods return projected, unnormalised embeddings. Parameters
are float32; ``CLIPConfig.dtype="bfloat16"`` computes in bf16.

Example::

  cfg = clip.get_config("tiny")
  model = clip.CLIP(cfg, rngs=nnx.Rngs(0))
  u = model.encode_image(jnp.zeros((2, 64, 64, 3)))     # (2, embed_dim)
  v = model.encode_text(jnp.asarray(ids[:, :17]))       # (K, embed_dim)

The text tower is causal and pools at the end-of-text token, so ``encode_text``
accepts any length L <= ``context_length``: the positional embedding is sliced
to L and the result equals that of the full 77-token context.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


_ACTS = {"quick_gelu": quick_gelu, "gelu": lambda x: jax.nn.gelu(x, approximate=False)}


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
  """Sizes of a ViT CLIP. Defaults: ViT-B/32 (OpenAI).

  ``vision_heads``/``text_heads`` of OpenAI checkpoints are width // 64.
  ``vision_mlp_dim``/``text_mlp_dim`` of 0 become 4 x width.
  ``dtype`` is the compute dtype ("float32" or "bfloat16"); parameters stay float32.
  ``attention_impl`` is passed to ``jax.nn.dot_product_attention`` (None/"xla", or
  "cudnn" on NVIDIA GPUs with bf16).
  ``scan_layers`` (the default) keeps each tower's residual blocks stacked on a leading
  layer axis and runs them as one ``jax.lax.scan``; False unrolls them. Same parameter
  values and outputs; checkpoints keep one key per layer either way. On the 2-core CPU
  the ViT-B/32 training step is 1.6x faster at batch 32 and compiles 7x faster
  (docs/performance.md).
  """

  embed_dim: int = 512
  image_size: int = 224
  patch_size: int = 32
  vision_width: int = 768
  vision_layers: int = 12
  vision_heads: int = 12
  vision_mlp_dim: int = 0
  text_width: int = 512
  text_layers: int = 12
  text_heads: int = 8
  text_mlp_dim: int = 0
  vocab_size: int = 49408
  context_length: int = 77
  layer_norm_eps: float = 1e-5
  act: str = "quick_gelu"
  dtype: str = "float32"
  attention_impl: str | None = None
  scan_layers: bool = True

  def __post_init__(self):
    if self.image_size % self.patch_size:
      raise ValueError(f"CLIPConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
    for tower in ("vision", "text"):
      w, h = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
      if h <= 0 or w % h:
        raise ValueError(f"CLIPConfig: {tower}_width {w} is not divisible by {tower}_heads {h}")
    if self.act not in _ACTS:
      raise ValueError(f"CLIPConfig: act {self.act!r} not one of {sorted(_ACTS)}")
    if self.dtype not in _DTYPES:
      raise ValueError(f"CLIPConfig: dtype {self.dtype!r} not one of {sorted(_DTYPES)}")
    for tower in ("vision", "text"):  # 0 means the usual 4 x width
      if getattr(self, f"{tower}_mlp_dim") <= 0:
        object.__setattr__(self, f"{tower}_mlp_dim", 4 * getattr(self, f"{tower}_width"))

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  def replace(self, **kw) -> "CLIPConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "CLIPConfig":
    d = dict(d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"CLIPConfig: unknown field(s) {unknown}; known fields are {sorted(names)}")
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Presets. vocab 49408 and context 77 everywhere so the spec's template ids work.
PRESETS: dict[str, CLIPConfig] = {
    "ViT-B/32": CLIPConfig(),
    "ViT-B/16": CLIPConfig(patch_size=16),
    "ViT-L/14": CLIPConfig(embed_dim=768, patch_size=14, vision_width=1024, vision_layers=24,
                           vision_heads=16, text_width=768, text_heads=12),
    # Trains from scratch on CPU on 64 px synthetic faces in a few minutes.
    "tiny": CLIPConfig(embed_dim=128, image_size=64, patch_size=8, vision_width=128,
                       vision_layers=3, vision_heads=4, text_width=128, text_layers=2, text_heads=4),
    # For unit tests: as small as possible while still multi-head and multi-layer.
    "test": CLIPConfig(embed_dim=32, image_size=32, patch_size=8, vision_width=64, vision_layers=2,
                       vision_heads=4, text_width=32, text_layers=2, text_heads=2),
}
_ALIASES = {"vit_b32": "ViT-B/32", "vit-b-32": "ViT-B/32", "vit_b16": "ViT-B/16",
            "vit-b-16": "ViT-B/16", "vit_l14": "ViT-L/14", "vit-l-14": "ViT-L/14"}


def get_config(name: str = "ViT-B/32", **overrides) -> CLIPConfig:
  """A preset by name ("ViT-B/32", "ViT-B/16", "ViT-L/14", "tiny", "test"), with overrides.

  Overriding a tower's width without its MLP width gives the usual 4 x width MLP
  (not the preset's MLP width).
  """
  key = _ALIASES.get(name.lower(), name) if name not in PRESETS else name
  if key not in PRESETS:
    raise KeyError(f"unknown CLIP preset {name!r}; presets are {sorted(PRESETS)}")
  for tower in ("vision", "text"):
    if f"{tower}_width" in overrides and f"{tower}_mlp_dim" not in overrides:
      overrides[f"{tower}_mlp_dim"] = 0  # 0: 4 x width (CLIPConfig.__post_init__)
  return PRESETS[key].replace(**overrides)


def _normal(std: float):
  return nnx.initializers.normal(stddev=std)


def _layer_norm(width: int, cfg: CLIPConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(width, epsilon=cfg.layer_norm_eps, use_fast_variance=False,
                       dtype=cfg.compute_dtype, rngs=rngs)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection (OpenAI's in_proj)."""

  def __init__(self, width: int, heads: int, layers: int, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    self.heads = heads
    self.attention_impl = cfg.attention_impl
    dt = cfg.compute_dtype
    self.qkv = nnx.Linear(width, 3 * width, dtype=dt, kernel_init=_normal(width ** -0.5), rngs=rngs)
    proj_std = width ** -0.5 * (2 * layers) ** -0.5
    self.out = nnx.Linear(width, width, dtype=dt, kernel_init=_normal(proj_std), rngs=rngs)

  def __call__(self, x: jax.Array, causal: bool) -> jax.Array:
    b, t, w = x.shape
    q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
    shape = (b, t, self.heads, w // self.heads)
    q, k, v = (y.reshape(shape) for y in (q, k, v))
    impl = None if self.attention_impl in (None, "xla") else self.attention_impl
    y = jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)
    return self.out(y.reshape(b, t, w))


class MLP(nnx.Module):
  def __init__(self, width: int, mlp_dim: int, layers: int, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    self.act = cfg.act
    self.c_fc = nnx.Linear(width, mlp_dim, dtype=dt, kernel_init=_normal((2 * width) ** -0.5), rngs=rngs)
    proj_std = width ** -0.5 * (2 * layers) ** -0.5
    self.c_proj = nnx.Linear(mlp_dim, width, dtype=dt, kernel_init=_normal(proj_std), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.c_proj(_ACTS[self.act](self.c_fc(x)))


class ResidualBlock(nnx.Module):
  """Pre-LN block: x + attn(ln_1(x)); x + mlp(ln_2(x))."""

  def __init__(self, width, heads, mlp_dim, layers, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    self.ln_1 = _layer_norm(width, cfg, rngs)
    self.attn = Attention(width, heads, layers, cfg, rngs=rngs)
    self.ln_2 = _layer_norm(width, cfg, rngs)
    self.mlp = MLP(width, mlp_dim, layers, cfg, rngs=rngs)

  def __call__(self, x: jax.Array, causal: bool) -> jax.Array:
    x = x + self.attn(self.ln_1(x), causal)
    return x + self.mlp(self.ln_2(x))


class Transformer(nnx.Module):
  """The residual blocks, unrolled or as one ``jax.lax.scan``.

  With ``scan_layers`` the blocks are one ``ResidualBlock`` whose parameters carry
  a leading layer axis (``blocks.attn.qkv.kernel``: (layers, width, 3 width)),
  initialised with the same values as the unrolled blocks for the same seed.
  Checkpoints keep one key per layer either way (``params.flatten``/``assign``
  stack and unstack).
  """

  def __init__(self, width, layers, heads, mlp_dim, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    self.scan_layers = cfg.scan_layers
    blocks = [ResidualBlock(width, heads, mlp_dim, layers, cfg, rngs=rngs) for _ in range(layers)]
    if not self.scan_layers:
      self.blocks = nnx.List(blocks)
      return
    graphdef = nnx.graphdef(blocks[0])
    self.blocks = nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *map(nnx.state, blocks)))

  def __call__(self, x: jax.Array, causal: bool = False) -> jax.Array:
    if self.scan_layers:
      # One lax.scan over the stacked blocks: the backward of a loop materialises each
      # layer's cotangent. Unrolled, XLA:CPU fuses the residual stream's layer-norm
      # backward chain into every layer's transpose copy and recomputes it (quadratic in
      # depth): 36 % of the ViT-B/32 batch-32 step (docs/performance.md).
      graphdef, stacked = nnx.split(self.blocks)

      def body(h, st):
        return nnx.merge(graphdef, st)(h, causal), None

      return jax.lax.scan(body, x, stacked)[0]
    for block in self.blocks:
      x = block(x, causal)
    return x


class VisionTower(nnx.Module):
  """ViT image tower: (B, H, W, 3) normalised pixels -> (B, embed_dim)."""

  def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    w, dt = cfg.vision_width, cfg.compute_dtype
    self.image_size = cfg.image_size
    self.dtype = dt
    scale = w ** -0.5
    self.conv1 = nnx.Conv(3, w, (cfg.patch_size, cfg.patch_size), strides=cfg.patch_size,
                          padding="VALID", use_bias=False, dtype=dt, rngs=rngs)
    self.class_embedding = nnx.Param(_normal(scale)(rngs.params(), (w,), jnp.float32))
    self.positional_embedding = nnx.Param(
        _normal(scale)(rngs.params(), (cfg.grid ** 2 + 1, w), jnp.float32))
    self.ln_pre = _layer_norm(w, cfg, rngs)
    self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, cfg.vision_mlp_dim, cfg, rngs=rngs)
    self.ln_post = _layer_norm(w, cfg, rngs)
    self.proj = nnx.Param(_normal(scale)(rngs.params(), (w, cfg.embed_dim), jnp.float32))

  def __call__(self, images: jax.Array) -> jax.Array:
    if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
      raise ValueError(f"encode_image expects (B, {self.image_size}, {self.image_size}, 3) normalised "
                       f"pixels, got shape {images.shape}")
    x = self.conv1(images.astype(self.dtype))  # (B, g, g, w)
    b, gh, gw, w = x.shape
    x = x.reshape(b, gh * gw, w)
    cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, w))
    x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(x.dtype)
    x = self.ln_pre(x)
    x = self.transformer(x, causal=False)
    x = self.ln_post(x[:, 0])
    return x @ self.proj[...].astype(x.dtype)


class TextTower(nnx.Module):
  """Causal text tower: (K, L) int32 ids, L <= context_length -> (K, embed_dim)."""

  def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
    w, dt = cfg.text_width, cfg.compute_dtype
    self.context_length = cfg.context_length
    self.dtype = dt
    self.token_embedding = nnx.Embed(cfg.vocab_size, w, dtype=dt, embedding_init=_normal(0.02), rngs=rngs)
    self.positional_embedding = nnx.Param(_normal(0.01)(rngs.params(), (cfg.context_length, w), jnp.float32))
    self.transformer = Transformer(w, cfg.text_layers, cfg.text_heads, cfg.text_mlp_dim, cfg, rngs=rngs)
    self.ln_final = _layer_norm(w, cfg, rngs)
    self.text_projection = nnx.Param(_normal(w ** -0.5)(rngs.params(), (w, cfg.embed_dim), jnp.float32))

  def __call__(self, token_ids: jax.Array) -> jax.Array:
    if token_ids.ndim != 2:
      raise ValueError(f"encode_text expects (K, L) token ids, got shape {token_ids.shape}")
    length = token_ids.shape[1]
    if length > self.context_length:
      raise ValueError(f"encode_text: {length} tokens exceed the context length {self.context_length}")
    x = self.token_embedding(token_ids)
    x = x + self.positional_embedding[:length].astype(x.dtype)
    x = self.transformer(x, causal=True)
    x = self.ln_final(x)
    eot = jnp.argmax(token_ids, axis=-1)  # end-of-text has the largest id
    x = jnp.take_along_axis(x, eot[:, None, None], axis=1)[:, 0]
    return x @ self.text_projection[...].astype(x.dtype)


class CLIP(nnx.Module):
  """CLIP with ``encode_image`` and ``encode_text`` (projected, unnormalised).

  ``logit_scale`` is not kept: SJEDD does not use it (it cancels, spec section 3).
  """

  def __init__(self, config: CLIPConfig | None = None, *, rngs: nnx.Rngs):
    config = config or CLIPConfig()
    self.config = config
    self.vision = VisionTower(config, rngs=rngs)
    self.text = TextTower(config, rngs=rngs)

  def encode_image(self, images: jax.Array) -> jax.Array:
    """(B, H, W, 3) float32 CLIP-normalised pixels -> (B, embed_dim)."""
    return self.vision(images)

  def encode_text(self, token_ids: jax.Array) -> jax.Array:
    """(K, L) int32 token ids, L <= context_length -> (K, embed_dim)."""
    return self.text(jnp.asarray(token_ids, jnp.int32))

  def __call__(self, images: jax.Array, token_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.encode_image(images), self.encode_text(token_ids)


def build(clip: str | CLIPConfig = "ViT-B/32", *, overrides=None, dtype: str | None = None,
          scan_layers: bool | None = None, rngs: nnx.Rngs | None = None) -> CLIP:
  """A freshly initialised CLIP: a preset name (with ``overrides``, ``get_config``) or a config.

  ``dtype`` ("float32"/"bfloat16") is the compute dtype; ``scan_layers`` (None:
  the config's) whether the residual blocks run as one ``lax.scan``.
  """
  cfg = get_config(clip, **dict(overrides or {})) if isinstance(clip, str) else clip
  if dtype:
    cfg = cfg.replace(dtype=dtype)
  if scan_layers is not None:
    cfg = cfg.replace(scan_layers=bool(scan_layers))
  return CLIP(cfg, rngs=rngs or nnx.Rngs(0))


def joint_similarity(u: jax.Array, v: jax.Array, kind: str, temperature: float) -> jax.Array:
  """Similarity of image and text embeddings, divided by a temperature, in float32.

  (B, E), (K, E) -> (B, K): ``kind="dot"`` the inner product, ``"cosine"`` the
  cosine (both embeddings L2-normalised first).
  """
  u, v = u.astype(jnp.float32), v.astype(jnp.float32)
  if kind == "cosine":
    u = u / jnp.linalg.norm(u, axis=-1, keepdims=True)
    v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  elif kind != "dot":
    raise ValueError(f"similarity {kind!r}: expected 'dot' or 'cosine'")
  return jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST) / temperature


def restrict_vocabulary(clip: CLIP, token_ids) -> np.ndarray:
  """Keeps only the token-embedding rows that ``token_ids`` use; returns the renumbered ids.

  A model that only ever encodes a fixed set of templates (SJEDD's ten) needs
  those rows of the 49408-row table. The kept rows are the padding row 0 and the
  used ids in increasing order, so the end-of-text id stays the largest (CLIP
  pools there) and the text tower computes exactly what it computed before. The
  unused rows never affect an output but cost the optimiser (AdamW, the bi-level
  virtual step and finite differences touch every parameter): for the synthetic
  default's tiny CLIP they are 85 % of all parameters. ``clip`` is changed in
  place (its table and ``config.vocab_size``).
  """
  ids = np.asarray(token_ids, np.int32)
  used = np.unique(ids[ids > 0])
  if used.size and used.max() >= clip.config.vocab_size:
    raise ValueError(f"restrict_vocabulary: token id {used.max()} >= the vocabulary size {clip.config.vocab_size}")
  keep = np.concatenate([[0], used]).astype(np.int32)
  renumber = np.zeros(clip.config.vocab_size, np.int32)
  renumber[keep] = np.arange(keep.size, dtype=np.int32)
  emb = clip.text.token_embedding
  emb.embedding = nnx.Param(jnp.asarray(emb.embedding[...])[keep])
  emb.num_embeddings = int(keep.size)
  clip.config = clip.config.replace(vocab_size=int(keep.size))
  return renumber[ids]
