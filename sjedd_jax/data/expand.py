"""Semantics-oriented dataset expansion (spec section 7, paper Sec. III).

For each real target face, the source face (real, or fake from the identity-swap
subsets Deepfakes/FaceSwap) with the nearest landmarks, excluding the target's
identity, gives one local region: eye, lip + mouth, or nose. The source is
aligned to the target by a similarity transform fitted on the region's
landmarks, colour-corrected towards the target inside the region (Reinhard et
al. 2001: Lab mean/std), and blended linearly through a Gaussian-blurred mask.
The new images are written under the Table I sources ``aug_eye``,
``aug_lip_mouth`` and ``aug_nose``, as many per region as the original
manipulation methods have images (per split).

Works on any manifest dataset with landmarks (synthetic or preprocessed FF++),
seeded and deterministic, resumable (the manifest is rewritten atomically every
few hundred images; outputs already listed and present are skipped).

``mode="xray"`` is the Face X-ray-style ablation (Table XI): a whole-face or
random-region mask from the nearest REAL source, labelled as binary fake only
(source ``xray``; not in Table I, so only the primary label is observed).

Example::

    recs = expand("data/ffpp", seed=0)                   # adds aug_* in place
    expand("data/synth", "data/synth_xray", mode="xray")  # new directory
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Sequence

import cv2
import numpy as np
from sklearn.neighbors import NearestNeighbors
from tqdm.auto import tqdm

from sjedd_jax.data import manifest, pools
from sjedd_jax.data import sources as sources_lib
from sjedd_jax.data import regions as regions_lib

AUG_SOURCE = {"eye": "aug_eye", "lip_mouth": "aug_lip_mouth", "nose": "aug_nose"}
REGION_OF = {v: k for k, v in AUG_SOURCE.items()}
XRAY_SOURCE = "xray"
XRAY_REGIONS = ("skin", "inner_face", "eye", "lip_mouth", "nose")
GENERATED = tuple(AUG_SOURCE.values()) + (XRAY_SOURCE,)
METHOD = {"regions": "expansion", "xray": "xray"}
_PAIR = re.compile(r"^(\w+?)_(\w+)$")


class ExpansionError(ValueError):
  """A dataset that cannot be expanded (names the file or field)."""


# ----------------------------------------------------------------------------- image operations

def weighted_stats(x: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of (h, w, c) ``x`` weighted by (h, w) ``mask``."""
  w = mask[..., None].astype(np.float64)
  total = w.sum()
  if total <= 0:
    raise ValueError("empty mask: no pixel to take colour statistics from")
  mu = (x * w).sum((0, 1)) / total
  sd = np.sqrt(((x - mu) ** 2 * w).sum((0, 1)) / total)
  return mu, sd


