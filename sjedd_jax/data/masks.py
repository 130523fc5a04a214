"""Ground-truth forgery masks for LiSiam (spec lisiam.md sections 1 and 8.3): SSIM and DIFF masks.

A fake frame F is compared with the same frame R of its *target* real video:

    ssim     S = SSIM map of grey(F), grey(R) (Wang et al. 2004; skimage, 7x7 uniform window,
             data range 255, C1 = (0.01*255)^2, C2 = (0.03*255)^2), S in [-1, 1]^(H, W);
             rule "dissimilarity" (default [I]): M = 255 * (1 - clip(S, 0, 1)) > threshold (20),
             i.e. S < 0.9216; rule "literal" [P, read word for word]: M = 255 * clip(S, 0, 1) <= 20.
    diff     Table VII's DIFF mask (Dang et al. 2020): M = grey(|F - R|) / 255 > threshold (0.1),
             the per-channel absolute difference converted to BT.601 grey.

Masks are uint8 (H, W) images holding 0 (pristine) or 255 (forged); reals get no file
(an all-zero mask is implied). grey() is OpenCV's BT.601 RGB -> grey, rounded to uint8.

Pairing in the prepared FF++ layout (``sjedd_jax.data.preprocess``): a fake video is
``<Method>/<target>_<source>`` (Deepfakes, FaceSwap) or ``<Method>/<target>``; its
target real video is ``real/<target>``; the expansion's ``aug_*/<stem>`` images pair with
``real/<stem>`` (the real face they were blended into). The fake record of frame index i
pairs with the real record of the same index i (``frame`` field). A fake whose real
video is missing, or whose frame has no real record (face not found there, or the two
videos have different frame counts so the evenly spaced indices differ), is *unpaired*:
``UnpairedFakeError`` names the fake's file and what was looked for (or, with
``skip_unpaired``, it is left out and reported).

What the pairing requires: F and R must be crops of the SAME box in the two frames; a
mask from crops of different boxes marks every edge of the face as forged. The
preprocessing job does NOT store boxes: it detects the face in every frame of every
video independently (``preprocess.process_task``) and resizes the crop to a fixed side,
so crops of a fake and of its target share a size but not necessarily a box (an FF++
fake keeps the target's face geometry, so the two boxes are usually close, not equal).
Exact masks need crops made with shared boxes (spec 8.3: ``--boxes-from DIR`` in
preprocessing, not implemented yet), or crops of the same detections. What can be
detected here is refused: crops of different sizes (``CropMismatchError``), and,
optionally, a jaw-landmark offset larger than ``max_jaw_shift`` (fraction of the crop
side; the jaw outline is the target's in every FF++ method, so an offset there is the
box offset plus landmark noise). ``jaw_shift`` measures it; ``run`` reports its spread.

    pairs, unpaired = pair_fakes(manifest.read(d))
    m = mask_for_pair(d, pairs[0])                       # SSIM, dissimilarity rule
    summary = run(d, kind="ssim")                        # what scripts/make_masks.py does
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from sjedd_jax.data import manifest, pools

RULES = ("dissimilarity", "literal")
KINDS = ("ssim", "diff")
DEFAULT_THRESHOLD = {"ssim": 20.0, "diff": 0.1}
SSIM_WINDOW = 7
PARAMS_FILE = "masks.json"      # in the mask folder: how its masks were made
UNPAIRED_FILE = "unpaired.jsonl"  # in the mask folder: fakes left out by skip_unpaired
_PAIR = re.compile(r"^(.+?)_(.+)$")


class MaskError(ValueError):
  """A mask that cannot be made (names the file, record or value)."""


class UnpairedFakeError(MaskError):
  """A fake record with no real frame of its target video at the same index."""


class CropMismatchError(MaskError):
  """A fake crop and its real crop that cannot come from the same box."""


# ----------------------------------------------------------------------------- mask rules

def grey(rgb: np.ndarray, where: str = "image") -> np.ndarray:
  """BT.601 grey, uint8 (H, W), of an (H, W, 3) uint8 RGB image."""
  rgb = np.asarray(rgb)
  if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
    raise MaskError(f"{where}: expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
  return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)


def _check_same_shape(fake: np.ndarray, real: np.ndarray) -> None:
  if np.shape(fake) != np.shape(real):
    raise CropMismatchError(f"fake and real images differ in shape: {np.shape(fake)} vs {np.shape(real)} "
                            f"(they must be crops of the same box)")


def ssim_map(fake_rgb: np.ndarray, real_rgb: np.ndarray) -> np.ndarray:
  """The full SSIM map, float64 (H, W) in [-1, 1], of the grey images (7x7 uniform window)."""
  _check_same_shape(fake_rgb, real_rgb)
  f, r = grey(fake_rgb, "fake"), grey(real_rgb, "real")
  if min(f.shape) < SSIM_WINDOW:
    raise MaskError(f"images of {f.shape} are smaller than the {SSIM_WINDOW}x{SSIM_WINDOW} SSIM window")
  _, s = structural_similarity(f.astype(np.float64), r.astype(np.float64), win_size=SSIM_WINDOW,
                               data_range=255.0, gaussian_weights=False, full=True)
  return s


def ssim_mask(fake_rgb: np.ndarray, real_rgb: np.ndarray, rule: str = "dissimilarity",
              threshold: float = 20.0) -> np.ndarray:
  """SSIM forgery mask, uint8 (H, W) of 0/255 (module docstring: the two rules)."""
  if rule not in RULES:
    raise MaskError(f"SSIM mask rule {rule!r} is not one of {RULES}")
  s = np.clip(ssim_map(fake_rgb, real_rgb), 0.0, 1.0)
  forged = 255.0 * (1.0 - s) > threshold if rule == "dissimilarity" else 255.0 * s <= threshold
  return np.where(forged, 255, 0).astype(np.uint8)


def diff_mask(fake_rgb: np.ndarray, real_rgb: np.ndarray, threshold: float = 0.1) -> np.ndarray:
  """DIFF forgery mask (Table VII): grey(|F - R|) / 255 > threshold, uint8 (H, W) of 0/255."""
  _check_same_shape(fake_rgb, real_rgb)
  grey(fake_rgb, "fake")  # validates both
  grey(real_rgb, "real")
  d = cv2.absdiff(np.ascontiguousarray(fake_rgb), np.ascontiguousarray(real_rgb))
  return np.where(grey(d).astype(np.float64) / 255.0 > threshold, 255, 0).astype(np.uint8)


def compute_mask(fake_rgb: np.ndarray, real_rgb: np.ndarray, kind: str = "ssim",
                 rule: str = "dissimilarity", threshold: float | None = None) -> np.ndarray:
  """``ssim_mask`` or ``diff_mask``; ``threshold`` None takes the kind's default (20 / 0.1)."""
  if kind not in KINDS:
    raise MaskError(f"mask kind {kind!r} is not one of {KINDS}")
  t = DEFAULT_THRESHOLD[kind] if threshold is None else float(threshold)
  if kind == "ssim":
    return ssim_mask(fake_rgb, real_rgb, rule, t)
  return diff_mask(fake_rgb, real_rgb, t)


