"""SJEDD scoring model: the release's PyTorch computation, ablation switches, functional API.

The release reference below is a compact re-statement of the authors' public
code (github.com/strongerwill/SJEDD: model.py's ViT CLIP, SJEDD_test.py's
do_batch3_relative_similarity, SO_Graph.py's legal states and SO_Loss.py's
pLoss_all_fidelity.infer), run on a random-weight checkpoint saved the way
their utils.save_checkpoint saves it.
"""

import argparse
import itertools
import sys
import types
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from torch import nn

from sjedd_jax.detectors.sjedd import hierarchy
from sjedd_jax.detectors.sjedd import templates
from sjedd_jax.backbones.clip import modeling as clip_lib
from sjedd_jax.backbones.clip import params as params_lib
from sjedd_jax.detectors.sjedd import model as sjedd

# ----------------------------------------------------------------------------
# The release, restated (ViT path of model.py; heads = width // 64).


class LayerNorm(nn.LayerNorm):
  def forward(self, x):
    return super().forward(x.type(torch.float32)).type(x.dtype)


class QuickGELU(nn.Module):
  def forward(self, x):
    return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
  def __init__(self, d_model, n_head, attn_mask=None):
    super().__init__()
    self.attn = nn.MultiheadAttention(d_model, n_head)
    self.ln_1 = LayerNorm(d_model)
    self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(d_model, d_model * 4)), ("gelu", QuickGELU()),
                                          ("c_proj", nn.Linear(d_model * 4, d_model))]))
    self.ln_2 = LayerNorm(d_model)
    self.attn_mask = attn_mask

  def forward(self, x):
    mask = self.attn_mask.to(dtype=x.dtype) if self.attn_mask is not None else None
    y = self.ln_1(x)
    x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
    return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
  def __init__(self, width, layers, heads, attn_mask=None):
    super().__init__()
    self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

  def forward(self, x):
    return self.resblocks(x)


class VisionTransformer(nn.Module):
  def __init__(self, input_resolution, patch_size, width, layers, heads, output_dim):
    super().__init__()
    self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
    scale = width ** -0.5
    self.class_embedding = nn.Parameter(scale * torch.randn(width))
    self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
    self.ln_pre = LayerNorm(width)
    self.transformer = Transformer(width, layers, heads)
    self.ln_post = LayerNorm(width)
    self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

  def forward(self, x):
    x = self.conv1(x)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype), x], dim=1)
    x = self.ln_pre(x + self.positional_embedding.to(x.dtype))
    x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    return self.ln_post(x[:, 0, :]) @ self.proj


class ReleaseCLIP(nn.Module):
  def __init__(self, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
               context_length, vocab_size, transformer_width, transformer_heads, transformer_layers):
    super().__init__()
    self.context_length = context_length
    self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                    vision_width // 64, embed_dim)
    mask = torch.empty(context_length, context_length).fill_(float("-inf")).triu_(1)
    self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, mask)
    self.token_embedding = nn.Embedding(vocab_size, transformer_width)
    self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
    self.ln_final = LayerNorm(transformer_width)
    self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
    self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / 0.07))

  def encode_image(self, image):
    return self.visual(image)

  def encode_text(self, text):
    x = self.token_embedding(text) + self.positional_embedding
    x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    x = self.ln_final(x)
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ self.text_projection

  def forward(self, image, text):
    image_features = self.encode_image(image)
    text_features = self.encode_text(text)
    logit_scale = self.logit_scale.exp() / self.logit_scale.exp()
    logits_per_image = logit_scale * image_features @ text_features.t() / 10
    return logits_per_image, logits_per_image.t()


def release_legal_states():
  """SO_Graph.graph_SA_ffso()[0], restated: prune all 2^10 states edge by edge."""
  eh = [(0, 1), (0, 2), (0, 3), (1, 6), (1, 7), (2, 4), (2, 5), (2, 6), (2, 7), (2, 8), (2, 9),
        (3, 4), (3, 6), (3, 7), (3, 8)]
  parents = {4: [2, 3], 5: [2], 6: [1, 2, 3], 7: [1, 2, 3], 8: [2, 3], 9: [2]}
  children = {1: [6, 7], 2: [4, 5, 6, 7, 8, 9], 3: [4, 6, 7, 8]}
  state = np.array(list(itertools.product(range(2), repeat=10)))
  for a, b in eh:
    drop = []
    for i in range(len(state)):
      leaf = state[i, b]
      if b <= 3:
        if state[i, a] == 0 and leaf == 1:
          drop.append(i)
        elif sum(state[i, c] for c in children[b]) == 0 and leaf == 1:
          drop.append(i)
      elif sum(state[i, p] for p in parents[b]) == 0 and leaf == 1:
        drop.append(i)
    state = np.delete(state, drop, axis=0)
  return torch.tensor(state)


