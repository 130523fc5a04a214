"""Face detection, 68 landmarks (dlib) and the 1.3x face crop (spec section 7).

A *detector* is any callable ``frame -> Face | None`` taking an (H, W, 3) uint8
RGB image; it returns the largest face (tight box and 68 iBUG/dlib landmarks in
frame pixels) or None. ``DlibDetector`` is the default (dlib's HOG frontal face
detector plus the 68-point shape predictor shipped by ``face-recognition-models``);
tests and other detectors plug in through the same signature.

    det = DlibDetector()
    face = det(frame)                       # Face(box=(x0, y0, x1, y1), landmarks=(68, 2))
    crop, lm = crop_face(frame, face, scale=1.3, size=317)
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from collections.abc import Callable

import cv2
import numpy as np

# iBUG 300-W / dlib 68-point index ranges (subject's right = image left).
JAW = range(0, 17)
RIGHT_BROW = range(17, 22)
LEFT_BROW = range(22, 27)
NOSE = range(27, 36)
RIGHT_EYE = range(36, 42)
LEFT_EYE = range(42, 48)
MOUTH = range(48, 68)
NUM_LANDMARKS = 68

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
PREDICTOR_ENV = "SJEDD_DLIB_PREDICTOR"


@dataclasses.dataclass
class Face:
  box: tuple[float, float, float, float]  # tight box x0, y0, x1, y1 (x1, y1 exclusive)
  landmarks: np.ndarray                   # (68, 2) float32, x then y, frame pixels

  @property
  def area(self) -> float:
    x0, y0, x1, y1 = self.box
    return max(0.0, x1 - x0) * max(0.0, y1 - y0)


Detector = Callable[[np.ndarray], "Face | None"]


def predictor_path() -> str:
  """Path of dlib's 68-landmark model: ``$SJEDD_DLIB_PREDICTOR`` or face-recognition-models'.

  face-recognition-models' own ``pose_predictor_model_location()`` needs the removed
  ``pkg_resources``; this locates the same file without importing the package.
  """
  env = os.environ.get(PREDICTOR_ENV)
  if env:
    if not os.path.exists(env):
      raise FileNotFoundError(f"${PREDICTOR_ENV}={env!r} does not exist")
    return env
  spec = importlib.util.find_spec("face_recognition_models")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        f"dlib's {PREDICTOR_FILE} not found: `pip install face-recognition-models` "
        f"or set ${PREDICTOR_ENV} to the file")
  path = os.path.join(list(spec.submodule_search_locations)[0], "models", PREDICTOR_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} missing from face-recognition-models; set ${PREDICTOR_ENV}")
  return path


class DlibDetector:
  """Largest face by dlib's HOG detector + its 68 landmarks. Build once per process.

  Args:
    upsample: times dlib upsamples the image before detecting (1 finds faces down to
      about 40 px; 0 is faster and needs about 80 px).
    predictor: path of a 68-point shape predictor (default: ``predictor_path()``).
    max_side: frames larger than this are shrunk (INTER_AREA) for *detection* only;
      landmarks are still fitted on the full frame. HOG detection cost grows with
      the pixel count: a 1080p frame at upsample 1 takes about a second, at 640 px
      about 0.1 s. None detects at full resolution.
  """

  def __init__(self, upsample: int = 1, predictor: str | None = None, max_side: int | None = 640):
    import dlib  # pylint: disable=g-import-not-at-top
    self._dlib = dlib
    self.upsample = upsample
    self.max_side = max_side
    self._detector = dlib.get_frontal_face_detector()
    self._predictor = dlib.shape_predictor(predictor or predictor_path())

  def __call__(self, frame: np.ndarray) -> Face | None:
    frame = _check_rgb(frame)
    h, w = frame.shape[:2]
    s = 1.0
    small = frame
    if self.max_side and max(h, w) > self.max_side:
      s = self.max_side / max(h, w)
      small = cv2.resize(frame, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    rects = self._detector(small, self.upsample)
    if len(rects) == 0:
      return None
    rect = max(rects, key=lambda r: r.width() * r.height())
    if s != 1.0:
      rect = self._dlib.rectangle(int(round(rect.left() / s)), int(round(rect.top() / s)),
                                  int(round((rect.right() + 1) / s)) - 1, int(round((rect.bottom() + 1) / s)) - 1)
    shape = self._predictor(frame, rect)
    lm = np.array([(p.x, p.y) for p in shape.parts()], np.float32)
    box = (float(rect.left()), float(rect.top()), float(rect.right() + 1), float(rect.bottom() + 1))
    return Face(box=box, landmarks=lm)


def enlarged_box(box, scale: float = 1.3) -> tuple[int, int, int]:
  """The square crop around a tight box: ``(x0, y0, side)`` in integer pixels.

  Side = ``scale * max(w, h)``, centred on the box centre (FaceForensics++'s
  ``get_boundingbox`` convention). May extend past the frame; ``crop_face`` pads.
  """
  x0, y0, x1, y1 = (float(v) for v in box)
  side = max(1, int(round(max(x1 - x0, y1 - y0) * scale)))
  cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
  return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side


def crop_face(frame: np.ndarray, face: Face, scale: float = 1.3, size: int | None = 317
              ) -> tuple[np.ndarray, np.ndarray]:
  """Square crop ``scale`` x the tight box, resized to ``size`` (None: native side).

  Parts of the square outside the frame are zero padded, so the face stays centred
  and the crop square. Returns ``(crop uint8 (size, size, 3), landmarks (68, 2) in
  crop pixels)``.
  """
  frame = _check_rgb(frame)
  h, w = frame.shape[:2]
  x0, y0, side = enlarged_box(face.box, scale)
  pad = ((max(0, -y0), max(0, y0 + side - h)), (max(0, -x0), max(0, x0 + side - w)), (0, 0))
  sub = frame[max(0, y0):min(h, y0 + side), max(0, x0):min(w, x0 + side)]
  if any(p for pair in pad[:2] for p in pair):
    sub = np.pad(sub, pad)
  lm = np.asarray(face.landmarks, np.float32) - np.asarray([x0, y0], np.float32)
  if size is not None and size != side:
    interp = cv2.INTER_AREA if size < side else cv2.INTER_CUBIC
    sub = cv2.resize(sub, (size, size), interpolation=interp)
    lm = lm * (size / side)
  return np.ascontiguousarray(sub), lm


def _check_rgb(frame) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
    raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}")
  return np.ascontiguousarray(frame)
