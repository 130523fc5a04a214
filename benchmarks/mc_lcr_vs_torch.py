r"""MC-LCR's training step: JAX (plain and bi-level, compiled) vs a PyTorch restatement, one process.

    python benchmarks/mc_lcr_vs_torch.py --sizes synthetic,256 --repeats 3

Per size, on random balanced batches (half real, half fake):

* ``jax plain``: ``train_step.make_train_step`` with the fixed weights (0.5, 0.5), AdamW, compiled
  on one device (the trainer's step: forward, CE + SupCon, backward, AdamW, BatchNorm statistics);
* ``jax bilevel``: the same with ``weighting.kind="bilevel"`` (spec section 10: the model step
  plus lambda's hypergradient on a validation batch);
* ``torch plain``: the same model restated in PyTorch (Xception: ``tests/test_xception.py``'s
  restatement of timm's ``legacy_xception``, timm itself not being installed; SSRB, patch FFT
  spectra, PAPDA with ``nn.MultiheadAttention``, two MLP-Mixers, the heads, BCE + SupCon), one
  AdamW step with ``loss.backward()``. No PyTorch bi-level step is restated: the bi-level cost is
  reported as a ratio to JAX's own plain step.

Sizes: ``synthetic`` = configs/mc_lcr/synthetic.py (tiny Xception, 64 px, batch 16); ``256`` = the
paper's model (Xception to block12, 256 px, P = 16, batch 16). Times are the median of
``--repeats`` steps after one warm-up step (JAX: after compiling, timed separately). The machine's
load (``os.getloadavg``) is printed with each row: on a shared machine it decides the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import step_timing  # noqa: E402  (after the path)


CPU_KERNELS = "auto"   # --cpu_kernels
REMAT = ""             # --remat ("": the config's)
TORCH = ("cpu", "tf32")  # --torch_device, --torch_precision


def jax_config(size: str, bilevel: bool, depthwise: str):
  from sjedd_jax import config as config_lib
  c = config_lib.load_config_file(os.path.join(ROOT, "configs", "mc_lcr", "synthetic.py"))
  if size == "256":
    c = config_lib.base_config("mc_lcr")
    c.optim.name, c.optim.lr, c.optim.weight_decay = "adamw", 1e-3, 1e-4
  c.model.depthwise = depthwise
  c.model.cpu_kernels = CPU_KERNELS
  if REMAT:
    c.model.remat = REMAT
  c.optim.schedule = "constant"
  c.optim.warmup_steps = 0
  c.optim.plateau_patience = 0
  c.batch_size = 16
  if bilevel:
    c.weighting.kind = "bilevel"
  return c


def batch(rng, b, s):
  y = np.array([0.0, 1.0] * (b // 2), np.float32)[:, None]
  return {"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32), "y": y}


def time_jax(size: str, bilevel: bool, repeats: int, depthwise: str) -> dict:
  r = step_timing.time_train_step(jax_config(size, bilevel, depthwise), batch, repeats,
                                  keys_from_detector=False)
  m = r.pop("metrics")
  r.pop("params")
  return {**r, "loss_ce": m["loss/ce"], "loss_supcon": m["loss/supcon"]}


# ------------------------------------------------------------------ PyTorch restatement
def torch_model(size: str):
  import torch
  from torch import nn
  from sjedd_jax.detectors import mc_lcr
  from tests.test_xception import torch_model as txception  # timm's legacy_xception restated

  c = jax_config(size, False, "xla")
  cfg = mc_lcr.model_config(c)
  bb = txception(cfg.backbone)
  taps_ch = [cfg.backbone.tap_channels[n] for n in ("act2", "block2_in", "block3_in")]
  gf_dim = cfg.backbone.tap_channels["gf"]
  p, s = cfg.patch, cfg.image_size
  n_tok, d = (s // p) ** 2, cfg.token_dim or p * p

  class MixerLayer(nn.Module):
    def __init__(self):
      super().__init__()
      self.tn, self.cn = nn.LayerNorm(d), nn.LayerNorm(d)
      self.t1, self.t2 = nn.Linear(n_tok, cfg.token_hidden), nn.Linear(cfg.token_hidden, n_tok)
      self.c1, self.c2 = nn.Linear(d, cfg.channel_hidden), nn.Linear(cfg.channel_hidden, d)

    def forward(self, t):
      u = t + self.t2(nn.functional.gelu(self.t1(self.tn(t).transpose(1, 2)))).transpose(1, 2)
      return u + self.c2(nn.functional.gelu(self.c1(self.cn(u))))

  class Mixer(nn.Module):
    def __init__(self):
      super().__init__()
      self.layers = nn.Sequential(*[MixerLayer() for _ in range(cfg.mixer_depth)])
      self.norm = nn.LayerNorm(d)

    def forward(self, t):
      return self.norm(self.layers(t)).mean(1)

  class Model(nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = bb
      self.embed_a, self.embed_p = nn.Linear(p * p, d), nn.Linear(p * p, d)
      self.ln_a, self.ln_p = nn.LayerNorm(d), nn.LayerNorm(d)
      self.mha_a = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
      self.mha_p = nn.MultiheadAttention(d, cfg.heads, batch_first=True)
      self.mixer_a, self.mixer_p = Mixer(), Mixer()
      fused = sum(taps_ch) + gf_dim + 2 * d
      self.embed = nn.Linear(fused, cfg.fe_dim)
      self.proj = nn.Linear(cfg.fe_dim, cfg.z_dim)
      self.cls = nn.Linear(cfg.fe_dim, 1)
      self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):  # x: (B, 3, S, S) normalised
      taps = self.backbone(x)
      ssf = []
      for name in ("act2", "block2_in", "block3_in"):
        f = taps[name]
        _, ch, h, w = f.shape
        ssf.append((f * f.sum(1, keepdim=True)).sum((2, 3)) / (ch * h * w))
      gf = taps["block12"].mean((2, 3))
      img = x * 0.5 + 0.5
      g = (img[:, 0] * 0.299 + img[:, 1] * 0.587 + img[:, 2] * 0.114).detach()
      b = g.shape[0]
      pt = g.reshape(b, s // p, p, s // p, p).permute(0, 1, 3, 2, 4).reshape(b, n_tok, p, p)
      f = torch.fft.fft2(pt) / (p * p)
      amp, phase = f.abs().reshape(b, n_tok, p * p), torch.angle(f).reshape(b, n_tok, p * p)
      e_a, e_p = self.embed_a(amp), self.embed_p(phase)
      n_a, n_p = self.ln_a(e_a), self.ln_p(e_p)
      at = e_a + self.mha_a(n_p, n_a, n_a, need_weights=False)[0]
      ptk = e_p + self.mha_p(n_a, n_p, n_p, need_weights=False)[0]
      f_mm = torch.cat(ssf + [gf, self.mixer_a(at), self.mixer_p(ptk)], 1)
      f_e = self.embed(self.drop(f_mm))
      z = nn.functional.normalize(self.proj(f_e), dim=1)
      return self.cls(self.drop(f_e))[:, 0], z

  return Model(), c


def torch_supcon(z, y, tau=0.1):
  import torch
  b = z.shape[0]
  sim = z @ z.T / tau
  eye = torch.eye(b, dtype=torch.bool)
  sim = sim - sim.max(1, keepdim=True).values.detach()
  pos = (y[:, None] == y[None, :]) & ~eye
  log_prob = sim - torch.logsumexp(sim.masked_fill(eye, -math.inf), 1, keepdim=True)
  return -((log_prob * pos).sum(1) / pos.sum(1).clamp(min=1)).mean()


def time_torch(size: str, repeats: int) -> dict:
  import torch
  dev, sync = step_timing.torch_device(*TORCH)
  torch.manual_seed(0)
  model, c = torch_model(size)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
  rng = np.random.default_rng(0)
  bt = batch(rng, c.batch_size, c.data.image_size)
  x = torch.from_numpy(bt["image"]).permute(0, 3, 1, 2).contiguous().to(dev)
  y = torch.from_numpy(bt["y"][:, 0]).to(dev)

  def step():
    opt.zero_grad(set_to_none=True)
    logit, z = model(x)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
    sc = torch_supcon(z, y)
    loss = 0.5 * ce + 0.5 * sc
    loss.backward()
    opt.step()
    sync()
    return float(ce.detach()), float(sc.detach())

  out = {}
  first, times = step_timing.time_calls(lambda: out.update(losses=step()), repeats)
  ce, sc = out["losses"]
  n = sum(p.numel() for p in model.parameters())
  return {"first_step_s": first, "step_s": statistics.median(times), "times": times, "params": n,
          "loss_ce": ce, "loss_supcon": sc, "threads": torch.get_num_threads(), "device": str(dev)}


def main(argv=None):
  from sjedd_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  from sjedd_jax.backbones import xception  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", default="synthetic,256")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--depthwise", default="auto", choices=xception.DEPTHWISE,
                  help="model.depthwise of the JAX steps: shifted (fast on XLA:CPU), xla, auto (shifted on CPU)")
  ap.add_argument("--cpu_kernels", default="auto", choices=xla_cpu.KERNELS, help="model.cpu_kernels of the JAX steps: auto (eigen on CPU), eigen, ynnpack (XLA's default)")
  ap.add_argument("--remat", default="", choices=["", *xception.REMAT],
                  help="model.remat of the JAX steps: blocks (recompute each Xception block in the backward pass), none, auto (blocks on CPU); default: the config's")
  step_timing.add_torch_device_args(ap)
  ap.add_argument("--only", default="jax_plain,jax_bilevel,torch", help="which steps to time")
  ap.add_argument("--json", default="", help="write the rows here too")
  args = ap.parse_args(argv)
  global CPU_KERNELS, REMAT, TORCH
  CPU_KERNELS, REMAT, TORCH = args.cpu_kernels, args.remat, (args.torch_device, args.torch_precision)
  from sjedd_jax import hostenv  # pylint: disable=g-import-not-at-top
  print(hostenv.malloc_summary(), flush=True)
  only = set(args.only.split(","))
  rows = []
  for size in args.sizes.split(","):
    for name, fn in (("jax_plain", lambda: time_jax(size, False, args.repeats, args.depthwise)),
                     ("jax_bilevel", lambda: time_jax(size, True, args.repeats, args.depthwise)),
                     ("torch", lambda: time_torch(size, args.repeats))):
      if name not in only:
        continue
      load0 = os.getloadavg()[0]
      r = fn()
      r.update(size=size, step=name, load_before=load0, load_after=os.getloadavg()[0])
      rows.append(r)
      print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items() if k != "times"}),
            flush=True)
      if args.json:   # written after every row: a long run stopped early keeps what it measured
        with open(args.json, "w") as f:
          json.dump(rows, f, indent=1)
  by = {(r["size"], r["step"]): r["step_s"] for r in rows}
  for size in args.sizes.split(","):
    p, b, t = (by.get((size, k)) for k in ("jax_plain", "jax_bilevel", "torch"))
    if p and b:
      print(f"{size}: bilevel / plain = {b / p:.2f}")
    if p and t:
      print(f"{size}: torch / jax plain = {t / p:.2f}")


if __name__ == "__main__":
  from sjedd_jax import hostenv  # pylint: disable=g-import-not-at-top
  hostenv.prepare_jax_process()  # as the trainer runs: SJEDD_HUGE_PAGES / SJEDD_MALLOC_KEEP / SJEDD_INLINE_DISPATCH=0 turn parts off
  main()
