"""Label hierarchies: legal states, joint distribution and marginals (spec sections 1-2).

A hierarchy is data: node names, a level per node (0 primary, 1 global, 2 local)
and parent -> child edges. From it we enumerate the (M, n) 0/1 matrix ``S`` of
legal states once, in numpy. At call time everything is two matrix products and
a logsumexp:

    log P(y | f) = f . y - logsumexp_y'(f . y')         (Eqs. 1-2)
    P(y_k = 1)   = softmax(F S^T) S                      (Eq. 3)

Example::

    h = sjedd_jax.detectors.sjedd.hierarchy.ffpp()          # 251 legal states
    m = h.marginals(scores)                 # (B, 10) in [0, 1]
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LEVEL_NAMES = ("primary", "global", "local")

# Spec section 1: the FF++ (expanded) graph, in the spec's node order.
FFPP_NODES = (
    "face", "expression", "identity", "physical_inconsistency",
    "eye", "eyebrow", "lip", "mouth", "nose", "skin",
)
FFPP_LEVELS = (0, 1, 1, 1, 2, 2, 2, 2, 2, 2)
FFPP_EDGES = (
    ("face", "expression"), ("face", "identity"), ("face", "physical_inconsistency"),
    ("expression", "lip"), ("expression", "mouth"),
    ("identity", "eye"), ("identity", "eyebrow"), ("identity", "lip"),
    ("identity", "mouth"), ("identity", "nose"), ("identity", "skin"),
    ("physical_inconsistency", "eye"), ("physical_inconsistency", "lip"),
    ("physical_inconsistency", "mouth"), ("physical_inconsistency", "nose"),
)

# Enumerating 2^n candidate states is cheap up to this many nodes.
_MAX_NODES = 22


class HierarchyError(ValueError):
  """A label graph that cannot be used."""


def _normalise_edges(edges: Any) -> list[tuple[str, str]]:
  """Accepts [(parent, child), ...] or {parent: [children]}."""
  if isinstance(edges, Mapping):
    out = []
    for parent, children in edges.items():
      if isinstance(children, str):
        children = [children]
      out.extend((parent, c) for c in children)
    return out
  out = []
  for e in edges:
    if len(e) != 2:
      raise HierarchyError(f"edge {e!r} must be a (parent, child) pair")
    out.append((e[0], e[1]))
  return out


def _normalise_levels(nodes: Sequence[str], levels: Any) -> list[int]:
  """Accepts a list aligned with ``nodes`` or a {node: level} mapping."""
  if isinstance(levels, Mapping):
    unknown = sorted(set(levels) - set(nodes))
    if unknown:
      raise HierarchyError(f"levels name unknown node(s) {unknown}; nodes are {list(nodes)}")
    missing = [n for n in nodes if n not in levels]
    if missing:
      raise HierarchyError(f"node(s) {missing} have no level (0 primary, 1 global, 2 local)")
    levels = [levels[n] for n in nodes]
  levels = list(levels)
  if len(levels) != len(nodes):
    raise HierarchyError(
        f"got {len(levels)} levels for {len(nodes)} nodes; every node needs a level "
        "(0 primary, 1 global, 2 local)")
  out = []
  for n, lv in zip(nodes, levels):
    if isinstance(lv, str):
      if lv not in LEVEL_NAMES:
        raise HierarchyError(f"node {n!r} has level {lv!r}; expected one of {LEVEL_NAMES} or 0/1/2")
      lv = LEVEL_NAMES.index(lv)
    if lv is None or int(lv) != lv or not 0 <= int(lv) < len(LEVEL_NAMES):
      raise HierarchyError(f"node {n!r} has level {lv!r}; expected 0 (primary), 1 (global) or 2 (local)")
    out.append(int(lv))
  return out


@dataclasses.dataclass(frozen=True, eq=False)
class LabelHierarchy:
  """A label hierarchy with its legal states.

  Args:
    nodes: node names, in score order.
    levels: level per node (list aligned with ``nodes`` or a {name: level} map);
      0 primary (exactly one node, the root), 1 global, 2 local. Names
      "primary"/"global"/"local" are accepted too.
    edges: parent -> child edges, as pairs or a {parent: [children]} map.
    root_requires_child: apply spec rule 2 to the root too (the 250-state FF++
      variant). The release leaves it off ("face only" is legal).
  """

  nodes: tuple[str, ...]
  levels: tuple[int, ...]
  edges: tuple[tuple[str, str], ...]
  root_requires_child: bool = False

  def __init__(self, nodes, levels, edges, root_requires_child: bool = False):
    nodes = tuple(str(n) for n in nodes)
    if not nodes:
      raise HierarchyError("a hierarchy needs at least one node")
    dup = sorted({n for n in nodes if nodes.count(n) > 1})
    if dup:
      raise HierarchyError(f"duplicate node name(s) {dup}")
    if len(nodes) > _MAX_NODES:
      raise HierarchyError(f"{len(nodes)} nodes; at most {_MAX_NODES} are supported")
    levels = tuple(_normalise_levels(nodes, levels))
    edges = tuple(_normalise_edges(edges))
    for p, c in edges:
      for name in (p, c):
        if name not in nodes:
          raise HierarchyError(f"edge ({p!r} -> {c!r}) names unknown node {name!r}; nodes are {list(nodes)}")
      if p == c:
        raise HierarchyError(f"edge ({p!r} -> {c!r}) is a self-loop (a cycle)")
    roots = [n for n, lv in zip(nodes, levels) if lv == 0]
    if len(roots) != 1:
      raise HierarchyError(f"exactly one node must have level 0 (the primary root); got {roots}")
    object.__setattr__(self, "nodes", nodes)
    object.__setattr__(self, "levels", levels)
    object.__setattr__(self, "edges", edges)
    object.__setattr__(self, "root_requires_child", bool(root_requires_child))
    self._check_acyclic()
    idx = {n: i for i, n in enumerate(nodes)}
    root = idx[roots[0]]
    for p, c in edges:
      if idx[c] == root:
        raise HierarchyError(f"edge ({p!r} -> {c!r}) points into the root {roots[0]!r}")
    for p, c in edges:
      if levels[idx[c]] <= levels[idx[p]]:
        raise HierarchyError(
            f"edge ({p!r} -> {c!r}) goes from level {levels[idx[p]]} to level {levels[idx[c]]}; "
            "edges must point to a deeper level (primary -> global -> local)")
    orphans = [n for n in nodes if idx[n] != root and not any(c == n for _, c in edges)]
    if orphans:
      raise HierarchyError(f"non-root node(s) {orphans} have no parent, so they could never be active")
    states = self._enumerate(idx, root)
    if not (states[:, root] == 1).any():
      raise HierarchyError("the graph has no legal fake state (no legal state with the root active)")
    object.__setattr__(self, "root", root)
    object.__setattr__(self, "_states", states)

  # ----------------------------------------------------------------- building
  def _check_acyclic(self) -> None:
    children: dict[str, list[str]] = {n: [] for n in self.nodes}
    for p, c in self.edges:
      children[p].append(c)
    state = {n: 0 for n in self.nodes}  # 0 new, 1 on stack, 2 done

    def visit(n, path):
      state[n] = 1
      for c in children[n]:
        if state[c] == 1:
          cyc = path[path.index(c):] + [c]
          raise HierarchyError(f"the graph has a cycle: {' -> '.join(cyc)}")
        if state[c] == 0:
          visit(c, path + [c])
      state[n] = 2

    for n in self.nodes:
      if state[n] == 0:
        visit(n, [n])

  def _enumerate(self, idx: Mapping[str, int], root: int) -> np.ndarray:
    n = len(self.nodes)
    parent_m = np.zeros((n, n), np.int32)  # parent_m[c, p] = 1 if p -> c
    for p, c in self.edges:
      parent_m[idx[c], idx[p]] = 1
    child_m = parent_m.T  # child_m[p, c]
    cand = np.array(list(itertools.product((0, 1), repeat=n)), np.int32)  # (2^n, n)
    has_parent = (cand @ parent_m.T) > 0  # [s, k]: some parent of k is active
    has_child = (cand @ child_m.T) > 0    # [s, k]: some child of k is active
    non_root = np.arange(n) != root
    is_leaf = child_m.sum(1) == 0
    rule1 = ~(cand.astype(bool) & non_root & ~has_parent).any(1)
    needs_child = ~is_leaf & (non_root | self.root_requires_child)
    rule2 = ~(cand.astype(bool) & needs_child & ~has_child).any(1)
    return cand[rule1 & rule2].astype(np.float32)

  # --------------------------------------------------------------- properties
  @property
  def num_nodes(self) -> int:
    return len(self.nodes)

  @property
  def num_levels(self) -> int:
    return max(self.levels) + 1

  @property
  def legal_states(self) -> np.ndarray:
    """(M, n) 0/1 matrix of the legal states (a copy)."""
    return self._states.copy()

  @property
  def num_states(self) -> int:
    return self._states.shape[0]

  def level_matrix(self) -> np.ndarray:
    """(n, T) one-hot matrix mapping node -> level, T = 3 (primary, global, local)."""
    m = np.zeros((self.num_nodes, len(LEVEL_NAMES)), np.float32)
    m[np.arange(self.num_nodes), self.levels] = 1.0
    return m

  def index(self, name: str) -> int:
    try:
      return self.nodes.index(name)
    except ValueError:
      raise KeyError(f"unknown node {name!r}; nodes are {list(self.nodes)}") from None

  def children(self, name: str) -> list[str]:
    return [c for p, c in self.edges if p == name]

  # ------------------------------------------------------------------ maths
  def log_joint(self, scores: jax.Array) -> jax.Array:
    """Normalised log P(y) for every legal state y: (..., n) -> (..., M)."""
    s = jnp.asarray(self._states)
    logits = jnp.matmul(scores, s.T.astype(scores.dtype), precision=jax.lax.Precision.HIGHEST)
    return jax.nn.log_softmax(logits, axis=-1)

  def marginals(self, scores: jax.Array) -> jax.Array:
    """P(y_k = 1) for every node: (..., n) -> (..., n), in [0, 1]."""
    s = jnp.asarray(self._states).astype(scores.dtype)
    logits = jnp.matmul(scores, s.T, precision=jax.lax.Precision.HIGHEST)
    probs = jax.nn.softmax(logits, axis=-1)
    return jnp.clip(jnp.matmul(probs, s, precision=jax.lax.Precision.HIGHEST), 0.0, 1.0)

  # --------------------------------------------------------------- (de)serialise
  def to_dict(self) -> dict:
    return {
        "nodes": list(self.nodes),
        "levels": list(self.levels),
        "edges": [list(e) for e in self.edges],
        "root_requires_child": self.root_requires_child,
    }

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "LabelHierarchy":
    """From a mapping (a JSON object or an ml_collections ConfigDict)."""
    d = dict(d)
    for key in ("nodes", "levels", "edges"):
      if key not in d:
        raise HierarchyError(f"hierarchy description lacks the field {key!r}; it needs nodes, levels and edges")
    unknown = sorted(set(d) - {"nodes", "levels", "edges", "root_requires_child", "name"})
    if unknown:
      raise HierarchyError(f"hierarchy description has unknown field(s) {unknown}")
    levels = d["levels"]
    if hasattr(levels, "to_dict"):
      levels = levels.to_dict()
    edges = d["edges"]
    if hasattr(edges, "to_dict"):
      edges = edges.to_dict()
    return cls(d["nodes"], levels, edges, bool(d.get("root_requires_child", False)))

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> "LabelHierarchy":
    try:
      with open(path) as f:
        d = json.load(f)
    except json.JSONDecodeError as e:
      raise HierarchyError(f"{path}: not valid JSON ({e})") from e
    try:
      return cls.from_dict(d)
    except HierarchyError as e:
      raise HierarchyError(f"{path}: {e}") from e

  def __repr__(self) -> str:
    return (f"LabelHierarchy({self.num_nodes} nodes, {len(self.edges)} edges, "
            f"{self.num_states} legal states)")


def ffpp(root_requires_child: bool = False) -> LabelHierarchy:
  """The FF++ graph of spec section 1: 251 legal states (250 with root_requires_child)."""
  return LabelHierarchy(FFPP_NODES, FFPP_LEVELS, FFPP_EDGES, root_requires_child)


def get(spec: Any) -> LabelHierarchy:
  """Resolves a hierarchy from a name ("ffpp", "ffpp250"), a JSON path, or a dict/ConfigDict."""
  if isinstance(spec, LabelHierarchy):
    return spec
  if isinstance(spec, str):
    if spec == "ffpp":
      return ffpp()
    if spec == "ffpp250":
      return ffpp(root_requires_child=True)
    if os.path.exists(spec):
      return LabelHierarchy.from_json(spec)
    raise HierarchyError(f"unknown hierarchy {spec!r}: not 'ffpp', 'ffpp250' or an existing JSON file")
  if hasattr(spec, "to_dict"):
    spec = spec.to_dict()
  return LabelHierarchy.from_dict(spec)
