"""Every paper variant is one config away: each file in configs/ablations/ (and configs/jedd_draft.py)
changes exactly the keys it names, and every distinct code path trains on the synthetic world."""

import glob
import json
import os

import jax
import numpy as np
import pytest

from sjedd_jax import config as config_lib, detectors, inference
from sjedd_jax.data import datasets
from tests.config_diff import diff
from tests.tiny import shrink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
ABLATIONS = os.path.join(CONFIGS, "ablations")

# What each variant must change relative to its base, written out independently of the files.
# (FF++ form, synthetic twin form); None: the twin changes the same keys.
_L14_TWIN = {f"model.clip_overrides.{k}": v for k, v in dict(
    embed_dim=192, vision_width=192, vision_layers=6, vision_heads=6, patch_size=4, text_width=192,
    text_heads=6).items()}
EXPECTED = {
    "image_only_ce": ({"model.head": "linear", "loss": "bce"}, None),
    "joint_ce": ({"loss": "bce"}, None),
    "frozen_text": ({"model.freeze_text": True}, None),
    "keyword_templates": ({"model.templates": "keyword"}, None),
    "cosine": ({"model.similarity": "cosine"}, None),
    "fixed_weights": ({"weighting.kind": "fixed", "weighting.fixed": (1.0, 0.1, 0.1)}, None),
    "equal_weights": ({"weighting.kind": "fixed"}, None),      # base fixed weights are (1, 1, 1)
    "dwa": ({"weighting.kind": "dwa"}, None),
    "no_augmentation": ({"data.exclude_expansion": True}, None),
    "no_relabelling": ({"data.binary_only": True}, None),
    "no_aug_no_relabel": ({"data.exclude_expansion": True, "data.binary_only": True}, None),
    "xray": ({"data.expansion_mode": "xray"}, None),
    "jedd_frozen_text": ({"model.freeze_text": True}, None),
    "jedd_equal_weights": ({"weighting.kind": "fixed"}, None),
    "jedd_no_contrastive": ({"model.jedd.contrastive": False}, None),
    "jedd_binary": ({"model.jedd.levels": 1}, None),
    "jedd_two_levels": ({"model.jedd.levels": 2}, None),
    "jedd_joint_templates": ({"model.jedd.probability": "joint"}, None),
    "jedd_vit_b16": ({"model.clip": "ViT-B/16"}, {"model.clip_overrides.patch_size": 4}),
    "jedd_vit_l14": ({"model.clip": "ViT-L/14"}, _L14_TWIN),
    "jedd_bce": ({"loss": "bce"}, None),
    "jedd_hierarchical": ({"model.jedd.probability": "hierarchy"}, None),
    "jedd_bilevel": ({"weighting.kind": "bilevel"}, None),
    "jedd_zero_shot": ({"num_epochs": 0}, {"num_epochs": 0, "total_steps": 0}),
}
# configs/jedd_draft.py against the SJEDD configs it builds on (FF++, twin).
_JEDD_COMMON = {"detector": "jedd", "hierarchy": "jedd_draft", "data.label_table": "jedd_draft",
                "model.similarity": "cosine", "model.cosine_tau": 1.0, "model.jedd.levels": 3,
                "model.jedd.probability": "sigmoid", "model.jedd.contrastive": True, "model.jedd.tokenizer": "",
                "weighting.kind": "dwa", "weighting.dwa_period": 1}
JEDD_DRAFT = ({**_JEDD_COMMON, "model.jedd.token_ids": "auto", "optim.lr": 1e-7, "optim.schedule": "cosine",
               "num_epochs": 36},
              {**_JEDD_COMMON, "model.jedd.token_ids": "placeholder"})


def load(name, arg=None):
  path = os.path.join(CONFIGS, "jedd_draft.py") if name == "jedd_draft" else os.path.join(ABLATIONS, name + ".py")
  return config_lib.load_config_file(path, arg)


def base_of(name, arg):
  if name.startswith("jedd_"):
    return load("jedd_draft", arg)
  return config_lib.load_config_file(os.path.join(CONFIGS, "synthetic.py" if arg else "ffpp.py"))


