"""Sequential-deepfake synthetic world (spec mil_ranking.md section 9): labels, splits, determinism, order cue."""

from __future__ import annotations

import collections
import hashlib
import os
import time

import cv2
import numpy as np
import pytest

from sjedd_jax.data import manifest
from sjedd_jax.data import synthetic
from sjedd_jax.data import synthetic_seq as ss

PARAMS = dict(seed=3, num_identities=8, frames_per_identity=2, image_size=32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("seq") / "world")
  t = time.perf_counter()
  ss.generate(d, workers=1, progress=False, **PARAMS)
  return d, time.perf_counter() - t


def _digest(d):
  h = hashlib.sha256()
  for r in manifest.read(d):
    h.update(r.to_json().encode())
    with open(os.path.join(d, r.path), "rb") as f:
      h.update(f.read())
  for name in sorted(os.listdir(os.path.join(d, "masks"))):
    with np.load(os.path.join(d, "masks", name)) as z:
      for k in sorted(z.files):
        h.update(k.encode() + z[k].tobytes())
  return h.hexdigest()


def test_sequence_types_and_sampling():
  types = ss.sequence_types(0)
  assert len(types) == 27 and len({tuple(t) for t in types}) == 27
  assert collections.Counter(len(t) for t in types) == {1: 5, 2: 10, 3: 6, 4: 3, 5: 3}
  for t in types:
    assert ss.check_sequence(t) == t
  assert ss.sequence_types(0) == types and ss.sequence_types(1) != types
  rng = np.random.default_rng(0)
  draws = [tuple(ss.sample_sequence(rng, types)) for _ in range(20000)]
  counts = collections.Counter(draws)
  assert abs(counts[()] / len(draws) - 0.25) < 0.015
  fake = [counts[tuple(t)] for t in types]
  assert set(counts) == {()} | {tuple(t) for t in types}
  expected = 0.75 * len(draws) / 27
  assert max(abs(c - expected) for c in fake) < 5 * np.sqrt(expected)  # uniform over the 27 types
  exp = ss.expected_all_original(types, 0.25)
  assert exp["fixed_acc"] == pytest.approx(0.6111, abs=1e-4) and exp["adaptive_acc"] == pytest.approx(0.1139, abs=1e-4)
  for bad in ([1, 1], [0, 2], [6], [1, 2, 3, 4, 5, 1]):
    with pytest.raises(ss.SeqWorldError, match="distinct component ids"):
      ss.check_sequence(bad)


def test_layout_labels_and_manifest(world):
  d, seconds = world
  recs = manifest.read(d)
  n, f = PARAMS["num_identities"], PARAMS["frames_per_identity"]
  assert len(recs) == n * f * 4
  meta = manifest.read_metadata(d)
  assert meta["name"] == "synthetic_seq" and meta["components"] == ["nose", "eye", "eyebrow", "lip", "hair"]
  assert meta["num_components"] == 5 and meta["generator"]["complete"]
  assert meta["generator"]["params"]["seed"] == 3 and meta["sequence_types"] == ss.sequence_types(0)
  types = {tuple(t) for t in ss.sequence_types(0)}
  assert sum(not r.sequence for r in recs) == n * f  # exactly one real image per frame: 25 %
  for r in recs:
    assert r.source == ("seq_edit" if r.sequence else "real") and r.is_fake == int(bool(r.sequence))
    assert r.sequence is not None and (not r.sequence or tuple(r.sequence) in types)
    assert 0 <= len(r.sequence) <= 5 and len(set(r.sequence)) == len(r.sequence)
    assert r.video_id == f"{r.source}/{r.identity}" and 0 <= r.frame < f
    assert np.asarray(r.landmarks).shape == (68, 2)
  img = cv2.imread(os.path.join(d, recs[0].path))
  assert img.shape == (32, 32, 3)
  assert seconds < 15, f"generating {len(recs)} images took {seconds:.1f}s"


def test_identity_disjoint_splits(world):
  d, _ = world
  recs = manifest.read(d)
  by_split = {s: {r.identity for r in recs if r.split == s} for s in manifest.SPLITS}
  assert all(by_split.values())
  assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"]
              or by_split["val"] & by_split["test"])
  assert by_split == {s: {synthetic.identity_name(i) for i, x in synthetic.assign_splits(8, 3, (0.7, 0.15, 0.15)).items()
                          if x == s} for s in manifest.SPLITS}


def test_component_masks(world):
  d, _ = world
  cache = {}
  for r in manifest.read(d):
    w = ss.read_component_masks(d, r, cache)
    assert w.shape == (5, 32, 32)
    edited = set(r.sequence)
    for c in range(1, 6):
      if c in edited:
        assert (w[c - 1] >= 0.5).sum() >= 4, (r.path, c)  # every edit keeps a visible region
      else:
        assert not w[c - 1].any()
    assert w.sum(0).max() <= 1.0 + 2 / 255  # final weights of the edits share each pixel
  # The hair band lies above the brows.
  lm = np.asarray(manifest.read(d)[0].landmarks)
  m = ss.component_mask("hair", (lm,), (32, 32), 40.0, 0.0, 0.0)
  ys = np.nonzero(m > 0.5)[0]
  assert len(ys) and ys.mean() < lm[17:27, 1].mean()


