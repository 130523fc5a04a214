"""ResNet backbone (sjedd_jax.backbones.resnet): shapes, key map, round trips, PyTorch parity.

The parity reference is torchvision's ``resnet18/34/50(weights=None)`` when
torchvision imports, and always a torch restatement of torchvision's ResNet
(``TorchResNet`` below: same module names, so the same state dict), so the
parity tests run without torchvision too. All weights are random; nothing is
downloaded.
"""

from __future__ import annotations

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from torch import nn as tnn

from sjedd_jax.backbones import resnet
from sjedd_jax.backbones.resnet import params
from sjedd_jax.weights import CheckpointError


# ------------------------------------------- torch restatement of torchvision's ResNet
class TorchBasicBlock(tnn.Module):
  expansion = 1

  def __init__(self, cin, planes, stride, downsample, first_dilation, dilation):
    super().__init__()
    self.conv1 = tnn.Conv2d(cin, planes, 3, stride, first_dilation, first_dilation, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.relu = tnn.ReLU(inplace=True)
    self.conv2 = tnn.Conv2d(planes, planes, 3, 1, dilation, dilation, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(y)) + identity)


class TorchBottleneck(tnn.Module):
  expansion = 4

  def __init__(self, cin, planes, stride, downsample, first_dilation, dilation):
    super().__init__()
    del dilation
    self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = tnn.BatchNorm2d(planes)
    self.conv2 = tnn.Conv2d(planes, planes, 3, stride, first_dilation, first_dilation, bias=False)
    self.bn2 = tnn.BatchNorm2d(planes)
    self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = tnn.BatchNorm2d(planes * 4)
    self.relu = tnn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    return self.relu(self.bn3(self.conv3(y)) + identity)


class TorchResNet(tnn.Module):
  """torchvision.models.ResNet without avgpool/fc; ``forward`` returns [C2, C3, C4, C5]."""

  def __init__(self, cfg: resnet.ResNetConfig):
    super().__init__()
    block = TorchBasicBlock if cfg.block == "basic" else TorchBottleneck
    self.inplanes, self.dilation = cfg.stem_width, 1
    k, p = (7, 3) if cfg.stem == "torchvision" else (3, 1)
    self.conv1 = tnn.Conv2d(cfg.in_channels, cfg.stem_width, k, 2, p, bias=False)
    self.bn1 = tnn.BatchNorm2d(cfg.stem_width)
    self.relu = tnn.ReLU(inplace=True)
    self.maxpool = tnn.MaxPool2d(3, 2, 1) if cfg.stem == "torchvision" else tnn.Identity()
    flags = (False,) + cfg.replace_stride_with_dilation
    for i in range(4):
      setattr(self, f"layer{i + 1}",
              self._make_layer(block, cfg.widths[i], cfg.layers[i], cfg.strides[i], flags[i]))
    for m in self.modules():
      if isinstance(m, tnn.Conv2d):
        tnn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

  def _make_layer(self, block, planes, blocks, stride, dilate):
    previous = self.dilation
    if dilate:
      self.dilation *= stride
      stride = 1
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = tnn.Sequential(tnn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                  tnn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample, previous, self.dilation)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes, 1, None, self.dilation, self.dilation) for _ in range(1, blocks)]
    return tnn.Sequential(*layers)

  def forward(self, x):
    return features(self, x)


def features(m: tnn.Module, x):
  """C2..C5 of a torchvision-layout ResNet (torchvision's, timm's (``act1``) or ``TorchResNet``)."""
  act = m.relu if hasattr(m, "relu") else m.act1
  x = m.maxpool(act(m.bn1(m.conv1(x))))
  out = []
  for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
    x = layer(x)
    out.append(x)
  return out


