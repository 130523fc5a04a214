"""The catalogue of bad inputs (issue 21), run through the command-line jobs in this process.

Every case ends in a clear one-line error (exit code 2 for the user's input, 1 for a failed run)
or a correct result, never in a raw traceback; nothing already written is lost. Each case names
the defect it covers (docs/reliability.md lists them with their tests).
"""

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest

from sjedd_jax import cli, config as config_lib, evaluate, predict, train
from sjedd_jax.data import manifest, videos
from tests import tiny

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(REPO, "configs", "synthetic.py")


def tiny_config(cache, **over):
  from configs import synthetic
  c = tiny.shrink(synthetic.get_config(), cache)
  c.total_steps, c.log_every, c.eval_every, c.ckpt_every = 2, 1, 2, 2
  c.optim.schedule = "constant"   # no step count baked into the compiled step: runs of any length share it
  for k, v in over.items():
    config_lib.set_dotted(c, k, v)
  return c


def overrides(config) -> list[str]:
  """``config`` as --config.x=y flags over configs/synthetic.py (what a user would type)."""
  from configs import synthetic
  a = config_lib._flat(config.to_dict())  # pylint: disable=protected-access
  b = config_lib._flat(synthetic.get_config().to_dict())  # pylint: disable=protected-access
  out = []
  for k, v in a.items():
    if b.get(k, "<absent>") != v:
      out.append(f"--config.{k}={tuple(v) if isinstance(v, list) else v}")
  return out


def run_train(capsys, config, workdir, *extra):
  code = cli.invoke(train, ["--config", SYNTHETIC, "--workdir", str(workdir), *overrides(config), *extra])
  err = capsys.readouterr().err
  return code, err