def test_every_ablation_file_is_listed_and_labelled():
  files = sorted(os.path.basename(f)[:-3] for f in glob.glob(os.path.join(ABLATIONS, "*.py")))
  assert files == sorted(EXPECTED)
  import importlib.util
  for name in files:
    spec = importlib.util.spec_from_file_location("m_" + name, os.path.join(ABLATIONS, name + ".py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.TABLE and mod.ROW, name


@pytest.mark.parametrize("arg", [None, "synthetic"])
def test_each_switch_changes_exactly_what_it_names(arg, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)   # config files find their base from any cwd
  for name, (ffpp_keys, twin_keys) in EXPECTED.items():
    want = ffpp_keys if arg is None or twin_keys is None else twin_keys
    assert diff(load(name, arg), base_of(name, arg)) == want, name
  from configs import ffpp, synthetic
  assert diff(load("jedd_draft"), ffpp.get_config()) == JEDD_DRAFT[0]
  assert diff(load("jedd_draft", "synthetic"), synthetic.get_config()) == JEDD_DRAFT[1]


def test_cli_loads_a_twin_with_its_argument():
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv)
  fv(["prog", f"--config={ABLATIONS}/jedd_bilevel.py:synthetic"])
  assert fv.config.detector == "jedd" and fv.config.weighting.kind == "bilevel"
  assert fv.config.model.clip == "tiny" and fv.config.model.jedd.token_ids == "placeholder"


# ------------------------------------------------------------------- training on the synthetic world
def tiny(c, cache):
  c = shrink(c, cache, expand=True)
  c.total_steps = 2
  c.log_every = 1
  c.eval_every = 2
  c.ckpt_every = 2
  c.optim.warmup_steps = 1
  c.weighting.update_every = 1  # both steps update lambda (step 0 has lr 0, so a zero hypergradient)
  return c


def compose(cache, *names):
  """The synthetic twin of the first variant's base with the switches of all ``names`` applied."""
  base = base_of(names[0], "synthetic")
  c = base_of(names[0], "synthetic")
  for name in names:
    for key, value in diff(load(name, "synthetic"), base).items():
      config_lib.set_dotted(c, key, value)
  return tiny(c, cache)


def hierarchy_of(config):
  return detectors.get(config.detector).hierarchy_from_config(config)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("ablation_cache")


def two_steps(config):
  """Two real training steps (the trainer's compiled step) -> (metrics, params before, params after)."""
  from sjedd_jax import optim, train, train_step as ts
  from sjedd_jax.data import pipeline
  train.enable_compilation_cache(config.compilation_cache_dir)
  det = detectors.make(config)
  data_dir = datasets.dataset_dir(config, progress=False)
  cfg = datasets.data_config(config, det, data_dir, "train", train=True)
  data = pipeline.load(cfg)
  variables = det.init(config.seed)
  schedule = optim.make_schedule(config.optim.schedule, config.optim.lr, total_steps=2,
                                 warmup_steps=config.optim.warmup_steps)
  opt = optim.adamw(schedule, config.optim.weight_decay)
  weighting = ts.weighting_from_config(config, det, steps_per_epoch=1)
  step = ts.make_train_step(det, weighting, opt, schedule, config.optim.weight_decay)
  mesh = ts.data_mesh()
  state = ts.shard_state(ts.init_state(variables, opt, weighting), mesh)
  before = jax.device_get(state.params)
  compiled = ts.compile_train_step(step, mesh)
  train_it, val_it = pipeline.train_streams(cfg, data)
  out = []
  for _ in range(2):
    state, m = compiled(state, ts.global_batch(next(train_it), mesh, det.batch_keys),
                        ts.global_batch(next(val_it), mesh, det.batch_keys))
    out.append(jax.device_get(m))
  return out, before, jax.device_get(state.params), data


def _changed(a, b):
  return any(not np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _paths(params):
  from flax import nnx
  return ["/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]]


# Each run covers the code paths of the switches it combines (all orthogonal).
RUNS = {
    "linear_head_bce_bilevel_xray": ("image_only_ce", "xray"),
    "frozen_cosine_dwa": ("frozen_text", "cosine", "dwa"),
    "fixed_weights_no_aug_no_relabel": ("fixed_weights", "no_aug_no_relabel"),
    "jedd_joint_templates": ("jedd_joint_templates",),
    "jedd_hierarchy_bce_frozen": ("jedd_hierarchical", "jedd_bce", "jedd_frozen_text"),
    "jedd_binary_no_contrastive_b16": ("jedd_binary", "jedd_no_contrastive", "jedd_vit_b16"),
    "jedd_bilevel_two_levels_equal": ("jedd_two_levels", "jedd_bilevel"),
}


@pytest.mark.parametrize("run", sorted(RUNS))
def test_two_training_steps(run, cache):
  names = RUNS[run]
  config = compose(cache, *names)
  metrics, before, after, data = two_steps(config)
  for m in metrics:
    assert all(np.isfinite(np.asarray(v)).all() for v in m.values()), m
  assert _changed(before, after)
  lam = [np.asarray(m["lambda"]) for m in metrics]
  sources = {r.source for r in data.records}
  if "xray" in names:
    assert "xray" in sources and not sources & {"aug_eye", "aug_lip_mouth", "aug_nose"}
  if "no_aug_no_relabel" in names:
    assert not sources & {"aug_eye", "aug_lip_mouth", "aug_nose", "xray"}
    np.testing.assert_allclose(lam[-1], [1.0, 0.1, 0.1])
    assert metrics[0]["loss/global"] == 0 and metrics[0]["loss/local"] == 0   # binary labels only
  elif "jedd_binary" not in names and "xray" not in names:
    assert sources & {"aug_eye", "aug_lip_mouth", "aug_nose"}
  if "frozen_text" in names or "jedd_frozen_text" in names or "image_only_ce" in names:
    assert not any("text" in p for p in _paths(before))
  if "jedd_bilevel" in names or "image_only_ce" in names:
    assert not np.allclose(lam[-1], 1.0) and np.any(metrics[-1]["hypergradient"] != 0)
  if "jedd_binary" in names:
    assert metrics[0]["loss/global"] == 0 and metrics[0]["loss/local"] == 0
    assert hierarchy_of(config).nodes == ("fake",)
  if "jedd_vit_b16" in names:
    det = detectors.make(config)
    assert det.bind(*det.init(config.seed)).clip.config.patch_size == 4


def test_data_switches(cache):
  from sjedd_jax.data import pipeline
  base = compose(cache, "no_augmentation")
  base.data.exclude_expansion = False
  d = datasets.dataset_dir(base, progress=False)
  full = {r.source for r in pipeline.load(datasets.data_config(base, detectors.make(base), d, "train",
                                                               train=True)).records}
  assert {"aug_eye", "aug_lip_mouth", "aug_nose"} <= full
  c = compose(cache, "no_relabelling")
  data_cfg = datasets.data_config(c, detectors.make(c), d, "train", train=True)
  ex = pipeline.LoadExample(pipeline.load(data_cfg), data_cfg, train=False)
  assert ex.labels["observed"][:, 1:].sum() == 0 and ex.labels["observed"][:, 0].all()
  # The JEDD draft's label table reaches the pipeline, column by node name.
  j = compose(cache, "jedd_two_levels")
  data_cfg = datasets.data_config(j, detectors.make(j), d, "train", train=True)
  data = pipeline.load(data_cfg)
  ex = pipeline.LoadExample(data, data_cfg, train=False)
  i = [r.source for r in data.records].index("NeuralTextures")
  assert ex.labels["y"][i].tolist() == [1, 1, 0, 1] and ex.labels["observed"][i].tolist() == [1, 1, 1, 1]
  k = [r.source for r in data.records].index("aug_eye")
  assert ex.labels["observed"][k].tolist() == [1, 0, 1, 1]
  # X-ray blends are trained on and left out of every evaluation.
  x = compose(cache, "xray")
  dx = datasets.dataset_dir(x, progress=False)
  test_sources = {r.source for r in pipeline.load(datasets.data_config(x, detectors.make(x), dx, "test",
                                                                       train=False)).records}
  assert "xray" not in test_sources and "real" in test_sources


def test_jedd_draft_trains_evaluates_and_exports(cache, tmp_path):
  from sjedd_jax import train
  config = tiny(load("jedd_draft", "synthetic"), cache)
  final = train.run(config, str(tmp_path / "jedd"), progress=False)
  assert 0.0 <= final["test/frame_auc"] <= 1.0
  metrics = json.load(open(tmp_path / "jedd" / "metrics.json"))
  assert metrics["test/frame_auc"] == final["test/frame_auc"]
  export = tmp_path / "jedd" / "export"
  assert (export / "jedd.json").exists()
  reloaded, reloaded_vars = detectors.load_export(str(export))
  det, variables = inference.load(config=config, workdir=str(tmp_path / "jedd"), checkpoint="best")
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(reloaded.predict(*reloaded_vars, images)["marginals"],
                             det.predict(*variables, images)["marginals"], atol=1e-5)
  assert reloaded.bind(*reloaded_vars).token_ids_source == "placeholder"


def test_zero_shot_evaluates_the_model_as_built(cache, tmp_path):
  from sjedd_jax import train
  config = tiny(load("jedd_zero_shot", "synthetic"), cache)
  config.total_steps = 0
  final = train.run(config, str(tmp_path / "zero"), progress=False)
  assert final["steps"] == 0 and 0.0 <= final["test/frame_auc"] <= 1.0
  assert json.load(open(tmp_path / "zero" / "metrics.json"))["test/frame_auc"] == final["test/frame_auc"]
  exported, exported_vars = detectors.load_export(str(tmp_path / "zero" / "export"))
  built = detectors.make(config)
  images = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(exported.predict(*exported_vars, images)["marginals"],
                             built.predict(*built.init(config.seed), images)["marginals"], atol=1e-6)
