"""predict: images, videos and folders -> P(fake), marginals, explanations; errors per file.

The model is a random-weight "test" SJEDD written with the detector's ``export`` and
read back with ``detectors.load_export`` (what ``--export`` does). Faces are bright squares found
by a stand-in detector, except in the dlib test (skimage's astronaut).
"""

import json
import os
import subprocess
import sys

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from flax import nnx

from sjedd_jax import config as config_lib, predict
from sjedd_jax.detectors import sjedd as sjedd_det
from sjedd_jax.backbones import clip as clip_backbone
from sjedd_jax.data import model_input
from sjedd_jax.data import faces, videos
from sjedd_jax.detectors.sjedd import model as sjedd

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def square_detector(frame):
  """The bounding box of bright pixels as the face; 68 points on a grid in it."""
  ys, xs = np.nonzero(frame.mean(-1) > 150)
  if len(xs) < 50:
    return None
  x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
  t = np.linspace(0.1, 0.9, 68)
  lm = np.stack([x0 + t * (x1 - x0), y0 + t[::-1] * (y1 - y0)], -1).astype(np.float32)
  return faces.Face(box=(float(x0), float(y0), float(x1), float(y1)), landmarks=lm)


def face_frame(rng, shift=0):
  f = rng.integers(0, 60, (80, 96, 3), dtype=np.uint8)
  f[20:60, 25 + shift:65 + shift] = rng.integers(160, 256, (40, 40, 3), dtype=np.uint8)
  return f


