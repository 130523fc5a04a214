"""Every config in configs/mil_ranking/: what it sets, and two real training steps of the twin and its Table 3
rows on a tiny world (the Seq-DeepFake and FF++ recipes train in tests/test_mil_ranking_recipes.py)."""

from __future__ import annotations

import glob
import importlib.util
import os

import jax
import numpy as np
import pytest

from sjedd_jax import config as config_lib, detectors, optim, train, train_step as ts
from sjedd_jax.data import datasets, pipeline, synthetic_seq
from tests.test_mil_ranking import compile_step

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


@pytest.fixture(autouse=True)
def no_world_generation(monkeypatch):
  """Loading synthetic.py must not generate the 3,840-image world in a test."""
  monkeypatch.setattr(synthetic_seq, "ensure_seq_synthetic", lambda cache_dir, **params: FAKE_WORLD)


def load(name, arg=None):
  return config_lib.load_config_file(os.path.join(CONFIGS, name + ".py"), arg)


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
  return {k: fa.get(k) for k in set(fa) | set(fb) if fa.get(k, "<absent>") != fb.get(k, "<absent>")}


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
  assert s.data.kind == "manifest" and s.data.dir == FAKE_WORLD and s.data.synthetic_seq.num_identities == 160
  assert (s.model.backbone, s.model.dim, s.model.encoder_layers, s.model.encoder_ffn, s.data.image_size) == (
      "tiny", 64, 1, 128, 64)
  assert s.total_steps > 0 and not s.data.color_jitter and tuple(s.model.frozen_stages) == ()
  # The twin's rank loss is the [I] variant (docs/mil_ranking.md); the Seq-DeepFake recipe is the paper's.
  assert (s.model.rank_target, s.model.rank_floor, s.model.lambda_2) == ("graded", 1.0, 3.0)
  assert (r34.model.rank_target, r34.model.rank_floor, r34.model.lambda_2) == ("binary", 0.0, 1.0)


def shrink(c, world, cache):
  """A config made test-sized: the 32 px world, the tiny ResNet, d = 32, P5, batch 8; its recipe kept."""
  c.data.kind = "manifest"
  c.data.dir = world
  c.data.image_size = 32
  c.data.workers = 0
  c.model.backbone = "tiny"
  c.model.backbone_pretrained = ""
  c.model.require_pretrained = False
  c.model.dim = 32
  c.model.encoder_layers = 1
  c.model.encoder_heads = 2
  c.model.encoder_ffn = 64
  c.model.k_grid = 20
  c.model.fpn_level = "P5"   # 2 x 2 tokens: the smallest program (P4, the default, trains in the other test files)
  c.batch_size = 8
  c.eval_batch_size = 8
  c.compilation_cache_dir = str(cache / "xla")
  return c


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  d = tmp_path_factory.mktemp("mil_cfg_world")
  # The real generator (the autouse patch is function-scoped, not active here).
  return synthetic_seq.generate(str(d / "w"), num_identities=8, frames_per_identity=2, image_size=32,
                                progress=False, workers=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("mil_cfg_cache")


def two_steps(config):
  """Two steps of the trainer's step with the config's optimiser, groups and weighting. Configs that differ
  only in the loss factors (the Table 3 rows) compile to the same program: one compilation, then hits of
  the persistent compilation cache."""
  train.enable_compilation_cache(config.compilation_cache_dir)
  det = detectors.make(config)
  cfg = datasets.data_config(config, det, config.data.dir, "train", train=True)
  data = pipeline.load(cfg)
  variables = det.init(config.seed)
  opt = optim.make(config.optim, total_steps=2, steps_per_epoch=1, params=variables.params,
                   labels=det.param_labels(variables.params))
  weighting = ts.weighting_from_config(config, det, steps_per_epoch=1)
  mesh = ts.data_mesh(jax.devices()[:1])   # one device compiles faster; sharding is tested in test_mil_ranking.py
  state = ts.shard_state(ts.init_state(variables, opt.tx, weighting), mesh)
  before = jax.device_get(state.params)
  step = compile_step(ts.make_train_step(det, weighting, opt.tx, opt.lr, opt.weight_decay), mesh)
  train_it, val_it = pipeline.train_streams(cfg, data)
  out = []
  for _ in range(2):
    state, m = step(state, ts.global_batch(next(train_it), mesh, det.batch_keys),
                    ts.global_batch(next(val_it), mesh, det.batch_keys))
    out.append(jax.device_get(m))
  return det, out, before, jax.device_get(state)


TWINS = sorted(n for n in NAMES if n == "synthetic" or n.startswith("table3_"))
RECIPES = sorted(set(NAMES) - set(TWINS))   # trained in tests/test_mil_ranking_recipes.py


def check_two_steps(name, world, cache):
  arg = "synthetic" if name.startswith("table3_") else None
  config = shrink(load(name, arg), world, cache)
  det, metrics, before, state = two_steps(config)
  for m in metrics:
    assert all(np.isfinite(np.asarray(v)).all() for v in m.values()), (name, m)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state.params)))
  kept = ROWS.get(name, SWITCHES if name != "binary_ffpp" else ("use_bce_u", "use_bce_v", "use_cls"))
  for task, switch in zip(det.task_names, ("use_cls", "use_bce_u", "use_bce_v", "use_rank")):
    assert (metrics[0][f"loss/{task}"] != 0) == (switch in kept), (name, task)
  if name.startswith("seqdeepfake"):   # stem + layer1 frozen: not trained parameters, only state
    paths = ["/".join(str(getattr(k, "key", k)) for k in p) for p, _ in jax.tree_util.tree_flatten_with_path(before)[0]]
    assert not any("/layer1/" in p or p.startswith("backbone/conv1") for p in paths)
  if name == "binary_ffpp":
    assert metrics[0]["loss/rank"] == 0 and np.asarray(state.params["head"]["class_tokens"]).shape[0] == 1


@pytest.mark.parametrize("name", TWINS)
def test_two_training_steps(name, world, cache):
  """The twin and its Table 3 rows: one compiled program (the loss factors are batch data)."""
  check_two_steps(name, world, cache)
