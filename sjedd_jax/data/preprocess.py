"""The preprocessing job: videos or image folders -> face crops + landmarks + manifest.

One *task* is one video (or one folder of stills, or a folder of loose images).
Each task samples frames evenly, detects the largest face and its 68 landmarks,
crops 1.3x around the tight box, and writes its crops plus a *part file*
(``.parts/<key>.json``: the task's records and skipped frames), atomically. The
part file is the task's done-marker: a rerun skips tasks that have one, so a killed
run loses at most the tasks in flight. When all tasks are done the parts are merged
(in task order, so the result does not depend on worker timing) into
``manifest.jsonl`` (``sjedd_jax.data.manifest``), ``skipped.jsonl`` and
``dataset.json``.

    tasks, pre_skips = ffpp_tasks("/data/ffpp", split_files={"train": "train.json", ...})
    summary = run(tasks, "/data/ffpp_crops", PreprocessConfig(workers=8), skipped=pre_skips)
    print(summary.line())

Layouts: ``ffpp_tasks`` (FaceForensics++ tree + official split JSONs),
``folder_tasks`` (real/fake folders of videos or images: Celeb-DF, DFDC, DF-1.0,
FSh, ...), ``list_tasks`` (a CSV of path,label[,video_id,split,source,identity]).
"""

from __future__ import annotations

import collections
import concurrent.futures
import csv
import dataclasses
import json
import multiprocessing
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sjedd_jax.data import faces as faces_lib
from sjedd_jax.data import manifest
from sjedd_jax.data import videos

FFPP_METHODS = ("Deepfakes", "FaceSwap", "Face2Face", "NeuralTextures")
# Manipulation family of each FF++ method (the manifest's ``method`` field).
FFPP_FAMILY = {"Deepfakes": "identity_swap", "FaceSwap": "identity_swap",
               "Face2Face": "expression_swap", "NeuralTextures": "expression_swap"}
PARTS = ".parts"
SKIPPED = "skipped.jsonl"
SUMMARY = "summary.json"


@dataclasses.dataclass(frozen=True)
class Task:
  """One unit of work. ``kind="video"``: ``paths`` is one video file. ``kind="images"``:
  ``paths`` are stills; ``video_ids[i]`` groups them (one id for a per-video folder,
  one id per image for loose images)."""
  key: str                    # unique relative path: crops go to <out>/<key>/, marker .parts/<key>.json
  kind: str                   # "video" or "images"
  paths: tuple[str, ...]
  source: str
  is_fake: int
  split: str
  video_ids: tuple[str, ...]
  identity: str = ""
  method: str | None = None
  frames: tuple[int, ...] = ()  # kind="images": frame index of each path within its video


@dataclasses.dataclass
class PreprocessConfig:
  num_frames: int = 32          # frames per video, evenly spaced (<= 0: all)
  scale: float = 1.3            # crop side = scale * max(tight box w, h)
  size: int = 317               # saved crop side (the release's 317); None keeps native
  image_format: str = "png"     # "png" or "jpg"
  jpeg_quality: int = 95
  workers: int = 0              # 0 = in this process; n = a pool of n worker processes
  retry_failed: bool = False    # rerun tasks recorded as failed (unreadable video, ...)
  mp_context: str | None = None  # multiprocessing start method (None: platform default)
  progress: bool = True         # tqdm bar


@dataclasses.dataclass
class Summary:
  tasks: int = 0
  processed: int = 0            # tasks run by this call
  resumed: int = 0              # tasks already done by an earlier run
  records: int = 0
  failed: dict = dataclasses.field(default_factory=dict)         # reason -> task count
  skipped_frames: dict = dataclasses.field(default_factory=dict)  # reason -> frame count
  skipped_tasks: int = 0        # videos left out before processing (e.g. in no split)
  seconds: float = 0.0

  def line(self) -> str:
    failed = sum(self.failed.values())
    frames = sum(self.skipped_frames.values())
    return (f"{self.tasks} videos ({self.processed} processed now, {self.resumed} resumed), "
            f"{self.records} crops written; {failed} videos failed {dict(self.failed)}; "
            f"{frames} frames skipped {dict(self.skipped_frames)}; "
            f"{self.skipped_tasks} inputs left out before processing; {self.seconds:.1f}s")


# ----------------------------------------------------------------------------- layouts

