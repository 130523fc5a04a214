"""The mil_ranking detector: labels, config checks, frozen stages, the step on 1 and 4 devices, jitter.

A tiny training run (bi-level weighting, evaluation, export, predict JSON) is tests/test_mil_ranking_run.py; the
config files' steps are traced in tests/test_mil_ranking_configs.py.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image, ImageEnhance

from sjedd_jax import config as config_lib, detectors, optim, train_step as ts
from sjedd_jax.config import ConfigError
from sjedd_jax.data import manifest
from sjedd_jax.detectors import mil_ranking as mil
from sjedd_jax.detectors.mil_ranking import augment, labels as labels_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# XLA:CPU's backend (LLVM) at -O0 for the tests' own programs: about half the compile time of the default level on
# the tiny model (16.7 s -> 7.7 s for the step on the loaded 2-core machine), the same values within the tests'
# tolerances. Not for the whole run of tests/test_mil_ranking_run.py: its bi-level step compiled at -O0 gave NaN
# gradients on the first step (jax 0.10.2; at the default level it is finite), so that run keeps the trainer's.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def tiny_config(world: str, cache, **model):
  """The twin's config at test size: a 32 px world, the tiny ResNet, d = 16, one encoder layer (every test shares
  these shapes, so the eager initialisers compile once)."""
  c = config_lib.base_config("mil_ranking")
  c.data.kind = "manifest"
  c.data.dir = world
  c.data.image_size = 32
  c.data.color_jitter = False
  c.model.backbone = "tiny"
  c.model.frozen_stages = ()
  c.model.dim = 16
  c.model.encoder_layers = 1
  c.model.encoder_heads = 2
  c.model.encoder_ffn = 32
  c.model.k_grid = 20
  for k, v in model.items():
    c.model[k] = v
  c.batch_size = 8
  c.eval_batch_size = 8
  c.total_steps = 2
  c.log_every = 1
  c.eval_every = 2
  c.ckpt_every = 2
  c.optim.lr = 1e-3
  c.optim.schedule = "constant"
  c.compilation_cache_dir = str(cache / "xla")
  return c


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("mil_cache")


def _rec(seq, is_fake=None, path="x.png"):
  fake = int(bool(seq)) if is_fake is None else is_fake
  return manifest.Record(path=path, source="seq_edit" if fake else "real", is_fake=fake, video_id="v",
                         split="train", sequence=None if seq is None else list(seq))


# ------------------------------------------------------------------ labels and config
def test_label_fn_encodes_sequences_and_refuses_bad_ones():
  lf = mil.make_label_fn(5)
  out = lf(_rec((4, 2)))
  np.testing.assert_array_equal(out["y"], [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(out["r"], [5, 2, 5, 1, 5])
  np.testing.assert_array_equal(out["seq"], [4, 2, 0, 0, 0])
  assert out["J"] == 1 and all(v.dtype == np.float32 for v in map(np.asarray, out.values()))
  real = lf(_rec(None, 0))
  np.testing.assert_array_equal(real["y"], 0)
  np.testing.assert_array_equal(real["r"], 5)
  assert real["J"] == 0 and not real["seq"].any()
  for seq, fake, msg in (((1, 1), 1, "repeated"), ((6,), 1, "out of range"), ((2,), 0, "contradicts"),
                         ((), 1, "contradicts"), (None, 1, "without a 'sequence'")):
    with pytest.raises(labels_lib.SequenceError, match=msg) as e:
      lf(_rec(seq, fake, path="dir/img.png"))
    assert "dir/img.png" in str(e.value)
  binary = mil.make_label_fn(1)    # L = 1: fake or not, whatever the components
  assert binary(_rec((4, 2)))["y"].tolist() == [1.0] and binary(_rec((4, 2)))["r"].tolist() == [1.0]
  assert binary(_rec(None, 1))["seq"].tolist() == [1, 0, 0, 0, 0]
  assert binary(_rec(None, 0))["y"].tolist() == [0.0]


def test_defaults_switches_and_config_errors(tmp_path):
  c = config_lib.base_config("mil_ranking")
  det = detectors.make(c)
  assert det.task_names == ("cls", "bce_u", "bce_v", "rank") and det.primary == (0.0, 0.0, 0.0, 1.0)
  assert det.mean == det.std == (0.5, 0.5, 0.5) and isinstance(det.transform, augment.ColorJitter)
  assert c.weighting.method == "jvp" and c.data.perturb_probability == 0.0 and c.data.hflip
  m = c.model
  assert mil.task_scale(m) == (1.0, 1.0, 1.0, 1.0)
  m.lambda_1, m.lambda_2, m.use_bce_v = 0.5, 2.0, False
  assert mil.task_scale(m) == (1.0, 0.5, 0.0, 2.0)
  m.use_rank = False
  assert mil.primary_weights(m) == (1.0, 0.0, 0.0, 0.0) and mil.decode_head(m) == "fU"
  m.use_cls = False
  assert mil.primary_weights(m) == (0.0, 1.0, 0.0, 0.0) and mil.score_kind(m) == "fused"
  bad = [("num_components", 1, "use_rank"), ("normalization", "x", "normalization"),
         ("frozen_stages", ("stem", "layer9"), "layer9"), ("components", "a,b", "names 2 components"),
         ("decode_from", "g", "decode_from"), ("k_grid", -3, "k_grid")]
  for key, value, msg in bad:
    c = config_lib.base_config("mil_ranking")
    c.model[key] = value
    with pytest.raises(ConfigError, match=msg):
      detectors.make(c)
  c = config_lib.base_config("mil_ranking")
  for k in ("use_cls", "use_bce_u", "use_bce_v", "use_rank"):
    c.model[k] = False
  with pytest.raises(ConfigError, match="every loss is switched off"):
    detectors.make(c)
  c = config_lib.base_config("mil_ranking")
  c.model.backbone_pretrained = str(tmp_path / "missing.pth")
  assert "does not exist" in mil.check_weights(c)[0]
  c.model.backbone_pretrained, c.model.require_pretrained = "", True
  assert "needs ImageNet ResNet weights" in mil.check_weights(c)[0]
  c.model.require_pretrained = False
  assert mil.check_weights(c) == []


def _flat(tree):
  from flax import nnx
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): v
          for path, v in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(tree))[0]}


def test_pretrained_backbone_frozen_stages_and_param_groups(tmp_path, cache):
  from safetensors.numpy import save_file
  from sjedd_jax.backbones import resnet
  from flax import nnx
  # A reference ResNet with random values (built abstractly, filled from numpy: no initialiser runs).
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: resnet.ResNet(resnet.get_config("tiny"), rngs=nnx.Rngs(7))))
  rng = np.random.default_rng(7)
  ref = nnx.merge(graphdef, jax.tree.map(lambda a: rng.uniform(0.5, 1.5, a.shape).astype(a.dtype), abstract))
  path = str(tmp_path / "tiny_resnet.safetensors")
  save_file({k: np.ascontiguousarray(v) for k, v in resnet.to_state_dict(ref).items()}, path)
  c = tiny_config("", cache, frozen_stages=("stem", "layer1"), backbone_pretrained=path)
  det = detectors.make(c)
  params, state = det.init(0)
  flat, flat_state = _flat(params), _flat(state)
  assert not any(k.startswith(("backbone/conv1", "backbone/bn1", "backbone/layer1")) for k in flat)
  assert any(k.startswith("backbone/layer2") for k in flat)
  np.testing.assert_array_equal(flat_state["backbone/conv1/kernel"], ref.conv1.kernel[...])   # loaded, frozen
  np.testing.assert_array_equal(flat["backbone/layer3/0/conv2/kernel"], ref.layer3[0].conv2.kernel[...])
  groups = jax.tree.leaves(det.param_labels(params))
  assert set(groups) == {"backbone", "head"}
  opt = optim.make(c.optim, total_steps=2, steps_per_epoch=1, params=params, labels=det.param_labels(params))
  assert opt.tx is not None
  c.model.backbone_pretrained = str(tmp_path / "nothing.pth")
  with pytest.raises(ConfigError, match="does not exist"):
    detectors.make(c).init(0)


# ------------------------------------------------------------------ the step
def _batch(det, rng, b=8, size=32):
  seqs = [(), (4, 2), (1, 2, 3, 4, 5), (5,), (), (3, 1), (2, 4, 5), (1,)]
  labs = [det.label_fn(_rec(seqs[i % len(seqs)])) for i in range(b)]
  out = {k: np.stack([l[k] for l in labs]) for k in mil.TRAIN_KEYS[1:]}
  out["image"] = rng.normal(size=(b, size, size, 3)).astype(np.float32)
  return out


def compile_step(step, mesh):
  """The trainer's compiled step (``train_step.compile_train_step``: replicated state, data-sharded batches, the
  state donated), built here to add ``FAST_COMPILE``."""
  rep, data = ts.replicated(mesh), ts.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(rep, data, data), out_shardings=(rep, rep), donate_argnums=(0,),
                 compiler_options=FAST_COMPILE)


def _run_steps(det, variables, mesh, n_steps=2):
  weighting = ts.make_weighting("fixed", num_tasks=4, fixed=(1.0, 1.0, 1.0, 1.0))
  sched = optim.make_schedule("constant", 1e-2, total_steps=10)
  opt = optax.sgd(sched)   # updates linear in the gradient (Adam would amplify the rounding of near-zero ones)
  step = compile_step(ts.make_train_step(det, weighting, opt, sched, 0.0), mesh)
  state = ts.shard_state(ts.init_state(jax.tree.map(jnp.array, variables), opt, weighting, seed=3), mesh)
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n_steps):
    state, m = step(state, ts.global_batch(_batch(det, rng), mesh, det.batch_keys),
                    ts.global_batch(_batch(det, rng), mesh, det.batch_keys))
    out.append(jax.device_get(m))
  return jax.device_get(state), out


@pytest.fixture(scope="module")
def tiny(cache):
  """The step tests' detector (dropout on, the twin's graded targets and weight floor) and its variables."""
  c = tiny_config("", cache, dropout=0.25, rank_target="graded", rank_floor=1.0)
  det = detectors.make(c)
  return c, det, det.init(0)


def test_four_devices_equal_one_device(tiny):
  """BatchNorm statistics over the global batch, dropout masks, the similarity sort and the rank weights do
  not depend on sharding (the bi-level step of this detector runs in tests/test_mil_ranking_run.py)."""
  _, det, variables = tiny
  s1, m1 = _run_steps(det, variables, ts.data_mesh(jax.devices()[:1]))
  s4, m4 = _run_steps(det, variables, ts.data_mesh(jax.devices()[:4]))
  for a, b in zip(m1, m4):
    assert {"loss/cls", "loss/rank", "order_accuracy", "rank_weight_mean", "mil_accuracy"} <= set(a)
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)
  for tree in ("params", "model_state"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 getattr(s1, tree), getattr(s4, tree))
  stats = jax.tree.leaves(s1.model_state)  # BatchNorm running statistics moved
  assert any(not np.allclose(x, 0.0) and not np.allclose(x, 1.0) for x in stats)
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables.params), jax.tree.leaves(s1.params)))


def test_precomputed_rank_weights_are_used_at_theta_and_theta_pm_eps_d(tiny):
  """w computed once at theta (``rank_weights_at``, the config's floor) and put in the batch is what L_Rank uses
  in every pass, at theta and at theta +- eps d (what a finite-difference hypergradient needs, spec 10)."""
  c, det, (params, state) = tiny
  batch = {k: jnp.asarray(v) for k, v in _batch(det, np.random.default_rng(1)).items()}
  key = jax.random.key(0)
  free_fn = jax.jit(lambda p, b: det.task_losses(p, state, b, key, True)[0], compiler_options=FAST_COMPILE)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def held_fn(p, b, w):   # the losses with w held, and w recomputed at p (one program)
    return (det.task_losses(p, state, {**b, "rank_weights": w}, key, True)[0],
            mil.rank_weights_at(det, p, state, b, key, model=c.model))

  base = free_fn(params, batch)
  zero, w = held_fn(params, batch, jnp.zeros((8, 5), jnp.float32))
  assert float(jnp.min(jnp.where(batch["y"] > 0.5, w, 1.0))) >= 1.0    # the floor of the config (alpha * 1)
  np.testing.assert_allclose(held_fn(params, batch, w)[0], base, rtol=1e-6)
  np.testing.assert_allclose(zero[:3], base[:3], rtol=1e-6)
  assert float(zero[3]) == 0.0 and float(base[3]) > 0
  # At theta +- eps d the held w is used, not one recomputed there: L_Rank is linear in the w it is given.
  d = jax.tree.map(lambda x: jnp.asarray(np.random.default_rng(2).normal(size=x.shape), x.dtype), params)
  swaps = 0
  for sign in (1.0, -1.0):
    moved = jax.tree.map(lambda p, t, sign=sign: p + sign * 0.5 * t, params, d)
    held, w_there = held_fn(moved, batch, w)
    np.testing.assert_allclose(held_fn(moved, batch, 2 * w)[0][3], 2 * held[3], rtol=1e-5)
    free = free_fn(moved, batch)   # w recomputed at theta +- eps d
    np.testing.assert_allclose(held[:3], free[:3], rtol=1e-6)
    if not np.array_equal(w_there, w):   # a rank swap between theta and theta +- eps d
      swaps += 1
      assert float(held[3]) != float(free[3])
  assert swaps > 0


def test_describe_decodes_in_probability_order(tiny):
  det = tiny[1]
  logits = np.asarray([2.0, -1.0, 0.5, 3.0, -2.0])
  out = det.describe({"logits": logits, "probs": 1 / (1 + np.exp(-logits)), "mil_prob": np.float32(0.9),
                      "p_fake": np.float32(0.9)})
  assert out["sequence"] == ["lip", "nose", "eyebrow"] and out["sequence_ids"] == [4, 1, 3, 0, 0]
  assert "lip -> nose -> eyebrow" in out["explanation"]
  neg = det.describe({"logits": -np.ones(5), "probs": np.full(5, 0.27), "mil_prob": np.float32(0.1)})
  assert neg["sequence"] == [] and neg["sequence_ids"] == [0] * 5


# ------------------------------------------------------------------ ColorJitter
def test_color_jitter_is_torchvision_on_pil():
  rng = np.random.default_rng(0)
  img = rng.integers(0, 256, (16, 12, 3), np.uint8)
  jit = augment.ColorJitter()
  params = jit.params(np.random.default_rng(5))
  assert sorted(n for n, _ in params) == ["brightness", "contrast", "saturation"]
  for name, f in params:
    lo, hi = {"brightness": augment.BRIGHTNESS, "contrast": augment.CONTRAST, "saturation": augment.SATURATION}[name]
    assert lo <= f <= hi
  # torchvision's F.adjust_* on a PIL image, written out: ImageEnhance in the drawn order.
  ref = Image.fromarray(img)
  enh = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast, "saturation": ImageEnhance.Color}
  for name, f in params:
    ref = enh[name](ref).enhance(f)
  np.testing.assert_array_equal(jit.apply(img, params), np.asarray(ref))
  # Brightness is PIL's blend with black (truncation), contrast blends with the rounded grey mean.
  np.testing.assert_array_equal(augment.adjust(img, "brightness", 0.5), (img.astype(np.float32) * 0.5).astype(np.uint8))
  grey = np.full_like(img, 100)
  np.testing.assert_array_equal(augment.adjust(grey, "contrast", 1.4), grey)
  # Orders vary across draws; evaluation is the identity; a bad range is refused.
  orders = {tuple(n for n, _ in jit.params(np.random.default_rng(s))) for s in range(30)}
  assert len(orders) == 6
  np.testing.assert_array_equal(jit(img, None, "", np.random.default_rng(0), False)["image"], img)
  out = jit(img, None, "", np.random.default_rng(0), True)["image"]
  assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
  with pytest.raises(ValueError, match="brightness"):
    augment.ColorJitter(brightness=(1.5, 0.5))
  import pickle
  assert pickle.loads(pickle.dumps(jit)).ranges == jit.ranges


# ------------------------------------------------------------------ the twin's [I] rank-loss switches
def test_graded_rank_targets_and_weight_floor():
  from sjedd_jax.detectors.mil_ranking import losses
  enc = labels_lib.encode_padded(np.asarray([[4, 2, 0, 0, 0], [1, 2, 3, 4, 5], [0] * 5]), 5)
  y, r = jnp.asarray(enc["y"]), jnp.asarray(enc["r"])
  np.testing.assert_array_equal(losses.rank_targets(y, r, "binary"), enc["y"])
  t = np.asarray(losses.rank_targets(y, r, "graded"))
  np.testing.assert_allclose(t[0], [0, 0.9, 0, 1.0, 0], atol=1e-7)     # 4 first (1.0), 2 second (0.9)
  np.testing.assert_allclose(t[1], [1.0, 0.9, 0.8, 0.7, 0.6], atol=1e-7)
  np.testing.assert_array_equal(t[2], 0.0)
  assert np.all(t[enc["y"] > 0.5] > 0.5)   # the predicted set {P > 0.5} is unchanged
  f = jnp.asarray([[0.1, 2.0, 0.0, 3.0, -1.0], [5.0, 4.0, 3.0, 2.0, 1.0], [0.0] * 5])   # rows 0, 1 perfectly ranked
  w0 = np.asarray(losses.rank_weights(f, y, r, alpha=2.0))
  w1 = np.asarray(losses.rank_weights(f, y, r, alpha=2.0, floor=1.0))
  np.testing.assert_array_equal(w0[0], [2, 0, 2, 0, 2])
  np.testing.assert_array_equal(w1[0], [2, 2, 2, 2, 2])   # placed components keep alpha * floor
  np.testing.assert_array_equal(w1[1], 2.0)
  np.testing.assert_array_equal(w1[2], w0[2])             # off Y: unchanged
  # Graded targets pull a component ranked too high DOWN (binary ones never do).
  out = {"fU": f, "fV": f, "f": f, "u": jnp.sort(jax.random.uniform(jax.random.key(0), (3, 10)), -1)}
  batch = {"y": y, "r": r, "J": jnp.asarray(enc["J"])}
  swapped = out["f"].at[0, 1].set(4.0)   # component 2 (second) above component 4 (first)
  grad = {kind: jax.jit(jax.grad(lambda ff, kind=kind: losses.loss_vector(
      {**out, "f": ff}, batch, losses.LossConfig(rank_target=kind))[3]), compiler_options=FAST_COMPILE)(swapped)
          for kind in ("binary", "graded")}
  assert float(grad["binary"][0, 1]) <= 0 and float(grad["graded"][0, 1]) > 0
  with pytest.raises(ValueError, match="rank_target"):
    losses.LossConfig(rank_target="soft")
