"""LiSiam's per-example data transform (the two Siamese views + the forgery mask) and mask preparation.

``Transform`` is the detector's ``transform`` hook of the shared pipeline
(``pipeline.DataConfig.transform``), a picklable object:

* training: ``degrade.two_views`` of the uint8 face and its label mask (shared geometric
  augmentation, IQD on view 2 only) -> ``{"image": view 1, "image2": view 2, "mask": (S, S)
  uint8 in {0, 1, 255}}`` at the model's input size S (the segmentation loss upsamples X_s^1
  to S, spec section 3);
* evaluation: the clean image and its mask resized (nearest, 255 kept) to ``eval_mask_size``
  (default: the segmentation map's size, e.g. 37 at 299 px, so a whole FF++ test split's
  masks fit in memory).

The label mask of a record (``masks.record_mask``): reals all 0; fakes the 0/255 PNG mapped
to {0, 1}; a fake without a mask (unpaired) all 255 (no segmentation loss). Where the
masks come from is ``masks``:

* "manifest": the record's ``forgery_mask`` field (FF++: ``scripts/make_masks.py``);
* "oracle": ``<data>/masks_oracle/<image path>.png``, the synthetic world's blend masks
  (``synthetic.ensure_oracle_masks``; a config can instead set ``data.synthetic.oracle_masks``,
  which names them in the manifest, and read them as "manifest");
* "ssim", "ssim_literal", "diff": ``<data>/masks_<kind>/<image path>.png``, the layout of
  ``masks.run`` (``scripts/make_masks.py --kind ...``).

For a synthetic world the folder masks are made on first use (``prepare_masks``: once per
dataset, under a file lock, marked complete by a file in the folder; SSIM/DIFF masks by the
production pairing, the manifest left as it is); for any other data a missing folder is an
error naming the script to run. ``prepare_data(config, data_dir)``
does the same up front (the hook ``datasets.dataset_dir`` can call).
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading

import cv2
import numpy as np

from sjedd_jax.data import degrade, manifest, masks as masks_lib

MASK_SOURCES = ("manifest", "oracle", "ssim", "ssim_literal", "diff")
MASK_DIRS = {"oracle": "masks_oracle", "ssim": "masks_ssim", "ssim_literal": "masks_ssim_literal",
             "diff": "masks_diff"}
READY_FILE = ".lisiam_complete.json"
LOCK_FILE = ".lisiam_masks.lock"

_prepared: set[tuple[str, str]] = set()
_prepare_lock = threading.Lock()


class MaskSourceError(ValueError):
  """Masks that are not there and cannot be made here (names the folder and the script)."""


# ----------------------------------------------------------------- sizes
def map_size(backbone, image_size: int) -> int:
  """Side of the segmentation maps (X_s) for a square input: Xception's conv1 (3x3 s2 p0),
  conv2 (3x3 p0), then MaxPool(3, s, 1) per strided block. 299 -> 37 (release strides); 64 -> 15."""
  n = (int(image_size) - 3) // 2 + 1 - 2
  for s in backbone.block_strides:
    if s != 1:
      n = (n - 1) // s + 1
  if n < 1:
    raise ValueError(f"image size {image_size} is too small for this Xception (map side {n})")
  return n


def resize_mask(mask: np.ndarray, side: int) -> np.ndarray:
  """Nearest-neighbour resize of a (H, W) uint8 label mask to (side, side), labels (and 255) kept."""
  if mask.shape == (side, side):
    return mask
  return cv2.resize(mask, (side, side), interpolation=cv2.INTER_NEAREST_EXACT)


# ----------------------------------------------------------------- preparation
def _is_synthetic(data_dir: str) -> bool:
  gen = manifest.read_metadata(data_dir).get("generator") or {}
  return bool(gen.get("complete"))


def _ready(folder: str) -> bool:
  return os.path.exists(os.path.join(folder, READY_FILE))


def prepare_masks(data_dir: str, source: str, *, progress: bool = False, workers: int = 0) -> str | None:
  """Makes sure the masks of ``source`` exist for ``data_dir``; returns their folder (None: "manifest").

  Synthetic worlds get them made here (oracle: ``synthetic.write_oracle_masks``; ssim/diff:
  ``masks.run`` with unpaired fakes skipped), once, under a file lock; other data must have
  them already (``MaskSourceError`` names the command).
  """
  if source not in MASK_SOURCES:
    raise MaskSourceError(f"lisiam.masks={source!r}; expected one of {MASK_SOURCES}")
  if source == "manifest" or not data_dir:
    return None
  folder = os.path.join(data_dir, MASK_DIRS[source])
  key = (os.path.abspath(data_dir), source)
  if key in _prepared:
    return folder
  with _prepare_lock:
    if key in _prepared:
      return folder
    if not _ready(folder):
      if not _is_synthetic(data_dir):
        if os.path.isdir(folder) and os.path.exists(os.path.join(folder, masks_lib.PARAMS_FILE)):
          _prepared.add(key)  # made by scripts/make_masks.py (it writes masks.json first)
          return folder
        kind = "ssim" if source.startswith("ssim") else source
        rule = " --rule literal" if source == "ssim_literal" else ""
        raise MaskSourceError(
            f"{folder}: no {source} masks for {data_dir}. Make them with "
            f"python scripts/make_masks.py {data_dir} --kind {kind}{rule} (see docs/lisiam.md)"
            if source != "oracle" else f"{folder}: oracle masks exist only for synthetic worlds ({data_dir} is not one)")
      _make_synthetic_masks(data_dir, source, folder, progress=progress, workers=workers)
    _prepared.add(key)
  return folder


def _make_synthetic_masks(data_dir: str, source: str, folder: str, *, progress: bool, workers: int) -> None:
  """Oracle masks through ``synthetic.ensure_oracle_masks`` (the world's own marker); SSIM/DIFF masks
  with the production pairing (``masks.pair_fakes``, unpaired fakes skipped) and ``masks.mask_for_pair``,
  written here without touching the manifest (``masks.run`` would point its ``forgery_mask`` at them)."""
  import fcntl  # pylint: disable=g-import-not-at-top
  from sjedd_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  if source == "oracle":
    synthetic.ensure_oracle_masks(data_dir, progress=progress, workers=workers or None)
    os.makedirs(folder, exist_ok=True)
    _mark(folder, {"source": source})
    return
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(data_dir, LOCK_FILE), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)   # another process may be making them: wait, then look again
    try:
      if _ready(folder):
        return
      kind = "ssim" if source.startswith("ssim") else "diff"
      rule = "literal" if source == "ssim_literal" else "dissimilarity"
      pairs, unpaired = masks_lib.pair_fakes(manifest.read(data_dir), skip_unpaired=True)
      import tqdm  # pylint: disable=g-import-not-at-top
      areas = []
      for pair in tqdm.tqdm(pairs, desc=f"{source} masks", unit="mask", disable=not progress):
        out = masks_lib.mask_path(folder, pair.fake)
        if not masks_lib.is_complete_mask(out):
          m = masks_lib.mask_for_pair(data_dir, pair, kind, rule)
          masks_lib.write_mask(out, m)
          areas.append(float((m > 0).mean()))
      _mark(folder, {"source": source, "masks": len(pairs), "unpaired": len(unpaired),
                     "mean_area_written": float(np.mean(areas)) if areas else None})
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def _mark(folder: str, info: dict) -> None:
  tmp = os.path.join(folder, READY_FILE + ".tmp")
  with open(tmp, "w") as f:
    json.dump(info, f)
  os.replace(tmp, os.path.join(folder, READY_FILE))


def prepare_data(config, data_dir: str, progress: bool = True) -> None:
  """The masks a LiSiam config needs for ``data_dir`` (``config.lisiam.masks``), made up front."""
  prepare_masks(data_dir, config.lisiam.masks, progress=progress, workers=int(config.lisiam.get("mask_workers", 0)))


# ----------------------------------------------------------------- the transform
class Transform:
  """``transform(image, record, data_dir, rng, train)`` of the shared pipeline (module docstring).

  Args:
    size: the model's input side S (views and training masks are S x S).
    eval_mask_side: side of the evaluation masks (the segmentation map's by default).
    masks: one of ``MASK_SOURCES``.
    view_params: ``degrade.ViewParams`` (default: the release's, scaled to S).
  """

  def __init__(self, size: int, eval_mask_side: int, masks: str = "manifest",
               view_params: degrade.ViewParams | None = None):
    if masks not in MASK_SOURCES:
      raise MaskSourceError(f"lisiam.masks={masks!r}; expected one of {MASK_SOURCES}")
    self.size = int(size)
    self.eval_mask_side = int(eval_mask_side)
    self.masks = masks
    self.view_params = view_params if view_params is not None else degrade.ViewParams.for_size(self.size)

  def record_mask(self, data_dir: str, rec: manifest.Record, image: np.ndarray) -> np.ndarray:
    """The (H, W) uint8 label mask of ``rec`` for ``image`` ({0, 1, 255})."""
    shape = image.shape[:2]
    if not rec.is_fake:
      return np.zeros(shape, np.uint8)
    if self.masks != "manifest":
      folder = prepare_masks(data_dir, self.masks)
      path = masks_lib.mask_path(folder, rec) if folder else None
      rel = os.path.relpath(path, data_dir) if path and os.path.exists(path) else None
      rec = dataclasses.replace(rec, forgery_mask=rel)
    try:
      return masks_lib.record_mask(data_dir, rec, shape)
    except masks_lib.MaskError:
      if not image.any():  # the pipeline's blank padding image: only the shapes matter
        return np.full(shape, 255, np.uint8)
      raise

  def __call__(self, image: np.ndarray, rec: manifest.Record, data_dir: str, rng: np.random.Generator,
               train: bool) -> dict[str, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f"{rec.path}: LiSiam's transform expects an (H, W, 3) uint8 image, got "
                       f"{image.shape} {image.dtype}")
    mask = self.record_mask(data_dir, rec, image)
    if train:
      view1, view2, m = degrade.two_views(image, mask, rng, self.size, self.view_params)
      return {"image": view1, "image2": view2, "mask": m}
    return {"image": image, "mask": resize_mask(mask, self.eval_mask_side)}
