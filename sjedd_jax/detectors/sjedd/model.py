"""The SJEDD scoring model: CLIP joint embedding -> raw scores -> marginals (spec 2-3).

    u   = image embedding (projected, unnormalised)          (B, E)
    v_k = text embedding of template k (same)                 (n, E)
    f_k = <u, v_k> / tau                                      (B, n)   Eq. 4
    P(y_k = 1) = hierarchy.marginals(f)                       (B, n)   Eq. 3

One image-tower pass and one text-tower pass of all n templates per call, the
text context truncated to the longest template (17 tokens for the release's).

Ablation switches (spec section 9), all in ``SJEDDConfig``:
  similarity="cosine" (with its own ``cosine_tau``), head="linear" (image-only
  Linear(E -> n), no text tower), freeze_text=True (stop_gradient on the text
  embeddings; exclude the text params from the optimiser with
  ``trainable_filter``), templates="keyword", text_context=77 (full context),
  per_level_passes=True (the release's redundant work: one whole CLIP forward
  per label level at full context; identical numbers).

Functional use (what the trainer does)::

  model = sjedd.build("tiny", rngs=nnx.Rngs(0))
  graphdef, params, rest = sjedd.split(model)        # params: trainable nnx.Param
  scores = sjedd.apply(graphdef, (params, rest), images)            # pure
  marg = sjedd.apply(graphdef, (params, rest), images, method="marginals")
  jax.jit(sjedd.apply, static_argnums=0, static_argnames="method")

The release's checkpoint::

  model = sjedd.from_release_checkpoint("ckpt_epoch_19.pth")   # tau 10, 251 states
  p_fake = model.marginals(images)[:, 0]
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sjedd_jax.detectors.sjedd import hierarchy as hierarchy_lib
from sjedd_jax.detectors.sjedd import templates as templates_lib
from sjedd_jax.backbones.clip import modeling as clip_lib

TEXT_PATH = ("clip", "text")  # nnx path prefix of the text tower's parameters


@dataclasses.dataclass(frozen=True)
class SJEDDConfig:
  """Options of the scoring model. Defaults reproduce the release (spec section 3).

  Attributes:
    hierarchy: a ``LabelHierarchy``, a name ("ffpp", "ffpp250"), a JSON path or a dict.
    templates: "release", "keyword", or a tuple of n template strings (needs a tokenizer).
    tau: f_k = <u, v_k> / tau; the release divides by 10.
    similarity: "dot" (Eq. 4) or "cosine" (ablation; divides by ``cosine_tau``).
    cosine_tau: tau' of the cosine variant.
    head: "text" (joint embedding) or "linear" (ablation: image-only Linear head).
    freeze_text: stop gradients through the text tower (ablation).
    text_context: text tokens fed to the text tower; None = the longest template
      (17 for the release's), 77 = the full context. Same numbers either way.
    per_level_passes: reproduce the release's redundant computation (a whole CLIP
      forward per label level, full 77-token context) for benchmarks.
  """

  hierarchy: Any = "ffpp"
  templates: Any = "release"
  tau: float = 10.0
  similarity: str = "dot"
  cosine_tau: float = 0.01
  head: str = "text"
  freeze_text: bool = False
  text_context: int | None = None
  per_level_passes: bool = False

  def __post_init__(self):
    if self.similarity not in ("dot", "cosine"):
      raise ValueError(f"SJEDDConfig.similarity {self.similarity!r}: expected 'dot' or 'cosine'")
    if self.head not in ("text", "linear"):
      raise ValueError(f"SJEDDConfig.head {self.head!r}: expected 'text' or 'linear'")
    if not self.tau > 0 or not self.cosine_tau > 0:
      raise ValueError(f"SJEDDConfig: tau ({self.tau}) and cosine_tau ({self.cosine_tau}) must be > 0")
    if isinstance(self.templates, list):
      object.__setattr__(self, "templates", tuple(self.templates))

  def replace(self, **kw) -> "SJEDDConfig":
    return dataclasses.replace(self, **kw)


@functools.lru_cache(maxsize=None)
def _named_hierarchy(name: str) -> hierarchy_lib.LabelHierarchy:
  return hierarchy_lib.get(name)


def _hierarchy(spec) -> hierarchy_lib.LabelHierarchy:
  """Resolves a hierarchy; one shared object per name, so models built from the
  same name share a graphdef (and jit caches)."""
  if isinstance(spec, str) and spec in ("ffpp", "ffpp250"):
    return _named_hierarchy(spec)
  return hierarchy_lib.get(spec)


class SJEDD(nnx.Module):
  """CLIP + templates + tau + label hierarchy -> scores (B, n) and marginals (B, n)."""

  def __init__(self, clip: clip_lib.CLIP, config: SJEDDConfig | None = None, *,
               tokenizer=None, template_ids: np.ndarray | None = None,
               rngs: nnx.Rngs | None = None):
    config = config or SJEDDConfig()
    self.clip = clip
    self.hierarchy = _hierarchy(config.hierarchy)
    n = self.hierarchy.num_nodes
    self.tau = float(config.tau)
    self.similarity = config.similarity
    self.cosine_tau = float(config.cosine_tau)
    self.head_kind = config.head
    self.freeze_text = bool(config.freeze_text)
    self.per_level_passes = bool(config.per_level_passes)
    self.levels = tuple(self.hierarchy.levels)
    ctx = clip.config.context_length

    if template_ids is None:
      if config.head == "linear":
        template_ids = np.zeros((0, ctx), np.int32)
      else:
        template_ids = templates_lib.template_ids(config.templates, tokenizer, ctx)
    ids = np.asarray(template_ids, np.int32)
    if config.head == "text":
      if ids.ndim != 2 or ids.shape[0] != n:
        raise ValueError(f"SJEDD: {ids.shape[0] if ids.ndim == 2 else ids.shape} template(s) for a "
                         f"hierarchy of {n} nodes {list(self.hierarchy.nodes)}; need one per node")
      if ids.shape[1] != ctx:
        ids = templates_lib.repad(ids, ctx)
      if ids.max() >= clip.config.vocab_size:
        raise ValueError(f"SJEDD: template id {ids.max()} >= the CLIP vocabulary size {clip.config.vocab_size}")
      need = templates_lib.longest(ids)
      text_context = config.text_context or need
      if not need <= text_context <= ctx:
        raise ValueError(f"SJEDD: text_context {text_context} must be between the longest template "
                         f"({need} tokens) and the context length {ctx}")
    else:
      text_context = 0
      self.head = nnx.Linear(clip.config.embed_dim, n, rngs=rngs or nnx.Rngs(0))
    self.text_context = int(text_context)
    self.template_ids = tuple(tuple(int(t) for t in row) for row in ids)  # static

  # ------------------------------------------------------------- pieces
  @property
  def num_nodes(self) -> int:
    return self.hierarchy.num_nodes

  @property
  def text_is_trainable(self) -> bool:
    return self.head_kind == "text" and not self.freeze_text

  def token_ids(self, context: int | None = None) -> jax.Array:
    """(n, context) int32 template ids (default: ``text_context``)."""
    ids = np.asarray(self.template_ids, np.int32)
    return jnp.asarray(ids[:, : (context or self.text_context)])

  def image_embeddings(self, images: jax.Array) -> jax.Array:
    return self.clip.encode_image(images)

  def text_embeddings(self) -> jax.Array:
    """(n, E) template embeddings; stop-gradient'ed when the text tower is frozen."""
    if self.head_kind != "text":
      raise ValueError("SJEDD with head='linear' has no text embeddings")
    v = self.clip.encode_text(self.token_ids())
    return jax.lax.stop_gradient(v) if self.freeze_text else v

  def scores_from_embeddings(self, u: jax.Array, v: jax.Array) -> jax.Array:
    """f = <u, v_k> / tau (or cosine / tau'), computed in float32: (B, E), (n, E) -> (B, n)."""
    tau = self.cosine_tau if self.similarity == "cosine" else self.tau
    return clip_lib.joint_similarity(u, v, self.similarity, tau)

  # ------------------------------------------------------------- outputs
  def scores(self, images: jax.Array, text_embeddings: jax.Array | None = None) -> jax.Array:
    """Raw scores f (B, n). ``text_embeddings`` may be precomputed (evaluation)."""
    if self.head_kind == "linear":
      return self.head(self.image_embeddings(images).astype(jnp.float32))
    if self.per_level_passes and text_embeddings is None:
      return self._scores_per_level(images)
    u = self.image_embeddings(images)
    v = self.text_embeddings() if text_embeddings is None else text_embeddings
    return self.scores_from_embeddings(u, v)

  def _scores_per_level(self, images: jax.Array) -> jax.Array:
    """The release's computation: per level, a whole CLIP forward at full context."""
    ids = self.token_ids(self.clip.config.context_length)
    levels = sorted(set(self.levels))
    b = images.shape[0]
    # XLA merges identical image passes (common-subexpression elimination, even
    # through optimization barriers), so the per-level image passes are run as
    # one pass over len(levels) copies of the batch: the release's image-tower
    # work (FLOPs and activations), with rows computed independently.
    u_all = self.clip.encode_image(jnp.concatenate([images] * len(levels), axis=0))
    parts, order = [], []
    for j, level in enumerate(levels):
      nodes = [i for i, lv in enumerate(self.levels) if lv == level]
      u = u_all[j * b:(j + 1) * b]
      v = self.clip.encode_text(ids[np.asarray(nodes)])
      if self.freeze_text:
        v = jax.lax.stop_gradient(v)
      parts.append(self.scores_from_embeddings(u, v))
      order.extend(nodes)
    f = jnp.concatenate(parts, axis=-1)
    return f[:, np.argsort(np.asarray(order))]

  def marginals(self, images: jax.Array, text_embeddings: jax.Array | None = None) -> jax.Array:
    """P(y_k = 1 | image) for every node (B, n) (Eq. 3)."""
    return self.hierarchy.marginals(self.scores(images, text_embeddings))

  def log_joint(self, images: jax.Array) -> jax.Array:
    """Normalised log P(y) over the legal states (B, M)."""
    return self.hierarchy.log_joint(self.scores(images))

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.scores(images)