def load_ffpp_splits(split_files: Mapping[str, str]) -> dict[str, str]:
  """Official FF++ split JSONs (lists of [target, source] id pairs) -> name -> split.

  Names: each id (real video) and ``a_b`` / ``b_a`` (the fake videos of the pair).
  """
  out: dict[str, str] = {}
  for split, path in split_files.items():
    if split not in manifest.SPLITS:
      raise ValueError(f"split name {split!r} (file {path}) is not one of {manifest.SPLITS}")
    with open(path) as f:
      try:
        pairs = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    for pair in pairs:
      if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
        raise ValueError(f"{path}: expected [target, source] pairs, got {pair!r}")
      a, b = (str(x) for x in pair)
      for name in (a, b, f"{a}_{b}", f"{b}_{a}"):
        if out.get(name, split) != split:
          raise ValueError(f"{path}: {name!r} is in both {out[name]!r} and {split!r}")
        out[name] = split
  return out


def ffpp_tasks(root: str, split_files: Mapping[str, str] | None = None,
               methods: Sequence[str] = FFPP_METHODS, compression: str = "c23",
               real_subdir: str = "youtube", default_split: str | None = None,
               ) -> tuple[list[Task], list[dict]]:
  """Tasks for a FaceForensics++ tree.

  ``root/original_sequences/<real_subdir>/<compression>/videos/<id>.mp4`` (source
  "real", identity id) and ``root/manipulated_sequences/<Method>/<compression>/videos/
  <target>_<source>.mp4`` (source Method, identity target). Splits come from
  ``split_files`` ({"train": "train.json", ...}); videos in none of them are left
  out (returned as skip entries) unless ``default_split`` names a split for them.
  Returns ``(tasks, skipped)``.
  """
  if split_files is None and default_split is None:
    raise ValueError("give the official split files (split_files={'train': ..., 'val': ..., 'test': ...}) "
                     "or a default_split for every video")
  split_of = load_ffpp_splits(split_files or {})
  groups = [("real", os.path.join(root, "original_sequences", real_subdir, compression, "videos"))]
  groups += [(m, os.path.join(root, "manipulated_sequences", m, compression, "videos")) for m in methods]
  tasks, skipped = [], []
  for source, folder in groups:
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"FF++ folder {folder!r} not found (layout: original_sequences/"
                              f"{real_subdir}/{compression}/videos, manipulated_sequences/<Method>/"
                              f"{compression}/videos; choose methods/compression to match)")
    for name in sorted(os.listdir(folder)):
      path = os.path.join(folder, name)
      if not videos.is_video(path):
        continue
      stem = os.path.splitext(name)[0]
      split = split_of.get(stem, default_split)
      if split is None:
        skipped.append({"video": f"{source}/{stem}", "path": path, "reason": "in no split file"})
        continue
      identity = stem if source == "real" else stem.split("_")[0]
      key = f"{source}/{stem}"
      tasks.append(Task(key=key, kind="video", paths=(path,), source=source,
                        is_fake=int(source != "real"), split=split, video_ids=(key,),
                        identity=identity, method=FFPP_FAMILY.get(source)))
  return tasks, skipped


def folder_tasks(real: Sequence[str] = (), fake: Sequence[str] = (), split: str = "test",
                 real_source: str = "real", fake_source: str = "fake",
                 num_frames: int = 32) -> list[Task]:
  """Tasks for "folders with real/fake labels" test sets (Celeb-DF, DFDC, DF-1.0, FSh, ...).

  Under each folder (recursively): every video file is a video; every sub-folder
  holding images is one video of stills (video id = the folder, ``num_frames`` of
  them sampled evenly); images lying directly in a given folder are one video each.
  Video ids are ``<source>/<folder name>/<relative path>``.
  """
  if split not in manifest.SPLITS:
    raise ValueError(f"split {split!r} is not one of {manifest.SPLITS}")
  tasks: list[Task] = []
  for dirs, source, is_fake in ((real, real_source, 0), (fake, fake_source, 1)):
    for top in dirs:
      if not os.path.isdir(top):
        raise FileNotFoundError(f"{'fake' if is_fake else 'real'} folder {top!r} not found")
      prefix = f"{source}/{os.path.basename(os.path.normpath(top))}"
      for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, top)
        files = sorted(filenames)
        for name in files:
          if videos.is_video(name):
            rel = os.path.normpath(os.path.join(rel_dir, os.path.splitext(name)[0]))
            vid = f"{prefix}/{rel}"
            tasks.append(Task(key=_safe_key(vid), kind="video", paths=(os.path.join(dirpath, name),),
                              source=source, is_fake=is_fake, split=split, video_ids=(vid,), identity=vid))
        images = [os.path.join(dirpath, n) for n in files if videos.is_image(n)]
        if not images:
          continue
        if rel_dir == ".":  # loose images: one video each
          vids = tuple(f"{prefix}/{os.path.splitext(os.path.basename(p))[0]}" for p in images)
          tasks.append(Task(key=_safe_key(f"{prefix}/_images"), kind="images", paths=tuple(images), source=source,
                            is_fake=is_fake, split=split, video_ids=vids, frames=(0,) * len(images)))
        else:
          keep = videos.evenly_spaced(len(images), num_frames)
          vid = f"{prefix}/{os.path.normpath(rel_dir)}"
          tasks.append(Task(key=_safe_key(vid), kind="images", paths=tuple(images[i] for i in keep), source=source,
                            is_fake=is_fake, split=split, video_ids=(vid,) * len(keep), identity=vid,
                            frames=tuple(keep)))
  _check_unique(tasks)
  return tasks


