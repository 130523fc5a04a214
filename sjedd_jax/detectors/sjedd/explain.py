"""Textual explanations from node marginals (spec section 8, paper Sec. IV-E / Fig. 6).

Marginals above the threshold (0.5) name the altered global face attributes (level 1)
and manipulated local face regions (level 2), joined into the paper's template:

    "The face image is fake because the global face attribute of expression is
     altered, through manipulation of the local lip and mouth regions."

Other cases, worded in the same style:
  * real (primary marginal <= threshold): "The face image is real."
  * several attributes: "... the global face attributes of expression and identity
    are altered, ..." (lists are "a", "a and b", "a, b and c"; node order);
  * globals only: "The face image is fake because the global face attribute of
    identity is altered."
  * locals only: "The face image is fake because of manipulation of the local nose
    region."
  * nothing above threshold: "The face image is fake, but no altered face attribute or
    region is identified with confidence (most probable: the global face attribute of
    identity, 42%)." (the parenthesis is left out when no node reaches 1%).
Underscores in node names become spaces ("physical_inconsistency" ->
"physical inconsistency"). Any ``LabelHierarchy`` works: its levels say which nodes
are attributes and which are regions.

Example::

    h = sjedd_jax.detectors.sjedd.hierarchy.ffpp()
    explain(marginals[0], h)             # one face, (n,) marginals
    explain_batch(marginals, h)          # (B, n) -> B strings
    explain_structured(marginals[0], h)  # dict with probabilities and the text
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence
from typing import Any

import numpy as np

from sjedd_jax.detectors.sjedd import hierarchy as hierarchy_lib

__all__ = ["explain", "explain_structured", "explain_batch", "plot_marginals", "readable"]

_GLOBAL, _LOCAL = 1, 2
_MIN_MENTION = 0.01  # below this, the "most probable" node is not worth naming


def readable(name: str) -> str:
  """Node name as prose: underscores to spaces."""
  return " ".join(str(name).replace("_", " ").split())


def _join(words: Sequence[str]) -> str:
  words = list(words)
  if len(words) <= 1:
    return "".join(words)
  return ", ".join(words[:-1]) + " and " + words[-1]


def _globals_phrase(names: Sequence[str]) -> str:
  if len(names) == 1:
    return f"the global face attribute of {names[0]} is altered"
  return f"the global face attributes of {_join(names)} are altered"


def _locals_phrase(names: Sequence[str]) -> str:
  return f"the local {_join(names)} region{'s' if len(names) > 1 else ''}"


def _check(marginals: Any, h: hierarchy_lib.LabelHierarchy) -> np.ndarray:
  m = np.asarray(marginals, np.float64)
  if m.shape != (h.num_nodes,):
    raise ValueError(
        f"marginals must have shape ({h.num_nodes},), one per node {list(h.nodes)}, got {m.shape}; "
        "use explain_batch for (B, n)")
  if not np.isfinite(m).all():
    raise ValueError(f"marginals contain NaN/inf: {m.tolist()}")
  if m.min() < -1e-6 or m.max() > 1 + 1e-6:
    raise ValueError(
        f"marginals must be probabilities in [0, 1], got [{m.min():g}, {m.max():g}]; "
        "pass hierarchy.marginals(scores), not raw scores")
  return np.clip(m, 0.0, 1.0)


def explain_structured(marginals: Any, hierarchy: Any, threshold: float = 0.5,
                       subject: str = "face image") -> dict[str, Any]:
  """The explanation of one face as data.

  Args:
    marginals: (n,) node marginals P(y_k = 1) in the hierarchy's node order.
    hierarchy: a ``LabelHierarchy`` or anything ``hierarchy.get`` resolves ("ffpp").
    threshold: a node is altered when its marginal is strictly above this.
    subject: what the sentence is about ("The {subject} is fake ...").
  Returns:
    {"p_fake", "fake", "threshold", "globals", "locals", "most_probable", "text"}:
    ``globals``/``locals`` list {"node", "name", "p"} for the altered attributes and
    regions in node order (empty for a real face); ``most_probable`` is the likeliest
    non-primary node when a fake face has no altered node, else None.
  """
  h = hierarchy_lib.get(hierarchy)
  m = _check(marginals, h)
  p_fake = float(m[h.root])
  fake = p_fake > threshold

  def entries(level):
    return [{"node": n, "name": readable(n), "p": float(m[k])}
            for k, (n, lv) in enumerate(zip(h.nodes, h.levels)) if lv == level and m[k] > threshold]

  glob = entries(_GLOBAL) if fake else []
  loc = entries(_LOCAL) if fake else []
  most_probable = None
  subj = f"The {subject}"
  if not fake:
    text = f"{subj} is real."
  elif glob and loc:
    text = (f"{subj} is fake because {_globals_phrase([g['name'] for g in glob])}, "
            f"through manipulation of {_locals_phrase([l['name'] for l in loc])}.")
  elif glob:
    text = f"{subj} is fake because {_globals_phrase([g['name'] for g in glob])}."
  elif loc:
    text = f"{subj} is fake because of manipulation of {_locals_phrase([l['name'] for l in loc])}."
  else:
    others = [k for k in range(h.num_nodes) if k != h.root]
    text = f"{subj} is fake."
    if others:
      text = f"{subj} is fake, but no altered face attribute or region is identified with confidence."
      k = max(others, key=lambda i: (m[i], -i))
      if m[k] >= _MIN_MENTION:
        name = readable(h.nodes[k])
        what = (f"the global face attribute of {name}" if h.levels[k] == _GLOBAL
                else f"the local {name} region")
        most_probable = {"node": h.nodes[k], "name": name, "p": float(m[k])}
        text = text[:-1] + f" (most probable: {what}, {m[k]:.0%})."
  return {"p_fake": p_fake, "fake": bool(fake), "threshold": float(threshold), "globals": glob,
          "locals": loc, "most_probable": most_probable, "text": text}


def explain(marginals: Any, hierarchy: Any, threshold: float = 0.5) -> str:
  """One sentence explaining one face from its (n,) node marginals.

  >>> import numpy as np; from sjedd_jax.detectors.sjedd import hierarchy
  >>> m = np.array([.99, .97, .02, .1, .01, .01, .9, .95, .02, .03])
  >>> explain(m, hierarchy.ffpp())
  'The face image is fake because the global face attribute of expression is altered, through manipulation of the local lip and mouth regions.'
  """
  return explain_structured(marginals, hierarchy, threshold)["text"]


def explain_batch(marginals: Any, hierarchy: Any, threshold: float = 0.5) -> list[str]:
  """``explain`` for every row of (B, n) marginals."""
  h = hierarchy_lib.get(hierarchy)
  m = np.asarray(marginals)
  if m.ndim != 2:
    raise ValueError(f"explain_batch needs (B, {h.num_nodes}) marginals, got shape {m.shape}")
  return [explain(row, h, threshold) for row in m]


_LEVEL_COLOURS = ("#c0392b", "#2e86c1", "#27ae60")  # primary, global, local


def plot_marginals(marginals: Any, hierarchy: Any, path: str | os.PathLike, threshold: float = 0.5,
                   titles: Sequence[str] | None = None) -> str:
  """Bar chart of node marginals, one panel per face, coloured by level, to a PNG.

  ``marginals`` is (n,) or (B, n). Each panel is titled with ``titles[i]`` or, by
  default, the face's explanation. A dashed line marks the threshold.
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.patches import Patch

  h = hierarchy_lib.get(hierarchy)
  m = np.asarray(marginals, np.float64)
  if m.ndim == 1:
    m = m[None]
  if m.ndim != 2 or m.shape[1] != h.num_nodes:
    raise ValueError(f"marginals must be ({h.num_nodes},) or (B, {h.num_nodes}), got {np.shape(marginals)}")
  if titles is not None and len(titles) != m.shape[0]:
    raise ValueError(f"got {len(titles)} titles for {m.shape[0]} faces")
  b = m.shape[0]
  fig = Figure(figsize=(max(6, 0.6 * h.num_nodes + 1), 3.2 * b + 0.6), dpi=100)
  FigureCanvasAgg(fig)
  colours = [_LEVEL_COLOURS[lv] for lv in h.levels]
  x = np.arange(h.num_nodes)
  for i in range(b):
    ax = fig.add_subplot(b, 1, i + 1)
    ax.bar(x, m[i], color=colours)
    ax.axhline(threshold, color="0.3", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("P(altered)")
    ax.set_xticks(x)
    ax.set_xticklabels([readable(n) for n in h.nodes], rotation=30, ha="right", fontsize="small")
    title = titles[i] if titles is not None else explain(m[i], h, threshold)
    ax.set_title("\n".join(textwrap.wrap(title, 90)), fontsize="small")
  fig.legend(handles=[Patch(color=c, label=n) for c, n in zip(_LEVEL_COLOURS, hierarchy_lib.LEVEL_NAMES)],
             loc="lower center", ncol=len(_LEVEL_COLOURS), fontsize="small", frameon=False)
  fig.tight_layout(rect=(0, 0.35 / fig.get_figheight(), 1, 1))
  d = os.path.dirname(os.fspath(path))
  if d:
    os.makedirs(d, exist_ok=True)
  fig.savefig(path, format="png")
  return os.fspath(path)
