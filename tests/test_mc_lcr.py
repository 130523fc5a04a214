"""MC-LCR as a detector (spec mc_lcr.md): parameter counts, the depthwise switch, the compiled step on
4 devices == 1 device (BatchNorm, dropout and SupCon over the sharded batch), backbone weights, export /
load, and a two-step training run of the twin through ``sjedd_jax.train`` with its export predicted on a
PNG. Helpers shared with tests/test_mc_lcr_configs.py and tests/test_mc_lcr_ablations.py: ``tiny_config``
and ``shared_cache`` (each file declares its own ``cache`` fixture from it)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from sjedd_jax import config as config_lib, detectors, optim, train_step as ts
from sjedd_jax.backbones import xception
from sjedd_jax.config import ConfigError
from sjedd_jax.detectors import interface, mc_lcr
from sjedd_jax.detectors.mc_lcr import model as model_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "mc_lcr")


def tiny_config(cache, base: str = "synthetic.py", arg=None):
  """A config of configs/mc_lcr at test size: the "test" Xception on a 10-identity 32 px world."""
  c = config_lib.load_config_file(os.path.join(CONFIGS, base), arg)
  c.data.kind = "synthetic"
  c.data.cache_dir = str(cache)
  c.data.image_size = 32
  c.data.synthetic = ml_collections.ConfigDict(dict(num_identities=10, expressions_per_identity=2, image_size=32,
                                                    seed=0, expand=False))
  c.model.backbone = "test"
  c.model.backbone_pretrained = ""
  c.model.require_pretrained = False
  # Two entry blocks, one separable conv per block and one Mixer layer: the same code paths (taps
  # act2 16 ch, block2_in 16, block3_in 32; GF 96), far less to compile.
  c.model.backbone_overrides = ml_collections.ConfigDict(dict(entry_widths=(16, 32), entry_reps=1, middle_reps=1,
                                                              exit_reps=1))
  # The same function as the default "shifted" (test_shifted_depthwise_is_the_grouped_conv) in fewer
  # HLO ops: less to compile at these sizes, where compiling dominates.
  c.model.depthwise = "xla"
  c.model.patch = 8                     # 16 tokens of width 64
  c.model.token_hidden = c.model.channel_hidden = 16
  c.model.mixer_depth = 1
  c.model.fe_dim = 32
  c.model.z_dim = 16
  c.compilation_cache_dir = str(cache / "xla")
  c.batch_size = 8
  c.eval_batch_size = 16
  return c


def shared_cache(tmp_path_factory):
  """The tiny world's folder and a persistent XLA cache, one per session for tests/test_mc_lcr*.py
  (tests compiling the same program, e.g. the task losses or predict, then compile it once)."""
  from sjedd_jax import train
  d = tmp_path_factory.getbasetemp() / "mc_lcr_cache"
  d.mkdir(exist_ok=True)
  train.enable_compilation_cache(str(d / "xla"))
  return d


@pytest.fixture(scope="module", name="cache")
def cache_fixture(tmp_path_factory):
  return shared_cache(tmp_path_factory)


# ------------------------------------------------------------------ sizes
def test_parameter_count_matches_the_spec_to_the_unit():
  c = config_lib.base_config("mc_lcr")
  m = nnx.eval_shape(lambda: model_lib.MCLCR(mc_lcr.model_config(c), rngs=nnx.Rngs(0)))  # shapes only
  assert model_lib.count_params(m) == 19_939_753
  assert model_lib.count_params(m.backbone) == 16_058_152
  h = m.head
  count = lambda *mods: sum(model_lib.count_params(x) for x in mods)
  assert count(h.papda, h.mixer_a, h.mixer_p) == 1_716_736
  assert count(h.embed, h.proj, h.classifier) == 2_164_865
  out = nnx.eval_shape(lambda mm, x: mm(x, train=False), m, jax.ShapeDtypeStruct((2, 256, 256, 3), jnp.float32))
  assert out["f_mm"].shape == (2, 1984) and out["z"].shape == (2, 128) and out["logit"].shape == (2,)
  # GF from act4 (R^2048): + conv3/conv4 (4,748,800) + 1024 more rows of W_E.
  c.model.gf_layer = "act4"
  wide = nnx.eval_shape(lambda: model_lib.MCLCR(mc_lcr.model_config(c), rngs=nnx.Rngs(0)))
  assert model_lib.count_params(wide) == 19_939_753 + 4_748_800 + 1024 * 1024
  # The synthetic twin: F_MM 736 -> F_E 256 -> z 64 (spec section 9).
  twin = config_lib.load_config_file(os.path.join(CONFIGS, "synthetic.py"))
  t = nnx.eval_shape(lambda: model_lib.MCLCR(mc_lcr.model_config(twin), rngs=nnx.Rngs(0)))
  assert t.head.fused_dim == 736 and t.head.num_tokens == 64 and t.head.token_dim == 64
  assert model_lib.count_params(t) == 1_179_889


def test_config_errors_name_the_field():
  c = config_lib.base_config("mc_lcr")
  c.model.patch = 24                                     # 256 is not a multiple of 24
  with pytest.raises(ConfigError, match="patch"):
    mc_lcr.make(c)
  c = config_lib.base_config("mc_lcr")
  c.model.gf_layer = "block11"
  with pytest.raises(ConfigError, match="gf_layer"):
    mc_lcr.make(c)
  c = config_lib.base_config("mc_lcr")
  c.model.supcon.denominator = "positives"
  with pytest.raises(ConfigError, match="denominator"):
    mc_lcr.make(c)
  c = config_lib.base_config("mc_lcr")
  c.model.ssrb = c.model.papda = c.model.gf = False
  with pytest.raises(ConfigError, match="empty"):
    mc_lcr.make(c)
  c = config_lib.base_config("mc_lcr")
  c.model.backbone = "resnet"
  with pytest.raises(ConfigError, match="backbone"):
    mc_lcr.make(c)
  c = config_lib.base_config("mc_lcr")
  c.model.depthwise = "grouped"
  with pytest.raises(ConfigError, match="depthwise"):
    mc_lcr.make(c)
  assert config_lib.base_config("mc_lcr").model.depthwise == "auto"
  c = config_lib.base_config("mc_lcr")
  c.model.remat = "all"
  with pytest.raises(ConfigError, match="remat 'all' not one of"):
    mc_lcr.make(c)
  assert config_lib.base_config("mc_lcr").model.remat == "none"
  assert xception.depthwise_impl("auto") == ("shifted" if jax.default_backend() == "cpu" else "xla")
  with pytest.raises(ValueError, match="depthwise='grouped'"):
    xception.depthwise_impl("grouped")


def test_shifted_depthwise_is_the_grouped_conv(cache):
  """``model.depthwise="shifted"`` (the default) and ``"xla"``: the same parameters under the same paths,
  the same outputs and BatchNorm statistics in training mode, the same gradient."""
  from sjedd_jax.backbones.xception import modeling as xception_modeling
  c = tiny_config(cache)
  xla = model_lib.MCLCR(mc_lcr.model_config(c), rngs=nnx.Rngs(0))
  c.model.depthwise = "shifted"
  shifted = nnx.eval_shape(lambda: model_lib.MCLCR(mc_lcr.model_config(c), rngs=nnx.Rngs(0)))
  model_lib.assign(shifted, model_lib.flatten(xla))      # the same variable paths (else: ValueError)
  kinds = lambda m: {type(x.conv1).__name__ for _, x in nnx.iter_modules(m)
                     if isinstance(x, xception_modeling.SeparableConv2d)}
  assert kinds(shifted) == {"ShiftedDepthwise"} and kinds(xla) == {"Conv"}
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32))
  y = jnp.asarray([0.0, 1.0, 0.0, 1.0])

  batch = {"image": x, "y": y[:, None]}

  def run(module):   # the detector's training losses (BatchNorm batch statistics, dropout), jitted
    handle = interface.ModuleHandle("mc_lcr")
    params, state = handle.split(module)
    det = mc_lcr.detector_from(module.config, mc_lcr.loss_options(c), None, handle)
    f = jax.jit(lambda p, s, k: det.task_losses(p, s, batch, k, True)[:2])
    return f, params, state

  fs, ps, ss = run(shifted)
  fx, px, sx = run(xla)
  (la, sa), (lb, sb) = fs(ps, ss, jax.random.key(0)), fx(px, sx, jax.random.key(0))
  np.testing.assert_allclose(np.asarray(la), np.asarray(lb), rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), sa, sb)
  # (The gradients agree too: tests/test_lisiam.py's test_shifted_depthwise_is_the_grouped_conv.)
  # Dropout follows the key: the same key, the same losses; another key, other ones.
  np.testing.assert_array_equal(np.asarray(fx(px, sx, jax.random.key(0))[0]), np.asarray(lb))
  assert not np.allclose(np.asarray(fx(px, sx, jax.random.key(11))[0]), np.asarray(lb))


# ------------------------------------------------------------------ weights
def test_backbone_weights_load_and_missing_files_are_named(tmp_path, cache):
  from safetensors.numpy import save_file
  from sjedd_jax.backbones import xception
  c = tiny_config(cache)
  ref = xception.Xception(mc_lcr.model_config(c).backbone, rngs=nnx.Rngs(7))
  path = str(tmp_path / "xception_test.safetensors")
  save_file(xception.to_state_dict(ref), path)         # timm names, like a real ImageNet file
  c.model.backbone_pretrained = path
  assert mc_lcr.check_weights(c) == []
  det = mc_lcr.make(c)
  module = det.bind(*det.init(0))
  for k, v in xception.params.flatten(ref).items():
    np.testing.assert_array_equal(xception.params.flatten(module.backbone)[k], v, err_msg=k)
  # A missing file: preflight's sentence names the key and the file; init refuses too.
  c.model.backbone_pretrained = str(tmp_path / "nope.pth")
  (problem,) = mc_lcr.check_weights(c)
  assert "backbone_pretrained" in problem and "nope.pth" in problem and "xception-b5690688.pth" in problem
  with pytest.raises(ConfigError, match="does not exist"):
    mc_lcr.make(c).init(0)
  c.model.backbone_pretrained = ""
  c.model.require_pretrained = True
  assert "needs ImageNet Xception" in mc_lcr.check_weights(c)[0]
  c.model.require_pretrained = False
  c.test_sets = "CDF="
  assert "names no directory" in mc_lcr.check_weights(c)[0]
  # The FF++ configs require the weights.
  ffpp = config_lib.load_config_file(os.path.join(CONFIGS, "ffpp_c23.py"))
  assert "needs ImageNet Xception" in mc_lcr.check_weights(ffpp)[0]


# ------------------------------------------------------------------ labels, metrics
def test_labels_batch_shape_and_cosine_separation():
  from sjedd_jax.data import manifest
  c = config_lib.base_config("mc_lcr")
  det = mc_lcr.make(c)
  rec = manifest.Record(path="a.png", source="Deepfakes", is_fake=1, video_id="v", split="train")
  assert det.label_fn(rec)["y"].tolist() == [1.0]
  assert det.task_names == ("ce", "supcon") and det.primary_weights() == (1.0, 0.0)
  assert det.mean == det.std == (0.5, 0.5, 0.5) and det.image_size == 256
  ab = ts.abstract_batch(det, 16)
  assert ab["image"].shape == (16, 256, 256, 3) and ab["y"].shape == (16, 1)
  w = c.weighting
  assert (w.kind, w.fixed, w.lam_init, w.nonneg) == ("fixed", (0.5, 0.5), (0.5, 0.5), True)
  assert c.data.balance_real and c.data.perturb_probability == 0 and not c.data.hflip
  # Within- minus across-class cosine against a brute-force pair loop.
  rng = np.random.default_rng(0)
  z = rng.normal(size=(11, 5)).astype(np.float32)
  y = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0])
  u = z / np.linalg.norm(z, axis=1, keepdims=True)
  cos = u @ u.T
  off = ~np.eye(11, dtype=bool)
  same = (y[:, None] == y[None, :]) & off
  diff = y[:, None] != y[None, :]
  m = mc_lcr.embedding_metrics(z, y)
  assert m["within_cos"] == pytest.approx(cos[same].mean(), abs=1e-5)
  assert m["across_cos"] == pytest.approx(cos[diff].mean(), abs=1e-5)
  assert m["cos_gap"] == pytest.approx(cos[same].mean() - cos[diff].mean(), abs=1e-5)
  out = det.eval_metrics({"z": z, "p_fake": np.zeros(11)}, {"y": y[:, None].astype(np.float32)})
  assert out["embedding"]["cos_gap"] == pytest.approx(m["cos_gap"])
  assert mc_lcr.summarize(out) == {"z cos within - across": pytest.approx(m["cos_gap"])}


# ------------------------------------------------------------------ the compiled step
def _batch(rng, b=8, s=32):
  y = np.array([0.0, 1.0] * (b // 2), np.float32)[:, None]   # 4 real + 4 fake, interleaved over shards
  return {"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32), "y": y}


def _run(config, mesh, n_steps=2):
  """``n_steps`` compiled training steps on ``mesh``. SGD, not AdamW: a few parameters have a zero
  gradient by construction (the token-mixing output bias, removed by the next LayerNorm over D; the
  attention key bias, removed by the softmax) and Adam's first step turns their rounding noise into
  +-lr, which would hide a real difference; the losses and the gradient norm are compared as well."""
  det = mc_lcr.make(config)
  variables = det.init(0)
  initial = jax.tree.map(lambda a: np.array(a, copy=True), variables)   # the step donates its state
  weighting = ts.weighting_from_config(config, det, steps_per_epoch=10)
  sched = optim.make_schedule("constant", 0.05, total_steps=10)
  opt = optax.sgd(sched, momentum=0.9)
  step = ts.compile_train_step(ts.make_train_step(det, weighting, opt, sched, 0.0), mesh,
                               compiler_options=det.compiler_options)
  state = ts.shard_state(ts.init_state(variables, opt, weighting, seed=3), mesh)
  rng = np.random.default_rng(0)
  out, batches = [], []
  for _ in range(n_steps):
    tr, va = _batch(rng), _batch(rng)
    batches.append(tr)
    state, m = step(state, ts.global_batch(tr, mesh), ts.global_batch(va, mesh))
    out.append(jax.device_get(m))
  return det, initial, jax.device_get(state), out, batches


def test_four_devices_equal_one_device_with_batchnorm_dropout_and_global_supcon(cache):
  """The step (BatchNorm statistics, dropout from the step key, SupCon over the whole batch) gives the
  same losses, parameters and running statistics on 4 devices (2 images each) as on 1: SupCon and
  the BatchNorm statistics are those of the global batch (per-shard ones would differ)."""
  assert len(jax.devices()) >= 4, "tests/conftest.py provides 4 CPU devices"
  c = tiny_config(cache)
  _, _, s1, m1, _ = _run(c, ts.data_mesh(jax.devices()[:1]))
  _, _, s4, m4, _ = _run(c, ts.data_mesh(jax.devices()[:4]))
  for a, b in zip(m1, m4):
    for k in ("loss/ce", "loss/supcon", "loss/weighted", "accuracy", "z_cos_gap", "grad_norm", "update_norm"):
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)
  for tree in ("params", "model_state"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                 getattr(s1, tree), getattr(s4, tree))
  # The parameters and the BatchNorm running statistics moved.
  bn = s1.model_state["backbone"]["bn1"]
  assert not np.allclose(bn["mean"], 0.0) and not np.allclose(bn["var"], 1.0)
  assert float(m1[1]["loss/weighted"]) != float(m1[0]["loss/weighted"])


def test_frequency_branch_alone_builds_no_backbone(cache):
  c = tiny_config(cache)
  c.model.ssrb = False
  c.model.gf = False
  det = mc_lcr.make(c)
  v = det.init(0)
  module = det.bind(*v)
  assert module.backbone is None and module.head.fused_dim == 2 * 64
  assert not jax.tree.leaves(v.state)                                  # no BatchNorm anywhere
  assert model_lib.count_params(module) == model_lib.count_params(module.head)


# ------------------------------------------------------------------ training, export, predict
def test_export_round_trip(cache, tmp_path):
  """An export read back with no config: the same module (parameters, BatchNorm statistics, options)
  and outputs; bfloat16 compute on request; a model of another shape is refused, naming the keys."""
  c = tiny_config(cache)
  det = mc_lcr.make(c)
  v = det.init(0)
  # Non-trivial BatchNorm statistics (positive variances) without compiling a training forward.
  rng = np.random.default_rng(2)
  state = jax.tree.map(lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape).astype(a.dtype)), v.state)
  v = detectors.Variables(v.params, state)
  out = det.export(v, str(tmp_path / "exp"), c)
  assert sorted(os.listdir(out)) == ["detector.json", "mc_lcr.json", "model.safetensors"]
  meta = json.load(open(os.path.join(out, "mc_lcr.json")))
  assert meta["loss"] == {"tau": 0.1, "denominator": "all", "reduction": "mean", "scale": 1.0}
  assert meta["config"]["detector"] == "mc_lcr" and meta["params"] == model_lib.count_params(det.bind(*v))
  det2, v2 = detectors.load_export(out)
  assert det2.name == "mc_lcr" and det2.image_size == 32 and det2.task_names == ("ce", "supcon")
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(v.params), jax.device_get(v2.params))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(v.state), jax.device_get(v2.state))
  x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32))
  a = jax.jit(det.predict)(v.params, v.state, x)
  b = jax.jit(det2.predict)(v2.params, v2.state, x)
  np.testing.assert_array_equal(np.asarray(a["p_fake"]), np.asarray(b["p_fake"]))
  assert a["p_fake"].shape == (4,) and np.all((np.asarray(a["p_fake"]) > 0) & (np.asarray(a["p_fake"]) < 1))
  np.testing.assert_allclose(np.linalg.norm(np.asarray(a["z"]), axis=1), 1.0, rtol=1e-5)
  # The logit's exact split over SSF, GF, AF, PF and the bias.
  assert a["branch_logit"].shape == (4, 5)
  np.testing.assert_allclose(np.asarray(a["branch_logit"]).sum(-1), np.asarray(a["logit"]), rtol=1e-4, atol=1e-5)
  d = mc_lcr.describe_branches({k: np.asarray(v)[0] for k, v in a.items()})
  assert set(d["branch_logit"]) == {"ssf", "gf", "af", "pf", "bias"} and "largest part" in d["branches"]
  det16, v16 = detectors.load_export(out, dtype="bfloat16")
  assert det16.bind(*v16).config.backbone.dtype == "bfloat16"
  # Non-default SupCon options travel with the export.
  c.model.supcon.denominator, c.model.tau = "negatives", 0.2
  out2 = mc_lcr.make(c).export(v, str(tmp_path / "exp2"))
  assert mc_lcr.load_module(out2)[1] == {"tau": 0.2, "denominator": "negatives", "reduction": "mean", "scale": 1.0}
  meta["model"]["fe_dim"] = 48                              # no longer the saved tensors' shape
  json.dump(meta, open(os.path.join(out, "mc_lcr.json"), "w"))
  with pytest.raises(ValueError, match="shape mismatch"):
    mc_lcr.load_export(out)
  os.remove(os.path.join(out, "model.safetensors"))
  with pytest.raises(FileNotFoundError, match="model.safetensors"):
    detectors.load_export(out)
