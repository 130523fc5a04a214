"""Every config in configs/mil_ranking/: what it sets, and the trainer's step of each distinct program traced
abstractly (``jax.eval_shape``: nothing compiled or run) with the config's optimiser, groups, frozen stages and
weighting. Real steps run in tests/test_mil_ranking.py (1 and 4 devices) and tests/test_mil_ranking_run.py (a
whole run with the bi-level weighting)."""

from __future__ import annotations

import glob
import importlib.util
import os

import jax
import numpy as np
import pytest

from sjedd_jax import config as config_lib, detectors, optim, train_step as ts
from sjedd_jax.data import datasets, manifest, synthetic_seq
from tests import config_diff

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "mil_ranking")
FAKE_WORLD = "/nonexistent/synthetic_seq_world"
SWITCHES = ("use_bce_u", "use_bce_v", "use_cls", "use_rank")
ROWS = {  # Table 3: which losses each row keeps (written out independently of the files)
    "table3_i": ("use_bce_u",), "table3_ii": ("use_bce_u", "use_cls"), "table3_iii": ("use_bce_u", "use_rank"),
    "table3_iv": ("use_bce_u", "use_cls", "use_rank"), "table3_v": ("use_bce_v", "use_cls", "use_rank"),
    "table3_vi": SWITCHES,
}
NAMES = sorted(os.path.basename(f)[:-3] for f in glob.glob(os.path.join(CONFIGS, "*.py")))


def load(name, arg=None):
  return config_lib.load_config_file(os.path.join(CONFIGS, name + ".py"), arg)


def diff(a, b):
  return config_diff.diff(a, b, absent=None)


