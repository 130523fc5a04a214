"""Synthetic face-forgery world: layout, labels, splits, determinism, reuse, speed."""

import hashlib
import os
import time

import cv2
import numpy as np
import pytest

from sjedd_jax.detectors.sjedd import labels as labels_lib
from sjedd_jax.detectors import sjedd as sjedd_det
from sjedd_jax.data import manifest
from sjedd_jax.data import regions as regions_lib
from sjedd_jax.data import synthetic

PARAMS = dict(seed=3, num_identities=12, expressions_per_identity=3, image_size=48)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("synth") / "world")
  t = time.perf_counter()
  synthetic.generate(d, workers=1, progress=False, **PARAMS)
  return d, time.perf_counter() - t


def _digest(d):
  h = hashlib.sha256()
  for r in manifest.read(d):
    h.update(r.to_json().encode())
    with open(os.path.join(d, r.path), "rb") as f:
      h.update(f.read())
  return h.hexdigest()


def test_layout_and_counts(world):
  d, seconds = world
  recs = manifest.read(d)
  meta = manifest.read_metadata(d)
  n, e = PARAMS["num_identities"], PARAMS["expressions_per_identity"]
  assert len(recs) == 5 * n * e
  assert meta["generator"]["complete"] and meta["image_size"] == 48 and meta["hierarchy"] == "ffpp"
  assert meta["generator"]["params"]["seed"] == 3
  for s in ("real",) + synthetic.FORGERY_SOURCES:
    assert sum(r.source == s for r in recs) == n * e
  for r in recs[::7]:
    img = cv2.imread(os.path.join(d, r.path))
    assert img.shape == (48, 48, 3)
    lm = np.asarray(r.landmarks)
    assert lm.shape == (68, 2) and lm.min() > -2 and lm.max() < 50
  assert seconds < 30, f"generation of {len(recs)} images took {seconds:.1f}s"


def test_landmark_layout_is_ibug(world):
  d, _ = world
  for r in manifest.read(d)[:20]:
    lm = np.asarray(r.landmarks)
    assert lm[8, 1] > lm[57, 1] > lm[33, 1] > lm[30, 1] > lm[27, 1] > lm[19, 1]  # chin, mouth, nose, brow
    assert lm[36:42, 0].mean() < lm[27, 0] < lm[42:48, 0].mean()  # image-left eye first
    assert lm[0, 0] < lm[8, 0] < lm[16, 0] and lm[48, 0] < lm[54, 0]


def test_labels_follow_table_i(world):
  d, _ = world
  for r in manifest.read(d):
    y, mask = sjedd_det.record_label(r)
    y_ref, m_ref = labels_lib.ffpp_label(r.source)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(mask, m_ref)
    assert r.is_fake == int(r.source != "real")
    assert r.method == synthetic.METHOD_OF.get(r.source)


def test_identity_disjoint_splits(world):
  d, _ = world
  recs = manifest.read(d)
  by_split = {s: {r.identity for r in recs if r.split == s} for s in manifest.SPLITS}
  assert all(by_split.values())
  assert not (by_split["train"] & by_split["val"]) and not (by_split["train"] & by_split["test"])
  assert not (by_split["val"] & by_split["test"])
  for r in recs:
    if r.source in labels_lib.SWAP_SOURCES:
      target, source = r.video_id.split("/")[-1].split("_")
      assert target == r.identity and source != target and source in by_split[r.split]


