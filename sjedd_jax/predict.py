r"""Predicts P(fake) and what the detector explains for images, videos or folders (any detector).

    python -m sjedd_jax.predict --export WORKDIR/export photo.jpg clip.mp4 some_folder/
    python -m sjedd_jax.predict --release ckpt_epoch_19.pth --out preds.jsonl --plots plots/ DIR
    python -m sjedd_jax.predict --config configs/ffpp.py --workdir WORKDIR --checkpoint latest x.png

Folders are searched recursively for image and video files (``data.videos``'
extensions). In each image (or each of ``--num_frames`` evenly sampled video
frames) the largest face is found by dlib, cropped as in preprocessing (a square
1.3x the face box, saved at ``--crop_size`` px) and resized to the model's input
size with the detector's normalisation (``data.model_input``); ``--no_detect`` takes
inputs as face crops already. A video's P(fake) and the detector's outputs are the
mean over its frames with a face.

One JSON line per input file goes to stdout (or ``--out``); the fields after
``fake`` are the detector's (``Detector.describe``), e.g. SJEDD's::

    {"path": "x.png", "kind": "image", "p_fake": 0.97, "fake": true,
     "marginals": {"fake": 0.97, "identity": 0.03, ...},
     "explanation": "The face image is fake because ...", "globals": [...], "locals": [...],
     "num_faces": 1, "box": [x0, y0, x1, y1]}

videos add ``num_frames`` (sampled), ``frames`` (index, P(fake), box of each frame
with a face); a file that cannot be used gets ``{"path", "kind", "error"}``
("unreadable image: ...", "no face detected", ...) and the run goes on. The exit
code is 0 unless no file at all could be scored. ``--plots DIR`` writes the
detector's picture of each file (``Detector.plot``; SJEDD: a bar chart of the
marginals; LiSiam: the localisation map over the face). A plot function that takes a
``face`` argument gets the face crop the model saw (of the first face of a video).

From Python (no subprocess)::

    detector, variables = detectors.load_export("WORKDIR/export")
    results = predict_files(detector, variables, ["x.png"], face_detector=faces.DlibDetector())
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm.auto import tqdm

from sjedd_jax import cli, inference
from sjedd_jax.config import ConfigError
from sjedd_jax.data import model_input
from sjedd_jax.data import faces as faces_lib
from sjedd_jax.data import videos

__all__ = ["predict_files", "collect_inputs", "face_crops", "Predictor", "load_model", "summary"]


# ----------------------------------------------------------------- inputs
def collect_inputs(paths: Iterable[str]) -> list[str]:
  """Files to predict: given files as they are, folders searched recursively (sorted).

  Folders contribute files with an image or video extension; a file named
  explicitly is kept whatever its extension (it is read as an image unless it has
  a video extension). Missing paths are kept, to be reported as errors.
  """
  out = []
  for p in paths:
    p = os.path.expanduser(p)
    if os.path.isdir(p):
      found = []
      for root, dirs, files in os.walk(p):
        dirs.sort()
        found += [os.path.join(root, f) for f in files if videos.is_image(f) or videos.is_video(f)]
      out += sorted(found)
    else:
      out.append(p)
  return out


def face_crops(frame: np.ndarray, face_detector: faces_lib.Detector | None, image_size: int, *,
               mean=None, std=None, crop_scale: float = 1.3, crop_size: int | None = 317):
  """``(model input (S, S, 3) float32, face box or None)``; ``(None, None)`` when no face.

  With a face detector: the largest face, cropped ``crop_scale`` x its box and saved
  at ``crop_size`` like preprocessing, then resized to ``image_size`` and normalised
  with ``mean``/``std`` (default CLIP's). Without (``None``): the whole frame is the face.
  """
  from sjedd_jax.backbones import clip as clip_backbone  # pylint: disable=g-import-not-at-top
  mean = clip_backbone.MEAN if mean is None else mean
  std = clip_backbone.STD if std is None else std
  if face_detector is None:
    return model_input.preprocess_np(frame, image_size, mean, std), None
  face = face_detector(frame)
  if face is None:
    return None, None
  crop, _ = faces_lib.crop_face(frame, face, scale=crop_scale, size=crop_size or None)
  return model_input.preprocess_np(crop, image_size, mean, std), [round(float(v), 1) for v in face.box]


# ------------------------------------------------------------------ model
class Predictor:
  """A fixed-size batch of faces through one jitted ``Detector.predict`` (compiles once).

  Data parallel over all devices (``evaluator.Evaluator``); the batch is rounded up
  to a multiple of the device count and short batches are zero padded.
  """

  def __init__(self, detector, variables, batch_size: int = 32):
    from sjedd_jax import evaluator as evaluator_lib  # pylint: disable=g-import-not-at-top
    self.detector = detector
    self.evaluator = evaluator_lib.Evaluator(detector)
    n_dev = self.evaluator.mesh.devices.size
    self.batch_size = max(1, -(-int(batch_size) // n_dev)) * n_dev
    self.variables = variables
    self.image_size = int(detector.image_size)

  def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """(B, S, S, 3) float32 with B <= batch_size -> the detector's outputs, float64 numpy, B rows."""
    b = images.shape[0]
    if b > self.batch_size:
      raise ValueError(f"{b} faces > batch_size {self.batch_size}")
    batch = np.zeros((self.batch_size,) + images.shape[1:], np.float32)
    batch[:b] = images
    out = self.evaluator.predict(self.variables, batch)
    return {k: np.asarray(v, np.float64)[:b] for k, v in out.items()}


# ------------------------------------------------------------------ core
def _safe_name(path: str) -> str:
  name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(path)).strip("_") or "file"
  return name[:100]