def reinhard_lab(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Reinhard et al. (2001) colour transfer in Lab; returns the transferred source in Lab.

  ``source``/``target``: float32 RGB in [0, 1]; statistics weighted by ``mask``.
  The result has the target's mean and std inside the mask.
  """
  s = cv2.cvtColor(np.clip(source, 0, 1).astype(np.float32), cv2.COLOR_RGB2Lab)
  t = cv2.cvtColor(np.clip(target, 0, 1).astype(np.float32), cv2.COLOR_RGB2Lab)
  ms, ss = weighted_stats(s, mask)
  mt, st = weighted_stats(t, mask)
  return ((s - ms) / np.maximum(ss, 1e-3) * st + mt).astype(np.float32)


def reinhard_transfer(source: np.ndarray, target: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """``reinhard_lab`` back in RGB, clipped to [0, 1]."""
  return np.clip(cv2.cvtColor(reinhard_lab(source, target, mask), cv2.COLOR_Lab2RGB), 0, 1)


def align(source_lm: np.ndarray, target_lm: np.ndarray, idx: Sequence[int] | None = None) -> np.ndarray:
  """2x3 similarity transform (OpenCV, LMedS) taking source landmarks onto target ones."""
  idx = list(range(68)) if idx is None else list(idx)
  m, _ = cv2.estimateAffinePartial2D(source_lm[idx].astype(np.float32), target_lm[idx].astype(np.float32),
                                     method=cv2.LMEDS)
  if m is None:  # degenerate points: fall back to all landmarks, then to the identity
    m, _ = cv2.estimateAffinePartial2D(source_lm.astype(np.float32), target_lm.astype(np.float32),
                                       method=cv2.LMEDS)
  return np.eye(2, 3, dtype=np.float64) if m is None else m


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
  return (np.asarray(pts, np.float64) @ m[:, :2].T + m[:, 2]).astype(np.float32)


def region_indices(region: str) -> list[int]:
  return sorted({i for g in regions_lib.REGIONS[region] for i in g})


def blend_region(target: np.ndarray, target_lm: np.ndarray, source: np.ndarray, source_lm: np.ndarray,
                 region: str, *, dilate: float | None = None, blur: float | None = None,
                 align_region: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Blends ``region`` of ``source`` into ``target``; returns (uint8 image, landmarks, mask).

  target/source: uint8 RGB crops (the source is resized to the target's size);
  landmarks (68, 2) in their crop pixels. Steps: similarity alignment on the
  region's landmarks, soft mask (union of the target's and the aligned source's
  region hulls, dilated, Gaussian-blurred), Reinhard colour transfer inside the
  mask, linear blend. Pixels where the mask is 0 keep the target's exact values.
  """
  h, w = target.shape[:2]
  source_lm = np.asarray(source_lm, np.float32)
  if source.shape[:2] != (h, w):
    sy, sx = h / source.shape[0], w / source.shape[1]
    source = cv2.resize(source, (w, h), interpolation=cv2.INTER_AREA if sx < 1 else cv2.INTER_LINEAR)
    source_lm = source_lm * np.array([sx, sy], np.float32)
  target_lm = np.asarray(target_lm, np.float32)
  m = align(source_lm, target_lm, region_indices(align_region or region))
  warped = cv2.warpAffine(source, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
  warped_lm = transform_points(m, source_lm)
  groups = [target_lm[list(g)] for g in regions_lib.REGIONS[region]]
  groups += [warped_lm[list(g)] for g in regions_lib.REGIONS[region]]
  scale = regions_lib.face_size(target_lm)
  dilate = regions_lib.DEFAULT_DILATE[region] if dilate is None else dilate
  blur = regions_lib.DEFAULT_BLUR if blur is None else blur
  mask = regions_lib.soft_mask(groups, (h, w), scale, dilate, blur)
  hard = regions_lib.soft_mask(groups, (h, w), scale, dilate, 0.0)
  t = target.astype(np.float32) / 255.0
  s = reinhard_transfer(warped.astype(np.float32) / 255.0, t, hard if hard.sum() > 0 else mask)
  out = mask[..., None] * s + (1 - mask[..., None]) * t
  out = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
  out[mask <= 0] = target[mask <= 0]
  lm = target_lm.copy()
  idx = region_indices(region) if region not in ("skin", "face") else list(range(68))
  lm[idx] = warped_lm[idx]
  return out, lm, mask


# ----------------------------------------------------------------------------- source search

def identities_of(rec: manifest.Record) -> frozenset[str]:
  """The identities shown by a record: its ``identity`` (or video), plus both ids of an
  identity-swap video named FF++-style ``<target>_<source>`` (e.g. ``Deepfakes/000_003``)."""
  ids = {rec.identity or rec.video_id}
  if rec.source in sources_lib.SWAP_SOURCES:
    m = _PAIR.match(rec.video_id.rstrip("/").split("/")[-1])
    if m:
      ids.update(m.groups())
  return frozenset(ids)


def normalised_landmarks(recs: Sequence[manifest.Record], sizes: Sequence[tuple[int, int]]) -> np.ndarray:
  """(N, 136) landmarks divided by each crop's (w, h): crops of any size become comparable."""
  out = np.empty((len(recs), 136), np.float32)
  for i, (r, (w, h)) in enumerate(zip(recs, sizes)):
    out[i] = (regions_lib.check_landmarks(r.landmarks, f"{r.path}: landmarks") / np.array([w, h], np.float32)).ravel()
  return out


def nearest_sources(target_lm: np.ndarray, target_ids: Sequence[frozenset], cand_lm: np.ndarray,
                    cand_ids: Sequence[frozenset], num: int = 1) -> np.ndarray:
  """Indices (T, num) of the ``num`` nearest candidates per target sharing no identity with it.

  One k-NN query (scikit-learn), k large enough to cover every excluded
  candidate of the worst target; -1 where fewer than ``num`` candidates remain.
  """
  n = len(cand_lm)
  if n == 0:
    return np.full((len(target_lm), num), -1, np.int64)
  by_id: dict[str, int] = {}
  for ids in cand_ids:
    for i in ids:
      by_id[i] = by_id.get(i, 0) + 1
  excl = max((sum(by_id.get(i, 0) for i in ids) for ids in target_ids), default=0)
  k = min(n, excl + num)
  nn = NearestNeighbors(n_neighbors=k).fit(cand_lm)
  _, idx = nn.kneighbors(target_lm)
  out = np.full((len(target_lm), num), -1, np.int64)
  for t, (row, ids) in enumerate(zip(idx, target_ids)):
    ok = [c for c in row if not (cand_ids[c] & ids)][:num]
    out[t, :len(ok)] = ok
  return out


# ----------------------------------------------------------------------------- the expansion

def _image_size(data_dir: str, rec: manifest.Record, default: int | None) -> tuple[int, int]:
  if default:
    return default, default
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = os.path.join(data_dir, rec.path)
  try:
    with Image.open(path) as im:
      return im.size
  except (OSError, ValueError) as e:
    raise ExpansionError(f"cannot read image {path!r} ({e})") from e


def _read_rgb(path: str) -> np.ndarray:
  img = cv2.imread(path, cv2.IMREAD_COLOR)
  if img is None:
    raise ExpansionError(f"cannot read image {path!r} (missing or not an image)")
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def plan(records: Sequence[manifest.Record], data_dir: str, *, seed: int = 0, mode: str = "regions",
         regions: Sequence[str] = ("eye", "lip_mouth", "nose"), per_region: int | None = None,
         splits: Sequence[str] | None = None, image_size: int | None = None) -> list[dict]:
  """The list of jobs (target, source, region, output path), deterministic from ``seed``.

  Per split and region, ``per_region`` images (default: the largest count of a
  manipulation method in that split; an int is a total shared out between
  splits in proportion to their real faces). Targets are the split's real faces
  in a seeded order, cycled; the r-th pass uses each target's r-th nearest source.
  """
  if mode not in METHOD:
    raise ValueError(f"mode {mode!r}: expected one of {list(METHOD)}")
  bad = [r for r in regions if r not in AUG_SOURCE]
  if mode == "regions" and bad:
    raise ValueError(f"region(s) {bad}: expected among {list(AUG_SOURCE)}")
  originals = [r for r in records if r.source not in GENERATED]
  real = [r for r in originals if r.source == "real" and (splits is None or r.split in splits)]
  if not real:
    raise ExpansionError(f"{data_dir}: no real faces to use as targets")
  cand_sources = ("real",) if mode == "xray" else ("real",) + sources_lib.SWAP_SOURCES
  missing = [r.path for r in originals if r.source in cand_sources and r.landmarks is None]
  if missing:
    raise ExpansionError(f"{data_dir}: {len(missing)} face(s) lack landmarks, e.g. {missing[:3]}; "
                         "the expansion needs 68 landmarks per real/Deepfakes/FaceSwap face")
  method_sources = sorted({r.source for r in originals if r.is_fake})
  num_real = {s: sum(r.split == s for r in real) for s in manifest.SPLITS}
  share = {} if per_region is None else apportion(per_region, num_real)
  jobs = []
  names = list(regions) if mode == "regions" else [XRAY_SOURCE]
  for split in manifest.SPLITS:
    targets = [r for r in real if r.split == split]
    if not targets:
      continue
    if per_region is None:
      counts = [sum(r.split == split and r.source == m for r in originals) for m in method_sources]
      count = max(counts) if counts else len(targets)
    else:
      count = share[split]
    if mode == "xray":
      count *= len(regions)
    if count == 0:
      continue
    cands = [r for r in originals if r.split == split and r.source in cand_sources]
    passes = -(-count // len(targets))
    t_lm = normalised_landmarks(targets, [_image_size(data_dir, r, image_size) for r in targets])
    c_lm = normalised_landmarks(cands, [_image_size(data_dir, r, image_size) for r in cands])
    nearest = nearest_sources(t_lm, [identities_of(r) for r in targets], c_lm,
                              [identities_of(r) for r in cands], num=passes)
    for ri, name in enumerate(names):
      order = np.random.default_rng([seed, ri, manifest.SPLITS.index(split)]).permutation(len(targets))
      source_name = AUG_SOURCE.get(name, XRAY_SOURCE)
      for i in range(count):
        t = int(order[i % len(targets)])
        row = nearest[t]
        valid = row[row >= 0]
        if len(valid) == 0:
          raise ExpansionError(f"{targets[t].path}: no source face of another identity in split {split!r}")
        c = int(valid[(i // len(targets)) % len(valid)])
        stem = os.path.splitext(os.path.basename(targets[t].path))[0]
        jobs.append(dict(region=name, source_name=source_name, split=split, index=i,
                         target=targets[t], source=cands[c],
                         path=f"{source_name}/{split}/{i:06d}_{stem}.png",
                         seed=[seed, ri, manifest.SPLITS.index(split), i]))
  return jobs


def apportion(total: int, weights: dict[str, int]) -> dict[str, int]:
  """Splits ``total`` into integers proportional to ``weights`` (largest remainders), summing to ``total``."""
  w = np.asarray(list(weights.values()), np.float64)
  exact = total * w / w.sum()
  out = np.floor(exact).astype(int)
  for i in np.argsort(-(exact - out), kind="stable")[: total - out.sum()]:
    out[i] += 1
  return dict(zip(weights, out.tolist()))


def _xray_params(rng: np.random.Generator) -> dict:
  region = XRAY_REGIONS[int(rng.choice(len(XRAY_REGIONS), p=[0.4, 0.3, 0.1, 0.1, 0.1]))]
  return dict(region=region, dilate=float(rng.uniform(-0.03, 0.05)), blur=float(rng.uniform(0.01, 0.06)),
              align_region="skin" if region in ("skin", "inner_face") else region)


def _run_job(job: dict, data_dir: str, out_dir: str) -> manifest.Record:
  t, s = job["target"], job["source"]
  target = _read_rgb(os.path.join(data_dir, t.path))
  source = _read_rgb(os.path.join(data_dir, s.path))
  if job["source_name"] == XRAY_SOURCE:
    kw = _xray_params(np.random.default_rng(job["seed"]))
  else:
    kw = dict(region=job["region"])
  region = kw.pop("region")
  img, lm, _ = blend_region(target, np.asarray(t.landmarks, np.float32), source,
                            np.asarray(s.landmarks, np.float32), region, **kw)
  path = os.path.join(out_dir, job["path"])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.png"
  if not cv2.imwrite(tmp, cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
    raise ExpansionError(f"cannot write {tmp!r}")
  os.replace(tmp, path)
  name = job["source_name"]
  return manifest.Record(path=job["path"], source=name, is_fake=1,
                         video_id=f"{name}/{t.video_id.rstrip('/').split('/')[-1]}", split=t.split,
                         identity=t.identity, frame=t.frame, landmarks=lm.tolist(),
                         method=METHOD["xray" if name == XRAY_SOURCE else "regions"])


def _run_job_star(args):
  return _run_job(*args)


def _fingerprint(originals: Sequence[manifest.Record], config: dict) -> str:
  h = hashlib.sha1(json.dumps(config, sort_keys=True).encode())
  for r in originals:
    h.update(json.dumps([r.path, r.source, r.split, r.identity, r.video_id, r.frame]).encode())
    if r.landmarks is not None:
      h.update(np.round(np.asarray(r.landmarks, np.float64), 1).tobytes())
  return h.hexdigest()[:16]


def _link_or_copy(src: str, dst: str) -> None:
  if os.path.exists(dst):
    return
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  try:
    os.link(src, dst)
  except OSError:
    shutil.copy2(src, dst)


def expand(data_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, seed: int = 0,
           mode: str = "regions", regions: Sequence[str] = ("eye", "lip_mouth", "nose"),
           per_region: int | None = None, splits: Sequence[str] | None = None, workers: int | None = None,
           flush_every: int = 1000, progress: bool = True) -> list[manifest.Record]:
  """Expands ``data_dir`` into ``out_dir`` (default: in place); returns all output records.

  A different ``out_dir`` receives the originals too (hard links, else copies),
  so it is a complete dataset. Re-running completes a partial run and adds
  nothing to a finished one; a run with other settings or other inputs on an
  already expanded directory is refused (the settings are in dataset.json).
  """
  data_dir = os.fspath(data_dir)
  out_dir = data_dir if out_dir is None else os.fspath(out_dir)
  records = manifest.read(data_dir)
  meta = manifest.read_metadata(data_dir)
  originals = [r for r in records if r.source not in GENERATED]
  config = dict(seed=seed, mode=mode, regions=list(regions), per_region=per_region,
                splits=None if splits is None else list(splits))
  fp = _fingerprint(originals, config)
  key = "expansion" if mode == "regions" else "expansion_xray"
  same_dir = os.path.abspath(out_dir) == os.path.abspath(data_dir)
  out_records = records if same_dir else (manifest.read(out_dir) if os.path.exists(
      os.path.join(out_dir, manifest.MANIFEST)) else [])
  out_meta = meta if same_dir else manifest.read_metadata(out_dir)
  prev = out_meta.get(key)
  made_here = {XRAY_SOURCE} if mode == "xray" else set(AUG_SOURCE.values())
  if prev and prev.get("fingerprint") != fp and any(r.source in made_here for r in out_records):
    raise ExpansionError(f"{out_dir} already holds a {key} made with other settings or inputs "
                         f"({prev.get('config')}); remove it or choose another --out")
  if prev and prev.get("complete") and prev.get("fingerprint") == fp:
    done_paths = {r.path for r in out_records if r.source in made_here}
    if all(os.path.exists(os.path.join(out_dir, p)) for p in done_paths):
      return out_records
  size = meta.get("image_size") if isinstance(meta.get("image_size"), int) else None
  jobs = plan(records, data_dir, seed=seed, mode=mode, regions=regions, per_region=per_region, splits=splits,
              image_size=size)
  if not same_dir:
    for r in originals:
      _link_or_copy(os.path.join(data_dir, r.path), os.path.join(out_dir, r.path))
  # Keep what is already made (listed and present); everything else is (re)done.
  job_paths = {j["path"] for j in jobs}
  done = {r.path: r for r in out_records if r.source in made_here and r.path in job_paths
          and os.path.exists(os.path.join(out_dir, r.path))}
  keep_other = [r for r in out_records if r.source not in GENERATED or
                (r.source in GENERATED and r.source not in made_here)]
  if not same_dir:
    have = {r.path for r in keep_other}
    keep_other += [r for r in originals if r.path not in have]
  todo = [j for j in jobs if j["path"] not in done]
  new_meta = dict(out_meta or {k: v for k, v in meta.items() if k not in ("expansion", "expansion_xray")})
  new_meta.setdefault("name", meta.get("name", os.path.basename(data_dir)))
  new_meta.setdefault("hierarchy", meta.get("hierarchy", "ffpp"))
  if size:
    new_meta.setdefault("image_size", size)
  new_meta[key] = dict(config=config, fingerprint=fp, num_jobs=len(jobs), complete=False)

  order = {j["path"]: n for n, j in enumerate(jobs)}

  def flush(complete: bool) -> None:
    made = sorted(done.values(), key=lambda r: order.get(r.path, len(order)))
    manifest.write(out_dir, keep_other + made)
    new_meta[key]["complete"] = complete
    new_meta[key]["counts"] = {s: sum(r.source == s for r in made) for s in sorted({r.source for r in made})}
    manifest.write_metadata(out_dir, new_meta)

  manifest.write_metadata(out_dir, new_meta)  # marks the run unfinished until the last flush
  workers = min(2, os.cpu_count() or 1) if workers is None else workers
  bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=f"expand ({mode})", unit="img",
             disable=not progress)
  args = [(j, data_dir, out_dir) for j in todo]
  if workers > 1 and len(args) > 1:
    with pools.pool_context().Pool(workers, initializer=pools.init_worker) as pool:
      results = pool.imap(_run_job_star, args, chunksize=16)
      _collect(results, done, bar, flush, flush_every)
  else:
    with pools.single_threaded_cv2():
      _collect(map(_run_job_star, args), done, bar, flush, flush_every)
  bar.close()
  flush(True)
  return manifest.read(out_dir)


def _collect(results, done, bar, flush, flush_every):
  for n, rec in enumerate(results, 1):
    done[rec.path] = rec
    bar.update()
    if n % flush_every == 0:
      flush(False)

