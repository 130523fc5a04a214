#!/usr/bin/env python
r"""The authors' PyTorch training step, restated, timed on this machine.

  python scripts/benchmark_torch_release.py --preset ViT-B/32 --batch_size 8 --steps 3 --warmup 1
  python scripts/benchmark_torch_release.py --preset tiny --batch_size 8 --steps 5
  python scripts/benchmark_torch_release.py --preset ViT-B/32 --batch_size 32 --steps 10 --device cuda

Source: github.com/strongerwill/SJEDD, ``SJEDD_train_FFpp.py``
(``train_one_epoch_mul_fidelity``, ``do_batch3_relative_similarity``),
``lambda_optimizer.py`` (``AutoLambda_SO.virtual_step / unrolled_backward /
compute_hessian``) and ``SO_Loss.py`` (``pLoss_all_fidelity``,
``Fidelity_Loss_binary``, ``Multi_Fidelity_Loss.forward_wo_mask_matrix``),
with the README's training command (``--task binary --autol_init 1.0
--autol_lr 1e-3 --initial_lr 6e-7``, AdamW weight decay 1e-3). Per step:

  1. virtual step: per-level scores (three whole CLIP forwards, 77 tokens),
     loss = sum_i lam_i L_i, ``autograd.grad`` over the model, and the copy
     ``model_`` <- theta - lr (g + wd theta)
  2. validation pass on ``model_``: L_1 on the validation batch, ``autograd.grad``
  3.-4. finite differences: theta +- eps d in place, forward, ``autograd.grad``
     to lambda only; theta restored in place
  5. lambda.grad = -lr h; Adam step on lambda; then the model step: forward,
     sum_i lam_i L_i backward, AdamW step.

The CLIP is transformers' ``CLIPModel`` (QuickGELU, OpenAI shapes) with random
weights in place of the release's ``clip.load`` (same architecture and FLOPs);
its logit_scale cancels in the release (``exp/exp``) and is left out. Everything
runs in float32 (the marginals in float64, as in the release), on the CPU or
with ``--device cuda`` on a GPU; the release's fp16 ``amp.autocast`` is not
restated, so the GPU row is the float32 step (``--tf32`` lets float32 matrix
products use TF32; for a strict float32 JAX side, set
``JAX_DEFAULT_MATMUL_PRECISION=highest``). Timed steps end with
``torch.cuda.synchronize()`` on a GPU. Used by tests/test_release_step_parity.py
(``ReleaseStep``, ``hf_config``).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sjedd_jax import hostenv  # pylint: disable=g-import-not-at-top

if __name__ == "__main__":  # before torch loads: the JAX benchmark's allocator settings (SJEDD_MALLOC_KEEP=0 etc. turn them off)
  hostenv.reexec_with_malloc_tunables()

import numpy as np  # pylint: disable=g-import-not-at-top
import torch
import transformers

from sjedd_jax.detectors.sjedd import hierarchy as hierarchy_lib
from sjedd_jax.detectors.sjedd import labels
from sjedd_jax.detectors.sjedd import templates
from sjedd_jax.backbones.clip import modeling as clip_lib

LEVEL_SLICES = (slice(0, 1), slice(1, 4), slice(4, 10))   # the release's l1/l2/l3 template groups


def hf_config(preset: str | clip_lib.CLIPConfig = "ViT-B/32") -> transformers.CLIPConfig:
  """A transformers CLIPConfig with the shapes of one of our CLIP presets."""
  c = clip_lib.get_config(preset) if isinstance(preset, str) else preset
  return transformers.CLIPConfig(
      text_config=dict(vocab_size=c.vocab_size, hidden_size=c.text_width, intermediate_size=c.text_mlp_dim,
                       num_hidden_layers=c.text_layers, num_attention_heads=c.text_heads,
                       max_position_embeddings=c.context_length, hidden_act="quick_gelu",
                       layer_norm_eps=c.layer_norm_eps, eos_token_id=49407, bos_token_id=49406, pad_token_id=0),
      vision_config=dict(image_size=c.image_size, patch_size=c.patch_size, hidden_size=c.vision_width,
                         intermediate_size=c.vision_mlp_dim, num_hidden_layers=c.vision_layers,
                         num_attention_heads=c.vision_heads, hidden_act="quick_gelu",
                         layer_norm_eps=c.layer_norm_eps),
      projection_dim=c.embed_dim)


def _features(out):
  # transformers 5 returns an output object whose pooler_output is the projected embedding.
  return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_forward(model, x, texts, tau=10.0):
  """The release's ``model.forward(x, texts)[0]``: unnormalised image @ text^T / 10."""
  image_features = _features(model.get_image_features(pixel_values=x))
  text_features = _features(model.get_text_features(input_ids=texts))
  return image_features @ text_features.t() / tau


