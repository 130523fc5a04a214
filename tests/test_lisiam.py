"""LiSiam: shapes (299 -> 37 -> 13), the release-key loader, parity with a PyTorch restatement of
LiSiam_A (eval and train mode), the losses, the two views + masks transform, metrics,
4 devices == 1 device, and a whole run (train 2 steps, evaluate, export, predict with the overlay)."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx
from torch import nn

from sjedd_jax import config as config_lib, detectors, optim, train_step as ts
from sjedd_jax.data import manifest
from sjedd_jax.detectors import lisiam
from sjedd_jax.backbones.xception import modeling as xception_modeling
from sjedd_jax.detectors.lisiam import data as data_lib, losses, metrics as lmetrics, model as M
from tests.test_xception import torch_model as torch_xception

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
  """Most XLA optimisations off in this module: its costs are compiling (eager parameter
  initialisation compiles one small program per shape; a two-branch step compiles for seconds),
  never running. Restored afterwards."""
  old = jax.config.values.get("jax_disable_most_optimizations", False)
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


# ------------------------------------------------ a PyTorch restatement of LiSiam_A (spec section 2)
def conv_bn_relu(cin, cout, k, pad=0):
  return nn.Sequential(nn.Conv2d(cin, cout, k, 1, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TObjectContext(nn.Module):
  """Object context: 256^-1/2-scaled attention of X0's queries over the 2 region vectors."""

  def __init__(self, o, t):
    super().__init__()
    self.t = t
    self.query_project = nn.Sequential(conv_bn_relu(o, t, 1), conv_bn_relu(t, t, 1))
    self.key_project = nn.Sequential(conv_bn_relu(o, t, 1), conv_bn_relu(t, t, 1))
    self.value_project = conv_bn_relu(o, t, 1)
    self.out_project = conv_bn_relu(t, o, 1)
    self.bottleneck = conv_bn_relu(2 * o, o, 3, 1)

  def forward(self, feats, regions):                      # (B, C, H, W), (B, C, K, 1)
    b, _, h, w = feats.shape
    q = self.query_project(feats).flatten(2).transpose(1, 2)          # (B, HW, t)
    k = self.key_project(regions).flatten(2)                          # (B, t, K)
    v = self.value_project(regions).flatten(2).transpose(1, 2)        # (B, K, t)
    att = torch.softmax(torch.matmul(q, k) * self.t ** -0.5, dim=-1)
    ctx = torch.matmul(att, v).transpose(1, 2).reshape(b, self.t, h, w)
    return self.bottleneck(torch.cat([self.out_project(ctx), feats], 1))


