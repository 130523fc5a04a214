"""dlib face detection + 68 landmarks + crop on a real photograph (skimage's astronaut),
crop geometry, and one local-region swap between two real faces."""

import cv2
import numpy as np
import pytest
import skimage.data

from sjedd_jax.data import faces

# Pupil centres of skimage.data.astronaut() (512x512), read off the image by eye.
RIGHT_EYE_XY = (203, 101)  # subject's right = image left
LEFT_EYE_XY = (246, 104)


@pytest.fixture(scope="module")
def detector():
  return faces.DlibDetector(upsample=0)


@pytest.fixture(scope="module")
def astronaut():
  return skimage.data.astronaut()


@pytest.fixture(scope="module")
def face(detector, astronaut):
  f = detector(astronaut)
  assert f is not None
  return f


def test_dlib_landmarks_land_on_the_face(face):
  lm = face.landmarks
  assert lm.shape == (68, 2) and lm.dtype == np.float32
  x0, y0, x1, y1 = face.box
  assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200  # the face, not the flag or the suit
  # Eye, brow, nose and mouth points inside the tight box (the jaw may reach its edge).
  inner = lm[17:]
  assert (inner[:, 0] > x0).all() and (inner[:, 0] < x1).all()
  assert (inner[:, 1] > y0 - 5).all() and (inner[:, 1] < y1).all()
  right_eye, left_eye = lm[faces.RIGHT_EYE].mean(0), lm[faces.LEFT_EYE].mean(0)
  assert np.linalg.norm(right_eye - RIGHT_EYE_XY) < 6
  assert np.linalg.norm(left_eye - LEFT_EYE_XY) < 6
  brows = lm[17:27, 1].mean()
  nose_tip, mouth, chin = lm[33, 1], lm[faces.MOUTH, 1].mean(), lm[8, 1]
  assert brows < right_eye[1] < nose_tip < mouth < chin
  assert right_eye[0] < lm[30, 0] < left_eye[0]


def test_no_face_gives_none(detector):
  assert detector(np.full((120, 120, 3), 127, np.uint8)) is None
  with pytest.raises(ValueError, match="uint8"):
    detector(np.zeros((10, 10), np.float32))


def test_crop_geometry(astronaut, face):
  crop, lm = faces.crop_face(astronaut, face, scale=1.3, size=317)
  assert crop.shape == (317, 317, 3) and crop.dtype == np.uint8
  x0, y0, side = faces.enlarged_box(face.box, 1.3)
  assert side == round(1.3 * max(face.box[2] - face.box[0], face.box[3] - face.box[1]))
  np.testing.assert_allclose(lm, (face.landmarks - [x0, y0]) * 317 / side, atol=1e-4)
  # The crop shows what the landmarks point at: compare a patch around the right eye.
  native, lm_native = faces.crop_face(astronaut, face, scale=1.3, size=None)
  assert native.shape == (side, side, 3)
  ex, ey = lm_native[faces.RIGHT_EYE].mean(0).round().astype(int)
  fx, fy = face.landmarks[faces.RIGHT_EYE].mean(0).round().astype(int)
  np.testing.assert_array_equal(native[ey - 3:ey + 4, ex - 3:ex + 4], astronaut[fy - 3:fy + 4, fx - 3:fx + 4])


def test_crop_pads_at_borders():
  img = np.full((50, 60, 3), 200, np.uint8)
  f = faces.Face(box=(0.0, 0.0, 20.0, 20.0), landmarks=np.full((68, 2), 10, np.float32))
  crop, lm = faces.crop_face(img, f, scale=2.0, size=None)
  assert crop.shape == (40, 40, 3)
  assert (crop[:10, :10] == 0).all() and (crop[10:, 10:] == 200).all()  # padded top-left
  np.testing.assert_allclose(lm, 20.0)  # the face centre stays in the middle


