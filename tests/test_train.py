"""End to end: the training CLI's run() on a tiny synthetic world; resume equality."""

import json
import os

import jax
import numpy as np
import pytest

from sjedd_jax import config as config_lib, inference, preflight
from sjedd_jax.data import datasets
from sjedd_jax.detectors import sjedd as sjedd_det
from configs import synthetic as synthetic_config  # noqa: E402  (repo root is on sys.path under pytest)
from tests import tiny


def tiny_config(tmp_cache, **over):
  c = tiny.shrink(synthetic_config.get_config(), tmp_cache)
  c.total_steps = 6
  c.log_every = 2
  c.eval_every = 3
  c.ckpt_every = 3
  c.optim.warmup_steps = 2
  for k, v in over.items():
    config_lib.set_dotted(c, k, v)
  return c


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("synthetic_cache")


@pytest.fixture(scope="module")
def full_run(cache, tmp_path_factory):
  """An uninterrupted tiny run: (config, workdir, final metrics)."""
  from sjedd_jax import train
  config = tiny_config(cache)
  workdir = str(tmp_path_factory.mktemp("full"))
  return config, workdir, train.run(config, workdir, progress=False)


def _final_params(config, workdir):
  _, variables = inference.load(config=config, workdir=workdir, checkpoint="latest")
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(variables))]


def _assert_same_params(config, workdir_a, workdir_b):
  a, b = _final_params(config, workdir_a), _final_params(config, workdir_b)
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def test_train_writes_metrics_report_and_export(full_run):
  _, workdir, final = full_run
  metrics = json.loads(open(os.path.join(workdir, "metrics.json")).read())
  assert 0.0 <= metrics["test/frame_auc"] <= 1.0
  assert metrics["test/frame_auc"] == final["test/frame_auc"]
  assert os.path.exists(os.path.join(workdir, "export", sjedd_det.EXPORT_MARKER))
  assert os.path.exists(os.path.join(workdir, "results.md"))
  assert os.path.exists(os.path.join(workdir, "roc.png"))
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  assert any("val/frame_auc" in l for l in lines)
  assert [l["step"] for l in lines if "loss/primary" in l] == [2, 4, 6]


def test_stop_and_resume_is_bitwise_exact(full_run, tmp_path):
  from sjedd_jax import train
  config, full_dir, _ = full_run
  part = str(tmp_path / "part")
  out = train.run(config, part, progress=False, stop_after=3)   # as if stopped after the step-3 checkpoint
  assert out["stopped_at"] == 3
  train.run(config, part, progress=False)
  _assert_same_params(config, full_dir, part)
  lines = [json.loads(l) for l in open(os.path.join(part, "metrics.jsonl"))]
  steps = [l["step"] for l in lines if "loss/primary" in l]
  assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_kill_9_leaves_loadable_checkpoints_and_resumes_exactly(full_run, tmp_path):
  """SIGKILL the CLI right after its first checkpoint appears; the rerun resumes and matches."""
  import signal
  import subprocess
  import sys
  import time
  from sjedd_jax import train
  config, full_dir, _ = full_run
  workdir = str(tmp_path / "killed")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  overrides = [f"--config.{k}={v}" for k, v in _flat_overrides(config).items()]
  proc = subprocess.Popen([sys.executable, "-m", "sjedd_jax.train", "--config", os.path.join(root, "configs/synthetic.py"),
                           "--workdir", workdir, *overrides], cwd=root, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  ckpt_dir = os.path.join(workdir, "ckpt")
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(ckpt_dir) and any(d.isdigit() for d in os.listdir(ckpt_dir)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.stderr.read()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  train.run(config, workdir, progress=False)
  _assert_same_params(config, full_dir, workdir)


def _flat_overrides(config):
  """The tiny config as --config.x=y overrides of configs/synthetic.py."""
  from configs import synthetic
  base = synthetic.get_config()
  out = {}

  def walk(a, b, prefix):
    for k in a.keys():
      va, vb = a[k], b[k]
      if hasattr(va, "keys"):
        walk(va, vb, prefix + k + ".")
      elif va != vb:
        out[prefix + k] = va
  walk(config, base, "")
  return out


def test_missing_data_and_weights_errors(tmp_path):
  from configs import ffpp as ffpp_config
  c = ffpp_config.get_config()
  with pytest.raises(config_lib.ConfigError, match="config.data.dir is empty"):
    datasets.dataset_dir(c)
  c.data.dir = str(tmp_path)
  with pytest.raises(config_lib.ConfigError, match="manifest.jsonl"):
    datasets.dataset_dir(c)
  with pytest.raises(config_lib.ConfigError, match="(?s)data:.*weights: config.model.pretrained is empty"):
    preflight.check(c)
  c.model.pretrained = str(tmp_path / "nope")
  with pytest.raises(config_lib.ConfigError, match="does not exist"):
    sjedd_det.make(c).init(0)


def test_cli_without_data_or_weights_stops_at_once(tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-m", "sjedd_jax.train", "--config", os.path.join(root, "configs/ffpp.py"),
                      "--workdir", str(tmp_path / "w")], capture_output=True, text=True, timeout=120, cwd=root)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "config.data.dir is empty" in r.stderr and "config.model.pretrained is empty" in r.stderr
  assert not os.path.exists(tmp_path / "w" / "ckpt")