def _face_uint8(x: np.ndarray, mean, std) -> np.ndarray:
  """The face crop the model saw (its normalised input undone), uint8 RGB."""
  from sjedd_jax.backbones import clip as clip_backbone  # pylint: disable=g-import-not-at-top
  mean = np.asarray(clip_backbone.MEAN if mean is None else mean, np.float32)
  std = np.asarray(clip_backbone.STD if std is None else std, np.float32)
  return np.clip(np.round((np.asarray(x, np.float32) * std + mean) * 255.0), 0, 255).astype(np.uint8)


def _accepts(fn, name: str) -> bool:
  try:
    params = inspect.signature(fn).parameters
  except (TypeError, ValueError):
    return False
  return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def predict_files(detector, variables, paths: Sequence[str], *,
                  face_detector: faces_lib.Detector | None, num_frames: int = 32, batch_size: int = 32,
                  threshold: float = 0.5, crop_scale: float = 1.3, crop_size: int | None = 317,
                  plots_dir: str | None = None, progress: bool = True,
                  on_result: Callable[[dict], None] | None = None,
                  predictor: Predictor | None = None) -> list[dict[str, Any]]:
  """One result dict per file of ``collect_inputs(paths)``, in that order.

  Args:
    detector, variables: the model (``inference.load`` / ``detectors.load_export``).
    paths: files and/or folders.
    face_detector: a face detector (``faces.DlibDetector()``); None: inputs are face crops.
    num_frames: evenly sampled frames per video (<= 0: all).
    batch_size: faces per model call (padded).
    threshold: for ``fake`` and the explanation.
    crop_scale, crop_size: the crop, as in preprocessing.
    plots_dir: write ``NNNN_<name>.png`` pictures (``Detector.plot``) here.
    progress: tqdm bar over files on stderr.
    on_result: called with each result as soon as it is complete (in order).
    predictor: reuse a ``Predictor`` (and its compilation) across calls.
  Returns:
    The result dicts (see the module docstring); errors carry an ``"error"`` key.
  """
  pred = predictor or Predictor(detector, variables, batch_size)
  files = collect_inputs(paths)
  results: list[dict[str, Any] | None] = [None] * len(files)
  pending: dict[int, dict[str, Any]] = {}  # file index -> {"result", "outputs": [...], "need": n}
  queue: list[tuple[int, int, np.ndarray]] = []  # (file index, face slot, model input)
  emitted = 0

  def finish(i: int, res: dict[str, Any]) -> None:
    results[i] = res

  def emit_ready() -> None:
    nonlocal emitted
    while emitted < len(files) and results[emitted] is not None:
      if on_result is not None:
        on_result(results[emitted])
      emitted += 1

  def finalise(i: int) -> None:
    st = pending.pop(i)
    res = st["result"]
    outs = {k: np.stack([o[k] for o in st["outputs"]]) for k in st["outputs"][0]}
    mean = {k: v.mean(0) for k, v in outs.items()}
    p_fake = float(mean["p_fake"])
    subject = "face video" if res["kind"] == "video" else "face image"
    res.update(p_fake=p_fake, fake=bool(p_fake > threshold))
    res.update(detector.describe(mean, threshold=threshold, subject=subject))
    res["num_faces"] = int(outs["p_fake"].shape[0])
    if res["kind"] == "video":
      res["frames"] = [{"frame": f, "p_fake": float(p), "box": b}
                       for (f, b), p in zip(st["meta"], outs["p_fake"])]
    else:
      res["box"] = st["meta"][0][1]
    if plots_dir and detector.plot is not None:
      png = os.path.join(plots_dir, f"{i:04d}_{_safe_name(res['path'])}.png")
      title = f"{os.path.basename(res['path'])}: {res.get('explanation', f'P(fake) = {p_fake:.2f}')}"
      try:
        kwargs = {"face": st["face"]} if _accepts(detector.plot, "face") else {}
        detector.plot(mean, png, title=title, image=st.get("image"), threshold=threshold, **kwargs)
        res["plot"] = png
      except OSError as e:  # an unwritable plots folder must not drop the scores
        res["plot_error"] = f"could not write {png}: {e.strerror or e}"
    finish(i, res)

  def flush() -> None:
    if not queue:
      return
    out = pred(np.stack([q[2] for q in queue]))
    for j, (i, slot, _) in enumerate(queue):
      st = pending[i]
      st["outputs"][slot] = {k: v[j] for k, v in out.items()}
      st["need"] -= 1
      if st["need"] == 0:
        finalise(i)
    queue.clear()
    emit_ready()

  for i, path in enumerate(tqdm(files, desc="predict", unit="file", disable=not progress, file=sys.stderr,
                                dynamic_ncols=True)):
    kind = "video" if videos.is_video(path) else "image"
    res: dict[str, Any] = {"path": path, "kind": kind}
    inputs, meta = [], []
    try:
      if kind == "video":
        frames = list(videos.sample_frames(path, num_frames))
        res["num_frames"] = len(frames)
      else:
        frames = [(0, videos.read_image(path))]
    except videos.VideoError as e:
      finish(i, {**res, "error": f"unreadable {kind}: {e}"})
      emit_ready()
      continue
    except Exception as e:  # pylint: disable=broad-except  (a decoder crash must not stop the batch)
      finish(i, {**res, "error": f"unreadable {kind}: {type(e).__name__}: {e}"})
      emit_ready()
      continue
    try:
      for f, rgb in frames:
        x, box = face_crops(rgb, face_detector, pred.image_size, mean=detector.mean, std=detector.std,
                            crop_scale=crop_scale, crop_size=crop_size)
        if x is not None:
          inputs.append(x)
          meta.append((int(f), box))
    except Exception as e:  # pylint: disable=broad-except
      finish(i, {**res, "error": f"face detection failed: {type(e).__name__}: {e}"})
      emit_ready()
      continue
    if not inputs:
      err = "no face detected" + (f" in {len(frames)} sampled frames" if kind == "video" else "")
      finish(i, {**res, "error": err})
      emit_ready()
      continue
    if kind == "video" and len(inputs) < len(frames):
      res["frames_without_face"] = len(frames) - len(inputs)
    pending[i] = {"result": res, "outputs": [None] * len(inputs), "need": len(inputs), "meta": meta,
                  "image": frames[0][1] if kind == "image" else None,
                  "face": _face_uint8(inputs[0], detector.mean, detector.std)}
    for slot, x in enumerate(inputs):
      queue.append((i, slot, x))
      if len(queue) == pred.batch_size:
        flush()
  flush()
  emit_ready()
  return [r for r in results if r is not None]


