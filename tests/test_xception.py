"""Xception backbone: shapes, parameter counts, parity with a torch restatement of timm's
``legacy_xception`` (eval and train mode, timm and Cadene state dicts, block strides), and
the loader's errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from sjedd_jax.backbones import xception as xc
from sjedd_jax.backbones.xception import params as xparams

LISIAM_STRIDES = {"block3": 1, "block12": 1}


# ------------------------------------------------ torch restatement of timm's legacy_xception
class TSeparable(nn.Module):
  def __init__(self, cin, cout):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False)
    self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

  def forward(self, x):
    return self.pointwise(self.conv1(x))


class TBlock(nn.Module):
  def __init__(self, cin, cout, reps, stride=1, start_with_relu=True, grow_first=True):
    super().__init__()
    self.skip = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if cout != cin or stride != 1 else None
    self.skipbn = nn.BatchNorm2d(cout) if self.skip is not None else None
    rep = []
    for i in range(reps):
      inc, outc = ((cin if i == 0 else cout), cout) if grow_first else (cin, cin if i < reps - 1 else cout)
      rep += [nn.ReLU(inplace=True), TSeparable(inc, outc), nn.BatchNorm2d(outc)]
    rep = rep[1:] if not start_with_relu else [nn.ReLU(inplace=False)] + rep[1:]
    if stride != 1:
      rep.append(nn.MaxPool2d(3, stride, 1))
    self.rep = nn.Sequential(*rep)

  def forward(self, inp):
    x = self.rep(inp)
    x += self.skipbn(self.skip(inp)) if self.skip is not None else inp
    return x


class TXception(nn.Module):
  """timm's Xception with configurable widths/strides; forward returns the taps (NCHW)."""

  def __init__(self, stem=(32, 64), entry=(128, 256, 728), middle=8, mid_reps=3, exit_width=1024,
               head=(1536, 2048), strides=None, upto="block12", classifier="fc"):
    super().__init__()
    self.conv1, self.bn1 = nn.Conv2d(3, stem[0], 3, 2, 0, bias=False), nn.BatchNorm2d(stem[0])
    self.conv2, self.bn2 = nn.Conv2d(stem[0], stem[1], 3, bias=False), nn.BatchNorm2d(stem[1])
    n = len(entry) + middle + 1
    strides = strides or (2,) * len(entry) + (1,) * middle + (2,)
    specs, cin = [], stem[1]
    for i, c in enumerate(entry):
      specs.append((cin, c, 2, i > 0, True))
      cin = c
    specs += [(cin, cin, mid_reps, True, True)] * middle + [(cin, exit_width, 2, True, False)]
    for i, ((a, b, r, swr, gf), s) in enumerate(zip(specs, strides)):
      setattr(self, f"block{i + 1}", TBlock(a, b, r, s, swr, gf))
    self.n, self.n_entry, self.upto = n, len(entry), upto
    if upto == "act4":
      self.conv3, self.bn3 = TSeparable(exit_width, head[0]), nn.BatchNorm2d(head[0])
      self.conv4, self.bn4 = TSeparable(head[0], head[1]), nn.BatchNorm2d(head[1])
    setattr(self, classifier, nn.Linear(head[1], 10))  # in the state dict, ignored by the loader

  def forward(self, x):
    x = torch.relu(self.bn1(self.conv1(x)))
    x = torch.relu_(self.bn2(self.conv2(x)))  # timm's act2 is in place
    taps = {"act2": x}
    for i in range(1, self.n + 1):
      x = getattr(self, f"block{i}")(x)
      if i == 1:
        taps["block2_in"] = torch.relu(x)
      if i == 2:
        taps["block3_in"] = torch.relu(x)
      if i == self.n_entry + 1:
        taps["block4"] = x.clone()
    taps["block12"] = x
    if self.upto == "act4":
      x = torch.relu(self.bn3(self.conv3(x)))
      taps["act4"] = torch.relu(self.bn4(self.conv4(x)))
    return taps