def release_infer(f, legal_state):
  """SO_Loss.pLoss_all_fidelity.infer: float64 potentials with max subtraction."""
  p_margin = torch.zeros((f.shape[0], f.shape[1]))
  s = legal_state
  potential = torch.mm(s.double(), f.T.double())
  max_sf, _ = torch.max(potential, dim=0)
  j = torch.exp(potential - max_sf)
  z = torch.sum(j, dim=0)
  for i in range(f.shape[1]):
    p_margin[:, i] = torch.sum(j[s[:, i] > 0, :], dim=0) / z
  return p_margin


def release_scores(model, x, joint_texts):
  """SJEDD_test.do_batch3_relative_similarity: one whole CLIP forward per level."""
  b = x.size(0)
  logits = [model.forward(x, t[0])[0].view(b, -1) for t in joint_texts]
  return torch.cat(logits, dim=1)


# ----------------------------------------------------------------------------
# A random-weight checkpoint saved as the release saves it.

CFG = dict(embed_dim=48, image_resolution=32, vision_layers=2, vision_width=128, vision_patch_size=8,
           context_length=77, vocab_size=49408, transformer_width=128, transformer_heads=2,
           transformer_layers=2)


class _FakeCfgNode(dict):
  """Pickles as yacs.config.CfgNode (what the release stores under 'config')."""


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  torch.manual_seed(0)
  model = ReleaseCLIP(**CFG).eval()
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if "ln" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * noise)
      elif name != "logit_scale":
        p.copy_(0.1 * noise)
  fake_yacs = types.ModuleType("yacs")
  fake_config = types.ModuleType("yacs.config")
  _FakeCfgNode.__module__, _FakeCfgNode.__qualname__ = "yacs.config", "CfgNode"
  fake_config.CfgNode = _FakeCfgNode
  sys.modules.setdefault("yacs", fake_yacs)
  sys.modules.setdefault("yacs.config", fake_config)
  config = _FakeCfgNode(MODEL=_FakeCfgNode(NAME="SJEDD", RESUME=""), SEED=0)
  config.__dict__["__immutable__"] = True
  opt = torch.optim.AdamW(model.parameters(), lr=6e-7, weight_decay=1e-3)
  save_state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "max_accuracy": 0.0,
                "epoch": 3, "config": config, "args": argparse.Namespace(VM="ViT-B/32", batch_size=32)}
  path = tmp_path_factory.mktemp("release") / "ckpt_epoch_3.pth"
  torch.save(save_state, path)
  return model, path


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def release_outputs(release, images):
  model, _ = release
  ids = torch.from_numpy(templates.template_ids("release").astype(np.int64))
  joint_texts = [ids[None, :1], ids[None, 1:4], ids[None, 4:]]
  with torch.no_grad():
    f = release_scores(model, torch.from_numpy(images).permute(0, 3, 1, 2), joint_texts)
    return f.numpy(), release_infer(f, release_legal_states()).numpy()


@pytest.fixture(scope="module")
def ours(release):
  return sjedd.from_release_checkpoint(release[1])


scores_jit = nnx.jit(lambda m, x: m.scores(x))
marginals_jit = nnx.jit(lambda m, x: m.marginals(x))


def test_release_legal_states_are_ours():
  s = release_legal_states().numpy()
  assert s.shape == (251, 10)
  assert {tuple(r) for r in s} == {tuple(r) for r in hierarchy.ffpp().legal_states.astype(int)}