def randomise_bn(model: tnn.Module, seed: int) -> tnn.Module:
  """Random BatchNorm affine parameters and running statistics (torch's init is 1/0/0/1)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, tnn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(0.5 + torch.rand(n, generator=g))
        m.bias.copy_(0.1 * torch.randn(n, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
        m.running_var.copy_(0.5 + torch.rand(n, generator=g))
  return model


def torch_reference(cfg: resnet.ResNetConfig, seed: int = 0) -> TorchResNet:
  torch.manual_seed(seed)
  return randomise_bn(TorchResNet(cfg), seed)


def run_torch(model: tnn.Module, x: np.ndarray, train: bool) -> dict[str, np.ndarray]:
  """C2..C5 (NHWC numpy, the model's dtype) of a torch model in train or eval mode."""
  model.train(train)
  dtype = next(model.parameters()).dtype
  with torch.no_grad():
    out = features(model, torch.from_numpy(x).to(dtype).permute(0, 3, 1, 2))
  return {k: v.permute(0, 2, 3, 1).numpy() for k, v in zip(resnet.FEATURES, out)}


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


def max_err(a, b) -> float:
  return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def assert_close(got: dict, want: dict, tol: float = 1e-4):
  """max |got - want| <= tol * max(1, max |want|), per entry."""
  for k in want:
    a, b = np.asarray(got[k], np.float32), np.asarray(want[k], np.float32)
    assert a.shape == b.shape, (k, a.shape, b.shape)
    err, scale = max_err(a, b), max(1.0, float(np.abs(b).max()))
    assert err <= tol * scale, f"{k}: max |diff| {err:.3g} (max |ref| {scale:.3g})"


def torch_state(model: tnn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}  # copies: no aliasing with torch


def check_parity(torch_model: tnn.Module, cfg: resnet.ResNetConfig, size: int, batch: int = 2,
                 tol: float = 1e-4) -> dict[str, float]:
  """Eval outputs, train outputs and the running statistics after one train forward match torch.

  Eval mode: max |jax - torch| <= tol * max |torch| (float32 both). Train mode
  normalises with the statistics of a small batch, which is ill-conditioned for
  channels whose values nearly coincide (ResNet-50 at 32 px, batch 2: torch
  float32 itself is 4.8 off float64 in C5), so train-mode outputs and running
  statistics are held to the float64 torch model (same weights): within
  tol * scale, or within twice torch float32's own error where that is larger.
  Returns the largest train-mode error relative to scale (for the record).
  """
  model = params.load_pretrained(torch_state(torch_model), cfg)
  ref64 = copy.deepcopy(torch_model).double()
  x = images(batch, size)
  assert_close(model(jnp.asarray(x), train=False), run_torch(torch_model, x, train=False), tol)
  got = model(jnp.asarray(x), train=True)
  want32, want64 = run_torch(torch_model, x, train=True), run_torch(ref64, x, train=True)
  worst = {}
  for k in resnet.FEATURES:
    scale = max(1.0, float(np.abs(want64[k]).max()))
    err, err_torch = max_err(got[k], want64[k]), max_err(want32[k], want64[k])
    assert err <= max(tol * scale, 2 * err_torch), (
        f"train {k}: max |jax - torch64| {err:.3g}, |torch32 - torch64| {err_torch:.3g}, scale {scale:.3g}")
    worst[k] = err / scale
  got_sd, sd32, sd64 = params.to_state_dict(model), torch_state(torch_model), torch_state(ref64)
  stats = [k for k in got_sd if k.endswith(("running_mean", "running_var"))]
  assert stats
  for k in stats:
    scale = max(1.0, float(np.abs(sd64[k]).max()))
    err, err_torch = max_err(got_sd[k], sd64[k]), max_err(sd32[k], sd64[k])
    assert err <= max(tol * scale, 2 * err_torch), f"{k}: {err:.3g} vs torch32 {err_torch:.3g}"
  for k in got_sd:  # nothing else moved: the parameters are what was loaded
    if k not in stats:
      np.testing.assert_array_equal(got_sd[k], sd32[k], err_msg=k)
  return worst


def abstract_features(cfg: resnet.ResNetConfig, shape) -> dict[str, jax.ShapeDtypeStruct]:
  """Output shapes of ``ResNet(cfg)(x, train=False)`` without computing anything."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: resnet.ResNet(cfg, rngs=nnx.Rngs(0))))
  return jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x, train=False), state,
                        jax.ShapeDtypeStruct(shape, jnp.float32))


# ------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", ["resnet18", "resnet34", "resnet50", "tiny"])
def test_feature_shapes(name):
  cfg = resnet.get_config(name)
  out = abstract_features(cfg, (1, 64, 64, 3))
  assert list(out) == ["C2", "C3", "C4", "C5"]
  for k, v in out.items():
    s = 64 // cfg.feature_strides[k]
    assert v.shape == (1, s, s, cfg.channels[k]), (k, v.shape)
  expected = {"resnet18": (4, 64, 512), "resnet34": (4, 64, 512), "resnet50": (4, 256, 2048),
              "tiny": (2, 16, 128)}[name]
  assert (cfg.feature_strides["C2"], cfg.channels["C2"], cfg.channels["C5"]) == expected


def test_tiny_preset_matches_spec():
  cfg = resnet.get_config("tiny")
  assert (cfg.stem, cfg.stem_width, cfg.block, cfg.layers, cfg.widths, cfg.strides) == (
      "tiny", 16, "basic", (1, 1, 1, 1), (16, 32, 64, 128), (1, 2, 2, 2))
  model = nnx.eval_shape(lambda: resnet.ResNet(cfg, rngs=nnx.Rngs(0)))
  assert model.conv1.kernel.shape == (3, 3, 3, 16) and model.conv1.padding == ((1, 1), (1, 1))
  assert model.layer1[0].downsample is None  # 16 -> 16 at stride 1
  assert abstract_features(cfg, (2, 64, 64, 3))["C4"].shape == (2, 8, 8, 64)  # P4 8x8 at 64 px
  tv = nnx.eval_shape(lambda: resnet.ResNet(resnet.get_config("resnet18"), rngs=nnx.Rngs(0)))
  assert tv.conv1.kernel.shape == (7, 7, 3, 64) and tv.conv1.padding == ((3, 3), (3, 3))


def test_dilation_keeps_layer4_at_stride_16():
  cfg = resnet.get_config("resnet50", replace_stride_with_dilation=(False, False, True))
  assert cfg.feature_strides == {"C2": 4, "C3": 8, "C4": 16, "C5": 16}
  assert cfg.stage_geometry()[3] == (1, 1, 2)  # stride 1, first 3x3 at dilation 1, then 2
  model = nnx.eval_shape(lambda: resnet.ResNet(cfg, rngs=nnx.Rngs(0)))
  assert model.layer4[0].conv2.kernel_dilation == (1, 1)
  assert model.layer4[1].conv2.kernel_dilation == (2, 2)
  assert model.layer4[0].downsample[0].strides == (1, 1)
  out = abstract_features(cfg, (1, 64, 64, 3))
  assert out["C4"].shape == (1, 4, 4, 1024) and out["C5"].shape == (1, 4, 4, 2048)
  # Dilating layer3 as well (torchvision's output stride 8).
  cfg8 = resnet.get_config("resnet50", replace_stride_with_dilation=(False, True, True))
  assert cfg8.stage_geometry()[2:] == [(1, 1, 2), (1, 2, 4)]
  assert list(cfg8.feature_strides.values()) == [4, 8, 8, 8]


def test_config_errors_and_json():
  with pytest.raises(ValueError, match="block"):
    resnet.ResNetConfig(block="wide")
  with pytest.raises(ValueError, match="layers"):
    resnet.ResNetConfig(layers=(2, 2, 2))
  with pytest.raises(ValueError, match="replace_stride_with_dilation"):
    resnet.ResNetConfig(replace_stride_with_dilation=(False, True))
  with pytest.raises(ValueError, match="stem"):
    resnet.ResNetConfig(stem="deep")
  with pytest.raises(KeyError, match="resnet152"):
    resnet.get_config("resnet152")
  with pytest.raises(ValueError, match="unknown field"):
    resnet.ResNetConfig.from_dict({"depth": 50})
  cfg = resnet.get_config("resnet50", replace_stride_with_dilation=(False, False, True))
  assert resnet.ResNetConfig.from_dict(json.loads(cfg.to_json())) == cfg  # lists -> tuples
  model = nnx.eval_shape(lambda: resnet.ResNet(resnet.get_config("tiny"), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="NHWC"):
    model(jnp.zeros((1, 3, 32, 32)), train=False)


def test_init_matches_torchvision():
  cfg = resnet.get_config("tiny")
  model = resnet.ResNet(cfg, rngs=nnx.Rngs(0))
  k = np.asarray(model.layer3[0].conv2.kernel.get_value())  # 3x3, 64 -> 64: fan_out = 9 * 64
  std = (2.0 / (9 * 64)) ** 0.5  # kaiming_normal_(mode="fan_out", nonlinearity="relu")
  assert abs(k.std() - std) < 0.05 * std and abs(k.mean()) < 0.05 * std
  assert np.all(np.asarray(model.bn1.scale.get_value()) == 1) and np.all(np.asarray(model.bn1.bias.get_value()) == 0)
  assert np.all(np.asarray(model.bn1.mean.get_value()) == 0) and np.all(np.asarray(model.bn1.var.get_value()) == 1)
  assert np.all(np.asarray(model.layer2[0].bn2.scale.get_value()) == 1)
  zero = resnet.ResNet(cfg.replace(zero_init_residual=True), rngs=nnx.Rngs(0))
  assert np.all(np.asarray(zero.layer2[0].bn2.scale.get_value()) == 0)
  assert np.all(np.asarray(zero.layer2[0].bn1.scale.get_value()) == 1)
  bott = resnet.ResNet(resnet.get_config("resnet50", layers=(1, 1, 1, 1), widths=(4, 4, 4, 4), stem="tiny",
                                         stem_width=16, zero_init_residual=True), rngs=nnx.Rngs(0))
  assert np.all(np.asarray(bott.layer1[0].bn3.scale.get_value()) == 0)
  assert np.all(np.asarray(bott.layer2[0].downsample[1].scale.get_value()) == 1)


def test_bfloat16_compute():
  cfg = resnet.get_config("tiny")
  m32 = resnet.ResNet(cfg, rngs=nnx.Rngs(0))
  m16 = params.load_pretrained(params.to_state_dict(m32), cfg.replace(dtype="bfloat16"))
  x = jnp.asarray(images(2, 64))
  a, b = m32(x, train=False)["C5"], m16(x, train=False)["C5"]
  assert b.dtype == jnp.bfloat16 and m16.conv1.kernel.get_value().dtype == jnp.float32
  assert float(jnp.abs(a - b.astype(jnp.float32)).max()) < 0.05 * float(jnp.abs(a).max())


# ------------------------------------------------------------ frozen stages
def test_frozen_filter_and_labels():
  cfg = resnet.get_config("tiny")
  model = resnet.ResNet(cfg, rngs=nnx.Rngs(0))
  assert resnet.stage_of(("conv1", "kernel")) == "stem"
  assert resnet.stage_of(("layer1", 0, "conv1", "kernel")) == "layer1"
  assert resnet.stage_of(("backbone", "bn1", "scale"), prefix=("backbone",)) == "stem"
  assert resnet.stage_of(("head", "conv1", "kernel"), prefix=("backbone",)) is None
  frozen = nnx.state(model, resnet.frozen_filter(("stem", "layer1")))
  paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(frozen)}
  assert paths == {"conv1.kernel", "bn1.scale", "bn1.bias", "layer1.0.conv1.kernel", "layer1.0.bn1.scale",
                   "layer1.0.bn1.bias", "layer1.0.conv2.kernel", "layer1.0.bn2.scale", "layer1.0.bn2.bias"}
  with pytest.raises(ValueError, match="layer5"):
    resnet.frozen_filter(("layer5",))

  # Inside a larger model, with optax.multi_transform: frozen leaves get zero updates.
  class Wrapper(nnx.Module):
    def __init__(self):
      self.backbone = resnet.ResNet(cfg, rngs=nnx.Rngs(0))
      self.head = nnx.Linear(128, 1, rngs=nnx.Rngs(1))

  wrapper = Wrapper()
  p = nnx.state(wrapper, nnx.Param)
  labels = resnet.param_labels(wrapper, prefix=("backbone",))
  tx = optax.multi_transform({"frozen": optax.set_to_zero(), "trainable": optax.sgd(1.0)}, labels)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
  flat = {".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(updates)}
  assert np.all(flat["backbone.conv1.kernel"] == 0) and np.all(flat["backbone.layer1.0.bn2.scale"] == 0)
  assert np.all(flat["backbone.layer2.0.conv1.kernel"] == -1) and np.all(flat["head.kernel"] == -1)
  trainable = nnx.All(nnx.Param, nnx.Not(resnet.frozen_filter(prefix=("backbone",))))
  n_train = len(nnx.to_flat_state(nnx.state(wrapper, trainable)))
  assert n_train == len(nnx.to_flat_state(p)) - len(paths)

  # BatchNorm statistics of a frozen stage still update in train mode (as in PyTorch).
  before = np.asarray(model.layer1[0].bn1.mean.get_value()).copy()
  model(jnp.asarray(images(2, 64)), train=True)
  assert not np.allclose(before, np.asarray(model.layer1[0].bn1.mean.get_value()))


def test_pure_train_forward_under_jit_returns_stats():
  cfg = resnet.get_config("tiny")
  torch_model = torch_reference(cfg)
  model = params.load_pretrained(torch_state(torch_model), cfg)
  graphdef, p, stats = nnx.split(model, nnx.Param, nnx.BatchStat)

  @jax.jit
  def forward(p, stats, x):
    m = nnx.merge(graphdef, p, stats)
    out = m(x, train=True)
    return out, nnx.state(m, nnx.BatchStat)

  x = images(2, 64)
  out, new_stats = forward(p, stats, jnp.asarray(x))
  assert_close(out, run_torch(torch_model, x, train=True))
  nnx.update(model, new_stats)
  want = torch_state(torch_model)
  got = params.to_state_dict(model)
  np.testing.assert_allclose(got["layer4.0.bn2.running_var"], want["layer4.0.bn2.running_var"], rtol=1e-5)
  np.testing.assert_allclose(got["bn1.running_mean"], want["bn1.running_mean"], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- key map
def test_key_map_names():
  cfg = resnet.get_config("resnet50")
  table = params.key_table(cfg)
  keys = {t for t, _, _ in table}
  torch_keys = {k for k in TorchResNet(cfg).state_dict() if not k.endswith("num_batches_tracked")}
  assert keys == torch_keys
  assert ("layer2.0.downsample.0.weight", "layer2.0.downsample.0.kernel", "conv") in table
  assert ("layer3.5.bn3.running_var", "layer3.5.bn3.var", "stat") in table
  assert "layer2.1.downsample.0.weight" not in keys
  # Every NNX variable is covered exactly once.
  model = nnx.eval_shape(lambda: resnet.ResNet(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  paths = sorted(".".join(map(str, p)) for p, _ in nnx.to_flat_state(state))
  assert paths == sorted(p for _, p, _ in table)


def test_key_map_errors_list_every_key():
  cfg = resnet.get_config("tiny")
  sd = torch_state(torch_reference(cfg))
  del sd["layer2.0.bn1.running_var"]
  del sd["layer3.0.downsample.0.weight"]
  sd["layer1.0.conv3.weight"] = np.zeros((16, 16, 1, 1), np.float32)
  sd["layer4.0.se.fc.weight"] = np.zeros((4, 4), np.float32)
  sd["layer2.0.conv1.weight"] = np.zeros((32, 16, 5, 5), np.float32)
  sd["bn1.weight"] = np.zeros((17,), np.float32)
  sd["fc.weight"] = np.zeros((1000, 128), np.float32)  # dropped, not reported
  with pytest.raises(CheckpointError) as e:
    params.load_pretrained(sd, cfg)
  msg = str(e.value)
  for name in ("layer2.0.bn1.running_var", "layer3.0.downsample.0.weight", "layer1.0.conv3.weight",
               "layer4.0.se.fc.weight", "layer2.0.conv1.weight: checkpoint (32, 16, 5, 5) vs model (32, 16, 3, 3)",
               "bn1.weight: checkpoint (17,) vs model (16,)"):
    assert name in msg, (name, msg)
  assert "missing (2)" in msg and "unexpected (2)" in msg and "shape mismatch (2)" in msg
  assert "'fc.weight'" not in msg and "num_batches_tracked" not in msg

  # A ResNet-18 checkpoint into a ResNet-34 model: the missing blocks are named.
  sd18 = TorchResNet(resnet.get_config("resnet18", widths=(8, 8, 8, 8), stem_width=8)).state_dict()
  with pytest.raises(CheckpointError, match=r"layer3\.5\.conv1\.weight"):
    params.load_pretrained(sd18, resnet.get_config("resnet34", widths=(8, 8, 8, 8), stem_width=8))
  with pytest.raises(CheckpointError, match="missing"):
    params.load_pretrained({"visual.conv1.weight": np.zeros((8, 3, 4, 4))})
  with pytest.raises(ValueError, match="overrides"):
    params.load_pretrained(sd18, params.load_pretrained(sd18), dtype="bfloat16")


def test_prefixes_stripped_and_extras_dropped():
  cfg = resnet.get_config("tiny")
  torch_model = torch_reference(cfg)
  sd = torch_state(torch_model)  # includes num_batches_tracked
  assert any(k.endswith("num_batches_tracked") for k in sd)
  sd["fc.weight"], sd["fc.bias"] = np.zeros((10, 128), np.float32), np.zeros((10,), np.float32)
  x = images(2, 64)
  want = run_torch(torch_model, x, train=False)
  # DDP
  ddp = {"module." + k: v for k, v in sd.items()}
  assert_close(params.load_pretrained(ddp, cfg)(jnp.asarray(x), train=False), want)
  # SeqFakeFormer: the detector's other weights sit next to backbone.0.body.*
  seqfake = {"backbone.0.body." + k: v for k, v in sd.items()}
  seqfake.update({"transformer.encoder.layers.0.linear1.weight": np.zeros((512, 256), np.float32),
                  "query_embed.weight": np.zeros((6, 256), np.float32),
                  "input_proj.weight": np.zeros((256, 128, 1, 1), np.float32)})
  seqfake = {"module." + k: v for k, v in seqfake.items()}
  model = params.load_pretrained(seqfake)  # config read off the shapes
  assert model.config == cfg
  assert_close(model(jnp.asarray(x), train=False), want)


def test_config_from_state_dict():
  for name in ("resnet18", "resnet50"):
    cfg = resnet.get_config(name, widths=(8, 16, 24, 32), stem_width=8)
    sd = TorchResNet(cfg).state_dict()
    assert params.config_from_state_dict(params.normalise_state_dict(sd)) == cfg
  sd = params.normalise_state_dict(TorchResNet(resnet.get_config("resnet101")).state_dict())
  got = params.config_from_state_dict(sd, replace_stride_with_dilation=(False, False, True))
  assert got == resnet.get_config("resnet101", replace_stride_with_dilation=(False, False, True))


def test_round_trip_nnx_state_dict_nnx():
  flags = (False, True, True)
  cfg = resnet.get_config("resnet50", widths=(8, 8, 16, 16), stem_width=8, replace_stride_with_dilation=flags)
  model = params.load_pretrained(TorchResNet(cfg).state_dict(), cfg)
  model(jnp.asarray(images(2, 32)), train=True)  # running statistics that differ from 0 / 1
  sd = params.to_state_dict(model, num_batches_tracked=True)
  assert sd["conv1.weight"].shape == (8, 3, 7, 7) and sd["layer1.0.bn1.num_batches_tracked"].dtype == np.int64
  back = params.load_pretrained(sd, replace_stride_with_dilation=flags)  # the rest read off the shapes
  assert back.config == cfg
  a = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  b = dict(nnx.to_flat_state(nnx.state(back, nnx.Any(nnx.Param, nnx.BatchStat))))
  assert len(a) == len(b)
  for path, var in a:
    np.testing.assert_array_equal(np.asarray(var.get_value()), np.asarray(b[path].get_value()), err_msg=str(path))
  # And into the torch layout (strict load: names and shapes are torchvision's).
  torch_model = TorchResNet(cfg)
  torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  x = images(2, 32)
  assert_close(model(jnp.asarray(x), train=False), run_torch(torch_model, x, train=False))


def test_pth_and_safetensors_files(tmp_path):
  cfg = resnet.get_config("resnet34", widths=(8, 16, 16, 32), stem_width=8)
  torch_model = torch_reference(cfg, seed=1)
  path = tmp_path / "resnet.pth"
  torch.save(torch_model.state_dict(), path)
  wrapped = tmp_path / "ckpt.pth"
  torch.save({"model": {"module." + k: v for k, v in torch_model.state_dict().items()}, "epoch": 3}, wrapped)
  x = images(2, 64)
  want = run_torch(torch_model, x, train=False)
  for p in (path, wrapped, str(path)):
    model = params.load_pretrained(p)
    assert model.config == cfg
    assert_close(model(jnp.asarray(x), train=False), want)
  # In place into a built model (holding other weights).
  model = params.load_pretrained(torch_state(torch_reference(cfg, seed=2)), cfg)
  assert max_err(model(jnp.asarray(x), train=False)["C5"], want["C5"]) > 1e-2
  assert params.load_pretrained(path, model) is model
  assert_close(model(jnp.asarray(x), train=False), want)
  from safetensors.numpy import save_file
  save_file(params.to_state_dict(model), str(tmp_path / "resnet.safetensors"))
  assert_close(params.load_pretrained(tmp_path / "resnet.safetensors", "resnet34", widths=(8, 16, 16, 32),
                                      stem_width=8)(jnp.asarray(x), train=False), want)
  (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(CheckpointError, match="broken.pth"):
    params.load_pretrained(tmp_path / "broken.pth")


# ------------------------------------------------------------------ parity
_PARITY = {  # name: (config, image size); batch 2
    "tiny": (resnet.get_config("tiny"), 64),
    "resnet34-narrow": (resnet.get_config("resnet34", widths=(8, 16, 16, 32), stem_width=8), 64),
    "resnet50": (resnet.get_config("resnet50"), 64),
    "resnet50-dilated-narrow": (resnet.get_config("resnet50", widths=(8, 8, 16, 16), stem_width=8,
                                                  replace_stride_with_dilation=(False, True, True)), 32),
    "resnet18-dilated-narrow": (resnet.get_config("resnet18", widths=(8, 8, 16, 16), stem_width=8,
                                                  replace_stride_with_dilation=(False, False, True)), 32),
}


@pytest.mark.parametrize("name", list(_PARITY))
def test_parity_with_torch_restatement(name):
  cfg, size = _PARITY[name]
  check_parity(torch_reference(cfg), cfg, size)


@pytest.mark.parametrize("name,flags", [("resnet18", (False, False, False)), ("resnet34", (False, False, False)),
                                        ("resnet50", (False, False, False)), ("resnet50", (False, False, True))])
def test_parity_with_torchvision(name, flags):
  torchvision = pytest.importorskip("torchvision")
  torch.manual_seed(0)
  build = getattr(torchvision.models, name)
  tv_model = randomise_bn(build(weights=None, replace_stride_with_dilation=list(flags)), 0)
  cfg = resnet.get_config(name, replace_stride_with_dilation=flags)
  assert "fc.weight" in tv_model.state_dict()  # dropped by the key map
  # The restatement above has torchvision's exact state-dict names and shapes.
  TorchResNet(cfg).load_state_dict({k: v for k, v in tv_model.state_dict().items() if not k.startswith("fc.")})
  check_parity(tv_model, cfg, 64)


@pytest.mark.parametrize("name", ["resnet34", "resnet50"])
def test_parity_with_timm(name):
  timm = pytest.importorskip("timm")
  torch.manual_seed(0)
  model = randomise_bn(timm.create_model(name, pretrained=False), 0)
  check_parity(model, resnet.get_config(name), 64)
