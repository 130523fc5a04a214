"""Label hierarchy: legal states and marginals against brute force."""

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from sjedd_jax.detectors.sjedd import hierarchy as H


def brute_force_states(nodes, edges, root, root_requires_child=False):
  """Independent enumeration with plain Python sets."""
  parents = {n: {p for p, c in edges if c == n} for n in nodes}
  children = {n: {c for p, c in edges if p == n} for n in nodes}
  out = []
  for bits in itertools.product((0, 1), repeat=len(nodes)):
    on = {n for n, b in zip(nodes, bits) if b}
    ok = True
    for n in on:
      if n != root and not (parents[n] & on):
        ok = False
      needs = children[n] and (n != root or root_requires_child)
      if needs and not (children[n] & on):
        ok = False
    if ok:
      out.append(bits)
  return np.array(out, np.float64)


def brute_force_marginals(scores, states):
  scores = np.asarray(scores, np.float64)
  logits = scores @ states.T
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return p @ states, np.log(p)


def test_ffpp_state_counts():
  assert H.ffpp().num_states == 251
  assert H.ffpp(root_requires_child=True).num_states == 250
  bf = brute_force_states(H.FFPP_NODES, H.FFPP_EDGES, "face")
  assert len(bf) == 251
  assert len(brute_force_states(H.FFPP_NODES, H.FFPP_EDGES, "face", True)) == 250
  # Same set of states.
  assert {tuple(r) for r in H.ffpp().legal_states.astype(int)} == {tuple(r) for r in bf.astype(int)}
  s = H.ffpp().legal_states
  assert (s.sum(1) == 0).any()  # real is legal
  face_only = np.zeros(10); face_only[0] = 1
  assert (s == face_only).all(1).any()
  assert not (H.ffpp(True).legal_states == face_only).all(1).any()


@pytest.mark.parametrize("root_requires_child", [False, True])
def test_marginals_and_log_joint_match_brute_force(root_requires_child):
  h = H.ffpp(root_requires_child)
  states = brute_force_states(H.FFPP_NODES, H.FFPP_EDGES, "face", root_requires_child)
  # Align state order with the library's.
  order = {tuple(r): i for i, r in enumerate(states.astype(int))}
  perm = [order[tuple(r)] for r in h.legal_states.astype(int)]
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(7, 10)) * 3
  m_bf, logp_bf = brute_force_marginals(scores, states)
  m = np.asarray(jax.jit(h.marginals)(jnp.asarray(scores, jnp.float32)))
  np.testing.assert_allclose(m, m_bf, atol=2e-6)
  logp = np.asarray(h.log_joint(jnp.asarray(scores, jnp.float32)))
  np.testing.assert_allclose(logp, logp_bf[:, perm], atol=1e-4)
  np.testing.assert_allclose(np.exp(logp).sum(-1), 1.0, atol=1e-5)


def test_random_graph_matches_brute_force():
  rng = np.random.default_rng(1)
  nodes = ["r", "g1", "g2", "l1", "l2", "l3"]
  levels = {"r": 0, "g1": 1, "g2": 1, "l1": 2, "l2": 2, "l3": 2}
  edges = {"r": ["g1", "g2"], "g1": ["l1", "l2"], "g2": ["l2", "l3"]}
  h = H.LabelHierarchy(nodes, levels, edges)
  states = brute_force_states(nodes, [(p, c) for p, cs in edges.items() for c in cs], "r")
  assert h.num_states == len(states)
  scores = rng.normal(size=(5, 6)) * 2
  m_bf, _ = brute_force_marginals(scores, states)
  np.testing.assert_allclose(np.asarray(h.marginals(jnp.asarray(scores, jnp.float32))), m_bf, atol=2e-6)


def test_single_node_marginal_is_sigmoid():
  h = H.LabelHierarchy(["face"], [0], [])
  assert h.num_states == 2
  f = jnp.linspace(-20, 20, 41)[:, None]
  np.testing.assert_allclose(np.asarray(h.marginals(f))[:, 0], np.asarray(jax.nn.sigmoid(f[:, 0])), atol=1e-6)


