"""Every LiSiam config file: what each switch changes (exactly); every config builds (detector,
optimiser groups, weighting) and its whole training step traces (``jax.eval_shape``, nothing
compiled); FF++ phase 1 runs two compiled steps on a tiny synthetic world through the shared
pipeline (views, oracle masks, frozen "cls" group); every phase's optimiser freezes its group.

Compiling a two-branch LiSiam step costs 5-10 s even for the smallest model, so only one is
compiled here; the twin's config runs whole in tests/test_lisiam.py (train, evaluate, export).
"""

from __future__ import annotations

import glob
import os

import jax
import ml_collections
import numpy as np
import pytest

from sjedd_jax import config as config_lib, detectors, optim, train_step as ts
from sjedd_jax.detectors import lisiam
from tests.config_diff import diff

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
  assert s.model.preset == "lisiam-tiny" and s.total_steps == 1000 and s.batch_size == 16 and s.optim.name == "adamw"
  assert dict(s.model.overrides) == {"ocr_channels": 32, "transform_channels": 16}     # [I] departure
  spec = load("synthetic.py", "spec")             # spec section 9 as written
  assert diff(spec, s) == {"model.overrides.ocr_channels": 64, "model.overrides.transform_channels": 32,
                           "batch_size": 32, "log_every": 25, "eval_every": 500, "ckpt_every": 500}
  assert load("synthetic.py", "spec,phase1").optim.frozen == ("cls",)
  with pytest.raises(config_lib.ConfigError, match="phase"):
    load("ffpp.py", "phase4")


# ------------------------------------------------------------------- every config builds and traces
# Compiling a two-branch LiSiam step costs seconds even for the smallest model, so here nothing is
# compiled but the phases' optimisers: every config builds (detector, optimiser groups, weighting)
# and its training losses trace with jax.eval_shape (the bi-level config: its whole step); each
# phase's real optimiser freezes exactly its group. Compiled runs: tests/test_lisiam.py (the twin's
# config whole; FF++ phase 1 on 1 and 4 devices with its frozen group).
RUNS = [("ffpp.py", "phase1"), ("ffpp.py", "phase2"), ("ffpp.py", "phase3"), ("synthetic.py", None)] + \
       [(f"ablations/{n}.py", "synthetic") for n in sorted(EXPECTED)]


def test_twin_script_runs_are_the_config_files(tmp_path, monkeypatch):
  """scripts/lisiam_twin.py's runs (iii) model G, (iv) lambda_li = 0 and (v) bi-level are exactly the
  ablation configs on the twin (the weights of (iv) are not a config file: only weighting.fixed)."""
  monkeypatch.chdir(tmp_path)
  import importlib.util
  spec = importlib.util.spec_from_file_location("lisiam_twin", os.path.join(ROOT, "scripts", "lisiam_twin.py"))
  twin = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(twin)
  assert diff(twin.config_of("i", None), load("synthetic.py")) == {}
  assert diff(twin.config_of("iii", None), load("ablations/g.py", "synthetic")) == {}
  assert diff(twin.config_of("v", None), load("ablations/bilevel.py", "synthetic")) == {}
  assert diff(twin.config_of("iv", None), load("synthetic.py")) == {"weighting.fixed": (1.0, 1.0, 0.0, 0.4)}
  assert diff(twin.config_of("ii", None), load("ablations/e.py", "synthetic")) == {
      "weighting.fixed": (1.0, 0.0, 0.0, 0.0)}


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
  """Most XLA optimisations off in this module (its cost is compiling, never running); restored after."""
  old = jax.config.values.get("jax_disable_most_optimizations", False)
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


def tiny(c, cache_dir=""):
  """Any LiSiam config on a 10-identity 32 px synthetic world with the smallest model."""
  c.data.kind = "synthetic"
  c.data.cache_dir = str(cache_dir)
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


def build(c, det=None, params=None):
  """(detector, optimiser, weighting, labels, step function) of config ``c``; ``params`` abstract if None."""
  det = det or detectors.make(c)
  if params is None:
    params = jax.eval_shape(lambda: det.init(c.seed).params)
  labels = det.param_labels(params)
  opt = optim.make(c.optim, total_steps=c.total_steps, steps_per_epoch=10, params=params, labels=labels)
  w = ts.weighting_from_config(c, det, 10)
  step = ts.make_train_step(det, w, opt.tx, opt.lr, opt.weight_decay,
                            lam_update=False if c.weighting.kind == "bilevel" else None)
  return det, opt, w, labels, step


@pytest.mark.parametrize("rel,arg", RUNS, ids=[f"{r}:{a}" for r, a in RUNS])
def test_every_config_builds_and_traces(rel, arg):
  c = tiny(load(rel, arg))
  det, opt, w, labels, step = build(c)
  assert set(jax.tree.leaves(labels)) == {"seg", "cls"}
  batch = ts.abstract_batch(det, 8)
  assert batch["mask"].shape == (8, 32, 32) and batch["image2"].shape == (8, 32, 32, 3)
  variables = jax.eval_shape(lambda: det.init(c.seed))
  assert ("mt_q" in variables.params) == (c.model.head == "mt"), c.model.head
  key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
  losses, new_state, aux = jax.eval_shape(lambda p, s, b, k: det.task_losses(p, s, b, k, True), variables.params,
                                          variables.state, batch, key)
  assert losses.shape == (4,) and "accuracy" in aux
  assert jax.tree.structure(new_state) == jax.tree.structure(variables.state)
  # The switch reached the detector and the weighting.
  assert det.transform.masks == c.lisiam.masks
  lam = np.asarray(w.init().lam)
  if c.weighting.kind == "bilevel":
    assert c.weighting.update_every == 4 and c.weighting.nonneg
    np.testing.assert_allclose(lam, c.weighting.lam_init)
    state = jax.eval_shape(lambda: ts.init_state(det.init(c.seed), opt.tx, w, seed=c.seed))
    new, m = jax.eval_shape(step, state, batch, batch)     # the whole step (lambda not updated)
    assert m["lambda"].shape == (4,) and jax.tree.structure(new) == jax.tree.structure(state)
  else:
    np.testing.assert_allclose(lam, c.weighting.fixed)


@pytest.mark.parametrize("phase", ["phase1", "phase2", "phase3"])
def test_phase_optimiser_freezes_its_group(phase):
  """Each phase's real optimiser (SGD, momentum, coupled weight decay, poly) on a nonzero gradient:
  the frozen group's update is exactly zero, every other parameter's is not."""
  c = tiny(load("ffpp.py", phase))
  det = detectors.make(c)
  params = det.init(c.seed).params
  det, opt, w, labels, _ = build(c, det, params)
  grads = jax.tree.map(lambda p: np.full(np.shape(p), 0.1, np.float32), params)
  updates = jax.jit(lambda g, p: opt.tx.update(g, opt.tx.init(p), p)[0])(grads, params)   # eager: slower
  frozen = set(c.optim.frozen)
  assert frozen == set(lisiam.PHASES[phase]["frozen"])
  np.testing.assert_allclose(np.asarray(w.init().lam), lisiam.PHASES[phase]["weights"])

  def check(u, g):
    u = np.asarray(u)
    if g in frozen:
      assert not u.any(), g
    else:
      assert np.all(u != 0), g

  jax.tree.map(check, updates, labels)