def test_from_release_checkpoint_matches_release_code(ours, images, release_outputs):
  f_ref, m_ref = release_outputs
  assert ours.tau == 10.0 and ours.hierarchy.num_states == 251 and ours.text_context == 17
  assert ours.clip.config.vision_heads == 2 and ours.clip.config.text_heads == 2
  f = np.asarray(scores_jit(ours, jnp.asarray(images)))
  assert np.abs(f_ref).max() > 0.5 and m_ref.std() > 0.05  # a non-degenerate comparison
  np.testing.assert_allclose(f, f_ref, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(marginals_jit(ours, jnp.asarray(images))), m_ref, atol=1e-5)


def _compiled(model, x):
  """(scores, flops) of the whole model, compiled once."""
  g, p, r = sjedd.split(model)
  compiled = jax.jit(lambda p, x: sjedd.apply(g, (p, r), x)).lower(p, x).compile()
  cost = compiled.cost_analysis()
  return np.asarray(compiled(p, x)), (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_per_level_passes_same_numbers_redundant_work(ours, images, release_outputs):
  x = jnp.asarray(images)
  base, base_flops = _compiled(ours, x)
  naive = sjedd.SJEDD(ours.clip, sjedd.RELEASE_CONFIG.replace(per_level_passes=True))
  f_naive, naive_flops = _compiled(naive, x)
  np.testing.assert_allclose(f_naive, base, atol=1e-5, rtol=1e-6)
  np.testing.assert_allclose(f_naive, release_outputs[0], atol=2e-5, rtol=1e-5)
  # 3 image passes and 3 text passes at 77 tokens vs one of each at 17 tokens.
  assert naive_flops > 2.5 * base_flops


def test_full_context_same_numbers(ours, images):
  x = jnp.asarray(images)
  full = sjedd.SJEDD(ours.clip, sjedd.RELEASE_CONFIG.replace(text_context=77))
  assert full.text_context == 77 and ours.text_context == 17
  np.testing.assert_allclose(np.asarray(scores_jit(full, x)), np.asarray(scores_jit(ours, x)), atol=1e-5, rtol=1e-6)


# ----------------------------------------------------------------------------
# Ablation switches and the functional API, on a tiny random model.


def random_clip(cfg, seed=0):
  """A CLIP with random numpy weights, without compiling JAX initialisers (fast)."""
  model = nnx.eval_shape(lambda: clip_lib.CLIP(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  flat = {k: (1.0 if k.endswith("scale") else 0.0) + 0.1 * rng.standard_normal(s).astype(np.float32)
          for k, s in params_lib.flatten_shapes(model).items()}
  return params_lib.assign(model, flat)


TINY = clip_lib.get_config("test", vision_layers=1, text_layers=1)  # cheap to compile


@pytest.fixture(scope="module")
def tiny_clip():
  return random_clip(TINY)


encode_image = nnx.jit(lambda m, x: m.encode_image(x))
release_text = nnx.jit(lambda c: c.encode_text(jnp.asarray(templates.template_ids("release"))))


def grad_of_sum(graphdef, params, rest, x):
  """(gradient of sum(scores) w.r.t. params, scores), jitted."""
  states = lambda p: (p,) if rest is None else (p, rest)

  def loss(p, x):
    f = sjedd.apply(graphdef, states(p), x)
    return f.sum(), f
  return jax.jit(jax.grad(loss, has_aux=True))(params, x)


@pytest.fixture(scope="module")
def x_test():
  return jnp.asarray(np.random.default_rng(1).normal(size=(3, 32, 32, 3)).astype(np.float32))


def test_scores_are_inner_products_over_tau(tiny_clip, x_test):
  m = sjedd.SJEDD(tiny_clip, sjedd.SJEDDConfig(tau=3.0))
  u = encode_image(tiny_clip, x_test)
  v = release_text(tiny_clip)
  np.testing.assert_allclose(np.asarray(scores_jit(m, x_test)), np.asarray(u @ v.T) / 3.0, atol=1e-5, rtol=1e-5)


def test_cosine_similarity(tiny_clip, x_test):
  m = sjedd.SJEDD(tiny_clip, sjedd.SJEDDConfig(similarity="cosine", cosine_tau=0.5))
  u = np.asarray(encode_image(tiny_clip, x_test))
  v = np.asarray(release_text(tiny_clip))
  cos = (u / np.linalg.norm(u, axis=1, keepdims=True)) @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T
  np.testing.assert_allclose(np.asarray(scores_jit(m, x_test)), cos / 0.5, atol=1e-5)


def test_linear_head_has_no_text_path(tiny_clip, x_test):
  m = sjedd.SJEDD(tiny_clip, sjedd.SJEDDConfig(head="linear"), rngs=nnx.Rngs(3))
  g, params, rest = sjedd.split(m)
  paths = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
  assert "head.kernel" in paths and not any(p.startswith("clip.text.") for p in paths)
  grads, f = grad_of_sum(g, params, rest, x_test)
  u = encode_image(tiny_clip, x_test)
  np.testing.assert_allclose(np.asarray(f), np.asarray(u @ m.head.kernel[...] + m.head.bias[...]), atol=1e-5)
  assert f.shape == (3, 10) and float(jnp.abs(grads["head"]["kernel"][...]).sum()) > 0


def test_frozen_text_tower(tiny_clip, x_test):
  m = sjedd.SJEDD(tiny_clip, sjedd.SJEDDConfig(freeze_text=True))
  g, params, rest = sjedd.split(m)
  flat = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(params)}
  frozen = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(rest)}
  assert flat and all(p.startswith("clip.vision.") for p in flat)
  assert frozen and all(p.startswith("clip.text.") for p in frozen)
  # stop_gradient: even when the text params are differentiated, their gradient is zero.
  g2, allp = nnx.split(m, nnx.Param)
  grads, _ = grad_of_sum(g2, allp, None, x_test)
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(grads["clip"]["text"]))
  assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(grads["clip"]["vision"]))
  # (test_functional_api_under_transforms checks that the unfrozen text tower gets gradients.)


