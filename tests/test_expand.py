"""Dataset expansion (spec section 7): nearest sources, masks, blending, colour transfer, resume."""

import hashlib
import importlib.util
import os
import shutil

import cv2
import numpy as np
import pytest

from sjedd_jax.detectors.sjedd import labels as labels_lib
from sjedd_jax.detectors import sjedd as sjedd_det
from sjedd_jax.data import expand
from sjedd_jax.data import manifest
from sjedd_jax.data import regions as regions_lib
from sjedd_jax.data import synthetic

SIZE = 64
ROOT = os.path.join(os.path.dirname(__file__), "..")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("expand") / "world")
  return synthetic.generate(d, seed=5, num_identities=12, expressions_per_identity=3, image_size=SIZE,
                            workers=1, progress=False)


@pytest.fixture(scope="module")
def expanded(world, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("expand") / "out")
  recs = expand.expand(world, out, seed=0, workers=1, progress=False)
  return out, recs


def _digest(d):
  h = hashlib.sha256()
  for r in manifest.read(d):
    h.update(r.to_json().encode())
    with open(os.path.join(d, r.path), "rb") as f:
      h.update(f.read())
  return h.hexdigest()


def test_nearest_sources_matches_brute_force():
  rng = np.random.default_rng(0)
  cand = rng.normal(size=(60, 136)).astype(np.float32)
  cand_ids = [frozenset({f"id{rng.integers(8)}"}) for _ in range(60)]
  tgt = rng.normal(size=(15, 136)).astype(np.float32)
  tgt_ids = [frozenset({f"id{rng.integers(8)}"}) for _ in range(15)]
  got = expand.nearest_sources(tgt, tgt_ids, cand, cand_ids, num=3)
  for t in range(15):
    d = np.linalg.norm(cand - tgt[t], axis=1)
    ok = [c for c in np.argsort(d, kind="stable") if not (cand_ids[c] & tgt_ids[t])][:3]
    np.testing.assert_array_equal(got[t], ok)
    assert all(not (cand_ids[c] & tgt_ids[t]) for c in got[t])


def test_identities_of_swap_videos():
  r = manifest.Record(path="x.png", source="Deepfakes", is_fake=1, video_id="Deepfakes/000_003", split="train",
                      identity="000")
  assert expand.identities_of(r) == {"000", "003"}
  r = manifest.Record(path="x.png", source="real", is_fake=0, video_id="real/000", split="train", identity="000")
  assert expand.identities_of(r) == {"000"}


def test_plan_sources_are_nearest_other_identity(world):
  recs = manifest.read(world)
  jobs = expand.plan(recs, world, seed=0, image_size=SIZE)
  for j in jobs[::5]:
    t = j["target"]
    cands = [r for r in recs if r.split == t.split and r.source in ("real", "Deepfakes", "FaceSwap")
             and not (expand.identities_of(r) & expand.identities_of(t))]
    d = [np.linalg.norm((np.asarray(c.landmarks) - np.asarray(t.landmarks)) / SIZE) for c in cands]
    assert t.source == "real" and j["source"].split == t.split
    assert not expand.identities_of(j["source"]) & expand.identities_of(t)
    mine = np.linalg.norm((np.asarray(j["source"].landmarks) - np.asarray(t.landmarks)) / SIZE)
    rank = j["index"] // sum(r.source == "real" and r.split == t.split for r in recs)  # pass number
    assert abs(mine - sorted(d)[rank]) < 1e-5


