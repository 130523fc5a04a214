"""Every MC-LCR config is one file away (configs/mc_lcr/): the paper's recipe, the ablation switches
changing exactly what they name, every paper config's training step traced on a tiny world (the
compiled step: tests/test_mc_lcr.py), and the twin through ``sjedd_jax.train`` (validation, test,
export) and ``predict``."""

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
from tests.test_mc_lcr import CONFIGS, shared_cache, tiny_config
from tests.config_diff import diff

ABLATIONS = os.path.join(CONFIGS, "ablations")


@pytest.fixture(scope="module", name="cache")
def cache_fixture(tmp_path_factory):
  return shared_cache(tmp_path_factory)

# What each ablation file changes relative to its base (written out independently of the files).
EXPECTED = {
    "baseline": {"model.ssrb": False, "model.papda": False, "weighting.fixed": (1.0, 0.0)},
    "no_ssrb": {"model.ssrb": False},
    "no_papda": {"model.papda": False},
    "no_sc": {"weighting.fixed": (1.0, 0.0)},
    "full": {},
    "bilevel": {"weighting.kind": "bilevel"},
}


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


# ------------------------------------------------------------------ every config's step, traced
def trace_step(config):
  """The config's complete training step (its own model switches, optimiser and weighting) traced
  abstractly with ``jax.eval_shape``: nothing is compiled. Returns the detector, the abstract model
  (for its switches) and the step's metrics (shapes)."""
  det = detectors.make(config)
  variables = jax.eval_shape(lambda: det.init(config.seed))
  opt = optim.make(config.optim, total_steps=2, steps_per_epoch=1, params=variables.params,
                   labels=det.param_labels(variables.params))
  weighting = ts.weighting_from_config(config, det, steps_per_epoch=1)
  step = ts.make_train_step(det, weighting, opt.tx, opt.lr, opt.weight_decay)
  state = jax.eval_shape(lambda v: ts.init_state(v, opt.tx, weighting), variables)
  batch = ts.abstract_batch(det, config.batch_size)
  new_state, metrics = jax.eval_shape(step, state, batch, batch)
  assert {"loss/ce", "loss/supcon", "accuracy", "z_cos_gap", "lambda"} <= set(metrics)
  assert metrics["loss/ce"].shape == metrics["loss/supcon"].shape == () and metrics["lambda"].shape == (2,)
  assert jax.tree.structure(new_state.model_state) == jax.tree.structure(state.model_state)
  assert jax.tree.structure(new_state.params) == jax.tree.structure(state.params)
  module = det.bind(*variables)
  head = module.head
  assert (head.use_ssrb, head.use_papda) == (config.model.ssrb, config.model.papda)
  assert (head.papda is None) == (not config.model.papda)
  # SSF 16 + 16 + 32 and GF 96 of the test backbone; AF, PF 64 each (P = 8).
  assert head.fused_dim == (64 if config.model.ssrb else 0) + 96 + (128 if config.model.papda else 0)
  return det, module, metrics


# The paper's configs and the twin; the ablation rows are in tests/test_mc_lcr_ablations.py. The
# plain step is compiled in tests/test_mc_lcr.py (4 devices == 1), the bi-level one in the run below.
@pytest.mark.parametrize("rel", ["ffpp_c23.py", "ffpp_c40.py", "celebdf.py", "synthetic.py"])
def test_config_step_traces(rel, cache):
  config = tiny_config(cache, rel)
  if rel == "celebdf.py":   # the cross-dataset test set: here the tiny world's own test split
    config.test_sets = f"CDF={datasets.dataset_dir(config, progress=False)}"
    assert list(datasets.test_sets(config, "x")) == ["test", "CDF"]
  trace_step(config)
  assert (config.weighting.kind, tuple(config.weighting.fixed)) == ("fixed", (0.5, 0.5))
  if rel == "synthetic.py":   # the pipeline's batches: 4 real + 4 fake in every batch of 8
    det = detectors.make(config)
    cfg = datasets.data_config(config, det, datasets.dataset_dir(config, progress=False), "train", train=True)
    train_it, _ = pipeline.train_streams(cfg, pipeline.load(cfg))
    assert [int(np.sum(next(train_it)["is_fake"])) for _ in range(3)] == [4, 4, 4]


def test_twin_trains_evaluates_exports_and_predicts(cache, tmp_path, monkeypatch):
  """``sjedd_jax.train`` on the twin with the bi-level weights (configs/mc_lcr/ablations/bilevel.py:
  2 steps, validation, test, export), then ``predict`` of the export on a PNG face crop and a video.
  The one compiled run of the bi-level step (lambda's hypergradient, lambda >= 0); the plain step
  is compiled in tests/test_mc_lcr.py (4 devices == 1 device), so this run uses one device."""
  import cv2
  from sjedd_jax import predict as predict_lib, train
  one_device = ts.data_mesh(jax.devices()[:1])
  monkeypatch.setattr(ts, "data_mesh", lambda devices=None: one_device)
  c = tiny_config(cache, "ablations/bilevel.py", "synthetic")
  assert c.weighting.kind == "bilevel" and c.weighting.nonneg and tuple(c.weighting.lam_init) == (0.5, 0.5)
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
  assert all(np.isfinite(v) for v in m.values() if isinstance(v, float))
  lam = np.array([m["lambda/ce"], m["lambda/supcon"]])
  assert np.all(lam >= 0) and not np.allclose(lam, 0.5)      # lambda moved from (0.5, 0.5), stays >= 0
  assert m["hypergradient/ce"] != 0 or m["hypergradient/supcon"] != 0
  results = json.load(open(workdir / "results.json"))
  assert set(results["test"]["embedding"]) == {"within_cos", "across_cos", "cos_gap"}
  export = workdir / "export"
  assert json.load(open(export / "detector.json"))["detector"] == "mc_lcr"
  det, variables = detectors.load_export(str(export))
  bn = jax.device_get(variables.state)["backbone"]["bn1"]["var"]
  assert not np.allclose(bn, 1.0)                         # trained BatchNorm statistics were exported
  rng = np.random.default_rng(4)
  png = str(tmp_path / "face.png")
  cv2.imwrite(png, rng.integers(0, 255, (48, 48, 3), dtype=np.uint8))
  avi = str(tmp_path / "clip.avi")            # a 5-frame face video: P(fake) per frame and for the video
  w = cv2.VideoWriter(avi, cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 40))
  for _ in range(5):
    w.write(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
  w.release()
  (tmp_path / "plots").mkdir()
  # batch 16: the evaluator's program (eval_batch_size), compiled once.
  res, vid = predict_lib.predict_files(det, variables, [png, avi], face_detector=None, progress=False,
                                       batch_size=16, num_frames=3, plots_dir=str(tmp_path / "plots"))
  assert "error" not in res and 0.0 < res["p_fake"] < 1.0 and res["num_faces"] == 1
  assert "error" not in vid and vid["kind"] == "video" and vid["num_frames"] == 3 and 0.0 < vid["p_fake"] < 1.0
  assert len(vid["frames"]) == 3 and all(0.0 < f["p_fake"] < 1.0 for f in vid["frames"])
  # What each branch contributes to the logit: exact (sums to it), in the JSON and as a chart.
  for r in (res, vid):
    assert sum(r["branch_logit"].values()) == pytest.approx(r["logit"], abs=1e-4)
    assert os.path.getsize(r["plot"]) > 1000
  assert set(results["test"]["branch_gap"]) == {"ssf", "gf", "af", "pf"}