# ----------------------------------------------------------------------------- pairing

@dataclasses.dataclass(frozen=True)
class Pair:
  """A fake record and the real record of its target video at the same frame index."""
  fake: manifest.Record
  real: manifest.Record


def target_stems(video_id: str) -> tuple[str, ...]:
  """Names the target real video of a fake video may have, most specific first.

  ``Deepfakes/000_003`` -> (``000_003``, ``000``); ``Face2Face/000`` -> (``000``,);
  ``aug_eye/000`` -> (``000``,). The real video is ``real/<name>`` (any real video whose
  id ends in ``/<name>``).
  """
  stem = video_id.rstrip("/").split("/")[-1]
  out = [stem]
  m = _PAIR.match(stem)
  if m:
    out.append(m.group(1))
  return tuple(out)


def _stem(video_id: str) -> str:
  return video_id.rstrip("/").split("/")[-1]


def pair_fakes(records: Iterable[manifest.Record], skip_unpaired: bool = False,
               splits: Sequence[str] | None = None,
               ) -> tuple[list[Pair], list[tuple[manifest.Record, str]]]:
  """Pairs every fake record (of ``splits``, default all) with its target real frame.

  Returns ``(pairs, unpaired)``; ``unpaired`` lists ``(fake record, reason)`` and is
  empty unless ``skip_unpaired``: by default the first unpaired fake raises
  ``UnpairedFakeError``. Reals of every split are candidates.
  """
  records = list(records)
  reals: dict[str, dict[int, manifest.Record]] = collections.defaultdict(dict)
  video_of: dict[str, str] = {}
  for r in records:
    if r.is_fake:
      continue
    stem = _stem(r.video_id)
    other = video_of.setdefault(stem, r.video_id)
    if other != r.video_id:
      raise MaskError(f"two real videos end in {stem!r} ({other!r}, {r.video_id!r}): fakes naming "
                      f"{stem!r} as their target cannot be paired unambiguously")
    if r.frame in reals[stem]:
      raise MaskError(f"{r.path}: real video {r.video_id!r} has two records of frame {r.frame} "
                      f"(the other: {reals[stem][r.frame].path})")
    reals[stem][r.frame] = r
  pairs, unpaired = [], []
  for f in records:
    if not f.is_fake or (splits is not None and f.split not in splits):
      continue
    stems = target_stems(f.video_id)
    stem = next((s for s in stems if s in reals), None)
    if stem is not None and f.frame in reals[stem]:
      pairs.append(Pair(f, reals[stem][f.frame]))
      continue
    if stem is None:
      names = " or ".join(repr(f"real/{s}") for s in stems)
      reason = f"looked for real video {names}: not in the manifest"
    else:
      have = sorted(reals[stem])
      shown = ", ".join(map(str, have[:8])) + (", ..." if len(have) > 8 else "")
      reason = (f"looked for frame {f.frame} of real video {video_of[stem]!r}: it has frames [{shown}] "
                f"(face not found in that frame, or the videos differ in frame count)")
    if not skip_unpaired:
      raise UnpairedFakeError(f"{f.path}: unpaired fake (video {f.video_id!r}); {reason}. "
                              f"Use skip_unpaired (--skip-unpaired) to leave such fakes without a mask")
    unpaired.append((f, reason))
  return pairs, unpaired