def test_region_masks_in_place():
  recs_lm = synthetic.canonical_landmarks(synthetic.sample_identity(np.random.default_rng(0)),
                                          synthetic.sample_expression(np.random.default_rng(1)))
  lm = (recs_lm - recs_lm.min(0)) / (recs_lm.max(0) - recs_lm.min(0)) * 80 + 24
  shape = (128, 128)
  scale = regions_lib.face_size(lm)
  for region in ("eye", "eyebrow", "lip_mouth", "nose", "skin"):
    soft = regions_lib.region_mask(lm, shape, region)
    hard = regions_lib.region_mask(lm, shape, region, dilate=0.0, blur=0.0)
    dil = regions_lib.DEFAULT_DILATE[region]
    near = regions_lib.region_mask(lm, shape, region, dilate=dil + 3 * regions_lib.DEFAULT_BLUR, blur=0.0)
    assert soft.min() >= 0 and soft.max() <= 1 and hard.sum() > 0
    assert (soft * near).sum() / soft.sum() > 0.99, region  # (almost) all mass near the hull
    assert (soft * hard).sum() / hard.sum() > 0.6, region  # the hull itself is mostly covered
    for g in regions_lib.REGIONS[region]:
      c = np.round(lm[list(g)].mean(0)).astype(int)
      assert soft[c[1], c[0]] > 0.5, (region, g)
  # Regions stay apart: the nose mask is small on the eye centres.
  nose = regions_lib.region_mask(lm, shape, "nose")
  for g in (regions_lib.EYE_L, regions_lib.EYE_R):
    c = np.round(lm[list(g)].mean(0)).astype(int)
    assert nose[c[1], c[0]] < 0.1


def test_reinhard_matches_target_stats():
  rng = np.random.default_rng(0)
  src = np.clip(rng.normal(0.3, 0.08, (40, 40, 3)), 0, 1).astype(np.float32)
  tgt = np.clip(rng.normal(0.6, 0.05, (40, 40, 3)) + np.array([0.1, 0, -0.1]), 0, 1).astype(np.float32)
  mask = np.zeros((40, 40), np.float32)
  mask[5:30, 8:35] = 1.0
  mask = cv2.GaussianBlur(mask, (0, 0), 2)
  out = expand.reinhard_lab(src, tgt, mask)
  t_lab = cv2.cvtColor(tgt, cv2.COLOR_RGB2Lab)
  for a, b in zip(expand.weighted_stats(out, mask), expand.weighted_stats(t_lab, mask)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-2)
  rgb = expand.reinhard_transfer(src, tgt, mask)
  np.testing.assert_allclose(expand.weighted_stats(rgb, mask)[0], expand.weighted_stats(tgt, mask)[0], atol=0.01)


def test_blend_changes_only_masked_region(world):
  recs = manifest.read(world)
  real = [r for r in recs if r.source == "real"]
  t, s = real[0], next(r for r in real if r.identity != real[0].identity)
  ti = cv2.cvtColor(cv2.imread(os.path.join(world, t.path)), cv2.COLOR_BGR2RGB)
  si = cv2.cvtColor(cv2.imread(os.path.join(world, s.path)), cv2.COLOR_BGR2RGB)
  for region in ("eye", "lip_mouth", "nose"):
    out, lm, mask = expand.blend_region(ti, np.asarray(t.landmarks), si, np.asarray(s.landmarks), region)
    assert out.dtype == np.uint8 and out.shape == ti.shape
    np.testing.assert_array_equal(out[mask <= 0], ti[mask <= 0])
    changed = np.abs(out.astype(int) - ti.astype(int)).max(-1) > 0
    assert changed.any() and not changed[mask <= 0].any()
    hull = regions_lib.region_mask(t.landmarks, ti.shape[:2], region, dilate=0.0, blur=0.0) > 0.5
    assert changed[hull].mean() > 0.5, region
    idx = expand.region_indices(region)
    keep = [i for i in range(68) if i not in idx]
    np.testing.assert_allclose(lm[keep], np.asarray(t.landmarks, np.float32)[keep])
  # A source of another size is resized first.
  big = cv2.resize(si, (2 * SIZE, 2 * SIZE))
  out, _, _ = expand.blend_region(ti, np.asarray(t.landmarks), big, np.asarray(s.landmarks) * 2, "nose")
  assert out.shape == ti.shape