# ------------------------------------------------------------------ building
def build(clip: str | clip_lib.CLIPConfig | clip_lib.CLIP = "ViT-B/32", config: SJEDDConfig | None = None,
          *, dtype: str | None = None, scan_layers: bool | None = None, rngs: nnx.Rngs | None = None,
          tokenizer=None, **options) -> SJEDD:
  """An SJEDD with a freshly initialised CLIP (preset name or config) or a given one.

  ``options`` are ``SJEDDConfig`` fields, e.g. ``build("tiny", similarity="cosine")``.
  ``dtype`` ("float32"/"bfloat16") is the compute dtype of a newly built CLIP, and
  ``scan_layers`` (None: the config's) whether its blocks run as one ``lax.scan``.
  """
  rngs = rngs or nnx.Rngs(0)
  config = (config or SJEDDConfig()).replace(**options)
  if not isinstance(clip, clip_lib.CLIP):
    clip = clip_lib.build(clip, dtype=dtype, scan_layers=scan_layers, rngs=rngs)
  elif dtype and dtype != clip.config.dtype:
    raise ValueError("dtype applies to a newly built CLIP; load the checkpoint with dtype=... instead")
  return SJEDD(clip, config, tokenizer=tokenizer, rngs=rngs)


def from_pretrained(path, config: SJEDDConfig | None = None, *, dtype: str | None = None,
                    attention_impl: str | None = None, scan_layers: bool | None = None, **options) -> SJEDD:
  """An SJEDD around any checkpoint ``load_pretrained`` reads (its tokenizer is used if present)."""
  from sjedd_jax.backbones.clip.checkpoints import load_pretrained  # pylint: disable=g-import-not-at-top
  clip, tokenizer = load_pretrained(path, dtype=dtype, attention_impl=attention_impl, scan_layers=scan_layers)
  return SJEDD(clip, (config or SJEDDConfig()).replace(**options), tokenizer=tokenizer)