def one_line_error(err: str) -> str:
  lines = [l for l in err.strip().splitlines() if l.startswith("error:")]
  assert lines, err[-2000:]
  assert "Traceback" not in err, err[-3000:]
  return lines[-1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("bad_inputs_cache")


@pytest.fixture(scope="module")
def finished(cache, tmp_path_factory):
  """A finished tiny run: (config, workdir)."""
  config = tiny_config(cache)
  workdir = tmp_path_factory.mktemp("finished")
  train.run(config, str(workdir), progress=False)
  return config, workdir


@pytest.fixture(scope="module")
def dataset(cache, tmp_path_factory):
  """A copy of the tiny synthetic world as a manifest dataset (to be damaged by the tests)."""
  from sjedd_jax.data import datasets
  src = datasets.dataset_dir(tiny_config(cache), progress=False)
  return src


def manifest_copy(src, dst):
  shutil.copytree(src, dst)
  return str(dst)


# --------------------------------------------------------------------------- 1. resume mixes runs
def test_resume_with_another_config_is_refused_then_accepted_or_fresh(finished, cache, capsys, tmp_path):
  config, workdir = finished
  before = json.load(open(workdir / "metrics.json"))
  other = tiny_config(cache, **{"optim.lr": 2e-3, "seed": 1})
  code, err = run_train(capsys, other, workdir)
  line = one_line_error(err)
  assert code == 2 and "optim.lr: 0.001 -> 0.002" in line and "seed: 0 -> 1" in line
  assert "--fresh" in line and "--accept_config" in line
  assert json.load(open(workdir / "metrics.json")) == before       # nothing touched
  # Another model width: refused by the same guard, before orbax sees a shape.
  wider = tiny_config(cache, **{"model.clip_overrides.vision_width": 96})
  code, err = run_train(capsys, wider, workdir)
  assert code == 2 and "model.clip_overrides.vision_width" in one_line_error(err)
  # --fresh: the old run moves aside, a new one starts (another seed: the same compiled step).
  copy = tmp_path / "w"
  shutil.copytree(workdir, copy)
  code, err = run_train(capsys, tiny_config(cache, seed=1), copy, "--fresh")
  assert code == 0, err[-2000:]
  moved = [d for d in os.listdir(copy) if d.startswith("previous_")]
  assert len(moved) == 1 and json.load(open(copy / moved[0] / "metrics.json")) == before
  assert json.load(open(copy / "config.json"))["seed"] == 1


def test_accept_config_resumes_with_the_new_config(finished, cache, capsys, tmp_path):
  _, workdir = finished
  copy = tmp_path / "w"
  shutil.copytree(workdir, copy)
  longer = tiny_config(cache, **{"data.hflip": False})
  longer.total_steps = 4
  code, err = run_train(capsys, longer, copy, "--accept_config")
  assert code == 0, err[-2000:]
  assert "resuming from step 2 of 4" in err                        # printed without -v
  assert json.load(open(copy / "metrics.json"))["steps"] == 4
  history = [json.loads(l) for l in open(copy / "config_history.jsonl")]
  assert any("data.hflip" in c for c in history[-1]["changes"])


# --------------------------------------------------------------------------- 2. divergence
def test_nan_and_huge_learning_rates_are_refused_at_start(cache, capsys, tmp_path):
  for lr, what in (("nan", "not finite"), ("1e30", "must be in")):
    code, err = run_train(capsys, tiny_config(cache), tmp_path / lr, f"--config.optim.lr={lr}")
    line = one_line_error(err)
    assert code == 2 and "config.optim.lr" in line and what in line
    assert not os.path.exists(tmp_path / lr / "ckpt")


def test_divergence_stops_and_never_saves_a_bad_checkpoint(cache, tmp_path, monkeypatch, capsys):
  config = tiny_config(cache, total_steps=4, ckpt_every=2, log_every=1, eval_every=4)
  real = train._to_host  # pylint: disable=protected-access

  def poisoned(metrics, names=None):
    out = real(metrics, names)
    if poisoned.calls >= 2:   # one host sync per step here: from step 3 on the loss is NaN
      out["loss/primary"] = float("nan")
    poisoned.calls += 1
    return out

  poisoned.calls = 0
  monkeypatch.setattr(train, "_to_host", poisoned)
  with pytest.raises(SystemExit) as e:
    cli.guarded(train.run, config, str(tmp_path / "div"), progress=False)
  line = one_line_error(capsys.readouterr().err)
  assert e.value.code == 1 and "diverged at step 3" in line and "last good checkpoint is step 2" in line
  assert sorted(os.listdir(tmp_path / "div" / "ckpt")) == ["2"]     # the NaN state was never saved


# --------------------------------------------------------------------------- 3. data checked before training
def manifest_config(cache, data_dir, **over):
  c = tiny_config(cache, **over)
  c.data.kind, c.data.dir = "manifest", data_dir
  return c


def test_missing_image_is_found_before_training(cache, dataset, tmp_path, capsys):
  d = manifest_copy(dataset, tmp_path / "d")
  recs = manifest.read(d)
  os.remove(os.path.join(d, recs[5].path))
  with pytest.raises(SystemExit) as e:
    cli.guarded(train.run, manifest_config(cache, d), str(tmp_path / "w"), progress=False)
  line = one_line_error(capsys.readouterr().err)
  assert e.value.code == 2 and "missing file" in line and f"manifest.jsonl:6: {recs[5].path}" in line
  assert not os.path.exists(tmp_path / "w" / "ckpt")


def test_non_numeric_label_names_file_and_line(cache, dataset, tmp_path, capsys):
  d = manifest_copy(dataset, tmp_path / "d")
  lines = open(os.path.join(d, manifest.MANIFEST)).read().splitlines()
  rec = json.loads(lines[3])
  rec["y"] = [1, "x"] + [0] * 8
  lines[3] = json.dumps(rec)
  open(os.path.join(d, manifest.MANIFEST), "w").write("\n".join(lines) + "\n")
  with pytest.raises(SystemExit) as e:
    cli.guarded(train.run, manifest_config(cache, d), str(tmp_path / "w"), progress=False)
  line = one_line_error(capsys.readouterr().err)
  assert e.value.code == 2 and "manifest.jsonl:4" in line and "y[1] = 'x' is not a number" in line


def test_corrupt_image_is_named_and_can_be_skipped(cache, dataset, tmp_path, capsys):
  d = manifest_copy(dataset, tmp_path / "d")
  for r in manifest.read(d):
    if r.split == "train":
      with open(os.path.join(d, r.path), "wb") as f:
        f.write(b"not a png at all")
  with pytest.raises(SystemExit) as e:
    cli.guarded(train.run, manifest_config(cache, d), str(tmp_path / "w"), progress=False)
  line = one_line_error(capsys.readouterr().err)
  assert e.value.code == 2 and "not a decodable image" in line and "skip_unreadable" in line


def test_huge_png_is_refused_before_decoding(tmp_path):
  """A 20000 x 20000 PNG header (no pixel data needed): refused by size, nothing decoded."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
  png += chunk(b"IDAT", zlib.compress(b"\x00" * 10)) + chunk(b"IEND", b"")
  path = tmp_path / "huge.png"
  path.write_bytes(png)
  with pytest.raises(videos.VideoError, match="20000 x 20000 pixels"):
    videos.read_image(str(path))


# --------------------------------------------------------------------------- 4-5. weights
def _clip_export(tmp_path):
  from flax import nnx
  from sjedd_jax.backbones import clip
  model = nnx.eval_shape(lambda: clip.CLIP(clip.get_config("test"), rngs=nnx.Rngs(0)))
  from sjedd_jax.backbones.clip import params
  flat = {k: np.full(s, 0.01, np.float32) for k, s in params.flatten_shapes(model).items()}
  params.assign(model, flat)
  return clip.save_pretrained(model, tmp_path / "clip")


@pytest.mark.parametrize("kind", ["uint8", "bool", "int32", "complex64", "nan"])
def test_non_float_and_non_finite_weights_are_refused(tmp_path, kind):
  from safetensors.numpy import load_file, save_file
  from sjedd_jax.backbones import clip
  from sjedd_jax.weights import CheckpointError
  d = _clip_export(tmp_path)
  path = os.path.join(d, "params.safetensors")
  flat = load_file(path)
  key = sorted(flat)[3]
  if kind == "nan":
    flat[key] = flat[key].copy()
    flat[key].flat[0] = np.nan
  else:
    flat[key] = flat[key].astype(kind)
  save_file(flat, path)
  with pytest.raises(CheckpointError, match="NaN or inf" if kind == "nan" else "not floating-point") as e:
    clip.load_pretrained(d)
  assert key in str(e.value) and (kind == "nan" or kind in str(e.value))


def test_random_bytes_pth_is_not_called_unsafe(tmp_path):
  from sjedd_jax.weights import CheckpointError, read_state_dict
  path = tmp_path / "random.pth"
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
  with pytest.raises(CheckpointError) as e:
    read_state_dict(path)
  assert "not a PyTorch checkpoint (or corrupt)" in str(e.value) and "weights_only=False" not in str(e.value)


# --------------------------------------------------------------------------- 6. evaluate checks first
def test_evaluate_checks_paths_and_output_before_evaluating(finished, capsys, tmp_path):
  config, workdir = finished
  args = ["--config", SYNTHETIC, "--workdir", str(workdir), *overrides(config)]
  written = os.path.getmtime(workdir / "results.json")   # the training run's report
  code = cli.invoke(evaluate, args + [f"--config.test_sets=CDF={tmp_path / 'nope'}"])
  line = one_line_error(capsys.readouterr().err)
  assert code == 2 and "CDF=" in line and "manifest.jsonl" in line
  assert os.path.getmtime(workdir / "results.json") == written   # nothing evaluated, nothing rewritten
  blocked = tmp_path / "blocked"
  blocked.write_text("a file, not a directory")
  code = cli.invoke(evaluate, args + [f"--out={blocked / 'sub'}"])
  assert code == 2 and "cannot create the output directory" in one_line_error(capsys.readouterr().err)
  # A workdir that does not exist is reported, and not created.
  code = cli.invoke(evaluate, ["--config", SYNTHETIC, "--workdir", str(tmp_path / "ghost"), *overrides(config)])
  assert code == 2 and "does not exist" in one_line_error(capsys.readouterr().err)
  assert not os.path.exists(tmp_path / "ghost")
  # And it works on the real workdir.
  assert cli.invoke(evaluate, args + [f"--out={tmp_path / 'eval'}"]) == 0
  assert os.path.exists(tmp_path / "eval" / "results.json")


# --------------------------------------------------------------------------- 7. predict outputs
def test_predict_outputs_and_export_errors(finished, capsys, tmp_path):
  _, workdir = finished
  export = str(workdir / "export")
  img = tmp_path / "in" / "face.png"
  img.parent.mkdir()
  videos.write_image(str(img), np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
  out = tmp_path / "new" / "deeper" / "preds.jsonl"        # a missing --out folder is created
  assert cli.invoke(predict, [f"--export={export}", "--no_detect", f"--out={out}", str(img)]) == 0
  assert json.loads(out.read_text())["p_fake"] >= 0
  capsys.readouterr()
  blocked = tmp_path / "blocked"
  blocked.write_text("x")
  assert cli.invoke(predict, [f"--export={export}", "--no_detect", f"--plots={blocked / 'p'}", str(img)]) == 2
  assert "--plots" in one_line_error(capsys.readouterr().err)
  bad = tmp_path / "bad_export"
  shutil.copytree(export, bad)
  (bad / "sjedd.json").write_text("{\n")
  (bad / "detector.json").unlink()
  assert cli.invoke(predict, [f"--export={bad}", "--no_detect", str(img)]) == 2
  assert "sjedd.json" in one_line_error(capsys.readouterr().err)
  assert cli.invoke(predict, [f"--export={tmp_path / 'missing'}", "--no_detect", str(img)]) == 2
  assert "does not exist" in one_line_error(capsys.readouterr().err)
  ghost = tmp_path / "ghost"
  assert cli.invoke(predict, ["--config", SYNTHETIC, f"--workdir={ghost}", "--no_detect", str(img)]) == 2
  assert not ghost.exists()
  capsys.readouterr()


def test_unwritable_plot_keeps_the_scores(finished, tmp_path, monkeypatch):
  from sjedd_jax import detectors
  _, workdir = finished
  det, variables = detectors.load_export(str(workdir / "export"))
  img = tmp_path / "face.png"
  videos.write_image(str(img), np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))

  def refuse(*args, **kwargs):
    raise PermissionError(errno.EACCES, "Permission denied")

  det = det._replace(plot=refuse)
  (res,) = predict.predict_files(det, variables, [str(img)], face_detector=None, plots_dir=str(tmp_path),
                                 progress=False)
  assert "p_fake" in res and "plot_error" in res


# --------------------------------------------------------------------------- 8. reruns keep metrics.json
def test_rerunning_a_finished_run_keeps_its_results(finished, capsys):
  config, workdir = finished
  before = open(workdir / "metrics.json").read()
  lines = open(workdir / "metrics.jsonl").read()
  code, err = run_train(capsys, config, workdir)
  assert code == 0 and "finished already" in err
  assert open(workdir / "metrics.json").read() == before
  assert open(workdir / "metrics.jsonl").read() == lines
  assert json.loads(before)["final_train_metrics"]


def test_resume_after_a_kill_during_the_final_evaluation(finished, tmp_path):
  config, workdir = finished
  copy = tmp_path / "w"
  shutil.copytree(workdir, copy)
  final = json.load(open(copy / "metrics.json"))
  os.remove(copy / "metrics.json")                          # as if killed before it was written
  again = train.run(config, str(copy), progress=False)
  assert again["final_train_metrics"] == final["final_train_metrics"]
  assert again["test/frame_auc"] == final["test/frame_auc"]
  recs = [json.loads(l) for l in open(copy / "metrics.jsonl")]
  keys = [(r["step"], tuple(sorted(r))) for r in recs]
  assert len(keys) == len(set(keys)), "duplicate records"


def test_fewer_steps_than_the_run_is_refused(finished, cache, capsys):
  _, workdir = finished
  fewer = tiny_config(cache)
  fewer.total_steps = 1
  code, err = run_train(capsys, fewer, workdir)
  assert code == 2 and "beyond this config's 1 steps" in one_line_error(err)


def test_one_class_split_writes_null_with_a_reason(cache, dataset, tmp_path):
  d = manifest_copy(dataset, tmp_path / "d")
  recs = [r for r in manifest.read(d) if not (r.split == "test" and r.source == "real")]
  manifest.write(d, recs)
  config = manifest_config(cache, d, total_steps=0, num_epochs=0)
  final = train.run(config, str(tmp_path / "w"), progress=False)
  text = open(tmp_path / "w" / "metrics.json").read()
  assert "NaN" not in text
  m = json.loads(text)
  assert m["test/frame_auc"] is None and "one class" in m["undefined"]["test/frame_auc"]
  assert final["test/frame_auc"] is None


# --------------------------------------------------------------------------- 9. disk full
def test_disk_full_is_one_line_and_resumable(cache, tmp_path, monkeypatch, capsys):
  from sjedd_jax import checkpointing
  config = tiny_config(cache)

  def full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "w" / "ckpt"))

  monkeypatch.setattr(checkpointing.Checkpointer, "save", full)
  with pytest.raises(SystemExit) as e:
    cli.guarded(train.run, config, str(tmp_path / "w"), progress=False)
  line = one_line_error(capsys.readouterr().err)
  assert e.value.code == 1 and "no space left on device" in line and "resumes" in line


# --------------------------------------------------------------------------- 10. small ones
def test_config_errors_before_any_work(cache, capsys, tmp_path):
  cases = [
      (["--config.batch_size=0"], "config.batch_size=0 must be >= 1"),
      (["--config.optim.lrr=1"], "unknown config key 'lrr'"),
      (["--config.loss=foo"], "config.loss='foo'"),
  ]
  for extra, want in cases:
    code, err = run_train(capsys, tiny_config(cache), tmp_path / "w", *extra)
    assert code == 2 and want in one_line_error(err), (extra, err[-500:])
  code = cli.invoke(train, ["--config", str(tmp_path / "nope.py"), "--workdir", str(tmp_path / "w")])
  assert code == 2 and "no such config file" in one_line_error(capsys.readouterr().err)
  assert not os.path.exists(tmp_path / "w" / "ckpt")


def test_script_argument_errors(tmp_path):
  r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "preprocess_ffpp.py"), "--root", str(tmp_path),
                      "--splits", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                     capture_output=True, text=True, timeout=120, cwd=REPO)
  assert r.returncode == 2 and "--splits" in r.stderr and "does not exist" in r.stderr, r.stderr[-1000:]
  r = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "make_synthetic.py"), "--out",
                      str(tmp_path / "s"), "--image_size", "-5"], capture_output=True, text=True, timeout=120, cwd=REPO)
  assert r.returncode == 2 and "image_size=-5" in r.stderr and "Traceback" not in r.stderr, r.stderr[-1000:]