class TLiSiam(nn.Module):
  """LiSiam_A (or model F) with the release's module names; ``forward`` returns one branch."""

  def __init__(self, cfg: M.LiSiamConfig, seed=0):
    super().__init__()
    o, t, bb = cfg.ocr_channels, cfg.transform_channels, cfg.backbone
    self.cfg = cfg
    self.backbone_net = torch_xception(bb, seed=seed)
    torch.manual_seed(seed + 1)
    self.auxiliary_decoder = nn.Sequential(nn.Conv2d(bb.tap_channels["block4"], o, 3, 1, 1, bias=False),
                                           nn.BatchNorm2d(o), nn.ReLU(), nn.Dropout2d(0.0), nn.Conv2d(o, 2, 1))
    self.bottleneck = conv_bn_relu(bb.exit_width, o, 3, 1)
    self.object_context_block = TObjectContext(o, t)
    self.segDecoder = nn.Sequential(nn.Dropout2d(0.0), nn.Conv2d(o, 2, 1))
    if cfg.head == "seg_logits":
      self.clsDR = nn.Sequential(nn.Conv2d(2, 2, 3, 2, 1), nn.Conv2d(2, 2, 3, 2, 1))
    else:
      g = o if cfg.scu == "depthwise" else 1
      p = cfg.scu_dropout
      self.clsE = nn.Sequential(nn.Conv2d(o, o, 3, 2, 1, groups=g), nn.Conv2d(o, o, 1, 1, 1), nn.BatchNorm2d(o),
                                nn.Dropout2d(p), nn.ReLU(), nn.Conv2d(o, o, 3, 2, 1, groups=g),
                                nn.Conv2d(o, o, 1, 1, 1), nn.BatchNorm2d(o), nn.Dropout2d(p))
      self.Qf, self.Kf, self.Vf = (nn.Conv2d(o, o, 1, bias=False) for _ in range(3))
      self.W_z = nn.Sequential(nn.Conv2d(o, o, 1, bias=False), nn.BatchNorm2d(o))
      self.BN = nn.BatchNorm2d(o)
      self.attn_dropout = nn.Dropout(cfg.attn_dropout)
      z = 2 * o
      self.se = nn.Module()
      self.se.fc = nn.Sequential(nn.Linear(z, z // cfg.se_reduction, bias=False), nn.ReLU(),
                                 nn.Linear(z // cfg.se_reduction, z, bias=False), nn.Sigmoid())
      self.getScore = nn.Sequential(nn.Linear(z, cfg.head_width), nn.BatchNorm1d(cfg.head_width), nn.ReLU(),
                                    nn.Linear(cfg.head_width, 2))
    with torch.no_grad():  # random BN statistics and affine parameters everywhere
      for mod in self.modules():
        if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
          mod.weight.uniform_(0.5, 1.5)
          mod.bias.uniform_(-0.2, 0.2)
          mod.running_mean.uniform_(-0.2, 0.2)
          mod.running_var.uniform_(0.5, 1.5)

  def forward(self, x):
    aux, seg, feats = self.segment(x)
    return aux, seg, self.classify(feats, seg)

  def segment(self, x):
    """Backbone, OCR and segmentation decoder: (A, X_s, X_I)."""
    if self.cfg.channel_order == "bgr":
      x = x.flip(1)
    taps = self.backbone_net(x)
    aux = self.auxiliary_decoder(taps["block4"])
    x0 = self.bottleneck(taps["block12"])
    probs = torch.softmax(aux.flatten(2), dim=2)                         # (B, K, HW)
    regions = torch.matmul(probs, x0.flatten(2).transpose(1, 2))         # (B, K, C)
    regions = regions.transpose(1, 2).unsqueeze(3)                        # (B, C, K, 1)
    feats = self.object_context_block(x0, regions)
    return aux, self.segDecoder(feats), feats

  def classify(self, feats, seg):
    """The logits from X_I and X_s: SCU, mask-guided transformer, SE, MLP head (or model F's head)."""
    if self.cfg.head == "seg_logits":
      return F.adaptive_avg_pool2d(self.clsDR(seg), 1).flatten(1)
    xc = self.clsE(feats)
    g = F.interpolate(torch.softmax(seg, 1), size=xc.shape[2:], mode="bilinear", align_corners=False)
    xf, xr = xc * g[:, 1:2], xc * g[:, 0:1]
    b, c, n, m = xc.shape
    q = self.Qf(xf).flatten(2).transpose(1, 2)
    k = self.Kf(xr).flatten(2)
    v = self.Vf(xr).flatten(2).transpose(1, 2)
    att = self.attn_dropout(torch.softmax(torch.matmul(q, k), dim=-1))   # no 1/sqrt(d)
    y = torch.matmul(att, v).transpose(1, 2).reshape(b, c, n, m)
    y = self.W_z(y) + xf
    z = torch.cat([xc, self.BN(y)], 1)
    s = self.se.fc(z.mean((2, 3)))
    z = z * s[:, :, None, None]
    return self.getScore(z.mean((2, 3)))


def torch_state(tm: nn.Module) -> dict:
  return {k: v.detach().clone() for k, v in tm.state_dict().items()}


def jax_from_torch(tm: TLiSiam) -> M.LiSiam:
  return M.load_release_state_dict(torch_state(tm), tm.cfg)


def _images(b, size, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (b, size, size, 3)).astype(np.float32)


def _nchw(x):
  return torch.tensor(x).permute(0, 3, 1, 2).contiguous()


def _close(got, want, tol=1e-4, what=""):
  want = np.asarray(want)
  scale = max(1.0, float(np.abs(want).max()))
  np.testing.assert_allclose(np.asarray(got), want, rtol=tol, atol=tol * scale, err_msg=what)


# ------------------------------------------------------------------- shapes
def test_release_shapes_299_37_13():
  cfg = M.LiSiamConfig()

  def run(x):
    m = M.LiSiam(cfg, rngs=nnx.Rngs(0))
    out = m.segment(x, train=False)
    xc = m.scu(out["feats"], train=False)
    taps = m.backbone(x, train=False)
    return out, xc, taps["block4"], m.classify(out["feats"], out["seg"], train=False)

  out, xc, mid, logits = jax.eval_shape(run, jax.ShapeDtypeStruct((2, 299, 299, 3), jnp.float32))
  assert mid.shape == (2, 37, 37, 728)
  assert out["feats"].shape == (2, 37, 37, 512) and out["seg"].shape == (2, 37, 37, 2)
  assert out["aux"].shape == (2, 37, 37, 2)
  assert xc.shape == (2, 13, 13, 512) and logits.shape == (2, 2)
  assert data_lib.map_size(cfg.backbone, 299) == 37
  cfg = M.get_config("lisiam-tiny")            # the synthetic twin: 64 -> 15 -> 7
  out, xc, _, _ = jax.eval_shape(run, jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  assert out["seg"].shape == (1, 15, 15, 2) and xc.shape == (1, 7, 7, 64)
  assert data_lib.map_size(cfg.backbone, 64) == 15


def test_config_errors():
  with pytest.raises(ValueError, match="scu"):
    M.LiSiamConfig(scu="separable")
  with pytest.raises(ValueError, match="head"):
    M.get_config("test", head="linear")
  with pytest.raises(ValueError, match="unknown LiSiam preset"):
    M.get_config("huge")
  cfg = M.get_config("lisiam-tiny", scu="depthwise")
  assert M.LiSiamConfig.from_dict(json.loads(cfg.to_json())) == cfg


# ------------------------------------------------------------------- loader and parity
@pytest.mark.parametrize("kind", [dict(), dict(scu="depthwise", channel_order="bgr"), dict(head="seg_logits")])
def test_parity_with_torch_restatement_eval(kind):
  cfg = M.get_config("test", **kind)
  tm = TLiSiam(cfg).eval()
  jm = jax_from_torch(tm)
  x = _images(3, 40)
  with torch.no_grad():
    aux, seg, logits = tm(_nchw(x))
  out = jax.jit(lambda x: jm(x, train=False))(jnp.asarray(x))
  nhwc = lambda t: t.permute(0, 2, 3, 1).numpy()
  _close(out["aux"], nhwc(aux), what="aux")
  _close(out["seg"], nhwc(seg), what="seg")
  _close(out["logits"], logits.numpy(), what="logits")


def test_parity_train_mode_batch_statistics():
  """Train mode without dropout: outputs from batch statistics and the updated running statistics."""
  cfg = M.get_config("test", scu_dropout=0.0, attn_dropout=0.0)
  tm = TLiSiam(cfg).train()
  jm = jax_from_torch(tm)
  x = _images(4, 40, seed=1)
  aux, seg, logits = tm(_nchw(x))
  graphdef, state = nnx.split(jm)

  @jax.jit
  def run(state, x):
    m = nnx.merge(graphdef, state)
    return m(x, train=True), nnx.state(m)

  out, new_state = run(state, jnp.asarray(x))
  _close(out["seg"], seg.detach().permute(0, 2, 3, 1).numpy(), tol=2e-4, what="seg")
  _close(out["logits"], logits.detach().numpy(), tol=2e-4, what="logits")
  nnx.update(jm, new_state)
  got = M.to_release_state_dict(jm)
  want = {k: v.numpy() for k, v in tm.state_dict().items() if not k.endswith("num_batches_tracked")}
  for k in ("object_context_block.key_project.1.1.running_var", "getScore.1.running_mean", "BN.running_var",
            "auxiliary_decoder.1.running_mean", "backbone_net.block3.rep.2.running_var"):
    _close(got[k], want[k], tol=2e-4, what=k)


def test_loader_round_trip_and_errors():
  cfg = M.get_config("test")
  tm = TLiSiam(cfg, seed=3)
  sd = torch_state(tm)
  jm = M.load_release_state_dict({"module." + k: v for k, v in sd.items()}, cfg)   # DDP prefix stripped
  back = M.to_release_state_dict(jm)
  want = {k: v.numpy() for k, v in sd.items() if not k.endswith("num_batches_tracked")
          and not k.startswith("backbone_net.fc.")}
  assert set(back) == set(want)
  for k, v in want.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  bad = dict(sd)
  del bad["Qf.weight"]
  bad["getScore.0.weight"] = torch.zeros(3, 3)
  bad["extra.weight"] = torch.zeros(1)
  del bad["backbone_net.block1.rep.0.conv1.weight"]
  with pytest.raises(M.CheckpointError) as e:
    M.load_release_state_dict(bad, cfg)
  msg = str(e.value)
  assert "Qf.weight" in msg and "getScore.0.weight" in msg and "extra.weight" in msg
  assert "block1.rep.0.conv1.weight" in msg
  with pytest.raises(M.CheckpointError, match="clsDR"):   # a LiSiam_A file into a model-F model
    M.load_release_state_dict(sd, cfg.replace(head="seg_logits"))


def test_shifted_depthwise_is_the_grouped_conv():
  """model.depthwise="shifted" swaps each separable conv's depthwise conv1 (same parameters, same
  paths); the module computes the grouped conv's function and gradients; the backbones agree."""
  a = M.LiSiam(M.get_config("test", depthwise="xla"), rngs=nnx.Rngs(0))
  b = M.LiSiam(M.get_config("test", depthwise="shifted"), rngs=nnx.Rngs(0))
  fa, fb = M.flatten(a), M.flatten(b)
  assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
  assert isinstance(b.backbone.block2.rep[1].conv1, xception_modeling.ShiftedDepthwise)
  x = jnp.asarray(_images(2, 32))
  run = lambda m: jax.jit(lambda x: nnx.merge(*nnx.split(m.backbone))(x, train=False)["block12"])(x)
  _close(run(b), run(a), tol=1e-5, what="block12")
  # One layer, forward and both gradients (input and kernel).
  conv = nnx.Conv(6, 6, (3, 3), padding=1, feature_group_count=6, use_bias=False, rngs=nnx.Rngs(1))
  shifted = xception_modeling.ShiftedDepthwise(conv.kernel, jnp.float32)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 7, 9, 6)).astype(np.float32))

  def value_and_grads(m):
    graphdef, state = nnx.split(m)
    f = lambda s, x: jnp.sum(jnp.sin(nnx.merge(graphdef, s)(x)))
    return jax.jit(lambda s, x: (f(s, x), jax.grad(f, argnums=(0, 1))(s, x)))(state, x)

  (va, (ka, xa)), (vb, (kb, xb)) = value_and_grads(conv), value_and_grads(shifted)
  _close(vb, va, tol=1e-5, what="value")
  _close(xb, xa, tol=1e-5, what="input gradient")
  _close(kb["kernel"][...], ka["kernel"][...], tol=1e-5, what="kernel gradient")


def test_resize_matches_torch_interpolate():
  x = np.random.default_rng(0).normal(size=(2, 15, 15, 3)).astype(np.float32)
  for size in ((7, 7), (64, 64), (13, 29)):
    want = F.interpolate(_nchw(x), size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
    _close(M.resize_bilinear(jnp.asarray(x), size), want, tol=5e-5, what=str(size))


# ------------------------------------------------------------------- losses
def test_losses():
  rng = np.random.default_rng(0)
  seg1 = jnp.asarray(rng.normal(size=(3, 5, 5, 2)).astype(np.float32))
  assert float(losses.li_loss(seg1, seg1)) == 0.0 and float(losses.li_loss(seg1, seg1, "probs")) == 0.0
  seg2 = seg1 + 0.5
  np.testing.assert_allclose(float(losses.li_loss(seg1, seg2)), 0.5, rtol=1e-6)
  assert float(losses.li_loss(seg1, seg2, "probs")) == pytest.approx(0.0, abs=1e-6)   # same softmax
  # L_li sends gradients into both branches.
  g1, g2 = jax.grad(lambda a, b: losses.li_loss(a, b), argnums=(0, 1))(seg1, seg2)
  assert float(jnp.abs(g1).sum()) > 0 and float(jnp.abs(g2).sum()) > 0
  # Segmentation CE on the upsampled logits, 255 ignored: torch's cross_entropy(ignore_index=255).
  mask = rng.integers(0, 2, (3, 12, 12)).astype(np.uint8)
  mask[0, :4] = 255
  mask[2] = 255
  got = float(losses.seg_loss(seg1, jnp.asarray(mask)))
  up = F.interpolate(_nchw(np.asarray(seg1)), size=(12, 12), mode="bilinear", align_corners=False)
  want = F.cross_entropy(up, torch.tensor(mask.astype(np.int64)), ignore_index=255).item()
  assert got == pytest.approx(want, rel=1e-5)
  # An all-ignored batch gives 0 and no gradient.
  assert float(losses.seg_loss(seg1, jnp.full((3, 12, 12), 255, jnp.uint8))) == 0.0
  gmask = jax.grad(lambda s: losses.seg_loss(s, jnp.asarray(np.full((3, 12, 12), 255, np.uint8))))(seg1)
  assert float(jnp.abs(gmask).sum()) == 0.0
  logits = jnp.asarray(rng.normal(size=(4, 2)).astype(np.float32))
  y = np.array([[0], [1], [1], [0]], np.float32)
  want = F.cross_entropy(torch.tensor(np.asarray(logits)), torch.tensor(y[:, 0].astype(np.int64))).item()
  assert float(losses.cls_loss(logits, jnp.asarray(y))) == pytest.approx(want, rel=1e-6)


def test_seg_loss_ignores_255_pixels_whatever_the_logits():
  rng = np.random.default_rng(1)
  seg = rng.normal(size=(2, 4, 4, 2)).astype(np.float32)
  mask = np.full((2, 4, 4), 255, np.uint8)
  mask[:, :2, :2] = 1      # labelled only where the upsampling of an unchanged corner reaches
  base = float(losses.seg_loss(jnp.asarray(seg), jnp.asarray(mask)))
  other = seg.copy()
  other[:, 3, 3] += 50.0   # far from the labelled pixels: an identity resize, so no effect
  assert float(losses.seg_loss(jnp.asarray(other), jnp.asarray(mask))) == pytest.approx(base, rel=1e-6)


# ------------------------------------------------------------------- metrics
def test_localisation_metrics():
  mask = np.zeros((3, 8, 8), np.uint8)
  mask[0, 2:6, 2:6] = 1
  mask[1, :, :4] = 1
  mask[1, :, 6:] = 255
  prob = np.zeros((3, 4, 4), np.float32)
  prob[0, 1:3, 1:3] = 0.9          # exactly the 4x4 square at 8 px (nearest would be exact; bilinear close)
  prob[1] = 0.8                    # everything predicted forged
  prob[2, 0, 0] = 0.9              # a real with a false positive
  y = np.array([1, 1, 0])
  out = lmetrics.localisation(prob, mask, y)
  assert out["num_fake"] == 2 and out["num_real"] == 1
  assert 0.2 < out["iou"] < 1 and out["fake_area_real"] > 0
  perfect = lmetrics.localisation((mask[:2] == 1).astype(np.float32), mask[:2], y[:2])
  assert perfect["iou"] == 1.0 and perfect["f1"] == 1.0 and perfect["pixel_auc"] == 1.0
  assert lmetrics.video_vote_accuracy(np.array([0.9, 0.9, 0.1, 0.2, 0.6, 0.1]), np.array([1, 1, 1, 0, 0, 0]),
                                      np.array([0, 0, 0, 1, 1, 1])) == 1.0
  assert lmetrics.view_consistency(prob, prob) == 0.0
  with pytest.raises(ValueError, match="localisation"):
    lmetrics.localisation(prob[:2], mask, y)


# ------------------------------------------------------------------- transform
def test_transform_views_masks_and_placeholder(tmp_path):
  t = data_lib.Transform(32, 7, "manifest")
  rng = np.random.default_rng(0)
  img = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
  real = manifest.Record(path="real/a/000.png", source="real", is_fake=0, video_id="real/a", split="train")
  out = t(img, real, str(tmp_path), np.random.default_rng(1), True)
  assert set(out) == {"image", "image2", "mask"} and out["image"].shape == (32, 32, 3)
  assert out["mask"].shape == (32, 32) and set(np.unique(out["mask"])) <= {0, 255}
  # A fake without a mask: all ignored; with one: {0, 1} (+ 255 padding).
  fake = manifest.Record(path="Deepfakes/a_b/000.png", source="Deepfakes", is_fake=1, video_id="Deepfakes/a_b",
                         split="train")
  assert (t(img, fake, str(tmp_path), np.random.default_rng(1), True)["mask"] == 255).all()
  png = np.zeros((40, 40), np.uint8)
  png[10:30, 10:30] = 255
  import cv2
  os.makedirs(tmp_path / "m", exist_ok=True)
  cv2.imwrite(str(tmp_path / "m" / "x.png"), png)
  import dataclasses
  fk = dataclasses.replace(fake, forgery_mask="m/x.png")
  out = t(img, fk, str(tmp_path), np.random.default_rng(2), True)
  assert set(np.unique(out["mask"])) <= {0, 1, 255} and (out["mask"] == 1).any()
  ev = t(img, fk, str(tmp_path), np.random.default_rng(2), False)
  assert set(ev) == {"image", "mask"} and ev["image"] is not None and ev["mask"].shape == (7, 7)
  assert ev["mask"][3, 3] == 1 and ev["mask"][0, 0] == 0
  # The pipeline's blank padding image with a record whose mask has another size: shapes only.
  blank = t(np.zeros((32, 32, 3), np.uint8), fk, str(tmp_path), np.random.default_rng(0), True)
  assert blank["mask"].shape == (32, 32)
  with pytest.raises(ValueError, match="forgery mask"):
    t(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), fk, str(tmp_path), np.random.default_rng(0), True)
  # abstract_batch's placeholder: a real record, data_dir "".
  c = config_lib.base_config("lisiam")
  c.model.preset, c.data.image_size = "test", 32
  det = detectors.make(c)
  shapes = ts.abstract_batch(det, 8)
  assert shapes["image2"].shape == (8, 32, 32, 3) and shapes["mask"].shape == (8, 32, 32)
  assert shapes["mask"].dtype == np.uint8 and shapes["y"].shape == (8, 1)
  with pytest.raises(data_lib.MaskSourceError, match="make_masks"):
    data_lib.prepare_masks(str(tmp_path), "diff")


def test_detector_config_errors():
  c = config_lib.base_config("lisiam")
  c.lisiam.variant = "H"
  with pytest.raises(config_lib.ConfigError, match="variant"):
    detectors.make(c)
  c = config_lib.base_config("lisiam")
  c.model.head, c.lisiam.variant = "seg_logits", "B"
  with pytest.raises(config_lib.ConfigError, match="head='mt'"):
    detectors.make(c)
  c = config_lib.base_config("lisiam")
  c.model.remat = "all"
  with pytest.raises(config_lib.ConfigError, match=r"remat='all'; expected one of \['none', 'blocks', 'auto'\]"):
    detectors.make(c)
  c = config_lib.base_config("lisiam")
  c.model.pretrained = "/nonexistent/xception.pth"
  assert any("does not exist" in p for p in lisiam.check_weights(c))
  c = config_lib.base_config("lisiam")
  assert c.weighting.fixed == (1.0, 1.0, 1.0, 0.4) and c.weighting.primary == (1.0, 0.0, 0.0, 0.0)
  assert c.optim.name == "sgd" and c.optim.schedule == "poly" and c.weighting.nonneg


# ------------------------------------------------------------------- the step: 4 devices == 1
# The smallest backbone (one separable conv per block, one middle block): compiling the two-branch
# step is what these tests cost.
SMALLEST = ml_collections.ConfigDict(dict(middle_blocks=1, entry_reps=1, middle_reps=1, exit_reps=1,
                                                     block_strides=(2, 1, 1, 1)))


def _tiny_config(phase="phase1"):
  """configs/lisiam/ffpp.py:<phase> (SGD, momentum, coupled weight decay, poly; the phase's weights
  and frozen group) with the smallest model at 32 px. SGD's update of a bias before a BatchNorm
  (zero gradient up to rounding) stays at rounding size, unlike Adam's."""
  c = config_lib.load_config_file(os.path.join(ROOT, "configs", "lisiam", "ffpp.py"), phase)
  c.model.preset = "test"
  c.model.backbone_overrides = SMALLEST
  c.model.depthwise = "xla"        # the same function (test_shifted_depthwise_is_the_grouped_conv)
  c.model.require_pretrained = False
  c.data.image_size = 32
  c.total_steps = 10
  return c


def _batch(rng, b=8, s=32):
  mask = rng.integers(0, 2, (b, s, s)).astype(np.uint8)
  mask[:2, :4] = 255
  y = np.tile(np.array([[0.0], [1.0]], np.float32), (b // 2, 1))
  mask[y[:, 0] == 0] = np.where(mask[y[:, 0] == 0] == 255, 255, 0)
  return {"image": rng.normal(size=(b, s, s, 3)).astype(np.float32),
          "image2": rng.normal(size=(b, s, s, 3)).astype(np.float32), "mask": mask, "y": y}


def _run_steps(mesh, steps=2):
  c = _tiny_config()
  det = detectors.make(c)
  v = det.init(0)
  labels = det.param_labels(v.params)
  opt = optim.make(c.optim, total_steps=c.total_steps, steps_per_epoch=5, params=v.params, labels=labels)
  w = ts.weighting_from_config(c, det, 5)
  step = ts.compile_train_step(ts.make_train_step(det, w, opt.tx, opt.lr, opt.weight_decay), mesh,
                               compiler_options=det.compiler_options)
  init = jax.tree.map(np.array, jax.device_get(v))     # the step donates its state
  state = ts.shard_state(ts.init_state(v, opt.tx, w, seed=1), mesh)
  rng = np.random.default_rng(0)
  out = []
  for _ in range(steps):
    tb, vb = _batch(rng), _batch(rng)
    state, m = step(state, ts.global_batch(tb, mesh, det.batch_keys), ts.global_batch(vb, mesh, det.batch_keys))
    out.append(jax.device_get(m))
  return jax.device_get(state), out, init, det


def _moved(before, after, det):
  """{"seg": bool, "cls": bool}: whether any leaf of each parameter group changed."""
  moved = {"seg": False, "cls": False}

  def check(a, b, g):
    moved[g] |= not np.array_equal(np.asarray(a), np.asarray(b))

  jax.tree.map(check, before, after, det.param_labels(before))
  return moved


def test_four_devices_equal_one_device_phase1_freezes_cls():
  """Two steps of FF++ phase 1 on 1 and on 4 devices: the same losses, parameters and BatchNorm
  statistics; the frozen "cls" group stays bit-identical (coupled weight decay included) while
  "seg" moves, and the frozen modules' BatchNorm statistics still update (torch's train mode).
  (Phases 2 and 3: tests/test_lisiam_configs.py, on each phase's optimiser.)"""
  s1, m1, init, det = _run_steps(ts.data_mesh(jax.devices()[:1]))
  s4, m4, _, _ = _run_steps(ts.data_mesh(jax.devices()[:4]))
  for a, b in zip(m1, m4):
    assert {"loss/cls", "loss/seg", "loss/li", "loss/aux", "accuracy"} <= set(a)
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-5, err_msg=k)
  for tree in ("params", "model_state"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), getattr(s1, tree),
                 getattr(s4, tree))
  assert all(np.isfinite(v).all() for v in jax.tree.leaves(m1))
  assert m1[0]["loss/li"] > 0 and m1[0]["loss/seg"] > 0 and m1[0]["loss/cls"] > 0
  np.testing.assert_allclose(m1[0]["lambda"], (0.0, 1.0, 1.0, 0.4))
  assert _moved(init.params, s1.params, det) == {"seg": True, "cls": False}
  assert _moved(init.state, s1.model_state, det) == {"seg": True, "cls": True}


# ------------------------------------------------------------------- a whole run, export, predict
def test_train_export_predict_overlay(tmp_path):
  from sjedd_jax import predict, train
  c = config_lib.load_config_file(os.path.join(ROOT, "configs", "lisiam", "synthetic.py"))
  c.data.cache_dir = str(tmp_path / "cache")
  c.data.synthetic.num_identities, c.data.synthetic.expressions_per_identity = 10, 2
  c.data.synthetic.image_size = c.data.image_size = 32
  c.lisiam.eval_mask_size = 32
  c.model.preset = "test"
  c.model.overrides = ml_collections.ConfigDict()      # the test preset's widths
  c.model.depthwise = "xla"
  c.model.backbone_overrides = SMALLEST
  c.total_steps, c.log_every, c.eval_every, c.ckpt_every = 2, 1, 2, 2
  c.batch_size, c.eval_batch_size, c.optim.warmup_steps = 8, 16, 1
  c.compilation_cache_dir = ""
  final = train.run(c, str(tmp_path / "w"), progress=False)
  assert final["steps"] == 2 and np.isfinite(final["final_train_metrics"]["loss/li"])
  res = json.load(open(tmp_path / "w" / "results.json"))["test"]
  loc = res["lisiam"]["localisation"]
  assert loc["num_fake"] > 0 and loc["num_real"] > 0 and 0.0 <= loc["fake_area_real"] <= 1.0
  data_dir = None
  for d in os.listdir(tmp_path / "cache"):
    if d.startswith("synthetic_"):
      data_dir = str(tmp_path / "cache" / d)
  from sjedd_jax.data import synthetic
  assert os.path.exists(os.path.join(data_dir, synthetic.ORACLE_DIR, synthetic.ORACLE_COMPLETE))
  assert all(r.forgery_mask for r in manifest.read(data_dir) if r.is_fake)
  det, variables = detectors.load_export(str(tmp_path / "w" / "export"))
  assert det.name == "lisiam" and det.image_size == 32
  recs = [r for r in manifest.read(data_dir) if r.is_fake][:2]
  paths = [os.path.join(data_dir, r.path) for r in recs]
  results = predict.predict_files(det, variables, paths, face_detector=None, plots_dir=str(tmp_path / "plots"),
                                  progress=False)
  assert len(results) == 2 and all("error" not in r for r in results)
  for r in results:
    assert 0 <= r["p_fake"] <= 1 and 0 <= r["fake_area"] <= 1 and "localised as forged" in r["explanation"]
    assert os.path.getsize(r["plot"]) > 1000 and r["plot"].endswith(".png")
  # The export holds the trained model: the best checkpoint's parameters and statistics, bit for bit.
  from sjedd_jax import inference
  _, v2 = inference.from_checkpoint(c, str(tmp_path / "w"), "best")
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables), jax.device_get(v2))