# -------------------------------------------------------------------- CLI
def summary(results: Sequence[dict]) -> tuple[str, int]:
  """``(summary line, exit code)``: 0 when at least one file was scored, else 1."""
  ok = sum("error" not in r for r in results)
  fake = sum(bool(r.get("fake")) for r in results if "error" not in r)
  return f"predicted {ok} of {len(results)} files ({fake} fake, {len(results) - ok} errors)", int(ok == 0)


def load_model(*, export: str | None = None, release: str | None = None, config=None,
               workdir: str | None = None, checkpoint: str = "best", dtype: str | None = None):
  """``(Detector, Variables)`` from exactly one model source (``inference.load``)."""
  return inference.load(export=export, release=release, config=config, workdir=workdir,
                        checkpoint=checkpoint, dtype=dtype)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """The CLI's flags. Defined on demand, not at import: absl flags are global, and
  ``sjedd_jax.train``/``evaluate`` define ``--config``/``--workdir`` too, so importing
  this module next to them (a test session, a notebook) must not redefine them."""
  config_flags.DEFINE_config_file("config", None, "Training config (with --workdir).", lock_config=True,
                                  flag_values=fv)
  flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints (with --config).", flag_values=fv)
  flags.DEFINE_string("checkpoint", "best", "With --config/--workdir: best or latest.", flag_values=fv)
  flags.DEFINE_string("export", None, "A model exported by training (WORKDIR/export).", flag_values=fv)
  flags.DEFINE_string("release", None, "The authors' release checkpoint (.pth or converted dir).", flag_values=fv)
  flags.DEFINE_string("dtype", None, "Compute dtype for --export/--release (float32, bfloat16).", flag_values=fv)
  flags.DEFINE_string("out", None, "Write JSON lines here instead of stdout.", flag_values=fv)
  flags.DEFINE_string("plots", None, "Directory for one PNG per file (the detector's picture: SJEDD's marginals).",
                      flag_values=fv)
  flags.DEFINE_integer("num_frames", 32, "Evenly sampled frames per video (<= 0: all).", flag_values=fv)
  flags.DEFINE_bool("no_detect", False, "Inputs are face crops already: no detection/cropping.", flag_values=fv)
  flags.DEFINE_integer("batch_size", 32, "Faces per model call (padded; one compilation).", flag_values=fv)
  flags.DEFINE_float("threshold", 0.5, "A node is altered when its marginal is above this.", flag_values=fv)
  flags.DEFINE_integer("upsample", 1, "dlib upsampling (1 finds faces down to ~40 px; 0 is faster).",
                       flag_values=fv)
  flags.DEFINE_float("crop_scale", 1.3, "Crop side / face box side (preprocessing's 1.3).", flag_values=fv)
  flags.DEFINE_integer("crop_size", 317, "Side the crop is saved at before resizing to the model's "
                       "input, as in preprocessing (0: native).", flag_values=fv)