def _swap_region(target, target_lm, source, source_lm, idx, sigma=3.0):
  """Aligns ``source`` onto ``target`` by the landmarks (similarity transform), then
  blends the dilated, blurred convex hull of landmarks ``idx`` linearly."""
  m, _ = cv2.estimateAffinePartial2D(source_lm, target_lm)
  moved = source_lm @ m[:, :2].T + m[:, 2]
  assert np.abs(moved[idx] - target_lm[idx]).mean() < 3  # the two faces' eyes line up
  h, w = target.shape[:2]
  warped = cv2.warpAffine(source, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
  mask = np.zeros((h, w), np.float32)
  cv2.fillConvexPoly(mask, cv2.convexHull(target_lm[idx].astype(np.int32)), 1.0)
  mask = cv2.dilate(mask, np.ones((7, 7), np.uint8))
  mask = cv2.GaussianBlur(mask, (0, 0), sigma)[..., None]
  out = mask * warped.astype(np.float32) + (1 - mask) * target.astype(np.float32)
  return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask[..., 0]


def test_region_swap_between_two_real_faces(detector, astronaut, face):
  """Detection, landmarks, cropping and one eye-region swap on real faces.

  The source face is the astronaut mirrored and re-lit, detected independently.
  """
  target, t_lm = faces.crop_face(astronaut, face, 1.3, 160)
  mirrored = np.ascontiguousarray(astronaut[:, ::-1])
  mirrored = np.clip(mirrored.astype(np.int32) * [0.8, 0.9, 1.1], 0, 255).astype(np.uint8)
  s_face = detector(mirrored)
  assert s_face is not None
  np.testing.assert_allclose(s_face.landmarks[faces.RIGHT_EYE].mean(0)[0], 511 - LEFT_EYE_XY[0], atol=6)
  source, s_lm = faces.crop_face(mirrored, s_face, 1.3, 160)
  # dlib numbers points by image side, so index k of both faces is the same image-side part.
  eyes = list(faces.RIGHT_EYE) + list(faces.LEFT_EYE)
  out, mask = _swap_region(target, t_lm, source, s_lm, eyes)
  assert out.shape == target.shape and out.dtype == np.uint8
  changed = np.abs(out.astype(int) - target.astype(int)).sum(-1) > 8
  eye_box = np.zeros_like(changed)
  (x0, y0), (x1, y1) = t_lm[eyes].min(0).astype(int) - 8, t_lm[eyes].max(0).astype(int) + 8
  eye_box[y0:y1, x0:x1] = True
  assert changed[eye_box].mean() > 0.2       # the eyes were replaced ...
  assert not changed[~eye_box].any()         # ... and nothing else
  mouth_y = int(t_lm[faces.MOUTH, 1].mean())
  assert mask[mouth_y].max() < 1e-3


def test_detection_on_a_shrunk_copy_keeps_full_resolution_landmarks(astronaut, face):
  big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
  f = faces.DlibDetector(upsample=0, max_side=512)(big)
  assert f is not None
  assert np.abs(f.landmarks / 2 - face.landmarks).mean() < 1.5


def test_expansion_blend_on_real_faces(detector, astronaut, face):
  """The expansion's own region blend (``expand.blend_region``) on dlib's real landmarks."""
  expand = pytest.importorskip("sjedd_jax.data.expand")
  target, t_lm = faces.crop_face(astronaut, face, 1.3, 160)
  mirrored = np.ascontiguousarray(astronaut[:, ::-1])
  s_face = detector(mirrored)
  source, s_lm = faces.crop_face(mirrored, s_face, 1.3, 200)
  for region, idx in (("eye", list(faces.RIGHT_EYE) + list(faces.LEFT_EYE)), ("nose", list(faces.NOSE))):
    out, lm, mask = expand.blend_region(target, t_lm, source, s_lm, region)
    assert out.shape == target.shape and out.dtype == np.uint8 and lm.shape == (68, 2)
    inside = mask > 0.5
    (x0, y0), (x1, y1) = t_lm[idx].min(0) - 15, t_lm[idx].max(0) + 15
    ys, xs = np.nonzero(inside)
    assert inside.any() and xs.min() > x0 and xs.max() < x1 and ys.min() > y0 and ys.max() < y1
    assert np.abs(out.astype(int) - target.astype(int))[inside].mean() > 1  # something moved in
    np.testing.assert_array_equal(out[mask == 0], target[mask == 0])