def list_tasks(list_file: str, split: str = "test", num_frames: int = 32) -> list[Task]:
  """Tasks from a CSV with header ``path,label`` and optional ``video_id,split,source,identity``.

  ``path`` (relative to the CSV's folder) is a video, an image or a folder of images;
  ``label`` is ``real``/``fake`` or ``0``/``1`` (1 = fake). Image rows sharing a
  ``video_id`` form one video (frames in row order).
  """
  base = os.path.dirname(os.path.abspath(list_file))
  with open(list_file, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows or not {"path", "label"} <= set(rows[0]):
    raise ValueError(f"{list_file}: needs a header with at least 'path,label' columns")
  tasks: list[Task] = []
  stills: dict[tuple, list[str]] = collections.OrderedDict()
  for i, row in enumerate(rows, 2):
    label = str(row["label"]).strip().lower()
    if label not in ("0", "1", "real", "fake"):
      raise ValueError(f"{list_file}:{i}: label {row['label']!r} must be real/fake or 0/1 (1 = fake)")
    is_fake = int(label in ("1", "fake"))
    path = os.path.join(base, row["path"])
    source = row.get("source") or ("fake" if is_fake else "real")
    row_split = row.get("split") or split
    if row_split not in manifest.SPLITS:
      raise ValueError(f"{list_file}:{i}: split {row_split!r} is not one of {manifest.SPLITS}")
    vid = row.get("video_id") or os.path.splitext(os.path.normpath(row["path"]))[0]
    identity = row.get("identity") or vid
    common = dict(source=source, is_fake=is_fake, split=row_split, identity=identity)
    if os.path.isdir(path):
      images = sorted(os.path.join(path, n) for n in os.listdir(path) if videos.is_image(n))
      keep = videos.evenly_spaced(len(images), num_frames)
      tasks.append(Task(key=_safe_key(vid), kind="images", paths=tuple(images[k] for k in keep),
                        video_ids=(vid,) * len(keep), frames=tuple(keep), **common))
    elif videos.is_image(path):
      stills.setdefault((vid, source, is_fake, row_split, identity), []).append(path)
    else:
      tasks.append(Task(key=_safe_key(vid), kind="video", paths=(path,), video_ids=(vid,), **common))
  for (vid, source, is_fake, row_split, identity), paths in stills.items():
    tasks.append(Task(key=_safe_key(vid), kind="images", paths=tuple(paths), source=source,
                      is_fake=is_fake, split=row_split, video_ids=(vid,) * len(paths),
                      identity=identity, frames=tuple(range(len(paths)))))
  _check_unique(tasks)
  return tasks


# ----------------------------------------------------------------------------- one task

def process_task(task: Task, detector: faces_lib.Detector, out_dir: str,
                 cfg: PreprocessConfig) -> dict[str, Any]:
  """Runs one task: crops + landmarks written under ``out_dir/task.key``; returns its part.

  Never raises for bad inputs: an unreadable video makes a ``failed`` part, a
  faceless or unreadable frame a skip entry.
  """
  records, skips = [], []
  ext = {"png": ".png", "jpg": ".jpg", "jpeg": ".jpg"}[cfg.image_format.lower()]
  task_dir = os.path.join(out_dir, task.key)
  status, error = "ok", None
  try:
    for path, vid, frame, rgb, err in _frames(task, cfg.num_frames):
      if err is not None:
        skips.append({"video": vid, "path": path, "frame": frame, "reason": f"unreadable image: {err}"})
        continue
      face = detector(rgb)
      if face is None:
        skips.append({"video": vid, "path": path, "frame": frame, "reason": "no face"})
        continue
      crop, lm = faces_lib.crop_face(rgb, face, cfg.scale, cfg.size)
      name = f"{frame:04d}{ext}" if len(set(task.video_ids)) == 1 else f"{_safe_name(vid)}_{frame:04d}{ext}"
      os.makedirs(task_dir, exist_ok=True)
      videos.write_image(os.path.join(task_dir, name), crop, cfg.jpeg_quality)
      rec = manifest.Record(path=f"{task.key}/{name}", source=task.source, is_fake=task.is_fake,
                            video_id=vid, split=task.split, identity=task.identity or vid,
                            frame=int(frame), landmarks=lm.tolist(), method=task.method)
      records.append(json.loads(rec.to_json()))
  except Exception as e:  # pylint: disable=broad-except
    # A corrupt video (or a decoder crash) must not stop a day-long job: record, go on.
    status, error = "failed", f"{type(e).__name__}: {e}"
    records = []
    skips = [{"video": task.key, "path": task.paths[0] if task.paths else "", "frame": None,
              "reason": f"unreadable video: {error}"}]
  part = {"key": task.key, "status": status, "error": error, "records": records, "skipped": skips}
  _write_json_atomic(_part_path(out_dir, task.key), part)
  return part


def _frames(task: Task, num_frames: int):
  if task.kind == "video":
    vid = task.video_ids[0]
    for frame, rgb in videos.sample_frames(task.paths[0], num_frames):
      yield task.paths[0], vid, frame, rgb, None
  elif task.kind == "images":
    frames = task.frames or tuple(range(len(task.paths)))
    for path, vid, frame in zip(task.paths, task.video_ids, frames):
      try:
        yield path, vid, frame, videos.read_image(path), None
      except videos.VideoError as e:
        yield path, vid, frame, None, str(e)
  else:
    raise ValueError(f"task {task.key}: unknown kind {task.kind!r}")


# ----------------------------------------------------------------------------- the job

_WORKER: dict[str, Any] = {}


def _init_worker(detector_factory, out_dir, cfg):
  _WORKER.update(detector=detector_factory(), out_dir=out_dir, cfg=cfg)


def _worker_task(task: Task) -> tuple[str, str]:
  part = process_task(task, _WORKER["detector"], _WORKER["out_dir"], _WORKER["cfg"])
  return part["key"], part["status"]


def run(tasks: Sequence[Task], out_dir: str, cfg: PreprocessConfig | None = None,
        detector_factory: Callable[[], faces_lib.Detector] = faces_lib.DlibDetector,
        metadata: Mapping[str, Any] | None = None, skipped: Iterable[dict] = ()) -> Summary:
  """Processes the pending ``tasks`` (resuming), then writes manifest and reports.

  ``detector_factory`` is called once per worker process (dlib objects are built
  there, not pickled). ``skipped``: entries for inputs left out before processing
  (e.g. FF++ videos in no split), copied into ``skipped.jsonl``.
  """
  cfg = cfg or PreprocessConfig()
  start = time.time()
  _check_unique(tasks)
  os.makedirs(os.path.join(out_dir, PARTS), exist_ok=True)
  pending, summary = [], Summary(tasks=len(tasks))
  for task in tasks:
    part = _read_part(out_dir, task.key)
    if part is None or (cfg.retry_failed and part["status"] != "ok"):
      pending.append(task)
  summary.resumed = len(tasks) - len(pending)
  summary.processed = len(pending)

  bar = _progress(len(tasks), summary.resumed, cfg.progress)
  try:
    if cfg.workers <= 0 or len(pending) <= 1:
      detector = detector_factory() if pending else None
      for task in pending:
        process_task(task, detector, out_dir, cfg)
        bar.update(1)
    else:
      _run_pool(pending, out_dir, cfg, detector_factory, bar)
  finally:
    bar.close()

  records, skips = [], list(skipped)
  summary.skipped_tasks = len(skips)
  for task in tasks:
    part = _read_part(out_dir, task.key)
    if part is None:
      raise RuntimeError(f"task {task.key}: no part file after processing")
    if part["status"] != "ok":
      reason = part["error"].split(":")[0]
      summary.failed[reason] = summary.failed.get(reason, 0) + 1
    for d in part["records"]:
      records.append(manifest.parse_line(json.dumps(d), f"{_part_path(out_dir, task.key)}"))
    for s in part["skipped"]:
      skips.append(s)
      if s.get("frame") is not None:
        reason = s["reason"].split(":")[0]
        summary.skipped_frames[reason] = summary.skipped_frames.get(reason, 0) + 1
  summary.records = len(records)
  meta = {"name": os.path.basename(os.path.normpath(out_dir)), "hierarchy": "ffpp",
          "image_size": cfg.size,
          "notes": {"preprocess": {k: v for k, v in dataclasses.asdict(cfg).items()
                                   if k in ("num_frames", "scale", "size", "image_format")}}}
  meta.update(metadata or {})
  manifest.write(out_dir, records, meta)
  _write_lines_atomic(os.path.join(out_dir, SKIPPED), (json.dumps(s) for s in skips))
  summary.seconds = time.time() - start
  _write_json_atomic(os.path.join(out_dir, SUMMARY), dataclasses.asdict(summary))
  return summary


def _run_pool(pending: Sequence[Task], out_dir: str, cfg: PreprocessConfig, detector_factory, bar) -> None:
  """Runs tasks in worker processes, at most ``workers`` in flight.

  A worker that dies (a decoder segfault, the OOM killer) breaks the pool: the
  tasks then in flight are retried one at a time in a one-worker pool, and the one
  that kills its worker again is recorded as failed; then the rest go on.
  """
  ctx = multiprocessing.get_context(cfg.mp_context)
  todo = list(pending)
  while todo:
    suspects = []
    with concurrent.futures.ProcessPoolExecutor(min(cfg.workers, len(todo)), mp_context=ctx,
                                                initializer=_init_worker,
                                                initargs=(detector_factory, out_dir, cfg)) as pool:
      queue, in_flight = collections.deque(todo), {}
      try:
        while queue or in_flight:
          while queue and len(in_flight) < cfg.workers:
            task = queue.popleft()
            in_flight[pool.submit(_worker_task, task)] = task
          done, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
          for fut in done:
            fut.result()  # raises BrokenProcessPool if a worker died
            in_flight.pop(fut)
            bar.update(1)
        todo = []
      except concurrent.futures.process.BrokenProcessPool:
        suspects = [t for f, t in in_flight.items() if not (f.done() and f.exception() is None)]
        todo = list(queue)
    for task in suspects:  # one at a time: a crash now names its task
      with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx, initializer=_init_worker,
                                                  initargs=(detector_factory, out_dir, cfg)) as one:
        try:
          one.submit(_worker_task, task).result()
        except concurrent.futures.process.BrokenProcessPool:
          error = "WorkerDied: the worker process died on this video (out of memory? decoder crash?)"
          _write_json_atomic(_part_path(out_dir, task.key), {
              "key": task.key, "status": "failed", "error": error, "records": [],
              "skipped": [{"video": task.key, "path": task.paths[0] if task.paths else "", "frame": None,
                           "reason": f"unreadable video: {error}"}]})
      bar.update(1)


# ----------------------------------------------------------------------------- helpers

def _progress(total, initial, enabled):
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=initial, unit="video", disable=not enabled, dynamic_ncols=True)


def _safe_name(s: str) -> str:
  return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def _safe_key(s: str) -> str:
  parts = [_safe_name(p) for p in s.replace("\\", "/").split("/") if p not in ("", ".", "..")]
  return "/".join(parts) or "_"


def _check_unique(tasks: Sequence[Task]) -> None:
  seen = collections.Counter(t.key for t in tasks)
  dup = [k for k, n in seen.items() if n > 1]
  if dup:
    raise ValueError(f"duplicate task keys (two inputs would write the same crops): {dup[:5]}")


def _part_path(out_dir: str, key: str) -> str:
  return os.path.join(out_dir, PARTS, key.replace("/", "__") + ".json")


def _read_part(out_dir: str, key: str) -> dict | None:
  path = _part_path(out_dir, key)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f)
  os.replace(tmp, path)


def _write_lines_atomic(path: str, lines: Iterable[str]) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    for line in lines:
      f.write(line + "\n")
  os.replace(tmp, path)