def main(argv, fv: flags.FlagValues = flags.FLAGS):
  f = fv
  if "verbosity" not in f or not f["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  inputs = argv[1:]
  if not inputs:
    raise app.UsageError("give image/video files or folders to predict")
  for what, d in (("--plots", f.plots), ("--out", os.path.dirname(os.path.abspath(f.out)) if f.out else None)):
    if d:  # output locations first: nothing is scored for results that could not be written
      try:
        os.makedirs(d, exist_ok=True)
      except OSError as e:
        raise ConfigError(f"{what}: cannot create {d!r} ({e.strerror})") from None
      if not os.access(d, os.W_OK):
        raise ConfigError(f"{what}: {d!r} is not writable")
  config = cli.config_value(f["config"]) if f["config"].present else None
  detector, variables = load_model(export=f.export, release=f.release, config=config,
                                   workdir=f.workdir, checkpoint=f.checkpoint, dtype=f.dtype)
  face_detector = None if f.no_detect else faces_lib.DlibDetector(upsample=f.upsample)
  out = open(f.out, "w") if f.out else sys.stdout  # pylint: disable=consider-using-with

  def write(res):
    out.write(json.dumps(res) + "\n")
    out.flush()

  try:
    results = predict_files(detector, variables, inputs, face_detector=face_detector, num_frames=f.num_frames,
                            batch_size=f.batch_size, threshold=f.threshold, crop_scale=f.crop_scale,
                            crop_size=f.crop_size or None, plots_dir=f.plots, on_result=write)
  finally:
    if out is not sys.stdout:
      out.close()
  line, code = summary(results)
  print(line + (f"; results in {f.out}" if f.out else ""), file=sys.stderr)
  if code:
    sys.exit(code)


if __name__ == "__main__":
  define_flags()
  cli.run(main)
