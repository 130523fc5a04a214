"""Every LiSiam config file: what each switch changes (exactly), and two training steps of each on a
tiny synthetic world through the shared pipeline (the views, the masks, the optimiser groups).

Compiling a two-branch LiSiam step is the cost here (about 10 s each on an idle 2-core CPU);
identical programs (the twin, its DIFF-mask and no-aux variants) compile once through the
persistent compilation cache.
"""

from __future__ import annotations

import glob
import os

import jax
import ml_collections
import numpy as np
import pytest

from sjedd_jax import config as config_lib, detectors, optim, train_step as ts
from sjedd_jax.data import datasets, pipeline

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "lisiam")

# What each ablation changes relative to its base (the twin with the arg "synthetic", FF++ without).
EXPECTED = {
    "b": {"lisiam.variant": "B"},
    "c": {"lisiam.variant": "C"},
    "d": {"lisiam.variant": "D"},
    "e": {"lisiam.variant": "E"},
    "f": {"model.head": "seg_logits"},
    "g": {"lisiam.variant": "G"},
    "diff_mask": {"lisiam.masks": "diff"},
    "no_aux": {"weighting.fixed": (1.0, 1.0, 1.0, 0.0), "weighting.lam_init": (1.0, 1.0, 1.0, 0.0)},
    "bilevel": {"weighting.kind": "bilevel", "weighting.update_every": 4},
}
PHASES = {   # configs/lisiam/ffpp.py:<phase> against ffpp.py (phase 3)
    "phase1": {"weighting.fixed": (0.0, 1.0, 1.0, 0.4), "weighting.lam_init": (0.0, 1.0, 1.0, 0.4),
               "optim.frozen": ("cls",), "total_steps": 146_000, "eval_every": 146_000},
    "phase2": {"weighting.fixed": (1.0, 0.0, 0.0, 0.0), "weighting.lam_init": (1.0, 0.0, 0.0, 0.0),
               "optim.frozen": ("seg",), "total_steps": 16_200},
    "phase3": {},
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


def test_every_file_is_listed_labelled_and_changes_exactly_its_switch(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  files = sorted(os.path.basename(f)[:-3] for f in glob.glob(os.path.join(CONFIGS, "ablations", "*.py")))
  assert files == sorted(EXPECTED)
  import importlib.util
  for name in files:
    spec = importlib.util.spec_from_file_location("m_" + name, os.path.join(CONFIGS, "ablations", name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.TABLE and mod.ROW, name
    assert diff(load(f"ablations/{name}.py", "synthetic"), load("synthetic.py")) == EXPECTED[name], name
    assert diff(load(f"ablations/{name}.py"), load("ffpp.py")) == EXPECTED[name], name
  base = load("ffpp.py")
  for phase, want in PHASES.items():
    assert diff(load("ffpp.py", phase), base) == want, phase
  c = base
  assert (c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay, c.optim.schedule) == \
      ("sgd", 0.002, 0.9, 5e-4, "poly")
  assert c.batch_size == 32 and c.data.image_size == 299 and c.data.perturb_probability == 0.0
  assert load("ffpp.py", "phase1").optim.frozen == ("cls",)
  s = load("synthetic.py")
  assert s.data.synthetic.expand is False and s.data.synthetic.oracle_masks is True
  assert s.model.preset == "lisiam-tiny" and s.total_steps == 1000 and s.optim.name == "adamw"
  with pytest.raises(config_lib.ConfigError, match="phase"):
    load("ffpp.py", "phase4")


# ------------------------------------------------------------------- two steps of every config
RUNS = [("ffpp.py", "phase1"), ("ffpp.py", "phase2"), ("ffpp.py", "phase3"), ("synthetic.py", None)] + \
       [(f"ablations/{n}.py", "synthetic") for n in sorted(EXPECTED)]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  d = tmp_path_factory.mktemp("lisiam_cfg")
  jax.config.update("jax_compilation_cache_dir", str(d / "xla"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  yield d
  jax.config.update("jax_compilation_cache_dir", None)


def tiny(c, cache):
  """Any LiSiam config on a 10-identity 32 px synthetic world with the smallest model."""
  c.data.kind = "synthetic"
  c.data.cache_dir = str(cache)
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_identities=10, expressions_per_identity=2, image_size=32, seed=0, expand=False, oracle_masks=True))
  c.data.image_size = 32
  c.model.preset = "test"
  c.model.depthwise = "xla"
  c.model.backbone_overrides = ml_collections.ConfigDict(dict(
      middle_blocks=1, entry_reps=1, middle_reps=1, exit_reps=1, block_strides=(2, 1, 1, 1)))
  c.model.require_pretrained = False
  c.lisiam.eval_mask_size = 0
  c.batch_size, c.eval_batch_size, c.total_steps = 8, 8, 2
  c.optim.warmup_steps = 1
  return c


@pytest.mark.parametrize("rel,arg", RUNS, ids=[f"{r}:{a}" for r, a in RUNS])
def test_two_training_steps(rel, arg, cache):
  c = tiny(load(rel, arg), cache)
  det = detectors.make(c)
  data_dir = datasets.dataset_dir(c, progress=False)
  train_cfg = datasets.data_config(c, det, data_dir, "train", train=True)
  data = pipeline.load(train_cfg)
  variables = det.init(c.seed)
  labels = det.param_labels(variables.params)
  opt = optim.make(c.optim, total_steps=c.total_steps, steps_per_epoch=pipeline.steps_per_epoch(train_cfg, data),
                   params=variables.params, labels=labels)
  w = ts.weighting_from_config(c, det, 10)
  mesh = ts.data_mesh(jax.devices()[:1])
  step = ts.compile_train_step(ts.make_train_step(det, w, opt.tx, opt.lr, opt.weight_decay,
                                                  lam_update=True if c.weighting.kind == "bilevel" else None), mesh)
  before = jax.tree.map(np.array, jax.device_get(variables.params))   # the step donates its state
  state = ts.shard_state(ts.init_state(variables, opt.tx, w, seed=c.seed), mesh)
  train_it, val_it = pipeline.train_streams(train_cfg, data)
  for _ in range(2):
    tb, vb = next(train_it), next(val_it)
    assert tb["mask"].shape == (8, 32, 32) and tb["image2"].shape == (8, 32, 32, 3)
    state, m = step(state, ts.global_batch(tb, mesh, det.batch_keys), ts.global_batch(vb, mesh, det.batch_keys))
  m = jax.device_get(m)
  assert all(np.isfinite(np.asarray(v)).all() for v in m.values()), m
  assert int(state.step) == 2
  if c.lisiam.variant in ("E", "G"):
    assert m["loss/li"] == 0.0
  else:
    assert m["loss/li"] > 0.0
  after = jax.device_get(state.params)
  moved = {"seg": False, "cls": False}

  def check(a, b, g):
    if not np.array_equal(a, b):
      moved[g] = True

  jax.tree.map(check, before, after, labels)
  frozen = set(c.optim.frozen)
  for g in ("seg", "cls"):
    assert moved[g] == (g not in frozen), (g, frozen)
  if c.model.head == "seg_logits":
    assert not hasattr(det.bind(state.params, state.model_state), "mt_q")
  if c.weighting.kind == "bilevel":
    assert np.all(np.asarray(m["lambda"]) >= 0)
