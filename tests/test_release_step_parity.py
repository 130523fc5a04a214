"""One training step against the authors' PyTorch step (restated in scripts/benchmark_torch_release.py).

Identical random weights (a transformers CLIPModel saved with save_pretrained
and read by ``checkpoints.load_pretrained``), identical batches with the
release's labels (N/A written as 0, unmasked), the release's hyper-parameters
(lambda init 1.0, Adam lr 1e-3, finite differences, AdamW): the task losses at
theta, the hypergradient and the updated lambda agree (float32; the release's
marginals are float64).
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers

from sjedd_jax import optim, train_step as ts
from sjedd_jax.detectors import sjedd as sjedd_det
from sjedd_jax.backbones.clip import checkpoints
from sjedd_jax.backbones.clip import modeling as clip_lib
from sjedd_jax.detectors.sjedd import model as sjedd

LR, WD = 1e-2, 1e-3
FAST_COMPILE = {"xla_backend_optimization_level": 0}
CFG = clip_lib.CLIPConfig(embed_dim=24, image_size=32, patch_size=8, vision_width=48, vision_layers=1,
                          vision_heads=3, vision_mlp_dim=96, text_width=40, text_layers=1, text_heads=5,
                          text_mlp_dim=72)


def _release_module():
  path = os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "benchmark_torch_release.py")
  spec = importlib.util.spec_from_file_location("benchmark_torch_release", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


@pytest.fixture(scope="module")
def both(tmp_path_factory):
  rel = _release_module()
  torch.manual_seed(0)
  model = transformers.CLIPModel(rel.hf_config(CFG)).eval()
  g = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      p.copy_(1.0 + 0.1 * noise if "norm" in name and name.endswith("weight") else 0.1 * noise)
  path = tmp_path_factory.mktemp("hf_clip")
  model.save_pretrained(path)

  rng = np.random.default_rng(0)
  (x, y), (vx, vy) = rel.random_batch(rng, 6, CFG.image_size), rel.random_batch(rng, 6, CFG.image_size)
  release = rel.ReleaseStep(model, lr=LR, weight_decay=WD, lam_init=1.0, lam_lr=1e-3)
  ref = release.step(x, y, vx, vy)

  clip, _ = checkpoints.load_pretrained(path)
  ours = sjedd.SJEDD(clip, sjedd.RELEASE_CONFIG)
  detector, variables = sjedd_det.from_module(ours)
  sched = optax.constant_schedule(LR)
  opt = optim.adamw(sched, WD)
  weighting = ts.make_weighting("bilevel", lam_lr=1e-3, lam_init=1.0, method="finite_difference")
  step = jax.jit(ts.make_train_step(detector, weighting, opt, sched, WD), compiler_options=FAST_COMPILE)

  def batch(x, y):
    return {"image": jnp.asarray(x.permute(0, 2, 3, 1).numpy()), "y": jnp.asarray(y.numpy()),
            "observed": jnp.ones(y.shape, jnp.float32)}

  _, metrics = step(ts.init_state(variables, opt, weighting), batch(x, y), batch(vx, vy))
  return ref, jax.device_get(metrics)


def test_task_losses_match_release(both):
  ref, m = both
  got = np.array([m["loss/primary"], m["loss/global"], m["loss/local"]])
  assert got.min() > 0.05  # non-degenerate
  np.testing.assert_allclose(got, ref["task_losses"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(m["val_primary_loss"], ref["val_primary_loss"], rtol=1e-4)


def test_hypergradient_matches_release(both):
  ref, m = both
  h_ref = ref["hypergradient"]
  assert np.abs(h_ref).min() > 1e-6, h_ref  # well above Adam's eps: lambda's step follows its sign
  np.testing.assert_allclose(m["hypergradient"], h_ref, rtol=1e-4, atol=1e-4 * np.abs(h_ref).max())


def test_updated_lambda_matches_release(both):
  ref, m = both
  assert not np.allclose(ref["lambda"], 1.0)
  np.testing.assert_allclose(m["lambda"], ref["lambda"], rtol=1e-5)
