"""CLIP in NNX against the real reference: transformers' CLIPModel (PyTorch).

Random weights in a tiny transformers.CLIPConfig with independently chosen,
non-OpenAI shapes (widths not multiples of 64, MLP not 4x, 3 and 5 heads,
different layer counts per tower), saved with save_pretrained, loaded with
load_pretrained. The same weights as an OpenAI-format state dict (fused
in_proj_weight, transposed projections) must give the same outputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from sjedd_jax.backbones.clip import checkpoints
from sjedd_jax.detectors.sjedd import templates
from sjedd_jax.backbones.clip import modeling as clip_lib
from sjedd_jax.backbones.clip import params as params_lib

ATOL = 1e-5

# Whole-tower jit: one compile instead of many small eager ones.
encode_image = nnx.jit(lambda m, x: m.encode_image(x))
encode_text = nnx.jit(lambda m, ids: m.encode_text(ids))


def _hf_config():
  return transformers.CLIPConfig(
      text_config=dict(vocab_size=49408, hidden_size=40, intermediate_size=72, num_hidden_layers=3,
                       num_attention_heads=5, max_position_embeddings=77, hidden_act="quick_gelu",
                       eos_token_id=49407, bos_token_id=49406, pad_token_id=0),
      vision_config=dict(image_size=40, patch_size=8, hidden_size=48, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=3, hidden_act="quick_gelu"),
      projection_dim=24)


def _randomise(model: torch.nn.Module, seed: int):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if "norm" in name and name.endswith("weight"):
        p.copy_(1.0 + 0.2 * noise)
      elif name == "logit_scale":
        p.fill_(2.6592)
      else:
        p.copy_(0.15 * noise)


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
  torch.manual_seed(0)
  model = transformers.CLIPModel(_hf_config()).eval()
  _randomise(model, 1)
  path = tmp_path_factory.mktemp("hf_clip")
  model.save_pretrained(path)
  return model, path


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, 40, 40, 3)).astype(np.float32)
  return images, templates.template_ids("release")


def _hf_features(model, images, ids):
  with torch.no_grad():
    img = model.get_image_features(pixel_values=torch.from_numpy(images).permute(0, 3, 1, 2))
    txt = model.get_text_features(input_ids=torch.from_numpy(ids.astype(np.int64)))
  # transformers 5 returns an output object whose pooler_output is the projected embedding.
  img = img if isinstance(img, torch.Tensor) else img.pooler_output
  txt = txt if isinstance(txt, torch.Tensor) else txt.pooler_output
  return img.numpy(), txt.numpy()


@pytest.fixture(scope="module")
def reference(hf, inputs):
  return _hf_features(hf[0], *inputs)


@pytest.fixture(scope="module")
def loaded(hf):
  model, tok = checkpoints.load_pretrained(hf[1])
  return model


def test_hf_pooler_output_is_projected(hf, inputs):
  model = hf[0]
  _, ids = inputs
  with torch.no_grad():
    out = model.text_model(input_ids=torch.from_numpy(ids.astype(np.int64)))
    eot = out.last_hidden_state[torch.arange(10), torch.from_numpy(ids).argmax(-1)]
    manual = model.text_projection(eot).numpy()
  np.testing.assert_allclose(_hf_features(model, *inputs)[1], manual, atol=1e-6)


def test_shapes_inferred_from_hf(loaded):
  c = loaded.config
  assert (c.embed_dim, c.image_size, c.patch_size) == (24, 40, 8)
  assert (c.vision_width, c.vision_layers, c.vision_heads, c.vision_mlp_dim) == (48, 2, 3, 96)
  assert (c.text_width, c.text_layers, c.text_heads, c.text_mlp_dim) == (40, 3, 5, 72)
  assert (c.vocab_size, c.context_length, c.act) == (49408, 77, "quick_gelu")


def test_matches_transformers_clip(loaded, inputs, reference):
  images, ids = inputs
  u = encode_image(loaded, jnp.asarray(images))
  v = encode_text(loaded, jnp.asarray(ids))
  assert np.abs(reference[0]).max() > 0.1  # not a degenerate comparison
  np.testing.assert_allclose(np.asarray(u), reference[0], atol=ATOL, rtol=0)
  np.testing.assert_allclose(np.asarray(v), reference[1], atol=ATOL, rtol=0)


def _openai_state_dict(hf_model) -> dict:
  """The same weights in OpenAI's layout, written independently of params.py."""
  sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
  out = {"logit_scale": sd["logit_scale"]}
  for tower, prefix in (("vision", "visual.transformer.resblocks"), ("text", "transformer.resblocks")):
    n = 2 if tower == "vision" else 3
    for i in range(n):
      h = f"{tower}_model.encoder.layers.{i}."
      o = f"{prefix}.{i}."
      for kind in ("weight", "bias"):
        out[o + f"attn.in_proj_{kind}"] = torch.cat(
            [sd[h + f"self_attn.{p}_proj.{kind}"] for p in "qkv"], dim=0)
        out[o + f"attn.out_proj.{kind}"] = sd[h + f"self_attn.out_proj.{kind}"]
        out[o + f"ln_1.{kind}"] = sd[h + f"layer_norm1.{kind}"]
        out[o + f"ln_2.{kind}"] = sd[h + f"layer_norm2.{kind}"]
        out[o + f"mlp.c_fc.{kind}"] = sd[h + f"mlp.fc1.{kind}"]
        out[o + f"mlp.c_proj.{kind}"] = sd[h + f"mlp.fc2.{kind}"]
  out["visual.conv1.weight"] = sd["vision_model.embeddings.patch_embedding.weight"]
  out["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
  out["visual.positional_embedding"] = sd["vision_model.embeddings.position_embedding.weight"]
  for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
    for kind in ("weight", "bias"):
      out[f"visual.{ours}.{kind}"] = sd[f"vision_model.{theirs}.{kind}"]
  out["visual.proj"] = sd["visual_projection.weight"].T.contiguous()
  out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
  out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
  for kind in ("weight", "bias"):
    out[f"ln_final.{kind}"] = sd[f"text_model.final_layer_norm.{kind}"]
  out["text_projection"] = sd["text_projection.weight"].T.contiguous()
  return out


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_openai_format_same_outputs(hf, inputs, reference, tmp_path, suffix):
  sd = _openai_state_dict(hf[0])
  path = tmp_path / f"openai{suffix}"
  if suffix == ".pt":
    torch.save(sd, path)
  else:
    from safetensors.torch import save_file
    save_file(sd, str(path))
  # OpenAI dicts carry no head count (OpenAI's rule is width // 64); these widths need it given.
  model, tok = checkpoints.load_pretrained(path, vision_heads=3, text_heads=5)
  assert tok is None
  images, ids = inputs
  np.testing.assert_allclose(np.asarray(encode_image(model, jnp.asarray(images))), reference[0], atol=ATOL, rtol=0)
  np.testing.assert_allclose(np.asarray(encode_text(model, jnp.asarray(ids))), reference[1], atol=ATOL, rtol=0)


def test_openai_heads_rule_is_width_over_64():
  tiny = clip_lib.get_config("tiny")
  abstract = nnx.eval_shape(lambda: clip_lib.CLIP(tiny, rngs=nnx.Rngs(0)))
  flat = {k: np.zeros(s, np.float32) for k, s in params_lib.flatten_shapes(abstract).items()}
  sd = params_lib.nnx_to_openai(flat, tiny)
  cfg = params_lib.config_from_openai(sd)
  assert cfg.vision_heads == 128 // 64 and cfg.text_heads == 128 // 64
  assert cfg.vision_layers == 3 and cfg.text_layers == 2 and cfg.image_size == 64


def test_context_truncation_is_exact(loaded, inputs):
  _, ids = inputs
  assert templates.longest(ids) == 17
  full = np.asarray(encode_text(loaded, jnp.asarray(ids)))
  for length in (17, 30):
    short = np.asarray(encode_text(loaded, jnp.asarray(ids[:, :length])))
    np.testing.assert_allclose(short, full, atol=1e-6, rtol=0)
  with pytest.raises(ValueError, match="context length"):
    loaded.encode_text(jnp.zeros((1, 78), jnp.int32))


def test_bfloat16_compute_float32_params(hf, inputs, reference):
  model, _ = checkpoints.load_pretrained(hf[1], dtype="bfloat16")
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  images, ids = inputs
  u = encode_image(model, jnp.asarray(images))
  assert u.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(u, np.float32), reference[0], atol=0.1 * np.abs(reference[0]).max())