def random_test_model(seed=0, std=0.3):
  """The "test" SJEDD with N(0, std) weights, made without eager init (which compiles op by op)."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: sjedd.build("test", rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)
  state = jax.tree.map(lambda s: jnp.asarray((rng.standard_normal(s.shape) * std).astype(s.dtype)), state)
  return nnx.merge(graphdef, state)


_own_marginals_fn = nnx.jit(lambda m, x: m.marginals(x))


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("export") / "export")
  sjedd_det.export(random_test_model(), d, {"note": "test"})
  detector, variables = predict.load_model(export=d)
  module = detector.bind(*variables)
  return d, (detector, variables), module, module.hierarchy, predict.Predictor(detector, variables, batch_size=4)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("inputs")
  rng = np.random.default_rng(0)
  videos.write_image(str(root / "a_face.png"), face_frame(rng))
  (root / "b_corrupt.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
  videos.write_image(str(root / "c_grey.png"), np.full((64, 64, 3), 128, np.uint8))
  (root / "notes.txt").write_text("not an input")  # skipped inside folders
  sub = root / "sub"
  sub.mkdir()
  w = cv2.VideoWriter(str(sub / "d_clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 80))
  assert w.isOpened()
  for i in range(6):  # frame 2 has no face
    f = face_frame(rng, shift=2 * i) if i != 2 else np.full((80, 96, 3), 90, np.uint8)
    w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
  w.release()
  return root


def own_marginals(module, frame, detector, size):
  crop, _ = faces.crop_face(frame, detector(frame), scale=1.3, size=317)
  x = model_input.preprocess_np(crop, size, clip_backbone.MEAN, clip_backbone.STD)[None]
  return np.asarray(_own_marginals_fn(module, jnp.asarray(x)))[0]


def test_folder_images_video_and_errors(model, inputs, tmp_path):
  _, (det_, variables), module, h, pred = model
  streamed = []
  res = predict.predict_files(det_, variables, [str(inputs)], face_detector=square_detector, num_frames=4,
                              plots_dir=str(tmp_path / "plots"), progress=False, on_result=streamed.append,
                              predictor=pred)
  names = [os.path.relpath(r["path"], inputs) for r in res]
  assert names == ["a_face.png", "b_corrupt.png", "c_grey.png", os.path.join("sub", "d_clip.avi")]
  assert streamed == res  # emitted in input order as each file completes
  good, corrupt, grey, vid = res

  assert corrupt["error"].startswith("unreadable image") and "p_fake" not in corrupt
  assert grey["error"] == "no face detected"

  assert good["kind"] == "image" and "error" not in good
  assert list(good["marginals"]) == list(h.nodes)
  assert good["p_fake"] == good["marginals"][h.nodes[h.root]]
  assert good["fake"] == (good["p_fake"] > 0.5) and good["num_faces"] == 1
  assert good["explanation"].startswith("The face image is " + ("fake" if good["fake"] else "real"))
  assert good["box"] == [25.0, 20.0, 65.0, 60.0]
  expected = own_marginals(module, videos.read_image(good["path"]), square_detector, 32)
  np.testing.assert_allclose(list(good["marginals"].values()), expected, atol=1e-5)
  assert os.path.getsize(good["plot"]) > 1000 and good["plot"].endswith(".png")
  assert "plot" not in corrupt
  json.dumps(res)  # every record is JSON-serialisable

  # Video: 4 sampled frames of 6, one of them faceless; P(fake) = mean over the other 3.
  assert vid["kind"] == "video" and vid["num_frames"] == 4 and vid["num_faces"] == 3
  assert vid["frames_without_face"] == 1
  frames = dict(videos.sample_frames(vid["path"], 4))
  assert sorted(frames) == [0, 2, 3, 5] and [f["frame"] for f in vid["frames"]] == [0, 3, 5]
  per_frame = np.stack([own_marginals(module, frames[i], square_detector, 32) for i in (0, 3, 5)])
  np.testing.assert_allclose([f["p_fake"] for f in vid["frames"]], per_frame[:, h.root], atol=1e-5)
  np.testing.assert_allclose(vid["p_fake"], per_frame[:, h.root].mean(), atol=1e-5)
  np.testing.assert_allclose(list(vid["marginals"].values()), per_frame.mean(0), atol=1e-5)
  assert vid["explanation"].startswith("The face video is ")


def test_no_detect_and_missing_file(model, inputs):
  _, (det_, variables), module, h, pred = model
  img = videos.read_image(str(inputs / "a_face.png"))
  res = predict.predict_files(det_, variables, [str(inputs / "a_face.png"), str(inputs / "nope.jpg")],
                              face_detector=None, progress=False, predictor=pred)
  assert res[1]["error"].startswith("unreadable image") and "no such file" in res[1]["error"]
  x = model_input.preprocess_np(img, 32, clip_backbone.MEAN, clip_backbone.STD)[None]
  np.testing.assert_allclose(list(res[0]["marginals"].values()),
                             np.asarray(_own_marginals_fn(module, jnp.asarray(x)))[0], atol=1e-5)
  assert res[0]["box"] is None


def test_dlib_on_a_real_face(model, tmp_path):
  _, (det_, variables), module, h, pred = model
  path = str(tmp_path / "astronaut.jpg")
  img = skimage.data.astronaut()
  videos.write_image(path, img)
  det = faces.DlibDetector(upsample=0)
  (res,) = predict.predict_files(det_, variables, [path], face_detector=det, progress=False, predictor=pred)
  assert "error" not in res, res
  x0, y0, x1, y1 = res["box"]
  assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200  # the face
  np.testing.assert_allclose(list(res["marginals"].values()),
                             own_marginals(module, videos.read_image(path), det, 32), atol=1e-5)


def test_cli(model, inputs, tmp_path):
  export_dir = model[0]
  out = tmp_path / "preds.jsonl"
  cmd = [sys.executable, "-m", "sjedd_jax.predict", f"--export={export_dir}", "--no_detect", "--num_frames=2",
         f"--out={out}", f"--plots={tmp_path / 'plots'}", "--batch_size=8", str(inputs)]
  p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert p.returncode == 0, p.stderr
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert [os.path.basename(l["path"]) for l in lines] == ["a_face.png", "b_corrupt.png", "c_grey.png",
                                                          "d_clip.avi"]
  assert "error" in lines[1] and "error" not in lines[2]  # --no_detect: the grey image is "a face"
  assert lines[3]["num_faces"] == 2
  assert "predicted 3 of 4 files" in p.stderr
  assert len(os.listdir(tmp_path / "plots")) == 3

  # Exit codes: 1 when nothing at all could be scored (the summary line says so).
  assert predict.summary(lines) == ("predicted 3 of 4 files (%d fake, 1 errors)"
                                    % sum(bool(l.get("fake")) for l in lines), 0)
  assert predict.summary([lines[1]]) == ("predicted 0 of 1 files (0 fake, 1 errors)", 1)
  assert predict.summary([])[1] == 1


def test_model_source_errors(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="exactly one model source"):
    predict.load_model()
  with pytest.raises(config_lib.ConfigError, match="exactly one model source"):
    predict.load_model(export="a", release="b")
  with pytest.raises(FileNotFoundError, match="not a model exported"):
    predict.load_model(export=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    predict.load_model(release=str(tmp_path / "nope.pth"))


def test_plot_gets_the_face_the_model_saw():
  """A plot function taking ``face`` gets the model input with its normalisation undone (uint8)."""
  rgb = (np.arange(16 * 16 * 3) % 251).astype(np.uint8).reshape(16, 16, 3)
  mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
  x = model_input.preprocess_np(rgb, 16, mean, std)
  np.testing.assert_array_equal(predict._face_uint8(x, mean, std), rgb)
  assert predict._accepts(lambda outputs, path, *, face=None: None, "face")
  assert predict._accepts(lambda outputs, path, **kw: None, "face")
  assert not predict._accepts(lambda outputs, path, *, image=None: None, "face")