def do_batch3_relative_similarity(model, x, joint_texts):
  """One whole CLIP forward per label level (three image and three text passes)."""
  b = x.size(0)
  return torch.cat([clip_forward(model, x, t).view(b, -1) for t in joint_texts], dim=1)


class ReleaseCriterion:
  """``pLoss_all_fidelity(graph_SA_ffso(), 'ffpp')``: float64 marginals, per-level fidelity losses."""

  def __init__(self, legal_states: np.ndarray, esp: float = 1e-8):
    self.legal_state = torch.as_tensor(np.asarray(legal_states), dtype=torch.int64)
    self.esp = esp

  def marginals(self, f):
    p_margin = torch.zeros((f.shape[0], f.shape[1]), device=f.device)
    s = self.legal_state.to(f.device)
    potential = torch.mm(s.double(), f.T.double())
    max_sf, _ = torch.max(potential, dim=0)
    j = torch.exp(potential - max_sf)
    z = torch.sum(j, dim=0)
    for i in range(f.shape[1]):
      p_margin[:, i] = torch.sum(j[s[:, i] > 0, :], dim=0) / z
    return p_margin

  def _fidelity(self, p, g):
    return 1 - (torch.sqrt(p * g + self.esp) + torch.sqrt((1 - p) * (1 - g) + self.esp))

  def __call__(self, f, y):
    y = y.float()
    pm = self.marginals(f)
    loss1 = torch.mean(self._fidelity(pm[:, 0], y[:, 0]))
    p2, g2 = pm[:, 1:4].reshape(-1, 3, 1), y[:, 1:4].reshape(-1, 3, 1)
    loss2 = torch.mean(torch.mean(self._fidelity(p2, g2), dim=1))
    p3, g3 = pm[:, 4:].reshape(-1, 6, 1), y[:, 4:].reshape(-1, 6, 1)
    loss3 = torch.mean(torch.mean(self._fidelity(p3, g3), dim=1))
    return [loss1, loss2, loss3], pm


def trainable(model) -> list[torch.nn.Parameter]:
  """The parameters the release differentiates (its logit_scale cancels; ours has none)."""
  return [p for n, p in model.named_parameters() if n != "logit_scale"]


class ReleaseStep:
  """The release's training step (``AutoLambda_SO`` + the model step), on the model's device."""

  def __init__(self, model, *, lr=6e-7, weight_decay=1e-3, lam_init=1.0, lam_lr=1e-3, legal_states=None,
               template_ids=None, primary=(1.0, 0.0, 0.0)):
    self.model = model
    self.model_ = copy.deepcopy(model)
    self.lr = lr
    self.params, self.params_ = trainable(model), trainable(self.model_)
    self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)
    self.device = next(model.parameters()).device
    self.meta_weights = torch.tensor([lam_init] * 3, requires_grad=True, device=self.device)
    self.meta_optimizer = torch.optim.Adam([self.meta_weights], lr=lam_lr)
    states = hierarchy_lib.ffpp().legal_states if legal_states is None else legal_states
    self.criterion = ReleaseCriterion(states)
    ids = templates.template_ids("release") if template_ids is None else template_ids
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.int64, device=self.device)
    self.joint_texts = [ids[s] for s in LEVEL_SLICES]
    self.pri_weights = list(primary)
    self.timings: dict[str, float] = {}

  def _losses(self, model, x, y):
    losses, pm = self.criterion(do_batch3_relative_similarity(model, x, self.joint_texts), y)
    return losses, pm

  def _tick(self, name, t0):
    if self.device.type == "cuda":
      torch.cuda.synchronize(self.device)
    now = time.perf_counter()
    self.timings[name] = self.timings.get(name, 0.0) + now - t0
    return now

  def virtual_step(self, x, y, alpha):
    losses, _ = self._losses(self.model, x, y)
    loss = sum(w * losses[i] for i, w in enumerate(self.meta_weights))
    gradients = torch.autograd.grad(loss, self.params)
    wd = self.optimizer.param_groups[0]["weight_decay"]
    with torch.no_grad():
      for weight, weight_, grad in zip(self.params, self.params_, gradients):
        weight_.copy_(weight - alpha * (grad + wd * weight))

  def compute_hessian(self, d_model, x, y):
    norm = torch.cat([w.view(-1) for w in d_model]).norm() + 1e-6
    eps = 0.01 / norm
    with torch.no_grad():
      for p, d in zip(self.params, d_model):
        p += eps * d
    losses, _ = self._losses(self.model, x, y)
    d_weight_p = torch.autograd.grad(sum(w * losses[i] for i, w in enumerate(self.meta_weights)),
                                     self.meta_weights)
    with torch.no_grad():
      for p, d in zip(self.params, d_model):
        p -= 2 * eps * d
    losses, _ = self._losses(self.model, x, y)
    d_weight_n = torch.autograd.grad(sum(w * losses[i] for i, w in enumerate(self.meta_weights)),
                                     self.meta_weights)
    with torch.no_grad():
      for p, d in zip(self.params, d_model):
        p += eps * d
    return [(p - n) / (2. * eps) for p, n in zip(d_weight_p, d_weight_n)]

  def unrolled_backward(self, x, y, val_x, val_y, alpha, alpha_lambda):
    t0 = time.perf_counter()
    self.virtual_step(x, y, alpha)
    t0 = self._tick("1 virtual step", t0)
    val_loss, _ = self._losses(self.model_, val_x, val_y)
    loss = sum(w * val_loss[i] for i, w in enumerate(self.pri_weights))
    d_model = torch.autograd.grad(loss, self.params_, allow_unused=True)
    t0 = self._tick("2 validation", t0)
    hessian = self.compute_hessian(d_model, x, y)
    self._tick("3-4 finite differences", t0)
    with torch.no_grad():
      for mw, h in zip([self.meta_weights], hessian):
        mw.grad = -alpha_lambda * h
    return float(loss.detach())

  def step(self, x, y, val_x, val_y) -> dict:
    """One training step; returns the task losses at theta, the hypergradient and the new lambda."""
    alpha = self.optimizer.param_groups[0]["lr"]
    self.meta_optimizer.zero_grad()
    val_loss = self.unrolled_backward(x, y, val_x, val_y, alpha, alpha)
    hyper = self.meta_weights.grad.detach().clone()
    self.meta_optimizer.step()
    t0 = time.perf_counter()
    self.optimizer.zero_grad()
    losses, pm = self._losses(self.model, x, y)
    loss = sum(w * losses[i] for i, w in enumerate(self.meta_weights))
    loss.backward()
    self.optimizer.step()
    self._tick("5 final step", t0)
    return {"task_losses": np.array([float(l.detach()) for l in losses]), "hypergradient": hyper.cpu().numpy(),
            "lambda": self.meta_weights.detach().cpu().numpy().copy(), "val_primary_loss": val_loss,
            "marginals": pm.detach().cpu().numpy()}


