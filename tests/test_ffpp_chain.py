"""The real-data chain on an FF++-shaped tree of small synthetic videos (with a corrupt file):
preprocess_ffpp's job -> expand_dataset's expansion -> Table I labels."""

import os

import numpy as np

import test_preprocess_data as tp
from sjedd_jax.detectors.sjedd import labels
from sjedd_jax.detectors import sjedd as sjedd_det
from sjedd_jax.data import expand, faces, manifest, preprocess, synthetic


def _face_shape():
  """A plausible iBUG-68 layout (from the synthetic face model), normalised to [0, 1]."""
  rng = np.random.default_rng(0)
  lm = synthetic.canonical_landmarks(synthetic.sample_identity(rng), synthetic.sample_expression(rng, neutral=True))
  lm = np.asarray(lm, np.float32)[:, :2]
  return (lm - lm.min(0)) / (lm.max(0) - lm.min(0))


SHAPE = _face_shape()


def face_detector(frame):
  """The bright square is the face; its landmarks are a face layout fitted into it."""
  face = tp.square_detector(frame)
  if face is None:
    return None
  x0, y0, x1, y1 = face.box
  lm = np.asarray([x0, y0]) + SHAPE * np.asarray([x1 - x0, y1 - y0])
  return faces.Face(box=face.box, landmarks=lm.astype(np.float32))


def test_preprocess_then_expand(tmp_path):
  root = str(tmp_path / "ffpp")
  os.makedirs(root)
  splits = tp.make_ffpp(root)
  tasks, pre = preprocess.ffpp_tasks(root, splits, methods=("Deepfakes", "Face2Face"))
  crops = str(tmp_path / "crops")
  summary = preprocess.run(tasks, crops, tp.CFG, detector_factory=lambda: face_detector, skipped=pre)
  assert summary.failed == {"VideoError": 1}          # the corrupt Deepfakes/003_002.mp4
  originals = manifest.read(crops)
  out = str(tmp_path / "expanded")
  expand.expand(crops, out, seed=0, splits=["train"], progress=False, workers=0)
  recs = manifest.read(out)
  made = [r for r in recs if r.source in labels.AUG_SOURCES]
  assert made and len(recs) == len(originals) + len(made)
  assert {r.source for r in made} == set(labels.AUG_SOURCES)
  for r in made:
    assert r.is_fake == 1 and os.path.exists(os.path.join(out, r.path))
    y, mask = sjedd_det.record_label(r)
    ref_y, ref_mask = labels.ffpp_label(r.source)
    np.testing.assert_array_equal(y, ref_y)
    np.testing.assert_array_equal(mask, ref_mask)
  # Targets are real training faces (val has a single identity, so nothing to swap there).
  real_ids = {r.identity for r in originals if r.source == "real" and r.split == "train"}
  assert {r.split for r in made} == {"train"}
  assert {r.identity for r in made} <= real_ids
  # Resumable: a second run adds nothing.
  expand.expand(crops, out, seed=0, splits=["train"], progress=False, workers=0)
  assert len(manifest.read(out)) == len(recs)
