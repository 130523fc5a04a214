"""Every MC-LCR config is one file away (configs/mc_lcr/): the paper's recipe, the ablation switches
changing exactly what they name, two compiled training steps of the paper's configs on a tiny world,
and the twin through ``sjedd_jax.train`` (validation, test, export) and ``predict``."""

from __future__ import annotations

import glob
import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from sjedd_jax import config as config_lib, detectors, optim, train_step as ts
from sjedd_jax.data import datasets, pipeline
from tests.test_mc_lcr import CONFIGS, cache, tiny_config  # noqa: F401  (cache: the shared world, XLA cache)

ABLATIONS = os.path.join(CONFIGS, "ablations")

# What each ablation file changes relative to its base (written out independently of the files).
EXPECTED = {
    "baseline": {"model.ssrb": False, "model.papda": False, "weighting.fixed": (1.0, 0.0)},
    "no_ssrb": {"model.ssrb": False},
    "no_papda": {"model.papda": False},
    "no_sc": {"weighting.fixed": (1.0, 0.0)},
    "full": {},
    "bilevel": {"weighting.kind": "bilevel"},
}


def flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat(v, prefix + k + "."))
    else:
      out[prefix + k] = tuple(v) if isinstance(v, list) else v
  return out


def diff(a, b):
  fa, fb = flat(a.to_dict()), flat(b.to_dict())
  return {k: fa.get(k, "<absent>") for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>")}


def load(rel, arg=None):
  return config_lib.load_config_file(os.path.join(CONFIGS, rel), arg)


def test_paper_recipe():
  c = load("ffpp_c23.py")
  assert c.detector == "mc_lcr" and c.data.kind == "manifest" and c.data.image_size == 256
  assert c.data.balance_real and c.data.perturb_probability == 0.0 and not c.data.hflip
  assert c.batch_size == 16 and c.num_epochs == 50 and c.eval_every == 0
  o = c.optim
  assert (o.name, o.lr, o.weight_decay, o.schedule) == ("adamw", 1e-3, 1e-4, "constant")
  assert (o.plateau_patience, o.plateau_factor, o.plateau_metric, o.plateau_mode) == (5, 0.5, "val/frame_log_loss",
                                                                                      "min")
  assert (c.weighting.kind, c.weighting.fixed) == ("fixed", (0.5, 0.5))
  assert c.model.require_pretrained and c.model.backbone == "xception" and c.model.patch == 16
  assert (c.model.dropout, c.model.tau) == (0.5, 0.1)
  assert diff(load("ffpp_c40.py"), c) == {}          # the same recipe on the c40 crops (data.dir)
  assert diff(load("celebdf.py", "/data/cdf"), c) == {"test_sets": "CDF=/data/cdf"}
  tw = load("synthetic.py")
  assert tw.data.synthetic.expand is False and tw.data.exclude_expansion and tw.model.backbone == "tiny"
  assert (tw.model.patch, tw.model.fe_dim, tw.model.z_dim, tw.total_steps) == (8, 256, 64, 1000)
  assert diff(load("ffpp_c23.py", "synthetic"), tw) == {}


@pytest.mark.parametrize("arg", [None, "synthetic", "c40"])
def test_each_ablation_changes_exactly_what_it_names(arg, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)   # config files find their base from any cwd
  files = sorted(os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ABLATIONS, "*.py")))
  assert files == sorted(EXPECTED)
  base = {None: "ffpp_c23.py", "synthetic": "synthetic.py", "c40": "ffpp_c40.py"}[arg]
  for name, want in EXPECTED.items():
    assert diff(load(f"ablations/{name}.py", arg), load(base)) == want, name
    spec = importlib.util.spec_from_file_location("m_" + name, os.path.join(ABLATIONS, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.TABLE and mod.ROW, name


# ------------------------------------------------------------------ two steps of every config
def two_steps(config):
  """Two compiled training steps with the config's own optimiser and weighting."""
  det = detectors.make(config)
  data_dir = datasets.dataset_dir(config, progress=False)
  cfg = datasets.data_config(config, det, data_dir, "train", train=True)
  data = pipeline.load(cfg)
  variables = det.init(config.seed)
  opt = optim.make(config.optim, total_steps=2, steps_per_epoch=1, params=variables.params,
                   labels=det.param_labels(variables.params))
  weighting = ts.weighting_from_config(config, det, steps_per_epoch=1)
  step = ts.make_train_step(det, weighting, opt.tx, opt.lr, opt.weight_decay)
  mesh = ts.data_mesh()
  state = ts.shard_state(ts.init_state(variables, opt.tx, weighting), mesh)
  before = jax.device_get(state.params)
  compiled = ts.compile_train_step(step, mesh)
  train_it, val_it = pipeline.train_streams(cfg, data)
  out, fakes = [], []
  for _ in range(2):
    tb = next(train_it)
    fakes.append(int(np.sum(tb["is_fake"])))
    state, m = compiled(state, ts.global_batch(tb, mesh, det.batch_keys),
                        ts.global_batch(next(val_it), mesh, det.batch_keys))
    out.append(jax.device_get(m))
  return det, out, before, jax.device_get(state), fakes


def check_two_steps(rel, cache, optim_name=None):
  """Two steps of configs/mc_lcr/``rel`` at test size (``optim_name``: another optimiser); checks the
  batch balance, the losses, lambda and the model's switches."""
  config = tiny_config(cache, rel)
  if optim_name:
    config.optim.name = optim_name
  config.optim.warmup_steps = min(config.optim.warmup_steps, 1)
  if rel == "celebdf.py":   # the cross-dataset test set: here the tiny world's own test split
    config.test_sets = f"CDF={datasets.dataset_dir(config, progress=False)}"
    assert list(datasets.test_sets(config, "x")) == ["test", "CDF"]
  det, metrics, before, state, fakes = two_steps(config)
  assert fakes == [4, 4]                # 4 real + 4 fake in every batch of 8
  for m in metrics:
    assert all(np.isfinite(np.asarray(v)).all() for v in m.values()), m
    assert {"loss/ce", "loss/supcon", "accuracy", "z_cos_gap"} <= set(m)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)))
  lam = np.asarray(metrics[-1]["lambda"])
  if config.weighting.kind == "bilevel":
    assert np.all(lam >= 0) and not np.allclose(lam, 0.5) and np.any(metrics[-1]["hypergradient"] != 0)
  else:
    np.testing.assert_array_equal(lam, config.weighting.fixed)
  head = det.bind(state.params, state.model_state).head
  assert head.use_ssrb == config.model.ssrb and head.use_papda == config.model.papda
  assert (head.papda is None) == (not config.model.papda)
  # SSF 16 + 16 + 32 and GF 96 of the test backbone; AF, PF 64 each (P = 8).
  assert head.fused_dim == (64 if config.model.ssrb else 0) + 96 + (128 if config.model.papda else 0)
  return config, metrics