def random_batch(rng, batch, size):
  """(NCHW images, release labels: N/A written as 0, unmasked)."""
  sources = [labels.SOURCES[i % len(labels.SOURCES)] for i in rng.permutation(batch)]
  y = np.stack([labels.ffpp_label(s, unobserved_as_zero=True)[0] for s in sources])
  x = rng.normal(size=(batch, 3, size, size)).astype(np.float32)
  return torch.from_numpy(x), torch.from_numpy(y)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="ViT-B/32")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--lr", type=float, default=6e-7)
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
  p.add_argument("--tf32", action="store_true", help="allow TF32 in float32 matrix products on a GPU")
  args = p.parse_args(argv)
  device = torch.device(args.device)
  if device.type == "cuda" and not torch.cuda.is_available():
    p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
  if args.threads:
    torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  cfg = clip_lib.get_config(args.preset)
  model = transformers.CLIPModel(hf_config(cfg)).eval().to(device)
  step = ReleaseStep(model, lr=args.lr)
  rng = np.random.default_rng(args.seed)
  (x, y), (vx, vy) = ((t.to(device) for t in random_batch(rng, args.batch_size, cfg.image_size)) for _ in range(2))
  for _ in range(args.warmup):
    step.step(x, y, vx, vy)
  step.timings.clear()
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    out = step.step(x, y, vx, vy)  # ends with a host read of the losses (and a synchronize on a GPU)
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  where = (f"{torch.cuda.get_device_name(device)}, peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
           f", TF32 {'on' if args.tf32 else 'off'}" if device.type == "cuda" else f"{torch.get_num_threads()} threads")
  where += f", {hostenv.malloc_summary()}"
  print(f"Date: {datetime.date.today().isoformat()}. Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({where}), transformers {transformers.__version__}. "
        f"Load average at end: {os.getloadavg()[0]:.2f}.")
  print(f"```\npython {' '.join(sys.argv)}\n```")
  print("| implementation | CLIP | batch | ms/step (median [min-max]) | steps/s | images/s |")
  print("|---|---|---|---|---|---|")
  print(f"| release (PyTorch, restated) | {args.preset} | {args.batch_size} | {med * 1e3:.0f} "
        f"[{min(times) * 1e3:.0f}-{max(times) * 1e3:.0f}] | {1 / med:.3f} | {args.batch_size / med:.2f} |")
  print("\nPer-pass share of the timed steps: " + ", ".join(
      f"{k} {100 * v / sum(step.timings.values()):.0f}%" for k, v in sorted(step.timings.items())))
  print(f"Last step: losses {out['task_losses']}, hypergradient {out['hypergradient']}, lambda {out['lambda']}")


if __name__ == "__main__":
  main()