def test_counts_labels_and_layout(world, expanded):
  out, recs = expanded
  orig = manifest.read(world)
  for split in manifest.SPLITS:
    per_method = sum(r.source == "Deepfakes" and r.split == split for r in orig)
    for aug in labels_lib.AUG_SOURCES:
      got = [r for r in recs if r.source == aug and r.split == split]
      assert len(got) == per_method, (aug, split)
  assert len(recs) == len(orig) + 3 * sum(r.source == "Deepfakes" for r in orig)
  for r in recs:
    assert os.path.exists(os.path.join(out, r.path))
    y, mask = sjedd_det.record_label(r)
    if r.source in labels_lib.AUG_SOURCES:
      ref = labels_lib.ffpp_label(r.source)
      np.testing.assert_array_equal(y, ref[0])
      np.testing.assert_array_equal(mask, ref[1])
      assert r.is_fake == 1 and r.method == "expansion" and len(r.landmarks) == 68
  meta = manifest.read_metadata(out)
  assert meta["expansion"]["complete"] and meta["generator"]["params"]["seed"] == 5


def test_resume_and_determinism(world, expanded, tmp_path):
  out, _ = expanded
  full = _digest(out)
  m0 = os.path.getmtime(os.path.join(out, manifest.MANIFEST))
  expand.expand(world, out, seed=0, workers=1, progress=False)  # finished: adds nothing
  assert os.path.getmtime(os.path.join(out, manifest.MANIFEST)) == m0 and _digest(out) == full
  # A killed run: half the new records never reached the manifest, one listed image is gone,
  # one image was written but not listed, and the run was not marked complete.
  part = str(tmp_path / "part")
  shutil.copytree(out, part)
  recs = manifest.read(part)
  aug = [r for r in recs if r.source in labels_lib.AUG_SOURCES]
  kept = [r for r in recs if r.source not in labels_lib.AUG_SOURCES] + aug[: len(aug) // 2]
  os.remove(os.path.join(part, aug[0].path))
  manifest.write(part, kept)
  meta = manifest.read_metadata(part)
  meta["expansion"]["complete"] = False
  manifest.write_metadata(part, meta)
  expand.expand(world, part, seed=0, workers=2, progress=False)
  assert _digest(part) == full
  # Another seed picks other targets: another dataset.
  other = expand.expand(world, str(tmp_path / "seed1"), seed=1, workers=1, progress=False)
  assert [r.path for r in other] != [r.path for r in manifest.read(out)]
  # Other settings on an expanded directory are refused.
  with pytest.raises(expand.ExpansionError, match="other settings"):
    expand.expand(world, out, seed=1, workers=1, progress=False)


def test_xray_mode_binary_labels(world, tmp_path):
  recs = expand.expand(world, str(tmp_path / "xray"), mode="xray", per_region=12, workers=1, progress=False)
  xr = [r for r in recs if r.source == expand.XRAY_SOURCE]
  assert len(xr) == 3 * 12 and not any(r.source in labels_lib.AUG_SOURCES for r in recs)
  for r in xr:
    y, mask = sjedd_det.record_label(r)
    assert y[0] == 1 and mask[0] == 1 and mask[1:].sum() == 0 and r.method == "xray"
  # Face X-ray sources are real faces only.
  jobs = expand.plan(manifest.read(world), world, mode="xray", per_region=12, image_size=SIZE)
  assert {j["source"].source for j in jobs} == {"real"}


def test_errors_name_the_file(world, tmp_path):
  bad = str(tmp_path / "bad")
  shutil.copytree(world, bad)
  recs = manifest.read(bad)
  recs[0].landmarks = None
  manifest.write(bad, recs)
  with pytest.raises(expand.ExpansionError, match=recs[0].path):
    expand.expand(bad, workers=1, progress=False)
  recs = manifest.read(world)
  manifest.write(bad, recs)
  target = next(r for r in recs if r.source == "real")
  with open(os.path.join(bad, target.path), "wb") as f:
    f.write(b"not a png")
  with pytest.raises(expand.ExpansionError, match="cannot read image"):
    expand.expand(bad, workers=1, progress=False)


def test_script(world, tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("expand_dataset", os.path.join(ROOT, "scripts", "expand_dataset.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  out = str(tmp_path / "cli")
  args = ["--data", world, "--out", out, "--per_region", "9", "--workers", "1"]
  assert script.main(args) == 0
  assert "aug_nose 9" in capsys.readouterr().out
  assert script.main(["--data", str(tmp_path / "nothing")]) == 2
  assert "no manifest.jsonl" in capsys.readouterr().err