def test_files_and_what_they_set(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)   # files find their siblings from any cwd
  assert set(NAMES) == {"synthetic", "seqdeepfake_components", "seqdeepfake_attributes", "binary_ffpp"} | set(ROWS)
  for row, kept in ROWS.items():
    spec = importlib.util.spec_from_file_location("m_" + row, os.path.join(CONFIGS, row + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.TABLE == "MIL 3" and mod.ROW.startswith(row.split("_")[1].upper() + ":")
    for arg in (None, "synthetic"):
      want = {f"model.{s}": False for s in SWITCHES if s not in kept}
      assert diff(load(row, arg), load("table3_vi", arg)) == want, (row, arg)
  full = load("table3_vi")
  assert diff(full, load("seqdeepfake_components", "r50")) == {}
  assert diff(load("table3_vi", "synthetic"), load("synthetic")) == {}
  # The SeqFakeFormer recipe (spec section 4).
  r34, r50 = load("seqdeepfake_components"), load("seqdeepfake_components", "r50")
  assert diff(r50, r34) == {"model.backbone": "resnet50"} and r34.model.backbone == "resnet34"
  o = r34.optim
  assert (o.name, o.lr, o.lr_mult.backbone, o.weight_decay, o.schedule, o.warmup_epochs, tuple(o.milestones),
          o.clip_grad_norm) == ("adamw", 1e-3, 0.1, 1e-4, "warmup_multistep", 20, (70, 120), 0.1)
  assert (r34.batch_size, r34.num_epochs, r34.data.image_size) == (32, 170, 256)
  assert tuple(r34.model.frozen_stages) == ("stem", "layer1") and r34.model.require_pretrained
  assert r34.data.color_jitter and r34.data.hflip and r34.data.perturb_probability == 0.0
  assert r34.model.normalization == "half" and r34.weighting.kind == "fixed"
  attrs = load("seqdeepfake_attributes", "r50")
  assert diff(attrs, r50) == {"model.components": "facial_attributes"}
  with pytest.raises(ValueError, match="r34"):
    load("seqdeepfake_components", "r101")
  binary = load("binary_ffpp")
  assert binary.model.num_components == 1 and not binary.model.use_rank and binary.data.image_size == 384
  det = detectors.make(binary)
  assert det.primary == (1.0, 0.0, 0.0, 0.0) and det.mean == (0.485, 0.456, 0.406)
  # The twin (spec section 9).
  s = load("synthetic")
  assert s.data.kind == "synthetic_seq" and s.data.synthetic_seq.num_identities == 160
  made = {}
  monkeypatch.setattr(synthetic_seq, "ensure_seq_synthetic",   # the trainer makes the world (not generated here)
                      lambda cache_dir, progress=True, **params: made.update(params) or FAKE_WORLD)
  assert datasets.dataset_dir(s, progress=False) == FAKE_WORLD and made == dict(s.data.synthetic_seq)
  assert (s.model.backbone, s.model.dim, s.model.encoder_layers, s.model.encoder_ffn, s.data.image_size) == (
      "tiny", 64, 1, 128, 64)
  assert not s.data.color_jitter and tuple(s.model.frozen_stages) == ()
  # 3,000 steps (section 9's "train longer"), validated and tested at the end.
  assert (s.total_steps, s.eval_every, s.ckpt_every) == (3000, 3000, 3000)
  # ``:large``: the same twin with 320 identities.
  big = load("synthetic", "large")
  assert big.data.synthetic_seq.num_identities == 320
  assert set(diff(big, s)) == {"data.synthetic_seq.num_identities"}
  with pytest.raises(ValueError, match="large"):
    load("synthetic", "huge")
  # The twin's rank loss is the [I] variant (docs/mil_ranking.md); the Seq-DeepFake recipe is the paper's.
  assert (s.model.rank_target, s.model.rank_floor, s.model.lambda_2) == ("graded", 1.0, 3.0)
  assert (r34.model.rank_target, r34.model.rank_floor, r34.model.lambda_2) == ("binary", 0.0, 1.0)


def shrink(c):
  """A config made test-sized: 32 px, the tiny ResNet, d = 32, P5, batch 8; its recipe kept."""
  c.data.image_size = 32
  c.model.backbone = "tiny"
  c.model.backbone_pretrained = ""
  c.model.require_pretrained = False
  c.model.dim = 32
  c.model.encoder_layers = 1
  c.model.encoder_heads = 2
  c.model.encoder_ffn = 64
  c.model.k_grid = 20
  c.model.fpn_level = "P5"   # 2 x 2 tokens: the smallest program
  return c


def traced_step(config, batch_size=8):
  """The trainer's step (``train_step.make_train_step``) of ``config`` with its optimiser, parameter groups and
  weighting, evaluated abstractly: -> (detector, abstract params before, abstract (state, metrics) after)."""
  det = detectors.make(config)
  variables = jax.eval_shape(lambda: det.init(config.seed))
  opt = optim.make(config.optim, total_steps=100, steps_per_epoch=10, params=variables.params,
                   labels=det.param_labels(variables.params))
  weighting = ts.weighting_from_config(config, det, steps_per_epoch=10)
  state = jax.eval_shape(lambda v: ts.init_state(v, opt.tx, weighting), variables)
  step = ts.make_train_step(det, weighting, opt.tx, opt.lr, opt.weight_decay)
  batch = ts.abstract_batch(det, batch_size)
  return det, variables.params, jax.eval_shape(step, state, batch, batch)


def _paths(tree):
  return ["/".join(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _rec(seq):
  return manifest.Record(path="x.png", source="seq_edit" if seq else "real", is_fake=int(bool(seq)), video_id="v",
                         split="train", sequence=list(seq) if seq else None)


@pytest.mark.parametrize("arg", ["synthetic", None])
def test_table3_rows_switch_their_losses_in_the_batch(arg):
  """The rows differ only in the loss switches (test above), which reach the step as the batch's ``task_scale``
  (zero for a switched-off loss): one compiled program for every row, traced once below."""
  for name in sorted(ROWS):
    config = load(name, arg)
    det = detectors.make(config)
    kept = ROWS[name]
    scale = det.label_fn(_rec((4, 2)))["task_scale"]
    lam = config.model
    want = [float("use_cls" in kept), lam.lambda_1 * ("use_bce_u" in kept), lam.lambda_1 * ("use_bce_v" in kept),
            lam.lambda_2 * ("use_rank" in kept)]
    np.testing.assert_allclose(scale, want, err_msg=name)
    assert det.primary == ((0.0, 0.0, 0.0, 1.0) if "use_rank" in kept else (1.0, 0.0, 0.0, 0.0) if "use_cls" in kept
                           else (0.0, 1.0, 0.0, 0.0)), name


@pytest.mark.parametrize("name", ["synthetic", "seqdeepfake_components", "binary_ffpp"])
def test_step_traces_with_the_recipe(name):
  """The distinct programs: the twin (= every Table 3 row, above), the Seq-DeepFake recipe (parameter groups, frozen
  stem + layer1, clipping, warmup_multistep; the attributes file differs only in component names) and the binary
  FF++ task (L = 1)."""
  config = shrink(load(name))
  det, params, (state, metrics) = traced_step(config)
  assert jax.tree.structure(state.params) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
    assert a.shape == b.shape and a.dtype == b.dtype
  assert {f"loss/{t}" for t in det.task_names} <= set(metrics) and metrics["lambda"].shape == (4,)
  assert all(np.shape(metrics[f"loss/{t}"]) == () for t in det.task_names)
  paths = _paths(params)
  groups = set(jax.tree.leaves(det.param_labels(params)))
  if name.startswith("seqdeepfake"):   # stem + layer1 frozen: not trained parameters, only state
    assert not any("/layer1/" in p or p.startswith("backbone/conv1") for p in paths)
    assert any(p.startswith("backbone/conv1") for p in _paths(state.model_state))
    assert groups == {"backbone", "head"} and config.optim.lr_mult.backbone == 0.1
  else:
    assert any(p.startswith("backbone/conv1") for p in paths)
  if name == "binary_ffpp":
    assert params["head"]["class_tokens"].shape[0] == 1 and det.primary == (1.0, 0.0, 0.0, 0.0)
    assert det.label_fn(_rec((4, 2)))["task_scale"].tolist() == [1.0, 1.0, 1.0, 0.0]
