"""LiSiam data pieces: SSIM/DIFF masks, fake-real pairing, make_masks, oracle masks, the two views."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil

import cv2
import numpy as np
import pytest

from sjedd_jax.data import degrade, manifest, masks, preprocess, synthetic
from tests.test_preprocess_data import SIZE, make_ffpp, square_factory

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
  spec = importlib.util.spec_from_file_location("make_masks", os.path.join(REPO, "scripts", "make_masks.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _textured(seed=0, size=48):
  """A smooth random colour image with some texture (SSIM has structure to compare)."""
  rng = np.random.default_rng(seed)
  img = cv2.GaussianBlur(rng.uniform(0, 255, (size, size, 3)).astype(np.float32), (0, 0), 2.0)
  img = (img - img.min()) / (img.max() - img.min()) * 180 + 40
  return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- mask rules

def test_identical_images_give_empty_masks():
  a = _textured()
  for rule in masks.RULES:
    assert not masks.ssim_mask(a, a.copy(), rule).any()
  assert not masks.diff_mask(a, a.copy()).any()
  s = masks.ssim_map(a, a)
  np.testing.assert_allclose(s, 1.0, atol=1e-9)


def test_changed_square_is_found():
  real = _textured(0)
  fake = real.copy()
  fake[12:30, 16:34] = _textured(1)[12:30, 16:34]  # other content in an 18x18 square
  square = np.zeros(real.shape[:2], bool)
  square[12:30, 16:34] = True
  core = np.zeros_like(square)
  core[15:27, 19:31] = True  # away from the 7x7 window's reach across the edge
  far = ~cv2.dilate(square.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)

  m = masks.ssim_mask(fake, real)
  assert m.dtype == np.uint8 and m.shape == real.shape[:2] and set(np.unique(m)) <= {0, 255}
  assert (m[core] == 255).mean() > 0.95 and not m[far].any()
  d = masks.diff_mask(fake, real)
  assert set(np.unique(d)) <= {0, 255} and not d[~square].any() and (d[square] == 255).mean() > 0.5
  # Literal rule: only where SSIM <= 20/255 (anti-correlated or unrelated structure): a subset.
  lit = masks.ssim_mask(fake, real, "literal")
  assert not lit[far].any() and lit.sum() < m.sum()
  assert ((lit > 0) <= (m > 0)).all()
  # A brightness-only shift of a textured square: DIFF sees it, SSIM's structure term barely.
  shifted = real.copy()
  shifted[12:30, 16:34] = np.clip(real[12:30, 16:34].astype(int) + 40, 0, 255)
  assert (masks.diff_mask(shifted, real)[core] == 255).all()
  # Thresholds are parameters.
  assert masks.compute_mask(fake, real, "diff", threshold=1.0).sum() == 0
  assert (masks.compute_mask(fake, real, "ssim", threshold=-1) == 255).all()


def test_mask_rule_errors():
  a = _textured()
  with pytest.raises(masks.CropMismatchError, match="same box"):
    masks.ssim_mask(a, a[:40])
  with pytest.raises(masks.MaskError, match="rule"):
    masks.ssim_mask(a, a, rule="inverse")
  with pytest.raises(masks.MaskError, match="kind"):
    masks.compute_mask(a, a, kind="ssim2")
  with pytest.raises(masks.MaskError, match="uint8 RGB"):
    masks.diff_mask(a.astype(np.float32), a.astype(np.float32))


# ----------------------------------------------------------------------------- pairing (FF++ layout)

@pytest.fixture(scope="module")
def ffpp_crops(tmp_path_factory):
  """The preprocessing job's output on a tiny FF++ tree (square faces at the same place in
  every video, so fake and real crops share boxes): reals 000-002, Deepfakes 000_001 and
  001_000, Face2Face 002_003, frames 0, 2, 5, 7."""
  root = str(tmp_path_factory.mktemp("ffpp"))
  splits = make_ffpp(root)
  tasks, pre = preprocess.ffpp_tasks(root, splits, methods=("Deepfakes", "Face2Face"))
  out = os.path.join(root, "crops")
  preprocess.run(tasks, out, preprocess.PreprocessConfig(num_frames=4, size=SIZE, progress=False),
                 detector_factory=square_factory, skipped=pre)
  return out


def _copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


def test_pairing_follows_ffpp_names(ffpp_crops):
  recs = manifest.read(ffpp_crops)
  pairs, unpaired = masks.pair_fakes(recs)
  assert not unpaired and len(pairs) == sum(r.is_fake for r in recs) == 12
  target = {"Deepfakes/000_001": "real/000", "Deepfakes/001_000": "real/001", "Face2Face/002_003": "real/002"}
  for p in pairs:
    assert p.real.video_id == target[p.fake.video_id] and p.real.frame == p.fake.frame and not p.real.is_fake
    f, r = masks.load_pair(ffpp_crops, p, max_jaw_shift=0.05)  # shared boxes: landmarks agree
    assert f.shape == r.shape == (SIZE, SIZE, 3)
    assert masks.jaw_shift(p, SIZE) < 0.05
  assert masks.target_stems("Deepfakes/000_003") == ("000_003", "000")
  assert masks.target_stems("aug_eye/000") == ("000",)


def test_unpaired_fake_is_named(ffpp_crops):
  recs = manifest.read(ffpp_crops)
  no_frame = [r for r in recs if not (r.video_id == "real/000" and r.frame == 5)]
  with pytest.raises(masks.UnpairedFakeError, match=r"Deepfakes/000_001/0005\.png.*frame 5 of real video 'real/000'"):
    masks.pair_fakes(no_frame)
  pairs, unpaired = masks.pair_fakes(no_frame, skip_unpaired=True)
  assert len(pairs) == 11 and [u[0].path for u in unpaired] == ["Deepfakes/000_001/0005.png"]
  no_video = [r for r in recs if r.video_id != "real/001"]
  with pytest.raises(masks.UnpairedFakeError, match=r"Deepfakes/001_000/0000\.png.*'real/001_000' or 'real/001'"):
    masks.pair_fakes(no_video)
  # Only the asked splits' fakes are paired (real/001 is missing, but its fake is in train).
  pairs, _ = masks.pair_fakes(no_video, splits=["val"])
  assert {p.fake.video_id for p in pairs} == {"Face2Face/002_003"}


def test_crop_mismatch_is_refused(ffpp_crops, tmp_path):
  d = _copy(ffpp_crops, tmp_path / "d")
  pairs, _ = masks.pair_fakes(manifest.read(d))
  p = pairs[0]
  real = cv2.imread(os.path.join(d, p.real.path))
  cv2.imwrite(os.path.join(d, p.real.path), cv2.resize(real, (SIZE + 4, SIZE + 4)))
  with pytest.raises(masks.CropMismatchError, match=f"{p.fake.path}.*{p.real.path}.*same box"):
    masks.load_pair(d, p)
  # A box offset shows in the landmarks (the option refuses it).
  moved = dataclasses.replace(p.fake, landmarks=(np.asarray(p.fake.landmarks) + 3.0).tolist())
  assert masks.jaw_shift(masks.Pair(moved, p.real), SIZE) > 0.1
  with pytest.raises(masks.CropMismatchError, match="max_jaw_shift"):
    masks.load_pair(d, masks.Pair(moved, pairs[1].real), max_jaw_shift=0.05)


# ----------------------------------------------------------------------------- make_masks

def _without_mask_field(recs):
  return [json.dumps({k: v for k, v in json.loads(r.to_json()).items() if k != "forgery_mask"}) for r in recs]


def test_make_masks_resume_and_manifest(ffpp_crops, tmp_path, capsys):
  d = _copy(ffpp_crops, tmp_path / "d")
  before = manifest.read(d)
  script = _script()
  assert script.main(["--data", d, "--no-progress"]) == 0
  assert "12 masks written, 0 already there, 0 unpaired" in capsys.readouterr().out
  after = manifest.read(d)
  assert _without_mask_field(after) == _without_mask_field(before)  # nothing else changed
  for r in after:
    if not r.is_fake:
      assert r.forgery_mask is None
      np.testing.assert_array_equal(masks.record_mask(d, r, (SIZE, SIZE)), 0)
      continue
    assert r.forgery_mask == "masks_ssim/" + r.path
    m = cv2.imread(os.path.join(d, r.forgery_mask), cv2.IMREAD_UNCHANGED)
    assert m.shape == (SIZE, SIZE) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
    assert set(np.unique(masks.record_mask(d, r, (SIZE, SIZE)))) <= {0, 1}
  fake = next(r for r in after if r.is_fake)
  assert (masks.record_mask(d, dataclasses.replace(fake, forgery_mask=None), (SIZE, SIZE)) == 255).all()
  with open(os.path.join(d, "masks_ssim", masks.PARAMS_FILE)) as f:
    assert json.load(f) == {"kind": "ssim", "rule": "dissimilarity", "threshold": 20.0}

  # Second run: nothing new.
  paths = [os.path.join(d, r.forgery_mask) for r in after if r.is_fake]
  mtimes = [os.path.getmtime(p) for p in paths]
  s = masks.run(d, progress=False)
  assert (s.written, s.resumed) == (0, 12)
  assert [os.path.getmtime(p) for p in paths] == mtimes

  # A killed run: one mask truncated, one missing, a stale temp file around: those two are redone.
  with open(paths[0], "rb") as f:
    data = f.read()
  with open(paths[0], "wb") as f:
    f.write(data[: len(data) // 2])
  good = cv2.imread(paths[1], cv2.IMREAD_UNCHANGED)
  os.remove(paths[1])
  with open(paths[2] + ".tmp123.png", "wb") as f:
    f.write(b"partial")
  s = masks.run(d, progress=False)
  assert (s.written, s.resumed) == (2, 10)
  assert masks.is_complete_mask(paths[0], (SIZE, SIZE))
  np.testing.assert_array_equal(cv2.imread(paths[1], cv2.IMREAD_UNCHANGED), good)
  assert manifest.read(d) == after

  # DIFF masks go to their own folder; a folder made with other settings is refused.
  assert script.main(["--data", d, "--kind", "diff", "--no-progress"]) == 0
  assert all(r.forgery_mask.startswith("masks_diff/") for r in manifest.read(d) if r.is_fake)
  capsys.readouterr()
  assert script.main(["--data", d, "--out", os.path.join(d, "masks_ssim"), "--rule", "literal",
                      "--no-progress"]) == 2
  assert "holds masks made with" in capsys.readouterr().err


def test_make_masks_errors(ffpp_crops, tmp_path, capsys):
  script = _script()
  assert script.main(["--data", str(tmp_path / "nothing"), "--no-progress"]) == 2
  assert "not found" in capsys.readouterr().err
  empty = tmp_path / "empty"
  empty.mkdir()
  assert script.main(["--data", str(empty), "--no-progress"]) == 2
  assert "no manifest.jsonl" in capsys.readouterr().err
  d = _copy(ffpp_crops, tmp_path / "d")
  recs = [r for r in manifest.read(d) if not (r.video_id == "real/000" and r.frame == 5)]
  manifest.write(d, recs)
  assert script.main(["--data", d, "--no-progress"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "Deepfakes/000_001/0005.png" in err and "real/000" in err
  assert script.main(["--data", d, "--skip-unpaired", "--no-progress"]) == 0
  assert "11 masks written, 0 already there, 1 unpaired" in capsys.readouterr().out
  fake = next(r for r in manifest.read(d) if r.path == "Deepfakes/000_001/0005.png")
  assert fake.forgery_mask is None
  with open(os.path.join(d, "masks_ssim", masks.UNPAIRED_FILE)) as f:
    assert [json.loads(l)["path"] for l in f] == ["Deepfakes/000_001/0005.png"]


# ----------------------------------------------------------------------------- synthetic oracle

def _digest(d):
  h = hashlib.sha256()
  for name in (manifest.MANIFEST, manifest.METADATA):
    with open(os.path.join(d, name), "rb") as f:
      h.update(f.read())
  for r in manifest.read(d):
    with open(os.path.join(d, r.path), "rb") as f:
      h.update(f.read())
  return h.hexdigest()


def _iou(a, b):
  return (a & b).sum() / max(1, (a | b).sum())


def test_ssim_masks_match_the_synthetic_oracle(tmp_path):
  d = synthetic.generate(str(tmp_path / "world"), seed=0, num_identities=10, expressions_per_identity=2,
                         image_size=64, workers=1, progress=False)
  digest = _digest(d)
  n = synthetic.write_oracle_masks(d, workers=1, progress=False)
  recs = manifest.read(d)
  fakes = [r for r in recs if r.is_fake]
  assert n == len(fakes) == 80
  assert _digest(d) == digest  # images, manifest and dataset.json untouched
  s = masks.run(d, progress=False)  # production pairing + SSIM, dissimilarity rule
  assert (s.written, s.unpaired) == (80, 0)
  iou, lit = {}, {}
  for p in masks.pair_fakes(manifest.read(d))[0]:
    oracle = cv2.imread(os.path.join(d, synthetic.ORACLE_DIR, p.fake.path), cv2.IMREAD_UNCHANGED)
    assert set(np.unique(oracle)) <= {0, 255} and oracle.any()
    ssim = cv2.imread(os.path.join(d, p.fake.forgery_mask), cv2.IMREAD_UNCHANGED)
    iou.setdefault(p.fake.source, []).append(_iou(ssim > 0, oracle > 0))
    literal = masks.mask_for_pair(d, p, rule="literal")
    lit.setdefault(p.fake.source, []).append(_iou(literal > 0, oracle > 0))
  means = {k: float(np.mean(v)) for k, v in iou.items()}
  lit_means = {k: float(np.mean(v)) for k, v in lit.items()}
  print("oracle IoU, dissimilarity:", means, "literal:", lit_means)
  assert np.mean(list(means.values())) >= 0.6 and min(means.values()) >= 0.5, means
  assert max(lit_means.values()) < 0.25, lit_means


# ----------------------------------------------------------------------------- IQD and the two views

def test_iqd_determinism_and_no_mutation():
  img = _textured(3, 64)
  keep = img.copy()
  p = degrade.IQDParams.for_size(64)
  outs = [degrade.degrade(img, np.random.default_rng(s), p) for s in range(12)]
  again = [degrade.degrade(img, np.random.default_rng(s), p) for s in range(12)]
  for a, b in zip(outs, again):
    np.testing.assert_array_equal(a, b)
  assert len({o.tobytes() for o in outs}) > 6
  np.testing.assert_array_equal(img, keep)
  for fn, arg in ((degrade.jpeg, 10), (degrade.gaussian_blur, 0.9), (degrade.resize_down_up, 21)):
    out = fn(img, arg)
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    np.testing.assert_array_equal(img, keep)
  # Blur is per channel: a one-channel image blurs alike.
  one = degrade.gaussian_blur(np.repeat(img[..., :1], 3, -1), 0.7)
  np.testing.assert_array_equal(one[..., 0], one[..., 2])


def test_iqd_sampling_follows_the_release():
  assert degrade.IQDParams.for_size(299) == degrade.IQDParams()
  p = degrade.IQDParams.for_size(64)
  assert p.resize_side == (21, 42)
  rng = np.random.default_rng(0)
  fired = {k: [] for k in degrade.OPS}
  orders = set()
  n = 3000
  for _ in range(n):
    ops = degrade.sample_iqd(rng, p)
    for name, v in ops:
      fired[name].append(v)
    if len(ops) == 3:
      orders.add(tuple(o for o, _ in ops))
  for name, vals in fired.items():
    assert abs(len(vals) / n - 0.5) < 0.04, name
  assert len(orders) == 6
  assert min(fired["jpeg"]) == 10 and max(fired["jpeg"]) == 99
  assert min(fired["resize"]) == 21 and max(fired["resize"]) == 42
  assert 0.1 <= min(fired["blur"]) and max(fired["blur"]) < 1.0
  none = degrade.IQDParams(p_jpeg=0, p_blur=0, p_resize=0)
  img = _textured(4, 32)
  np.testing.assert_array_equal(degrade.degrade(img, rng, none), img)


def _centroid(m):
  ys, xs = np.nonzero(m)
  return np.array([ys.mean(), xs.mean()])


@pytest.mark.parametrize("shuffle", [False, True])
def test_two_views_move_image_and_mask_together(shuffle):
  size = 64
  img = np.full((size, size, 3), 200, np.uint8)
  img[20:28, 8:16] = 250  # the marked block
  mask = np.zeros((size, size), np.uint8)
  mask[20:28, 8:16] = 1
  keep_img, keep_mask = img.copy(), mask.copy()
  params = degrade.ViewParams.for_size(size, p_shuffle=1.0 if shuffle else 0.0,
                                       iqd=degrade.IQDParams(p_jpeg=0, p_blur=0, p_resize=0))
  flips = set()
  for seed in range(16):
    v1, v2, m = degrade.two_views(img, mask, np.random.default_rng(seed), size, params)
    assert v1.shape == v2.shape == (size, size, 3) and m.shape == (size, size) and m.dtype == np.uint8
    np.testing.assert_array_equal(v1, v2)  # no IQD: the views are one geometry
    assert set(np.unique(m)) <= {0, 1, 255}
    marked = v1[..., 0] > 225
    assert np.abs(_centroid(marked) - _centroid(m == 1)).max() < 1.5, seed
    assert _iou(marked, m == 1) > 0.6
    pad, img_pad = m == 255, (v1 == params.pad_value).all(-1)
    if shuffle:  # resized back: bilinear blends the image's pad seams, the mask's stay sharp
      dist = np.abs(v1[..., 0].astype(int) - params.pad_value)
      assert not pad.any() or (dist[pad].mean() < 20 and dist[~pad].mean() > 50)
    else:
      np.testing.assert_array_equal(pad, img_pad)  # the padding is shared
    flips.add(_centroid(m == 1)[1] > size / 2)
  assert flips == {False, True}  # the block went right when flipped
  np.testing.assert_array_equal(img, keep_img)
  np.testing.assert_array_equal(mask, keep_mask)


def test_two_views_padding_iqd_and_errors():
  size = 32
  img = _textured(5, size)
  keep = img.copy()
  shrink = degrade.ViewParams.for_size(size, scale=(0.5, 0.6))
  v1, v2, m = degrade.two_views(img, None, np.random.default_rng(1), size, shrink)
  assert (m == 255).mean() > 0.3 and set(np.unique(m)) == {0, 255}  # real: 0 inside, pad 255
  assert (v1[m == 255] == 128).all()
  grow = degrade.ViewParams.for_size(size, scale=(1.19, 1.2))
  assert not (degrade.two_views(img, None, np.random.default_rng(2), size, grow)[2] == 255).any()
  # Determinism per seed, view 2 = degraded view 1 (same geometry, close pixels).
  params = degrade.ViewParams.for_size(size, iqd=degrade.IQDParams(p_jpeg=1.0, p_blur=0, p_resize=0))
  a = degrade.two_views(img, None, np.random.default_rng(7), size, params)
  b = degrade.two_views(img, None, np.random.default_rng(7), size, params)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[0], a[1]) and np.abs(a[0].astype(int) - a[1]).mean() < 25
  np.testing.assert_array_equal(img, keep)
  # A mask with an ignored part keeps 255.
  ign = np.zeros((size, size), np.uint8)
  ign[:, :8] = 255
  _, _, m = degrade.two_views(img, ign, np.random.default_rng(3), size, degrade.ViewParams.for_size(size, p_flip=0))
  assert (m == 255).any() and (m == 0).any()
  with pytest.raises(ValueError, match="label"):
    degrade.two_views(img, np.full((size, size), 7, np.uint8), np.random.default_rng(0), size)
  with pytest.raises(ValueError, match="differs from the image"):
    degrade.two_views(img, np.zeros((size, size + 1), np.uint8), np.random.default_rng(0), size)
  with pytest.raises(ValueError, match="uint8 RGB"):
    degrade.two_views(img.astype(np.float32), None, np.random.default_rng(0), size)
