"""JEDD, the earlier joint-embedding detector (NeurIPS draft, Secs. 3.2-3.3), on the same library.

Three levels of nodes (binary; global attributes expression, identity, physical
consistency; local attributes eye, illumination, mouth, nose), each with a
*contrastive prompt pair*::

    v_k    = "A photo of a face with the global attribute of {g} altered"
    vbar_k = "A photo of a face with the global attribute of {g} unaltered"
    (binary level: "a photo of a fake face" / "a photo of a real face")

    s_k = cos(u, v_k) / tau,  sbar_k = cos(u, vbar_k) / tau      (Eq. 2; the draft: tau = 1)
    P(y_k = 1 | x) = sigmoid(s_k - sbar_k)                         (Eq. 1)

with the fidelity loss per level (Eqs. 3-5) and dynamic weight average over the
three level losses (Eq. 7; ``weighting.kind = "dwa"``, ``dwa_period = 1``).

The model returns raw scores; its label graph (a ``JEDDHierarchy``, a
``LabelHierarchy`` that also knows how raw scores become probabilities) turns
them into node marginals, so the trainer, evaluator and predictor run it
unchanged. The draft's ablations (its Table 3) are switches:

  ``probability="sigmoid"``    Eq. 1, one sigmoid per node (the draft)
  ``probability="hierarchy"``  (11) s - sbar as the raw scores of the label graph's
                               joint distribution (SJEDD's Eq. 3 marginals)
  ``probability="joint"``      (7) joint templates: one prompt per legal label state
                               ("A photo of a fake face with the global attribute of
                               expression and the local attribute of mouth are
                               altered"), a softmax over the states, marginalised
  ``contrastive=False``        (4) no "unaltered" prompts: P = sigmoid(s_k)
  ``levels=1`` / ``levels=2``  (5) binary templates only / (6) two levels
  ``freeze_text``, ``similarity="dot"``, any CLIP tower (ViT-B/16, ViT-L/14).

Token ids. The draft's prompts use words outside the spec's id list ("real",
"unaltered", "illumination", "consistency"), so real ids need CLIP's tokenizer
(an HF CLIP directory with tokenizer files). ``token_ids``:
  "auto"         the tokenizer if there is one, else ids derived from the spec's
                 known word ids when every word is known, else a clear error;
  "tokenizer"    require the tokenizer;
  "spec"         require every word to be in the spec's id list;
  "placeholder"  deterministic placeholder ids (NOT CLIP's: one id per word from
                 a CRC32 hash) for a randomly initialised text tower, where any
                 distinct ids work. Refused with pretrained weights.

Example::

    h = jedd.graph("jedd_draft")                          # 8 nodes, probability "sigmoid"
    model = jedd.build("tiny", h, token_ids="placeholder", rngs=nnx.Rngs(0))
    p = model.marginals(images)                           # (B, 8)
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sjedd_jax.detectors.sjedd import hierarchy as hierarchy_lib
from sjedd_jax.detectors.sjedd import templates as templates_lib
from sjedd_jax.backbones.clip import modeling as clip_lib

PROBABILITIES = ("sigmoid", "hierarchy", "joint")
TOKEN_ID_SOURCES = ("auto", "tokenizer", "spec", "placeholder")
EXPORT_META = "jedd.json"

# ------------------------------------------------------------------ the draft's label graph (data)
# Sec. 3.1: binary; global expression, identity, physical consistency; local eye,
# illumination, mouth, nose. Edges (for the hierarchical ablation (11)) follow the
# draft's text: expression is altered "on eye" and in the mouth (F2F/NT), identity
# swaps alter all local parts (Fig. 4), physical consistency is "linked to eye,
# illumination, mouth, nose" (Implementation details).
DRAFT_GRAPH = {
    "nodes": ["fake", "expression", "identity", "physical_consistency",
              "eye", "illumination", "mouth", "nose"],
    "levels": [0, 1, 1, 1, 2, 2, 2, 2],
    "edges": {
        "fake": ["expression", "identity", "physical_consistency"],
        "expression": ["eye", "mouth"],
        "identity": ["eye", "illumination", "mouth", "nose"],
        "physical_consistency": ["eye", "illumination", "mouth", "nose"],
    },
}
# Words of each node in the prompts.
DRAFT_WORDS = {"fake": "fake", "expression": "expression", "identity": "identity",
               "physical_consistency": "physical consistency", "eye": "eye",
               "illumination": "illumination", "mouth": "mouth", "nose": "nose"}

# Labels of the expanded FF++ sources over the draft's nodes (None = unobserved).
# Our reading of the draft (it gives no table): SJEDD's Table I restricted to the
# draft's nodes (lip + mouth -> mouth; eyebrow and skin dropped); illumination is
# altered only by the identity swaps ("all local parts of the face are fake").
_N = None
DRAFT_LABELS = {
    #                 fake expr ident phys eye illum mouth nose
    "real":           (0, 0, 0, 0, 0, 0, 0, 0),
    "aug_eye":        (1, _N, 0, 1, 1, 0, 0, 0),
    "aug_lip_mouth":  (1, _N, 0, 1, 0, 0, 1, 0),
    "aug_nose":       (1, 0, 0, 1, 0, 0, 0, 1),
    "Deepfakes":      (1, _N, 1, 1, 1, 1, 1, 1),
    "FaceSwap":       (1, _N, 1, 1, 1, 1, 1, 1),
    "Face2Face":      (1, 1, 0, 1, 0, 0, 1, 0),
    "NeuralTextures": (1, 1, 0, 1, 0, 0, 1, 0),
}
GRAPHS = {"jedd_draft": DRAFT_GRAPH}
LABEL_TABLES = {"jedd_draft": (DRAFT_GRAPH["nodes"], DRAFT_LABELS)}

BINARY_PAIR = ("a photo of a fake face", "a photo of a real face")
PAIR_TEMPLATES = {
    1: ("a photo of a face with the global attribute of {} altered",
        "a photo of a face with the global attribute of {} unaltered"),
    2: ("a photo of a face with the local attribute of {} altered",
        "a photo of a face with the local attribute of {} unaltered"),
}


class JEDDError(ValueError):
  """A JEDD configuration that cannot be built (names the field and value)."""


# ------------------------------------------------------------------ graph + probability
class JEDDHierarchy(hierarchy_lib.LabelHierarchy):
  """A label graph that also says how raw scores become node marginals.

  ``probability``: "sigmoid" (scores (..., n), one sigmoid per node, the draft's
  Eq. 1), "hierarchy" (scores (..., n) through the graph's joint distribution,
  SJEDD's Eq. 3) or "joint" (scores (..., M), one logit per legal state).
  """

  def __init__(self, nodes, levels, edges, root_requires_child: bool = False,
               probability: str = "sigmoid"):
    super().__init__(nodes, levels, edges, root_requires_child)
    if probability not in PROBABILITIES:
      raise JEDDError(f"probability {probability!r}; expected one of {PROBABILITIES}")
    object.__setattr__(self, "probability", probability)

  @property
  def num_scores(self) -> int:
    """Raw scores per image the model must produce: n, or M for "joint"."""
    return self.num_states if self.probability == "joint" else self.num_nodes

  def marginals(self, scores: jax.Array) -> jax.Array:
    if self.probability == "sigmoid":
      return jax.nn.sigmoid(scores)
    if self.probability == "hierarchy":
      return super().marginals(scores)
    s = jnp.asarray(self._states).astype(scores.dtype)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.clip(jnp.matmul(probs, s, precision=jax.lax.Precision.HIGHEST), 0.0, 1.0)

  def log_joint(self, scores: jax.Array) -> jax.Array:
    if self.probability == "joint":
      return jax.nn.log_softmax(scores, axis=-1)
    if self.probability == "hierarchy":
      return super().log_joint(scores)
    raise JEDDError("probability='sigmoid' models each node on its own; it defines no joint over "
                    "the graph's states (use probability='hierarchy' or 'joint')")

  def __repr__(self) -> str:
    return (f"JEDDHierarchy({self.num_nodes} nodes, {len(self.edges)} edges, {self.num_states} legal "
            f"states, probability={self.probability!r})")


def _graph_dict(spec: Any) -> dict:
  if isinstance(spec, str):
    if spec in GRAPHS:
      return json.loads(json.dumps(GRAPHS[spec]))
    if os.path.exists(os.path.expanduser(spec)):
      with open(os.path.expanduser(spec)) as f:
        return json.load(f)
    raise JEDDError(f"label graph {spec!r}: not one of {sorted(GRAPHS)} or an existing JSON file")
  if isinstance(spec, hierarchy_lib.LabelHierarchy):
    return spec.to_dict()
  if hasattr(spec, "to_dict"):
    spec = spec.to_dict()
  return dict(spec)


def graph(spec: Any = "jedd_draft", *, levels: int = 3, probability: str = "sigmoid") -> JEDDHierarchy:
  """The label graph (a name, JSON path or dict) keeping the nodes of the first ``levels`` levels.

  ``levels=1``: the binary node only (the draft's ablation (5)); ``levels=2``: binary
  and global attributes ((6)).
  """
  if levels not in (1, 2, 3):
    raise JEDDError(f"levels={levels}; expected 1 (binary), 2 (+ global) or 3 (+ local)")
  d = _graph_dict(spec)
  base = hierarchy_lib.LabelHierarchy.from_dict(d)
  keep = [n for n, lv in zip(base.nodes, base.levels) if lv < levels]
  edges = [(p, c) for p, c in base.edges if p in keep and c in keep]
  return JEDDHierarchy(keep, [base.levels[base.index(n)] for n in keep], edges,
                       base.root_requires_child, probability)


def label_table(spec: Any, nodes: Sequence[str]) -> dict[str, tuple[int, ...]]:
  """Rows ``source -> (n,)`` over ``nodes`` (-1 = unobserved) of a named table or a JSON/dict.

  A JSON table maps source -> {node: 0, 1 or null}; every node must be given.
  """
  if isinstance(spec, str) and spec in LABEL_TABLES:
    table_nodes, rows = LABEL_TABLES[spec]
    table = {src: dict(zip(table_nodes, row)) for src, row in rows.items()}
  else:
    if isinstance(spec, str):
      path = os.path.expanduser(spec)
      if not os.path.exists(path):
        raise JEDDError(f"label table {spec!r}: not one of {sorted(LABEL_TABLES)} or an existing JSON file")
      with open(path) as f:
        spec = json.load(f)
    table = {str(k): dict(v) for k, v in dict(spec).items()}
  out = {}
  for src, row in table.items():
    missing = [n for n in nodes if n not in row]
    if missing:
      raise JEDDError(f"label table row {src!r} has no value for node(s) {missing}")
    vals = []
    for n in nodes:
      v = row[n]
      if v not in (0, 1, None):
        raise JEDDError(f"label table row {src!r}, node {n!r}: {v!r}; expected 0, 1 or null")
      vals.append(-1 if v is None else int(v))
    out[src] = tuple(vals)
  return out


# ------------------------------------------------------------------ templates and token ids
def pair_templates(h: hierarchy_lib.LabelHierarchy, words: Mapping[str, str] = DRAFT_WORDS):
  """(positive, negative) prompt strings per node: "... altered" / "... unaltered"."""
  pos, neg = [], []
  for name, level in zip(h.nodes, h.levels):
    if level == 0:
      p, n = BINARY_PAIR
    else:
      p, n = (t.format(_word(words, name)) for t in PAIR_TEMPLATES[level])
    pos.append(p)
    neg.append(n)
  return tuple(pos), tuple(neg)


def _word(words, name):
  return words.get(name, name.replace("_", " "))


def joint_templates(h: hierarchy_lib.LabelHierarchy, words: Mapping[str, str] = DRAFT_WORDS) -> tuple[str, ...]:
  """One prompt per legal state (rows of ``h.legal_states``): the draft's joint templates (7)."""
  out = []
  for state in h.legal_states.astype(bool):
    if not state[h.root]:
      out.append(BINARY_PAIR[1])
      continue
    g = [_word(words, n) for n, lv, on in zip(h.nodes, h.levels, state) if on and lv == 1]
    l = [_word(words, n) for n, lv, on in zip(h.nodes, h.levels, state) if on and lv == 2]
    text = BINARY_PAIR[0]
    if g and l:
      text += (f" with the global attribute of {' and '.join(g)} and the local attribute of "
               f"{' and '.join(l)} are altered")
    elif g or l:
      text += f" with the {'global' if g else 'local'} attribute of {' and '.join(g or l)} altered"
    out.append(text)
  return tuple(out)


def _spec_word_ids() -> dict[str, tuple[int, ...]]:
  """Word -> CLIP BPE ids, every one read off the spec's template ids (templates.py)."""
  g = templates_lib._GLOBAL_PREFIX  # pylint: disable=protected-access
  l = templates_lib._LOCAL_PREFIX   # pylint: disable=protected-access
  words = {"a": (g[1],), "photo": (g[2],), "of": (g[3],), "face": (g[5],), "with": (g[6],),
           "the": (g[7],), "global": (g[8],), "local": (l[8],), "attribute": tuple(g[9:11]),
           "altered": (templates_lib._ALTERED,)}  # pylint: disable=protected-access
  for phrase, ids in templates_lib.WORD_IDS.items():
    if " " in phrase:  # "physical inconsistency": 6671 | 512 25683
      first, rest = phrase.split(" ", 1)
      words[first], words[rest] = ids[:1], ids[1:]
    else:
      words[phrase] = ids
  return words


SPEC_WORD_IDS = _spec_word_ids()
_WORD = re.compile(r"^[a-z]+$")


def _words(text: str) -> list[str]:
  return text.lower().split()


def spec_ids(texts: Sequence[str]) -> list[list[int]]:
  """Ids from the spec's known words; raises naming the unknown words."""
  unknown = sorted({w for t in texts for w in _words(t) if w not in SPEC_WORD_IDS})
  if unknown:
    raise templates_lib.TemplateError(
        f"word(s) {unknown} have no id in the spec's list (known: {sorted(SPEC_WORD_IDS)})")
  return [[templates_lib.SOT] + [i for w in _words(t) for i in SPEC_WORD_IDS[w]] + [templates_lib.EOT]
          for t in texts]


def placeholder_word_id(word: str, vocab_size: int = 49408) -> int:
  """The placeholder id of a word: 1 + CRC32(word) mod (vocab_size - 3). NOT a CLIP id."""
  return 1 + zlib.crc32(word.encode("utf-8")) % (vocab_size - 3)


def placeholder_ids(texts: Sequence[str], vocab_size: int = 49408) -> list[list[int]]:
  """Deterministic per-word placeholder ids (for a randomly initialised text tower only).

  Start/end tokens are CLIP's (the end token is the largest id, where CLIP pools);
  distinct words get distinct ids (checked).
  """
  if vocab_size - 1 != templates_lib.EOT:
    raise templates_lib.TemplateError(f"placeholder ids assume CLIP's vocabulary (49408), got {vocab_size}")
  seen: dict[int, str] = {}
  for w in sorted({w for t in texts for w in _words(t)}):
    if not _WORD.match(w):
      raise templates_lib.TemplateError(f"placeholder ids take lower-case words only, got {w!r}")
    i = placeholder_word_id(w, vocab_size)
    if i in seen:
      raise templates_lib.TemplateError(f"placeholder id collision: {w!r} and {seen[i]!r} both map to {i}")
    seen[i] = w
  return [[templates_lib.SOT] + [placeholder_word_id(w, vocab_size) for w in _words(t)] + [templates_lib.EOT]
          for t in texts]


def token_ids(texts: Sequence[str], source: str = "auto", tokenizer=None, *,
              context_length: int = templates_lib.CONTEXT_LENGTH, vocab_size: int = 49408) -> np.ndarray:
  """(K, context_length) int32 ids of ``texts`` from ``source`` (see the module docstring)."""
  if source not in TOKEN_ID_SOURCES:
    raise JEDDError(f"token_ids={source!r}; expected one of {TOKEN_ID_SOURCES}")
  texts = list(texts)
  if source == "placeholder":
    return templates_lib.pad(placeholder_ids(texts, vocab_size), context_length)
  if tokenizer is not None and source in ("auto", "tokenizer"):
    ids = np.asarray(tokenizer(texts), np.int32)
    return templates_lib.repad(ids, context_length)
  help_ = ("give an HF CLIP checkpoint directory with tokenizer files (vocab.json + merges.txt or "
           "tokenizer.json) as config.model.pretrained or config.model.jedd.tokenizer; for a randomly "
           "initialised CLIP (the synthetic twins) config.model.jedd.token_ids='placeholder' uses "
           "placeholder ids instead")
  if source == "tokenizer":
    raise templates_lib.TemplateError(f"token_ids='tokenizer' but no CLIP tokenizer was found: {help_}")
  try:
    return templates_lib.pad(spec_ids(texts), context_length)
  except templates_lib.TemplateError as e:
    raise templates_lib.TemplateError(f"the JEDD prompts need CLIP's tokenizer: {e}. To fix: {help_}") from None


# ------------------------------------------------------------------ the model
class JEDD(nnx.Module):
  """CLIP + prompt pairs (or joint prompts) -> raw scores; ``hierarchy.marginals`` -> probabilities."""

  kind = "jedd"

  def __init__(self, clip: clip_lib.CLIP, hierarchy: JEDDHierarchy, *, similarity: str = "cosine",
               tau: float = 1.0, contrastive: bool = True, freeze_text: bool = False,
               tokenizer=None, token_ids_source: str = "auto", words: Mapping[str, str] = DRAFT_WORDS,
               template_ids: np.ndarray | None = None):
    if not isinstance(hierarchy, JEDDHierarchy):
      hierarchy = graph(hierarchy)
    if similarity not in ("cosine", "dot"):
      raise JEDDError(f"similarity={similarity!r}; expected 'cosine' (the draft) or 'dot'")
    if not tau > 0:
      raise JEDDError(f"tau={tau} must be > 0")
    self.clip = clip
    self.hierarchy = hierarchy
    self.similarity = similarity
    self.tau = float(tau)
    self.contrastive = bool(contrastive) and hierarchy.probability != "joint"
    self.freeze_text = bool(freeze_text)
    self.token_ids_source = token_ids_source
    if hierarchy.probability == "joint":
      texts = joint_templates(hierarchy, words)
    else:
      pos, neg = pair_templates(hierarchy, words)
      texts = pos + (neg if self.contrastive else ())
    ctx = clip.config.context_length
    if template_ids is None:
      ids = token_ids(texts, token_ids_source, tokenizer, context_length=ctx, vocab_size=clip.config.vocab_size)
    else:  # stored ids (an export): must match the prompts in number
      ids = np.asarray(template_ids, np.int32)
      if ids.shape[0] != len(texts):
        raise JEDDError(f"{ids.shape[0]} stored template id rows for {len(texts)} prompts")
      if ids.shape[1] != ctx:
        ids = templates_lib.repad(ids, ctx)
    if ids.max() >= clip.config.vocab_size:
      raise JEDDError(f"template id {ids.max()} >= the CLIP vocabulary size {clip.config.vocab_size}")
    self.texts = tuple(texts)
    self.text_context = templates_lib.longest(ids)
    self.template_ids = tuple(tuple(int(t) for t in row) for row in ids)  # static

  @property
  def num_nodes(self) -> int:
    return self.hierarchy.num_nodes

  @property
  def text_is_trainable(self) -> bool:
    return not self.freeze_text

  def token_ids(self) -> jax.Array:
    return jnp.asarray(np.asarray(self.template_ids, np.int32)[:, :self.text_context])

  def text_embeddings(self) -> jax.Array:
    v = self.clip.encode_text(self.token_ids())
    return jax.lax.stop_gradient(v) if self.freeze_text else v

  def similarities(self, images: jax.Array) -> jax.Array:
    """(B, K) similarity of each image to each prompt, divided by tau, in float32."""
    return clip_lib.joint_similarity(self.clip.encode_image(images), self.text_embeddings(),
                                     self.similarity, self.tau)

  def scores(self, images: jax.Array) -> jax.Array:
    """Raw scores: s - sbar (B, n); s (B, n) without contrastive pairs; state logits (B, M) for joint."""
    sim = self.similarities(images)
    if self.hierarchy.probability == "joint" or not self.contrastive:
      return sim
    n = self.num_nodes
    return sim[:, :n] - sim[:, n:]

  def marginals(self, images: jax.Array) -> jax.Array:
    return self.hierarchy.marginals(self.scores(images))

  def __call__(self, images: jax.Array) -> jax.Array:
    return self.scores(images)


def build(clip: str | clip_lib.CLIPConfig | clip_lib.CLIP = "ViT-B/32", hierarchy: Any = "jedd_draft", *,
          dtype: str | None = None, scan_layers: bool | None = None, rngs: nnx.Rngs | None = None,
          **options) -> JEDD:
  """A JEDD around a freshly initialised CLIP (preset name or config) or a given one."""
  if not isinstance(clip, clip_lib.CLIP):
    clip = clip_lib.build(clip, dtype=dtype, scan_layers=scan_layers, rngs=rngs)
  return JEDD(clip, hierarchy if isinstance(hierarchy, JEDDHierarchy) else graph(hierarchy), **options)


# ------------------------------------------------------------------ from a config
def _options(config) -> Any:
  j = config.model.get("jedd")
  if j is None:
    raise JEDDError("config.detector='jedd' needs config.model.jedd (see configs/jedd_draft.py)")
  return j


def hierarchy_from_config(config) -> JEDDHierarchy:
  j = _options(config)
  return graph(config.hierarchy, levels=int(j.get("levels", 3)), probability=j.get("probability", "sigmoid"))


def model_from_config(config, hierarchy: JEDDHierarchy, seed: int | None = None) -> JEDD:
  """The JEDD of ``config.model`` (detector "jedd"): a local pretrained CLIP or a fresh preset."""
  seed = config.seed if seed is None else seed
  m, j = config.model, _options(config)
  source = j.get("token_ids", "auto")
  opts = dict(similarity=m.similarity, tau=m.cosine_tau if m.similarity == "cosine" else m.tau,
              contrastive=j.get("contrastive", True), freeze_text=m.freeze_text, token_ids_source=source)
  tokenizer = None
  if j.get("tokenizer"):
    tokenizer = templates_lib.ClipTokenizer.from_pretrained(os.path.expanduser(j.tokenizer))
  if m.pretrained:
    if source == "placeholder":
      raise JEDDError("config.model.jedd.token_ids='placeholder' with pretrained weights "
                      f"({m.pretrained}): placeholder ids are not CLIP's and would feed the pretrained text "
                      "tower meaningless tokens; use 'auto' or 'tokenizer' with a CLIP tokenizer")
    from sjedd_jax.backbones.clip.checkpoints import load_pretrained  # pylint: disable=g-import-not-at-top
    clip, tok = load_pretrained(os.path.expanduser(m.pretrained), dtype=m.dtype, scan_layers=m.get("scan_layers"))
    return JEDD(clip, hierarchy, tokenizer=tokenizer or tok, **opts)
  clip = clip_lib.build(m.clip, overrides=m.get("clip_overrides"), dtype=m.dtype, scan_layers=m.get("scan_layers"),
                        rngs=nnx.Rngs(seed))
  return JEDD(clip, hierarchy, tokenizer=tokenizer, **opts)


# ------------------------------------------------------------------ export
def export_meta(m: JEDD) -> dict:
  """What ``load_export`` needs besides the CLIP weights (``jedd.json``)."""
  return {"kind": "jedd", "hierarchy": m.hierarchy.to_dict(), "probability": m.hierarchy.probability,
          "similarity": m.similarity, "tau": m.tau, "contrastive": m.contrastive,
          "freeze_text": m.freeze_text, "texts": list(m.texts), "token_ids_source": m.token_ids_source,
          "template_ids": [list(r) for r in m.template_ids]}


def load_export(path: str, dtype: str | None = None) -> JEDD:
  """The JEDD written by ``export`` (its stored template ids are reused as they are)."""
  from sjedd_jax.backbones.clip.checkpoints import load_pretrained  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors import read_export_meta  # pylint: disable=g-import-not-at-top
  meta = read_export_meta(path, EXPORT_META)
  clip, _ = load_pretrained(path, dtype=dtype)
  h = meta["hierarchy"]
  hier = JEDDHierarchy(h["nodes"], h["levels"], h["edges"], h.get("root_requires_child", False),
                       meta["probability"])
  return JEDD(clip, hier, similarity=meta["similarity"], tau=meta["tau"], contrastive=meta["contrastive"],
              freeze_text=meta["freeze_text"], token_ids_source=meta["token_ids_source"],
              template_ids=np.asarray(meta["template_ids"], np.int32))
