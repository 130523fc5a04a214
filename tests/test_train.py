"""End to end: the training CLI's run() on a tiny synthetic world; resume equality."""

import json
import os

import jax
import numpy as np
import pytest

from sjedd_jax import builders
from configs import synthetic as synthetic_config  # noqa: E402  (repo root is on sys.path under pytest)


def tiny_config(tmp_cache, **over):
  c = synthetic_config.get_config()
  c.data.cache_dir = str(tmp_cache)
  c.data.image_size = 32
  c.data.synthetic.num_identities = 10
  c.data.synthetic.expressions_per_identity = 2
  c.data.synthetic.image_size = 32
  c.data.synthetic.expand = False
  c.model.clip = "test"
  c.compilation_cache_dir = str(tmp_cache / "xla")
  c.batch_size = 8
  c.eval_batch_size = 16
  c.total_steps = 6
  c.log_every = 2
  c.eval_every = 3
  c.ckpt_every = 3
  c.optim.warmup_steps = 2
  for k, v in over.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("synthetic_cache")


def test_train_runs_and_resume_is_exact(cache, tmp_path):
  from sjedd_jax import train
  config = tiny_config(cache)
  full = train.run(config, str(tmp_path / "full"), progress=False)
  assert os.path.exists(tmp_path / "full" / "metrics.json")
  metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
  assert 0.0 <= metrics["test/frame_auc"] <= 1.0
  assert os.path.exists(tmp_path / "full" / "export" / builders.EXPORT_META)
  assert os.path.exists(tmp_path / "full" / "results.md")

  # Stop after 3 steps (as if killed after the step-3 checkpoint), then resume.
  part = str(tmp_path / "part")
  out = train.run(config, part, progress=False, stop_after=3)
  assert out["stopped_at"] == 3
  train.run(config, part, progress=False)
  split_full, p_full = builders.load_for_inference(config, builders.hierarchy(config), str(tmp_path / "full"),
                                                   "latest")
  _, p_part = builders.load_for_inference(config, builders.hierarchy(config), part, "latest")
  flat_a = jax.tree.leaves(jax.device_get(p_full))
  flat_b = jax.tree.leaves(jax.device_get(p_part))
  assert len(flat_a) == len(flat_b)
  for a, b in zip(flat_a, flat_b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  lines = [json.loads(l) for l in open(os.path.join(part, "metrics.jsonl"))]
  steps = [l["step"] for l in lines if "loss/primary" in l]
  assert steps == sorted(steps) and len(steps) == len(set(steps))


def test_missing_data_and_weights_errors(tmp_path):
  from configs import ffpp as ffpp_config
  c = ffpp_config.get_config()
  with pytest.raises(builders.ConfigError, match="config.data.dir is empty"):
    builders.dataset_dir(c)
  c.data.dir = str(tmp_path)
  with pytest.raises(builders.ConfigError, match="manifest.jsonl"):
    builders.dataset_dir(c)
  with pytest.raises(builders.ConfigError, match="(?s)data:.*weights: config.model.pretrained is empty"):
    builders.preflight(c)
  c.model.pretrained = str(tmp_path / "nope")
  with pytest.raises(builders.ConfigError, match="does not exist"):
    builders.model(c, builders.hierarchy(c))


def test_cli_without_data_or_weights_stops_at_once(tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, "-m", "sjedd_jax.train", "--config", os.path.join(root, "configs/ffpp.py"),
                      "--workdir", str(tmp_path / "w")], capture_output=True, text=True, timeout=120, cwd=root)
  assert r.returncode == 2, r.stderr[-2000:]
  assert "config.data.dir is empty" in r.stderr and "config.model.pretrained is empty" in r.stderr
  assert not os.path.exists(tmp_path / "w" / "ckpt")