def test_float32_stability_large_scores():
  h = H.ffpp()
  rng = np.random.default_rng(2)
  scores = jnp.asarray(rng.uniform(-1e4, 1e4, size=(64, 10)), jnp.float32)
  scores = scores.at[0].set(1e4).at[1].set(-1e4)
  m = np.asarray(h.marginals(scores))
  lj = np.asarray(h.log_joint(scores))
  assert np.isfinite(m).all() and np.isfinite(lj).all()
  assert (m >= 0).all() and (m <= 1).all()
  g = jax.grad(lambda s: h.marginals(s).sum())(scores)
  assert np.isfinite(np.asarray(g)).all()
  # All scores very negative: the real state dominates.
  np.testing.assert_allclose(np.asarray(h.marginals(-1e4 * jnp.ones((1, 10)))), 0.0, atol=1e-6)


def test_gradients_check_grads():
  h = H.ffpp()
  scores = jnp.asarray(np.random.default_rng(3).normal(size=(3, 10)), jnp.float32)
  check_grads(h.marginals, (scores,), order=1, modes=("fwd", "rev"), atol=5e-2, rtol=5e-2, eps=1e-2)
  check_grads(lambda s: h.log_joint(s)[:, :5], (scores,), order=1, modes=("fwd", "rev"),
              atol=5e-2, rtol=5e-2, eps=1e-2)
  # vmap works like batching.
  np.testing.assert_allclose(np.asarray(jax.vmap(h.marginals)(scores)), np.asarray(h.marginals(scores)),
                             atol=1e-6)


def test_from_dict_and_json(tmp_path):
  h = H.ffpp()
  p = tmp_path / "g.json"
  p.write_text(json.dumps(h.to_dict()))
  h2 = H.LabelHierarchy.from_json(p)
  np.testing.assert_array_equal(h2.legal_states, h.legal_states)
  assert H.get(str(p)).num_states == 251
  assert H.get("ffpp250").num_states == 250
  # FFSC-like: root + 5 globals + 6 locals; a mapping of edges and level names.
  ffsc = {
      "nodes": ["face", "age", "expression", "gender", "identity", "pose",
                "eye", "eyebrow", "lip", "mouth", "nose", "skin"],
      "levels": {"face": "primary", "age": 1, "expression": 1, "gender": 1, "identity": 1,
                 "pose": 1, "eye": 2, "eyebrow": 2, "lip": 2, "mouth": 2, "nose": 2, "skin": 2},
      "edges": {"face": ["age", "expression", "gender", "identity", "pose"],
                "expression": ["lip", "mouth"], "identity": ["eye", "nose", "skin", "eyebrow"],
                "age": ["skin"], "gender": ["eyebrow", "skin"], "pose": ["nose"]},
  }
  hf = H.get(ffsc)
  assert hf.num_nodes == 12 and hf.num_states > 12


@pytest.mark.parametrize("kwargs,match", [
    (dict(nodes=["a", "b", "c"], levels=[0, 1, 1], edges=[("a", "b"), ("b", "c"), ("c", "b")]), "cycle"),
    (dict(nodes=["a", "b"], levels=[0, 1], edges=[("a", "z")]), "unknown node 'z'"),
    (dict(nodes=["a", "b"], levels={"a": 0}, edges=[("a", "b")]), r"\['b'\] have no level"),
    (dict(nodes=["a", "b"], levels=[0], edges=[("a", "b")]), "every node needs a level"),
    (dict(nodes=["a", "b"], levels=[0, 0], edges=[("a", "b")]), "exactly one node"),
    (dict(nodes=["a", "b"], levels=[0, 1], edges=[]), "no parent"),
    (dict(nodes=["a", "b", "c"], levels=[0, 2, 1], edges=[("a", "b"), ("b", "c")]), "deeper level"),
    (dict(nodes=["a", "b"], levels=[0, 7], edges=[("a", "b")]), "level 7"),
])
def test_bad_graphs(kwargs, match):
  with pytest.raises(H.HierarchyError, match=match):
    H.LabelHierarchy(**kwargs)


def test_bad_json(tmp_path):
  p = tmp_path / "bad.json"
  p.write_text("{not json")
  with pytest.raises(H.HierarchyError, match="bad.json"):
    H.LabelHierarchy.from_json(p)
  p.write_text(json.dumps({"nodes": ["a"], "levels": [0]}))
  with pytest.raises(H.HierarchyError, match="edges"):
    H.LabelHierarchy.from_json(p)