def test_presets():
  assert clip_lib.get_config() == clip_lib.get_config("ViT-B/32")
  assert clip_lib.get_config("vit_b16").patch_size == 16
  l14 = clip_lib.get_config("ViT-L/14")
  assert (l14.vision_width, l14.vision_layers, l14.embed_dim) == (1024, 24, 768)
  tiny = clip_lib.get_config("tiny")
  assert (tiny.vocab_size, tiny.context_length, tiny.image_size) == (49408, 77, 64)
  # A width override brings the usual 4 x width MLP unless the MLP width is given too.
  narrow = clip_lib.get_config("tiny", vision_width=96, text_width=64)
  assert (narrow.vision_mlp_dim, narrow.text_mlp_dim) == (384, 256)
  assert clip_lib.get_config("tiny", vision_width=96, vision_mlp_dim=100).vision_mlp_dim == 100
  with pytest.raises(KeyError, match="unknown CLIP preset"):
    clip_lib.get_config("ViT-H/14")


def test_image_shape_error(loaded):
  with pytest.raises(ValueError, match=r"\(B, 40, 40, 3\)"):
    loaded.encode_image(jnp.zeros((1, 32, 32, 3)))


def test_vit_b32_shapes_are_inferred():
  """An OpenAI-format dict of ViT-B/32's real shapes gives back the preset (heads = width // 64)."""
  cfg = clip_lib.get_config("ViT-B/32")
  abstract = nnx.eval_shape(lambda: clip_lib.CLIP(cfg, rngs=nnx.Rngs(0)))
  shapes = params_lib.flatten_shapes(abstract)
  # OpenAI's ViT-B/32 has 151,277,313 parameters, logit_scale (not kept) included.
  assert sum(int(np.prod(s)) for s in shapes.values()) == 151_277_313 - 1
  # zero-stride views: the real shapes without the memory (OpenAI layout = transposed NNX)
  sd = {o: params_lib._backward(np.broadcast_to(np.float32(0), shapes[p]), t)
        for o, p, t in params_lib.key_table(cfg)}
  assert params_lib.config_from_openai(sd) == cfg