def test_keyword_templates(tiny_clip, x_test):
  m = sjedd.SJEDD(tiny_clip, sjedd.SJEDDConfig(templates="keyword"))
  assert m.text_context == 6  # "altered physical inconsistency": sot + 4 + eot
  assert m.template_ids[0][:3] == (49406, 5777, 49407)
  assert m.template_ids[3][:6] == (49406, 25201, 6671, 512, 25683, 49407)
  assert scores_jit(m, x_test).shape == (3, 10)


def test_custom_templates_need_a_tokenizer(tiny_clip):
  with pytest.raises(templates.TemplateError, match="need a CLIP tokenizer"):
    sjedd.SJEDD(tiny_clip, sjedd.SJEDDConfig(templates=("a real face",) * 10))
  with pytest.raises(ValueError, match="one per node"):
    sjedd.SJEDD(tiny_clip, sjedd.SJEDDConfig(hierarchy="ffpp"), template_ids=templates.template_ids()[:5])


def test_functional_api_under_transforms(tiny_clip, x_test):
  m = sjedd.SJEDD(tiny_clip)
  g, params, rest = sjedd.split(m)
  fn = sjedd.scores_fn(g, rest)

  @jax.jit
  def vjp_then_jvp(p, x):
    out, vjp = jax.vjp(lambda p: fn(p, x), p)
    (ct,) = vjp(jnp.ones_like(out))
    _, tangent = jax.jvp(lambda p: fn(p, x), (p,), (ct,))
    return out, ct, tangent

  out, ct, tangent = vjp_then_jvp(params, x_test)
  assert {".".join(map(str, p)) for p, _ in nnx.to_flat_state(rest)} == set()  # all trainable
  assert any(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(ct["clip"]["text"]))
  ref = np.asarray(out)
  np.testing.assert_allclose(ref, np.asarray(scores_jit(m, x_test)), atol=1e-5)
  # 1 . (J J^T 1) = |J^T 1|^2
  sq = sum(float(jnp.vdot(a, a)) for a in jax.tree.leaves(ct))
  np.testing.assert_allclose(float(tangent.sum()), sq, rtol=1e-3)
  batched = jax.jit(jax.vmap(lambda xx: fn(params, xx)))(jnp.stack([x_test, x_test[::-1]]))
  np.testing.assert_allclose(np.asarray(batched[0]), ref, atol=1e-5)
  np.testing.assert_allclose(np.asarray(batched[1]), ref[::-1], atol=1e-5)


def test_bfloat16_switch(tiny_clip, x_test):
  m = sjedd.build(random_clip(TINY.replace(dtype="bfloat16")))
  assert m.clip.config.dtype == "bfloat16"
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
  f = scores_jit(m, x_test)
  assert f.dtype == jnp.float32 and bool(jnp.isfinite(f).all())