RELEASE_CONFIG = SJEDDConfig(hierarchy="ffpp", templates="release", tau=10.0, similarity="dot")


def from_release_checkpoint(path, *, dtype: str | None = None, attention_impl: str | None = None,
                            text_context: int | None = None, per_level_passes: bool = False) -> SJEDD:
  """The authors' released model: tau 10, the 251-state FF++ graph, the release templates.

  ``path`` is their ``.pth`` (``torch.save({'model': state_dict, ...})``, needs torch)
  or the directory ``scripts/convert_checkpoint.py`` made from it (no torch).
  """
  return from_pretrained(path, RELEASE_CONFIG.replace(text_context=text_context,
                                                      per_level_passes=per_level_passes),
                         dtype=dtype, attention_impl=attention_impl)


# ------------------------------------------------------------ functional API
def trainable_filter(model: SJEDD):
  """nnx filter of the parameters the optimiser should update.

  All ``nnx.Param`` except, when the text tower is frozen (or unused by a linear
  head), those under ``clip.text`` (``TEXT_PATH``).
  """
  if model.text_is_trainable:
    return nnx.Param
  return nnx.All(nnx.Param, nnx.Not(nnx.PathContains("text")))


def split(model: SJEDD):
  """(graphdef, trainable params, everything else) for the pure ``apply``."""
  return nnx.split(model, trainable_filter(model), ...)


def apply(graphdef, state, images: jax.Array | None = None, method: str = "scores", **kwargs):
  """Pure forward: ``nnx.merge(graphdef, *state).<method>(images)``.

  ``state`` is one ``nnx.State`` or a tuple/list of them (e.g. ``(params, rest)``
  from ``split``). Works under ``jax.jit`` (graphdef and method static),
  ``jax.vjp``, ``jax.jvp`` and ``jax.vmap``.
  """
  states = tuple(state) if isinstance(state, (tuple, list)) else (state,)
  model = nnx.merge(graphdef, *states)
  fn = getattr(model, method)
  return fn(**kwargs) if images is None else fn(images, **kwargs)


def scores_fn(graphdef, rest=None, method: str = "scores"):
  """``f(params, images)``: a pure function of the trainable params (rest closed over)."""
  def fn(params, images):
    return apply(graphdef, (params,) if rest is None else (params, rest), images, method=method)
  return fn