def test_deterministic_cached_and_regenerated(world, tmp_path):
  d, _ = world
  # Same parameters, two worker processes: identical bytes.
  d2 = ss.generate(str(tmp_path / "again"), workers=2, progress=False, **PARAMS)
  assert _digest(d) == _digest(d2)
  # ensure_seq_synthetic: generates once under a hashed name, then reuses it.
  e = ss.ensure_seq_synthetic(tmp_path / "cache", workers=1, progress=False, **PARAMS)
  assert os.path.basename(e).startswith("synthetic_seq_") and _digest(e) == _digest(d)
  m0 = os.path.getmtime(os.path.join(e, manifest.MANIFEST))
  assert ss.ensure_seq_synthetic(tmp_path / "cache", workers=1, progress=False, **PARAMS) == e
  assert os.path.getmtime(os.path.join(e, manifest.MANIFEST)) == m0
  # An incomplete world is regenerated (same bytes).
  victim = manifest.read(e)[5].path
  os.remove(os.path.join(e, victim))
  meta = manifest.read_metadata(e)
  manifest.write_metadata(e, dict(meta, generator=dict(meta["generator"], complete=False)))
  assert ss.ensure_seq_synthetic(tmp_path / "cache", workers=1, progress=False, **PARAMS) == e
  assert os.path.exists(os.path.join(e, victim)) and _digest(e) == _digest(d)
  # Another seed: another world.
  d3 = ss.generate(d2, workers=1, progress=False, **dict(PARAMS, seed=4))
  assert manifest.read_metadata(d3)["generator"]["params"]["seed"] == 4 and _digest(d3) != _digest(d)
  with pytest.raises(TypeError, match="unknown seq-synthetic-world parameter"):
    ss.ensure_seq_synthetic(tmp_path, colour=3)
  with pytest.raises(ss.SeqWorldError, match="order_cue"):
    ss.default_params(order_cue="loudness")


def _order_accuracy(order_cue: str, identities=(0, 1, 2), size: int = 64) -> tuple[float, int]:
  """Pairwise order accuracy of the per-region residual std over all multi-edit types, a few faces."""
  types = [t for t in ss.sequence_types(0) if len(t) >= 2]
  correct = total = 0
  for i in identities:
    p = synthetic._identity(11, i)  # pylint: disable=protected-access
    rng = np.random.default_rng([11, i])
    bg = synthetic.sample_background(rng, size)
    e, pose = synthetic.sample_expression(rng), synthetic.sample_pose(rng)
    pose["dy"] += ss.FRAME_DY
    clean, lm = synthetic.render(p, e, pose, bg, size)
    frame = clean + synthetic._camera_noise(rng, clean.shape, 0.02)  # pylint: disable=protected-access
    for t in types:
      img, _, w = ss.edit_sequence(np.random.default_rng([11, i, len(t), *t]), p, e, pose, bg, size, frame, lm, t,
                                   order_cue=order_cue)
      s = ss.region_noise_std(synthetic._to_uint8(img), w)  # pylint: disable=protected-access
      a, b = ss.order_pairs(t, s if order_cue == "regeneration" else -s)
      correct, total = correct + a, total + b
  return correct / total, total


def test_noise_order_cue():
  # Regeneration: the earliest edit keeps the most noise (the weakest trace); the strength control
  # reverses that. Full world (test split, 1245 pairs): 0.986 / 0.971; here ~180 pairs each.
  acc, pairs = _order_accuracy("regeneration")
  assert pairs >= 150 and acc >= 0.93, (acc, pairs)
  acc_s, _ = _order_accuracy("strength")
  assert acc_s >= 0.9, acc_s
  # Every image gets the same number of noise passes: a real image's region is noisier than any edit.
  p = synthetic._identity(11, 0)  # pylint: disable=protected-access
  rng = np.random.default_rng(0)
  bg = synthetic.sample_background(rng, 64)
  e, pose = synthetic.sample_expression(rng, neutral=True), synthetic.sample_pose(rng)
  clean, lm = synthetic.render(p, e, pose, bg, 64)
  frame = clean + synthetic._camera_noise(rng, clean.shape, 0.02)  # pylint: disable=protected-access
  real, real_lm, w0 = ss.edit_sequence(np.random.default_rng(1), p, e, pose, bg, 64, frame, lm, [])
  assert not w0.any() and np.array_equal(real_lm, lm)
  fake, _, w = ss.edit_sequence(np.random.default_rng(1), p, e, pose, bg, 64, frame, lm, [1, 2, 3, 4, 5])
  s_real = ss.region_noise_std(synthetic._to_uint8(real), w)  # pylint: disable=protected-access
  s_fake = ss.region_noise_std(synthetic._to_uint8(fake), w)  # pylint: disable=protected-access
  assert np.all(s_fake < s_real), (s_fake, s_real)
