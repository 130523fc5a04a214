"""Evenly spaced frame sampling from videos (OpenCV) and image reading.

    for index, rgb in sample_frames("000.mp4", num_frames=32):
      ...

Frames are read sequentially (``grab`` past unwanted frames, ``retrieve`` wanted
ones): container frame counts and seeking are unreliable for some codecs, a
sequential read is not.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import cv2
import numpy as np

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class VideoError(IOError):
  """A video or image that cannot be opened or decoded."""


def is_video(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in VIDEO_EXTS


def is_image(path: str) -> bool:
  return os.path.splitext(path)[1].lower() in IMAGE_EXTS


def evenly_spaced(total: int, num: int) -> list[int]:
  """``num`` frame indices spread evenly over ``[0, total)`` (all frames if fewer)."""
  if total <= 0:
    return []
  if num <= 0 or num >= total:
    return list(range(total))
  return sorted(set(np.linspace(0, total - 1, num).round().astype(int).tolist()))


def count_frames(path: str) -> int:
  """Frame count by decoding (``grab``) the whole video; exact but slower than metadata."""
  cap = _open(path)
  n = 0
  try:
    while cap.grab():
      n += 1
  finally:
    cap.release()
  return n


def sample_frames(path: str, num_frames: int = 32) -> Iterator[tuple[int, np.ndarray]]:
  """Yields ``(frame_index, (H, W, 3) uint8 RGB)`` for ``num_frames`` evenly spaced frames.

  ``num_frames <= 0`` yields every frame. Raises ``VideoError`` if the file cannot be
  opened or has no decodable frame. If the container's frame count is too high
  (the video ends early), the indices are recomputed from the exact count.
  """
  cap = _open(path)
  total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
  cap.release()
  if total <= 0:
    total = count_frames(path)
  wanted = evenly_spaced(total, num_frames)
  got = list(_read(path, wanted))
  if len(got) < len(wanted):  # metadata overstated the length: resample over the real one
    real_total = count_frames(path)
    if real_total == 0:
      raise VideoError(f"{path}: no decodable frames")
    wanted = evenly_spaced(real_total, num_frames)
    got = list(_read(path, wanted))
  if not got:
    raise VideoError(f"{path}: no decodable frames")
  yield from got


# Decoded images larger than this are refused before decoding (a 20000 x 20000 PNG would take 1.2 GB).
MAX_PIXELS = 64_000_000


def image_size(path: str) -> tuple[int, int] | None:
  """(width, height) from the image header without decoding it; None when PIL cannot tell."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return im.size
  except Image.DecompressionBombError as e:  # PIL's own guard, at 2 x its limit: far beyond ours too
    import re  # pylint: disable=g-import-not-at-top
    m = re.search(r"\((\d+) pixels\)", str(e))
    n = int(m.group(1)) if m else MAX_PIXELS + 1
    side = int(n ** 0.5)
    return side, -(-n // side)
  except Exception:  # pylint: disable=broad-except  (cv2 decides whether the file is an image)
    return None


def read_image(path: str) -> np.ndarray:
  """(H, W, 3) uint8 RGB image; ``VideoError`` naming the file if it cannot be decoded or is
  larger than ``MAX_PIXELS``."""
  data = np.fromfile(path, np.uint8) if os.path.exists(path) else None
  if data is None:
    raise VideoError(f"{path}: no such file")
  size = image_size(path)
  if size is not None and size[0] * size[1] > MAX_PIXELS:
    raise VideoError(f"{path}: {size[0]} x {size[1]} pixels ({size[0] * size[1] / 1e6:.0f} MP), more than the "
                     f"{MAX_PIXELS / 1e6:.0f} MP this reader decodes (sjedd_jax.data.videos.MAX_PIXELS); resize "
                     "or crop it first")
  img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
  if img is None:
    raise VideoError(f"{path}: not a decodable image")
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_image(path: str, rgb: np.ndarray, jpeg_quality: int = 95) -> None:
  """Writes an RGB uint8 image (format from the extension) atomically."""
  ext = os.path.splitext(path)[1].lower()
  params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in (".jpg", ".jpeg") else []
  ok, buf = cv2.imencode(ext, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR), params)
  if not ok:
    raise VideoError(f"{path}: could not encode image")
  tmp = path + ".tmp" + ext
  buf.tofile(tmp)
  os.replace(tmp, path)


def _open(path: str) -> cv2.VideoCapture:
  if not os.path.exists(path):
    raise VideoError(f"{path}: no such file")
  cap = cv2.VideoCapture(path)
  if not cap.isOpened():
    cap.release()
    raise VideoError(f"{path}: cannot open video")
  return cap


def _read(path: str, wanted: list[int]) -> Iterator[tuple[int, np.ndarray]]:
  if not wanted:
    return
  cap = _open(path)
  try:
    targets = iter(wanted)
    target = next(targets)
    i = 0
    while True:
      if not cap.grab():
        return
      if i == target:
        ok, bgr = cap.retrieve()
        if ok and bgr is not None:
          yield i, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        target = next(targets, None)
        if target is None:
          return
      i += 1
  finally:
    cap.release()