def test_forgery_changes_only_its_region(world):
  d, _ = world
  recs = manifest.read(d)
  real = {(r.identity, r.frame): r for r in recs if r.source == "real"}
  for fam in synthetic.FORGERY_SOURCES:
    inside, outside = [], []
    for r in [x for x in recs if x.source == fam][:6]:
      a = cv2.imread(os.path.join(d, r.path)).astype(np.float32)
      b = cv2.imread(os.path.join(d, real[(r.identity, r.frame)].path)).astype(np.float32)
      region = synthetic.FAMILIES[fam]["region"]
      lm = np.asarray(real[(r.identity, r.frame)].landmarks)
      m = regions_lib.region_mask(lm, (48, 48), region, dilate=0.0, blur=0.0) > 0.5
      far = regions_lib.region_mask(lm, (48, 48), region, dilate=0.2, blur=0.0) == 0
      diff = np.abs(a - b).mean(-1)
      inside.append(diff[m].mean())
      outside.append(diff[far].mean())
    # Outside the region only the independent per-image post-noise differs (~1-2 levels).
    assert np.mean(outside) < 3.0, (fam, outside)
    assert np.mean(inside) > 2 * np.mean(outside) + 2, (fam, inside, outside)


def test_deterministic_and_reused(world, tmp_path):
  d, _ = world
  # Same parameters, two worker processes: identical bytes.
  d2 = synthetic.generate(str(tmp_path / "again"), workers=2, progress=False, **PARAMS)
  assert _digest(d) == _digest(d2)
  # A complete world with the same parameters is reused, not rewritten.
  m0 = os.path.getmtime(os.path.join(d2, manifest.MANIFEST))
  t = time.perf_counter()
  synthetic.generate(d2, workers=1, progress=False, **PARAMS)
  assert time.perf_counter() - t < 2.0
  assert os.path.getmtime(os.path.join(d2, manifest.MANIFEST)) == m0
  # Another seed: another world (same parameters otherwise), regenerated in place.
  d3 = synthetic.generate(d2, workers=1, progress=False, **dict(PARAMS, seed=4))
  assert manifest.read_metadata(d3)["generator"]["params"]["seed"] == 4
  assert _digest(d3) != _digest(d)


def test_no_trivial_mean_colour_cue(world):
  d, _ = world
  recs = manifest.read(d)
  real = np.array([cv2.imread(os.path.join(d, r.path)).mean((0, 1)) for r in recs if r.source == "real"])
  fake = np.array([cv2.imread(os.path.join(d, r.path)).mean((0, 1)) for r in recs if r.source != "real"])
  # Mean colours of real and fake images overlap: the gap of the means is small against the spread.
  assert np.all(np.abs(real.mean(0) - fake.mean(0)) < 0.25 * real.std(0))


def test_filters_and_cross_manipulation(world):
  d, _ = world
  recs = manifest.read(d)
  swaps = synthetic.filter_records(recs, methods=["identity_swap"], include_real=False)
  assert {r.source for r in swaps} == {"Deepfakes", "FaceSwap"}
  train, test = synthetic.cross_manipulation(recs, train_sources=["Deepfakes"])
  assert {r.source for r in train} == {"real", "Deepfakes"} and {r.split for r in train} == {"train"}
  assert {r.source for r in test} == {"real", "FaceSwap", "Face2Face", "NeuralTextures"}
  assert {r.split for r in test} == {"test"}
  with pytest.raises(ValueError, match="not in the dataset"):
    synthetic.cross_manipulation(recs, train_sources=["Nope"])


def test_ensure_synthetic_expands_once(tmp_path):
  params = dict(seed=1, num_identities=8, expressions_per_identity=2, image_size=32)
  d = synthetic.ensure_synthetic(tmp_path, workers=1, progress=False, **params)
  recs = manifest.read(d)
  counts = {s: sum(r.source == s for r in recs) for s in labels_lib.SOURCES}
  assert all(counts[s] == 16 for s in labels_lib.SOURCES), counts
  m0 = os.path.getmtime(os.path.join(d, manifest.MANIFEST))
  assert synthetic.ensure_synthetic(tmp_path, workers=1, progress=False, **params) == d
  assert os.path.getmtime(os.path.join(d, manifest.MANIFEST)) == m0
  with pytest.raises(TypeError, match="unknown synthetic-world parameter"):
    synthetic.ensure_synthetic(tmp_path, colour=3)