def jaw_shift(pair: Pair, side: float) -> float | None:
  """Median distance of the 17 jaw landmarks of fake and real, as a fraction of the crop ``side``.

  None when a record has no landmarks. Near 0 for crops of one box; a box offset
  shifts every landmark (module docstring).
  """
  if pair.fake.landmarks is None or pair.real.landmarks is None:
    return None
  a, b = np.asarray(pair.fake.landmarks, np.float64), np.asarray(pair.real.landmarks, np.float64)
  if a.shape != (68, 2) or b.shape != (68, 2):
    raise MaskError(f"{pair.fake.path} / {pair.real.path}: landmarks must be (68, 2), got {a.shape} / {b.shape}")
  return float(np.median(np.linalg.norm(a[:17] - b[:17], axis=1)) / side)


def read_rgb(path: str) -> np.ndarray:
  data = np.fromfile(path, np.uint8) if os.path.exists(path) else None
  if data is None:
    raise MaskError(f"{path}: no such file")
  img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
  if img is None:
    raise MaskError(f"{path}: not a decodable image")
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_pair(dataset_dir: str, pair: Pair, max_jaw_shift: float | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
  """The two crops (RGB uint8); ``CropMismatchError`` if they cannot share a box."""
  fp, rp = os.path.join(dataset_dir, pair.fake.path), os.path.join(dataset_dir, pair.real.path)
  fake, real = read_rgb(fp), read_rgb(rp)
  if fake.shape != real.shape:
    raise CropMismatchError(f"{fp}: crop of {fake.shape[1]}x{fake.shape[0]} px, its real frame {rp} is "
                            f"{real.shape[1]}x{real.shape[0]}: not crops of the same box (make both with "
                            f"the same boxes and size)")
  if max_jaw_shift is not None:
    shift = jaw_shift(pair, max(fake.shape[:2]))
    if shift is not None and shift > max_jaw_shift:
      raise CropMismatchError(f"{fp}: jaw landmarks {shift:.3f} of the crop side away from those of {rp} "
                              f"(> max_jaw_shift {max_jaw_shift}): the crops look cut from different boxes")
  return fake, real


def mask_for_pair(dataset_dir: str, pair: Pair, kind: str = "ssim", rule: str = "dissimilarity",
                  threshold: float | None = None, max_jaw_shift: float | None = None) -> np.ndarray:
  fake, real = load_pair(dataset_dir, pair, max_jaw_shift)
  return compute_mask(fake, real, kind, rule, threshold)


def record_mask(dataset_dir: str, rec: manifest.Record, shape: tuple[int, int]) -> np.ndarray:
  """The training target of a record, uint8 (H, W) in {0, 1, 255} (255 = ignored).

  A real: all 0. A fake with ``forgery_mask``: the PNG, {0 -> 0, > 127 -> 1}. A fake
  without one (unpaired): all 255, so it adds no segmentation loss.
  """
  if not rec.is_fake:
    return np.zeros(shape, np.uint8)
  if rec.forgery_mask is None:
    return np.full(shape, 255, np.uint8)
  path = os.path.join(dataset_dir, rec.forgery_mask)
  data = np.fromfile(path, np.uint8) if os.path.exists(path) else None
  m = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data is not None and data.size else None
  if m is None:
    raise MaskError(f"{path}: forgery mask of {rec.path} missing or not a decodable image")
  if m.shape != tuple(shape):
    raise MaskError(f"{path}: forgery mask of {m.shape}, its image {rec.path} is {tuple(shape)}")
  return (m > 127).astype(np.uint8)


# ----------------------------------------------------------------------------- the job

@dataclasses.dataclass
class Summary:
  fakes: int = 0
  written: int = 0
  resumed: int = 0
  unpaired: int = 0
  out_dir: str = ""
  mean_area: float | None = None         # mean forged fraction of the masks written now
  jaw_shift_median: float | None = None  # of the pairs processed now (fraction of the crop side)
  jaw_shift_p95: float | None = None

  def line(self) -> str:
    s = (f"{self.fakes} fakes: {self.written} masks written, {self.resumed} already there, "
         f"{self.unpaired} unpaired (no mask) -> {self.out_dir}")
    if self.mean_area is not None:
      s += f"; mean forged area {self.mean_area:.3f}"
    if self.jaw_shift_median is not None:
      s += f"; jaw offset fake-real median {self.jaw_shift_median:.4f}, p95 {self.jaw_shift_p95:.4f} of the side"
    return s


def default_out(dataset_dir: str, kind: str = "ssim", rule: str = "dissimilarity") -> str:
  name = f"masks_{kind}" + ("_literal" if kind == "ssim" and rule == "literal" else "")
  return os.path.join(dataset_dir, name)


def mask_path(out_dir: str, rec: manifest.Record) -> str:
  return os.path.join(out_dir, os.path.splitext(rec.path)[0] + ".png")


def is_complete_mask(path: str, shape: tuple[int, int] | None = None) -> bool:
  """True if ``path`` is a fully decodable 8-bit grey PNG of 0/255 values (of ``shape``)."""
  if not os.path.exists(path):
    return False
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      if im.format != "PNG" or im.mode != "L":
        return False
      m = np.asarray(im)
  except (OSError, SyntaxError, ValueError):
    return False
  return (shape is None or m.shape == tuple(shape)) and bool(np.isin(m, (0, 255)).all())


def write_mask(path: str, mask: np.ndarray) -> None:
  """Writes a uint8 0/255 mask PNG atomically (temp file + rename)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ok, buf = cv2.imencode(".png", np.ascontiguousarray(mask, np.uint8))
  if not ok:
    raise MaskError(f"{path}: could not encode the mask")
  tmp = f"{path}.tmp{os.getpid()}.png"
  buf.tofile(tmp)
  os.replace(tmp, path)


def _image_shape(path: str) -> tuple[int, int] | None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return im.size[1], im.size[0]
  except (OSError, SyntaxError, ValueError):
    return None


def _job(args) -> tuple[str, float | None, float | None]:
  """One pair: ("resumed" | "written", forged area, jaw shift)."""
  dataset_dir, pair, out, kind, rule, threshold, max_jaw_shift = args
  shape = _image_shape(os.path.join(dataset_dir, pair.fake.path))
  if shape is not None and is_complete_mask(out, shape):
    return "resumed", None, None
  fake, real = load_pair(dataset_dir, pair, max_jaw_shift)
  m = compute_mask(fake, real, kind, rule, threshold)
  write_mask(out, m)
  return "written", float((m > 0).mean()), jaw_shift(pair, max(fake.shape[:2]))


def _check_params(out_dir: str, params: dict) -> None:
  path = os.path.join(out_dir, PARAMS_FILE)
  if os.path.exists(path):
    with open(path) as f:
      try:
        old = json.load(f)
      except json.JSONDecodeError as e:
        raise MaskError(f"{path}: not valid JSON ({e}); delete it or choose another output folder") from e
    if old != params:
      raise MaskError(f"{out_dir} holds masks made with {old}, not {params}: choose another output folder")
  else:
    os.makedirs(out_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(params, f, indent=2)
    os.replace(path + ".tmp", path)


def run(dataset_dir: str, out_dir: str | None = None, kind: str = "ssim", rule: str = "dissimilarity",
        threshold: float | None = None, skip_unpaired: bool = False, max_jaw_shift: float | None = None,
        workers: int = 0, progress: bool = True, splits: Sequence[str] | None = None) -> Summary:
  """Writes one mask PNG per paired fake record and the manifest with ``forgery_mask`` set.

  Resumable: masks already present and complete (decodable 0/255 PNGs of the image's
  size) are kept; writes are atomic. ``out_dir`` (default ``<dataset>/masks_<kind>``)
  holds ``masks.json`` (kind, rule, threshold) and refuses masks made otherwise. The
  manifest (all records, every other field kept) is rewritten atomically; a fake gets
  ``forgery_mask`` = the mask's path relative to the dataset directory. ``splits``:
  only fakes of these splits get masks. Unpaired fakes (``skip_unpaired``) are listed in
  ``<out>/unpaired.jsonl`` and get no ``forgery_mask``.
  """
  if kind not in KINDS:
    raise MaskError(f"mask kind {kind!r} is not one of {KINDS}")
  if rule not in RULES:
    raise MaskError(f"SSIM mask rule {rule!r} is not one of {RULES}")
  dataset_dir = os.fspath(dataset_dir)
  records = manifest.read(dataset_dir)
  pairs, unpaired = pair_fakes(records, skip_unpaired, splits)
  out_dir = os.fspath(out_dir) if out_dir else default_out(dataset_dir, kind, rule)
  t = DEFAULT_THRESHOLD[kind] if threshold is None else float(threshold)
  _check_params(out_dir, {"kind": kind, "rule": rule if kind == "ssim" else None, "threshold": t})
  summary = Summary(fakes=len(pairs) + len(unpaired), unpaired=len(unpaired), out_dir=out_dir)
  with open(os.path.join(out_dir, UNPAIRED_FILE) + ".tmp", "w") as f:
    for rec, reason in unpaired:
      f.write(json.dumps({"path": rec.path, "video_id": rec.video_id, "frame": rec.frame, "reason": reason}) + "\n")
  os.replace(os.path.join(out_dir, UNPAIRED_FILE) + ".tmp", os.path.join(out_dir, UNPAIRED_FILE))

  jobs = [(dataset_dir, p, mask_path(out_dir, p.fake), kind, rule, t, max_jaw_shift) for p in pairs]
  import tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm.tqdm(total=len(jobs), unit="mask", desc="masks", disable=not progress, dynamic_ncols=True)
  areas, shifts = [], []

  def account(res):
    status, area, shift = res
    if status == "resumed":
      summary.resumed += 1
    else:
      summary.written += 1
      areas.append(area)
      if shift is not None:
        shifts.append(shift)
    bar.update()

  try:
    if workers > 1 and len(jobs) > 1:
      with pools.pool_context().Pool(workers, initializer=pools.init_worker) as pool:
        for res in pool.imap(_job, jobs, chunksize=16):
          account(res)
    else:
      with pools.single_threaded_cv2():
        for job in jobs:
          account(_job(job))
  finally:
    bar.close()
  if areas:
    summary.mean_area = float(np.mean(areas))
  if shifts:
    summary.jaw_shift_median = float(np.median(shifts))
    summary.jaw_shift_p95 = float(np.percentile(shifts, 95))

  rel = {id(p.fake): os.path.relpath(mask_path(out_dir, p.fake), dataset_dir).replace(os.sep, "/") for p in pairs}
  updated = [dataclasses.replace(r, forgery_mask=rel[id(r)]) if id(r) in rel else r for r in records]
  manifest.write(dataset_dir, updated)
  return summary