def test_scan_layers_same_outputs_and_gradients():
  """scan_layers=True runs the same blocks with the same parameters as the unrolled loop."""
  cfgs = [clip_lib.get_config("tiny", scan_layers=s) for s in (False, True)]
  models = [clip_lib.CLIP(c, rngs=nnx.Rngs(0)) for c in cfgs]
  # Stacked on a leading layer axis, initialised with the unrolled blocks' values; one key per
  # layer in the flat (checkpoint) view.
  assert models[1].vision.transformer.blocks.attn.qkv.kernel.shape == (
      cfgs[1].vision_layers, cfgs[1].vision_width, 3 * cfgs[1].vision_width)
  flat = [params_lib.flatten(m) for m in models]
  assert flat[0].keys() == flat[1].keys()
  for k in flat[0]:
    np.testing.assert_array_equal(flat[1][k], flat[0][k], err_msg=k)
  graphdefs, states = zip(*(nnx.split(m) for m in models))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, cfgs[0].image_size, cfgs[0].image_size, 3)), jnp.float32)
  ids = jnp.asarray(rng.integers(1, cfgs[0].vocab_size, size=(3, 9)), jnp.int32)

  def loss(state, graphdef):
    m = nnx.merge(graphdef, state)
    return jnp.sum(m.encode_image(images) ** 2) + jnp.sum(m.encode_text(ids) ** 2)

  (l0, g0), (l1, g1) = (jax.value_and_grad(loss)(st, gd) for st, gd in zip(states, graphdefs))
  np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
  g0, g1 = (params_lib.flatten(nnx.merge(gd, g)) for gd, g in zip(graphdefs, (g0, g1)))
  assert g0.keys() == g1.keys()
  for k in g0:  # float32 reassociation only: 1e-3 of each leaf's scale
    np.testing.assert_allclose(g1[k], g0[k], rtol=0, atol=1e-3 * np.abs(g0[k]).max(), err_msg=k)


def test_scan_layers_checkpoint_round_trip(tmp_path):
  """A scan_layers model saves one key per layer and loads into either layout."""
  m = clip_lib.CLIP(clip_lib.get_config("test", scan_layers=True), rngs=nnx.Rngs(1))
  checkpoints.save_pretrained(m, tmp_path / "ckpt")
  ref = params_lib.flatten(m)
  assert "vision.transformer.blocks.1.mlp.c_fc.kernel" in ref
  for scan in (True, False):
    loaded, _ = checkpoints.load_pretrained(tmp_path / "ckpt", scan_layers=scan)
    assert loaded.config.scan_layers is scan
    got = params_lib.flatten(loaded)
    assert got.keys() == ref.keys()
    for k in ref:
      np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  bad = dict(ref)
  del bad["text.transformer.blocks.1.ln_2.bias"]
  with pytest.raises(params_lib.CheckpointError, match=r"text\.transformer\.blocks\.1\.ln_2\.bias"):
    params_lib.assign(nnx.eval_shape(lambda: clip_lib.CLIP(m.config, rngs=nnx.Rngs(0))), bad)
