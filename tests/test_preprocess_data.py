"""The preprocessing job on an FF++-shaped tree of tiny synthetic videos.

Faces are bright squares found by a pluggable detector; one test runs the real
dlib detector through the CLI on a video made of the astronaut photograph.
"""

import dataclasses
import importlib.util
import json
import os

import cv2
import numpy as np
import pytest
import skimage.data

from sjedd_jax.data import faces, manifest, preprocess, videos
from sjedd_jax.detectors import sjedd as sjedd_det

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 32  # saved crop side in these tests


def write_video(path, frames, fps=10):
  h, w = frames[0].shape[:2]
  fourcc = "MJPG" if path.endswith(".avi") else "mp4v"
  writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
  assert writer.isOpened(), path
  for f in frames:
    writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
  writer.release()


def square_frames(n=8, face=True, seed=0):
  """64x80 dark frames with a bright 20x20 'face' moving right (or none)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    f = rng.integers(0, 40, (64, 80, 3), dtype=np.uint8)
    if face:
      f[20:40, 10 + 2 * i:30 + 2 * i] = 230
    out.append(f)
  return out


def square_detector(frame):
  """Pluggable detector: the bounding box of bright pixels; 68 points on a grid in it."""
  ys, xs = np.nonzero(frame.mean(-1) > 150)
  if len(xs) < 50:
    return None
  x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
  t = np.linspace(0.1, 0.9, 68)
  lm = np.stack([x0 + t * (x1 - x0), y0 + t[::-1] * (y1 - y0)], -1).astype(np.float32)
  return faces.Face(box=(float(x0), float(y0), float(x1), float(y1)), landmarks=lm)


def square_factory():
  return square_detector


def make_ffpp(root):
  """Real 000-003 (003 faceless), Deepfakes 000_001/001_000, Face2Face 002_003,
  a corrupt Deepfakes/003_002.mp4 and a real 999 in no split."""
  real = os.path.join(root, "original_sequences/youtube/c23/videos")
  os.makedirs(real)
  for i, vid in enumerate(["000", "001", "002", "999"]):
    write_video(os.path.join(real, f"{vid}.mp4"), square_frames(seed=i))
  write_video(os.path.join(real, "003.mp4"), square_frames(face=False))
  for method, names in [("Deepfakes", ["000_001", "001_000"]), ("Face2Face", ["002_003"])]:
    d = os.path.join(root, f"manipulated_sequences/{method}/c23/videos")
    os.makedirs(d)
    for j, name in enumerate(names):
      write_video(os.path.join(d, f"{name}.avi" if j else f"{name}.mp4"), square_frames(seed=10 + j))
  with open(os.path.join(root, "manipulated_sequences/Deepfakes/c23/videos/003_002.mp4"), "wb") as f:
    f.write(b"\x00\x01not a video" * 50)
  splits = {}
  for split, pairs in [("train", [["000", "001"]]), ("val", [["002", "003"]])]:
    splits[split] = os.path.join(root, f"{split}.json")
    with open(splits[split], "w") as f:
      json.dump(pairs, f)
  return splits


@pytest.fixture(scope="module")
def ffpp(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("ffpp"))
  splits = make_ffpp(root)
  tasks, pre = preprocess.ffpp_tasks(root, splits, methods=("Deepfakes", "Face2Face"))
  return root, tasks, pre


CFG = preprocess.PreprocessConfig(num_frames=4, size=SIZE, progress=False)


def manifest_lines(out):
  with open(os.path.join(out, manifest.MANIFEST)) as f:
    return f.read()


def test_ffpp_tasks(ffpp):
  _, tasks, pre = ffpp
  by_key = {t.key: t for t in tasks}
  assert sorted(by_key) == ["Deepfakes/000_001", "Deepfakes/001_000", "Deepfakes/003_002",
                            "Face2Face/002_003", "real/000", "real/001", "real/002", "real/003"]
  assert by_key["Deepfakes/001_000"].identity == "001" and by_key["Deepfakes/001_000"].split == "train"
  assert by_key["Face2Face/002_003"].split == "val" and by_key["Face2Face/002_003"].is_fake == 1
  assert by_key["real/003"].split == "val" and by_key["real/003"].is_fake == 0
  assert [s["video"] for s in pre] == ["real/999"]


def test_preprocess_ffpp_resume(ffpp, tmp_path):
  _, tasks, pre = ffpp
  out = str(tmp_path / "out")
  s = preprocess.run(tasks, out, CFG, detector_factory=square_factory, skipped=pre)
  assert (s.tasks, s.processed, s.resumed) == (8, 8, 0)
  recs = manifest.read(out)
  # 6 videos with faces x 4 frames; the faceless one and the corrupt one give none.
  assert len(recs) == 24 and s.records == 24
  assert {r.video_id for r in recs} == {"real/000", "real/001", "real/002", "Deepfakes/000_001",
                                        "Deepfakes/001_000", "Face2Face/002_003"}
  assert sorted({r.frame for r in recs}) == [0, 2, 5, 7]
  r = next(r for r in recs if r.video_id == "Deepfakes/001_000")
  assert (r.source, r.is_fake, r.identity, r.split, r.method) == ("Deepfakes", 1, "001", "train", "identity_swap")
  y, mask = sjedd_det.record_label(r)
  assert y[0] == 1 and mask.sum() < 10  # Table I row with N/A
  img = videos.read_image(os.path.join(out, r.path))
  assert img.shape == (SIZE, SIZE, 3)
  lm = np.asarray(r.landmarks)
  assert lm.shape == (68, 2) and lm.min() > 0 and lm.max() < SIZE
  # The bright square fills the middle 1/1.3 of the crop.
  c = (SIZE - SIZE / 1.3) / 2
  assert img[int(c) + 2:int(SIZE - c) - 2, int(c) + 2:int(SIZE - c) - 2].mean() > 200
  assert s.failed == {"VideoError": 1} and s.skipped_frames == {"no face": 4} and s.skipped_tasks == 1
  with open(os.path.join(out, preprocess.SKIPPED)) as f:
    skipped = [json.loads(l) for l in f]
  reasons = {(k["video"], k["reason"].split(":")[0]) for k in skipped}
  assert reasons == {("real/999", "in no split file"), ("Deepfakes/003_002", "unreadable video"),
                     ("real/003", "no face")}
  assert manifest.read_metadata(out)["image_size"] == SIZE
  first = manifest_lines(out)

  # A second run finds everything done.
  s2 = preprocess.run(tasks, out, CFG, detector_factory=_fail_factory, skipped=pre)
  assert (s2.processed, s2.resumed) == (0, 8) and manifest_lines(out) == first

  # A killed run: two videos' part files missing (their crops half written).
  for key in ("real/001", "Face2Face/002_003"):
    os.remove(preprocess._part_path(out, key))
  os.remove(os.path.join(out, "real/001/0000.png"))
  with open(os.path.join(out, manifest.MANIFEST), "w") as f:
    f.write("")  # a stale manifest is rewritten at the end
  s3 = preprocess.run(tasks, out, CFG, detector_factory=square_factory, skipped=pre)
  assert (s3.processed, s3.resumed) == (2, 6) and manifest_lines(out) == first
  assert os.path.exists(os.path.join(out, "real/001/0000.png"))

  # retry_failed reruns only the corrupt video.
  s4 = preprocess.run(tasks, out, preprocess.PreprocessConfig(num_frames=4, size=SIZE, progress=False,
                                                              retry_failed=True),
                      detector_factory=square_factory, skipped=pre)
  assert s4.processed == 1 and manifest_lines(out) == first


def _fail_factory():
  raise AssertionError("nothing should be processed")


def test_pool_matches_in_process(ffpp, tmp_path):
  _, tasks, pre = ffpp
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  preprocess.run(tasks[:4], a, CFG, detector_factory=square_factory)
  cfg = preprocess.PreprocessConfig(num_frames=4, size=SIZE, progress=False, workers=2, mp_context="fork")
  s = preprocess.run(tasks[:4], b, cfg, detector_factory=square_factory)
  assert s.processed == 4 and manifest_lines(a) == manifest_lines(b)


def test_folder_and_list_layouts(tmp_path):
  real, fake = tmp_path / "real", tmp_path / "fake"
  (real / "clip_a").mkdir(parents=True)
  fake.mkdir()
  write_video(str(real / "v1.mp4"), square_frames(6))
  for i, f in enumerate(square_frames(5)):  # a per-video folder of stills
    videos.write_image(str(real / "clip_a" / f"{i:03d}.png"), f)
  for i, f in enumerate(square_frames(2, seed=3)):  # loose images: one video each
    videos.write_image(str(fake / f"img{i}.jpg"), f)
  with open(fake / "broken.png", "wb") as f:
    f.write(b"nope")
  tasks = preprocess.folder_tasks([str(real)], [str(fake)], num_frames=3, fake_source="CDF-fake")
  out = str(tmp_path / "out")
  s = preprocess.run(tasks, out, CFG, detector_factory=square_factory)
  recs = manifest.read(out)
  by_vid = {}
  for r in recs:
    by_vid.setdefault(r.video_id, []).append(r)
  assert sorted(by_vid) == ["CDF-fake/fake/img0", "CDF-fake/fake/img1", "real/real/clip_a", "real/real/v1"]
  assert [r.frame for r in by_vid["real/real/clip_a"]] == [0, 2, 4]
  assert len(by_vid["real/real/v1"]) == CFG.num_frames and all(r.split == "test" for r in recs)
  assert {r.is_fake for r in by_vid["CDF-fake/fake/img0"]} == {1}
  assert s.skipped_frames == {"unreadable image": 1}
  y, mask = sjedd_det.record_label(by_vid["CDF-fake/fake/img1"][0])
  assert y[0] == 1 and mask.sum() == 1  # not a Table I source: primary label only

  csv_path = tmp_path / "list.csv"
  csv_path.write_text("path,label,video_id\nreal/v1.mp4,0,\nfake/img0.jpg,fake,g\nfake/img1.jpg,1,g\n")
  tasks = preprocess.list_tasks(str(csv_path), num_frames=2)
  out2 = str(tmp_path / "out2")
  preprocess.run(tasks, out2, dataclasses.replace(CFG, num_frames=2), detector_factory=square_factory)
  recs = manifest.read(out2)
  assert [(r.video_id, r.is_fake, r.frame) for r in recs] == [
      ("real/v1", 0, 0), ("real/v1", 0, 5), ("g", 1, 0), ("g", 1, 1)]


def test_bad_inputs_raise_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="manipulated_sequences"):
    preprocess.ffpp_tasks(str(tmp_path), default_split="train")
  bad = tmp_path / "s.json"
  bad.write_text('[["000"]]')
  with pytest.raises(ValueError, match="pairs"):
    preprocess.load_ffpp_splits({"train": str(bad)})
  csv_path = tmp_path / "l.csv"
  csv_path.write_text("path,label\nx.mp4,maybe\n")
  with pytest.raises(ValueError, match="maybe"):
    preprocess.list_tasks(str(csv_path))


def test_cli_with_dlib_on_a_real_face(tmp_path):
  """The whole tool with the real dlib detector: a short video of the astronaut photo."""
  spec = importlib.util.spec_from_file_location("preprocess_ffpp", os.path.join(REPO, "scripts/preprocess_ffpp.py"))
  preprocess_ffpp = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(preprocess_ffpp)
  img = skimage.data.astronaut()[:320:2, 64:384:2]  # 160x160, face about 45 px
  frames = [np.roll(img, 2 * i, axis=1) for i in range(3)]
  real = tmp_path / "real"
  real.mkdir()
  write_video(str(real / "astro.avi"), frames)
  out = str(tmp_path / "out")
  preprocess_ffpp.main(["--layout", "folders", "--real", str(real), "--out", out, "--num-frames", "2",
                        "--size", "64", "--workers", "0", "--format", "jpg"])
  recs = manifest.read(out)
  assert [r.frame for r in recs] == [0, 2] and all(r.path.endswith(".jpg") for r in recs)
  lm = np.asarray(recs[0].landmarks)
  # Eyes above nose tip above mouth, all inside the 64-px crop.
  assert lm[36:48, 1].mean() < lm[30, 1] < lm[48:68, 1].mean()
  assert lm.min() > 0 and lm.max() < 64


def crashing_factory():
  """A detector that kills its worker process on frames marked by a grey top band."""
  def detect(frame):
    face = square_detector(frame)
    if face is not None and abs(frame[:8].mean() - 100) < 10:
      os._exit(1)
    return face
  return detect


def test_a_worker_dying_on_one_video_fails_only_that_video(tmp_path):
  d = tmp_path / "videos"
  d.mkdir()
  for i in range(4):
    frames = square_frames(4, seed=i)
    if i == 2:
      for f in frames:
        f[:8] = 100  # the marker that makes crashing_factory's detector exit
    write_video(str(d / f"v{i}.avi"), frames)
  tasks = preprocess.folder_tasks([str(d)], num_frames=2)
  cfg = preprocess.PreprocessConfig(num_frames=2, size=SIZE, progress=False, workers=2, mp_context="fork")
  s = preprocess.run(tasks, str(tmp_path / "out"), cfg, detector_factory=crashing_factory)
  assert s.failed == {"WorkerDied": 1} and s.records == 6
  assert {r.video_id for r in manifest.read(str(tmp_path / "out"))} == {
      "real/videos/v0", "real/videos/v1", "real/videos/v3"}