# The paper's configs and the full model share one compiled program at test size (the twin has its
# own schedule); the ablation switches are in tests/test_mc_lcr_ablations.py.
@pytest.mark.parametrize("rel", ["ffpp_c23.py", "ffpp_c40.py", "celebdf.py", "ablations/full.py", "synthetic.py"])
def test_two_training_steps(rel, cache):
  check_two_steps(rel, cache)


def test_twin_trains_evaluates_exports_and_predicts(cache, tmp_path):
  """``sjedd_jax.train`` on the twin (2 steps, validation, test, export), then ``predict`` of the
  export on a PNG face crop."""
  import cv2
  from sjedd_jax import predict as predict_lib, train
  c = tiny_config(cache)
  c.total_steps = 2
  c.log_every = 1
  c.eval_every = 2
  c.ckpt_every = 2
  c.optim.warmup_steps = 1
  workdir = tmp_path / "run"
  final = train.run(c, str(workdir), progress=False)
  assert 0.0 <= final["test/frame_auc"] <= 1.0
  m = final["final_train_metrics"]
  assert {"loss/ce", "loss/supcon", "lambda/ce", "lambda/supcon", "z_cos_gap"} <= set(m)
  assert (m["lambda/ce"], m["lambda/supcon"]) == (0.5, 0.5)
  results = json.load(open(workdir / "results.json"))
  assert set(results["test"]["embedding"]) == {"within_cos", "across_cos", "cos_gap"}
  export = workdir / "export"
  assert json.load(open(export / "detector.json"))["detector"] == "mc_lcr"
  det, variables = detectors.load_export(str(export))
  bn = jax.device_get(variables.state)["backbone"]["bn1"]["var"]
  assert not np.allclose(bn, 1.0)                         # trained BatchNorm statistics were exported
  png = str(tmp_path / "face.png")
  cv2.imwrite(png, np.random.default_rng(4).integers(0, 255, (48, 48, 3), dtype=np.uint8))
  # batch 16: the evaluator's program (eval_batch_size), compiled once.
  (res,) = predict_lib.predict_files(det, variables, [png], face_detector=None, progress=False, batch_size=16)
  assert "error" not in res and 0.0 < res["p_fake"] < 1.0 and res["num_faces"] == 1