def torch_model(cfg: xc.XceptionConfig, classifier="fc", seed=0) -> TXception:
  torch.manual_seed(seed)
  m = TXception(cfg.stem_widths, cfg.entry_widths, cfg.middle_blocks, cfg.middle_reps, cfg.exit_width,
                cfg.head_widths, cfg.block_strides, cfg.upto, classifier)
  with torch.no_grad():  # random BN statistics and affine parameters, so parity means something
    for mod in m.modules():
      if isinstance(mod, nn.BatchNorm2d):
        mod.weight.uniform_(0.5, 1.5)
        mod.bias.uniform_(-0.2, 0.2)
        mod.running_mean.uniform_(-0.2, 0.2)
        mod.running_var.uniform_(0.5, 1.5)
        mod.num_batches_tracked.fill_(7)
  return m


def _jax_taps(model, x, train):
  """Taps of one mode (jit: one compile)."""
  (eval_taps, train_taps), stats = _jax_both(model, x, modes=(train,))
  return eval_taps if eval_taps is not None else train_taps, stats


def _jax_both(model, x, modes=(False, True)):
  """(eval taps, train taps) and the BN statistics after the train-mode call, in one jit."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x):
    m = nnx.merge(graphdef, state)
    out = {mode: m(x, train=mode) for mode in modes}  # eval first: it does not touch the stats
    return out, nnx.state(m, nnx.BatchStat)

  out, stats = run(state, jnp.asarray(x))
  out = {mode: {k: np.asarray(v) for k, v in taps.items()} for mode, taps in out.items()}
  return (out.get(False), out.get(True)), stats


def _assert_taps(taps, ref, tol=1e-4):
  for k, v in ref.items():
    want = v.detach().numpy().transpose(0, 2, 3, 1)
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(taps[k], want, rtol=tol, atol=tol * scale, err_msg=k)
  assert set(taps) - set(ref) == {"gf"}


def _images(batch, size, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)


# ------------------------------------------------------------------------ shapes and counts
def _abstract_taps(cfg, size, batch=1):
  model = nnx.eval_shape(lambda: xc.Xception(cfg, rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x, train=False), model,
                       jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
  return {k: v.shape[1:] for k, v in out.items()}


def test_shape_table_256():
  """mc_lcr.md 2.1 at 256 px, full widths, up to act4."""
  taps = _abstract_taps(xc.get_config("xception", upto="act4"), 256)
  assert taps == {"act2": (125, 125, 64), "block2_in": (63, 63, 128), "block3_in": (32, 32, 256),
                  "block4": (16, 16, 728), "block12": (8, 8, 1024), "act4": (8, 8, 2048), "gf": (1024,)}
  assert _abstract_taps(xc.get_config("xception", upto="act4", gf_layer="act4"), 256)["gf"] == (2048,)


def test_lisiam_strides_299_to_37():
  cfg = xc.get_config("xception", block_strides=LISIAM_STRIDES)
  assert cfg.block_strides == (2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)
  taps = _abstract_taps(cfg, 299)
  assert taps["act2"] == (147, 147, 64) and taps["block2_in"] == (74, 74, 128)
  assert taps["block4"] == (37, 37, 728) and taps["block12"] == (37, 37, 1024)
  m = nnx.eval_shape(lambda: xc.Xception(cfg, rngs=nnx.Rngs(0)))
  assert not any(isinstance(layer, xc.modeling.MaxPool) for layer in m.block3.rep)
  assert m.block3.skip.strides == (1, 1) or m.block3.skip.strides == 1


def _count(cfg):
  m = nnx.eval_shape(lambda: xc.Xception(cfg, rngs=nnx.Rngs(0)))
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(m, nnx.Param)))


def test_parameter_counts():
  cfg = xc.get_config("xception")
  assert _count(cfg) == 16_058_152
  assert _count(cfg.replace(upto="act4")) - _count(cfg) == 4_748_800
  assert _count(cfg.replace(upto="act4")) + 2048 * 1000 + 1000 == 22_855_952  # timm's, with fc
  assert abs(_count(xc.get_config("tiny")) - 860_000) < 10_000  # mc_lcr.md 9: 0.86M


def test_twin_presets():
  t = _abstract_taps(xc.get_config("tiny"), 64)  # mc_lcr.md 9
  assert (t["act2"], t["block2_in"], t["block3_in"], t["gf"]) == ((29, 29, 32), (15, 15, 64), (8, 8, 128), (384,))
  cfg = xc.get_config("lisiam-tiny")  # lisiam.md 9
  assert cfg.num_blocks == 5 and cfg.block_strides == (2, 1, 1, 1, 1) and cfg.mid_block == "block3"
  t = _abstract_taps(cfg, 64)
  assert t["act2"] == (29, 29, 32) and t["block2_in"] == (15, 15, 64)
  assert t["block4"] == (15, 15, 96) and t["block12"] == (15, 15, 128)
  assert _abstract_taps(xc.get_config("test"), 64)["block12"] == (2, 2, 96)


def test_remat_blocks_same_function_gradients_and_statistics_on_one_and_four_devices():
  """``set_remat(..., "blocks")``: the same train-mode output, BatchNorm statistics and gradients as
  without it, also with the batch split over 4 devices (the recomputation waits per example)."""
  from sjedd_jax import train_step as ts  # pylint: disable=g-import-not-at-top
  cfg = xc.get_config("test")
  x = jnp.asarray(np.random.default_rng(3).normal(size=(8, 32, 32, 3)), jnp.float32)

  def run(remat, devices):
    model = xc.set_remat(xc.use_shifted_depthwise(xc.Xception(cfg, rngs=nnx.Rngs(0))), remat)
    assert all(b.remat == (remat == "blocks") for _, b in model.blocks())
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p, xb):
      m = nnx.merge(graphdef, p, rest, copy=True)
      taps = m(xb, True)
      return jnp.sum(jnp.square(taps["block12"])) + jnp.sum(taps["block4"]), nnx.split(m, nnx.Param, ...)[2]

    mesh = ts.data_mesh(jax.devices()[:devices])
    fn = jax.jit(jax.value_and_grad(loss, has_aux=True), in_shardings=(ts.replicated(mesh), ts.batch_sharding(mesh)))
    return jax.device_get(fn(params, x))

  (l0, s0), g0 = run("none", 1)
  for remat, devices in (("blocks", 1), ("blocks", 4)):
    (l1, s1), g1 = run(remat, devices)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), s1, s0)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g0))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5 * scale), g1, g0)
  with pytest.raises(ValueError, match=r"remat='all'; expected one of \['none', 'blocks', 'auto'\]"):
    xc.set_remat(xc.Xception(cfg, rngs=nnx.Rngs(0)), "all")


def test_config_errors():
  with pytest.raises(ValueError, match="block_strides .* 3 entries"):
    xc.get_config("test", block_strides=(2, 2, 2))
  with pytest.raises(ValueError, match="block9"):
    xc.get_config("test", block_strides={"block9": 1})
  with pytest.raises(ValueError, match="gf_layer='act4' needs upto='act4'"):
    xc.get_config("xception", gf_layer="act4")
  with pytest.raises(ValueError, match="unknown Xception preset"):
    xc.get_config("xception-huge")
  cfg = xc.get_config("lisiam-tiny", block_strides={"block2": 2})  # relative to the preset
  assert cfg.block_strides == (2, 2, 1, 1, 1)
  assert xc.XceptionConfig.from_dict(cfg.to_dict()) == cfg
  assert xc.get_config("test", middle_blocks=3).block_strides == (2, 2, 2, 1, 1, 1, 2)


# ------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("fmt,strides,upto", [
    ("timm", None, "act4"),
    ("cadene", None, "block12"),
    ("lisiam", {"block3": 1, "block5": 1}, "block12"),  # the release's stride-1 block3 and exit block
])
def test_parity_test_preset(fmt, strides, upto):
  """'test' widths, 64 px, batch 2: eval taps, train taps and updated running statistics."""
  cfg = xc.get_config("test", upto=upto, **({"block_strides": strides} if strides else {}))
  tm = torch_model(cfg, classifier="last_linear" if fmt == "cadene" else "fc")
  sd = {k: v.clone() for k, v in tm.state_dict().items()}
  if fmt == "cadene":  # 2-D pointwise kernels, both classifier names present
    sd = {k: (v[:, :, 0, 0] if k.endswith("pointwise.weight") else v) for k, v in sd.items()}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(10, cfg.head_widths[1]), torch.zeros(10)
    assert sum(v.ndim == 2 and "pointwise" in k for k, v in sd.items()) == 11
  if fmt == "lisiam":  # a LiSiam_A release checkpoint: backbone under backbone_net., DDP-wrapped
    sd = {f"module.backbone_net.{k}": v for k, v in sd.items()}
    sd["module.segDecoder.1.weight"] = torch.zeros(2, 512, 1, 1)
  model = xparams.load_pretrained(sd, cfg)
  x = _images(2, 64)
  (eval_taps, train_taps), stats = _jax_both(model, x)

  tm.eval()
  with torch.no_grad():
    ref = tm(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  _assert_taps(eval_taps, ref)
  np.testing.assert_allclose(eval_taps["gf"], ref["block12"].mean((2, 3)).numpy(), rtol=1e-4, atol=1e-4)

  tm.train()
  with torch.no_grad():
    ref = tm(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  _assert_taps(train_taps, ref)
  nnx.update(model, stats)
  got, want = xparams.to_state_dict(model), tm.state_dict()
  assert sum("running" in k for k in got) == 2 * sum(isinstance(m, nn.BatchNorm2d) for m in tm.modules())
  for k, v in got.items():
    if "running" in k:
      np.testing.assert_allclose(v, want[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
  if strides:
    assert eval_taps["block12"].shape[1:3] == (8, 8)  # 64 -> 31 -> 29 -> 15 -> 8 (block2), then no /2
  if upto == "act4":  # bfloat16 compute: parameters and statistics stay float32, outputs close
    bf = xparams.load_pretrained(sd, cfg.replace(dtype="bfloat16"))
    assert bf.conv1.kernel[...].dtype == jnp.float32 and bf.bn1.var[...].dtype == jnp.float32
    got, _ = _jax_taps(bf, x, train=False)
    assert got["act4"].dtype == jnp.bfloat16 and got["gf"].dtype == jnp.bfloat16
    for k in ("block12", "act4"):
      err = np.abs(got[k].astype(np.float32) - eval_taps[k]).max()
      assert err < 0.05 * np.abs(eval_taps[k]).max(), (k, err)
def test_parity_real_widths():
  """Full timm widths and conv3/conv4 at 48 px (batch 1), eval mode."""
  cfg = xc.get_config("xception", upto="act4")
  tm = torch_model(cfg).eval()
  model = xparams.load_pretrained(tm.state_dict(), cfg)
  x = _images(1, 48, seed=1)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  taps, _ = _jax_taps(model, x, train=False)
  _assert_taps(taps, ref)


def test_init_is_timms():
  """kaiming_normal fan_out convs (std sqrt(2 / (out * k * k))), BN weight 1, bias 0, stats 0 / 1."""
  block = xc.modeling.Block(64, 128, 2, 2, cfg=xc.get_config("test"), rngs=nnx.Rngs(0))
  assert [type(layer).__name__ for layer in block.rep] == [
      "ReLU", "SeparableConv2d", "BatchNorm", "ReLU", "SeparableConv2d", "BatchNorm", "MaxPool"]
  w = np.asarray(block.rep[4].pointwise.kernel[...])  # (1, 1, 128, 128): fan_out 128
  assert w.shape == (1, 1, 128, 128) and abs(w.std() - (2 / 128) ** 0.5) < 0.03 * (2 / 128) ** 0.5
  d = np.asarray(block.rep[4].conv1.kernel[...])  # depthwise (3, 3, 1, 128): fan_out 9 * 128
  assert d.shape == (3, 3, 1, 128) and abs(d.std() - (2 / 1152) ** 0.5) < 0.1 * (2 / 1152) ** 0.5
  bn = block.rep[5]
  assert np.all(np.asarray(bn.scale[...]) == 1) and np.all(np.asarray(bn.bias[...]) == 0)
  assert np.all(np.asarray(bn.mean[...]) == 0) and np.all(np.asarray(bn.var[...]) == 1)


def test_state_dict_round_trip_into_torch():
  cfg = xc.get_config("test", upto="act4")
  tm = torch_model(cfg, seed=5)
  src = {k: v.numpy() for k, v in tm.state_dict().items()}
  model = xparams.load_pretrained(src, cfg)
  sd = xparams.to_state_dict(model)
  assert set(sd) == {k for k in src if not k.endswith("num_batches_tracked") and not k.startswith("fc.")}
  for k, v in sd.items():
    np.testing.assert_array_equal(v, src[k], err_msg=k)
  del tm.fc
  tm.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
  sd2 = xparams.to_state_dict(model, pointwise_2d=True)
  assert sd2["block2.rep.1.pointwise.weight"].shape == (32, 16)
  again = xparams.flatten(xparams.load_pretrained(sd2, cfg))
  for k, v in xparams.flatten(model).items():
    np.testing.assert_array_equal(again[k], v, err_msg=k)


def test_load_from_file(tmp_path):
  cfg = xc.get_config("test")
  tm = torch_model(cfg)
  path = tmp_path / "xception-b5690688.pth"  # Cadene's layout: 2-D pointwise, fc
  torch.save({k: (v[:, :, 0, 0] if k.endswith("pointwise.weight") else v) for k, v in tm.state_dict().items()},
             path)
  model = xparams.load_pretrained(path, "test")
  np.testing.assert_array_equal(np.asarray(model.block2.rep[1].pointwise.kernel[...]),
                                tm.block2.rep[1].pointwise.weight.detach().numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(model.block2.rep[2].var[...]), tm.block2.rep[2].running_var.numpy())
  with pytest.raises(FileNotFoundError, match="missing.pth"):
    xparams.load_pretrained(tmp_path / "missing.pth", cfg)


def test_loader_errors_listed_by_name():
  cfg = xc.get_config("test")
  good = {k: v.numpy() for k, v in torch_model(cfg, classifier="fc").state_dict().items()}
  sd = dict(good)
  del sd["block2.rep.4.pointwise.weight"]
  sd["block2.rep.9.conv1.weight"] = np.zeros((3, 1, 3, 3), np.float32)
  sd["block3.skipbn.running_var"] = np.ones((5,), np.float32)
  sd["conv3.conv1.weight"] = np.zeros((1,))  # ignored: the model stops at block12
  with pytest.raises(xc.CheckpointError) as e:
    xparams.load_pretrained(sd, cfg)
  msg = str(e.value)
  assert "missing (1): ['block2.rep.4.pointwise.weight']" in msg
  assert "unexpected (1): ['block2.rep.9.conv1.weight']" in msg
  assert "block3.skipbn.running_var: checkpoint (5,) vs model (64,)" in msg
  assert "conv3" not in msg
  with pytest.raises(xc.CheckpointError, match=r"missing \(12\): \['bn3.bias'.*'conv4.pointwise.weight'\]"):
    xparams.load_pretrained(good, cfg.replace(upto="act4"))
