r"""Training-step time of the mil_ranking detector (plain and bi-level) against a PyTorch restatement.

    python benchmarks/mil_ranking_vs_torch.py                        # both sizes
    python benchmarks/mil_ranking_vs_torch.py --sizes synthetic --repeats 5
    python benchmarks/mil_ranking_vs_torch.py --sizes r50 --repeats 2 --out /tmp/mil_bench.json

Sizes:
  * ``synthetic``: the twin (configs/mil_ranking/synthetic.py): tiny ResNet, 64 px, batch 32, d = 64, P4.
  * ``r50``: Table 3's model (configs/mil_ranking/seqdeepfake_components.py:r50): ResNet-50 (stem + layer1
    frozen), 256 px, batch 32, d = 256, P4 (16 x 16 tokens, 32,640 pairs), 2 encoder layers; random weights.

Steps timed, each on the same random batch, median of ``--repeats`` after one warm-up call (which compiles):
  * ``jax plain``: the trainer's compiled step (``train_step.make_train_step``) with the config's weighting
    ("fixed", Eq. 15), optimiser, groups and clipping;
  * ``jax bilevel``: the same with ``weighting.kind="bilevel"`` (exact "jvp" hypergradient: the virtual step,
    the validation pass at theta' and the tangent) in its lambda-updating program (what every
    ``weighting.update_every``-th step runs; the others run the plain program);
  * ``torch plain``: the same step restated in PyTorch (``tests/test_resnet.py``'s torchvision ResNet, an FPN,
    DETR-style pre-LN encoder, the similarity list, patch / class heads, L_CLS on the same k grid, the two BCE
    losses and L_Rank with the same weights; AdamW with the same groups and clipping), eager, float32,
    ``torch.set_num_threads`` = the machine's cores.

No PyTorch bi-level step is timed (the paper's authors released none). The load average of the machine is
printed before and after: on a shared machine the times are inflated by whatever else runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks import step_timing  # noqa: E402  (after the path)
from benchmarks.step_timing import time_calls  # noqa: E402


CPU_KERNELS = "auto"   # --cpu_kernels


def load_config(size: str):
  from sjedd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  if size == "synthetic":
    c = config_lib.load_config_file(os.path.join(ROOT, "configs", "mil_ranking", "synthetic.py"))
  elif size == "r50":
    c = config_lib.load_config_file(os.path.join(ROOT, "configs", "mil_ranking", "seqdeepfake_components.py"),
                                    "r50")
    c.model.require_pretrained = False
    c.model.backbone_pretrained = ""
  else:
    raise ValueError(f"unknown size {size!r}")
  c.data.color_jitter = False
  c.model.cpu_kernels = CPU_KERNELS
  return c


def random_batch(det, batch_size: int, size: int, seed: int = 0) -> dict:
  from sjedd_jax.data import manifest  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  seqs = [(), (4, 2), (1, 2, 3, 4, 5), (5,), (), (3, 1), (2, 4, 5), (1,)]
  labs = []
  for i in range(batch_size):
    s = seqs[i % len(seqs)]
    labs.append(det.label_fn(manifest.Record(path="x.png", source="seq_edit" if s else "real", is_fake=int(bool(s)),
                                             video_id="v", split="train", sequence=list(s) if s else None)))
  out = {k: np.stack([lab[k] for lab in labs]).astype(np.float32) for k in labs[0]}
  out["image"] = rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32)
  return out


# ------------------------------------------------------------------ JAX
def jax_steps(config, batch: dict, repeats: int, kinds=("plain", "bilevel")) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  from sjedd_jax import detectors, optim, train_step as ts  # pylint: disable=g-import-not-at-top
  det = detectors.make(config)
  t = time.perf_counter()
  variables = det.init(0)
  init_s = time.perf_counter() - t
  mesh = ts.data_mesh(jax.devices()[:1])
  opt = optim.make(config.optim, total_steps=1000, steps_per_epoch=100, params=variables.params,
                   labels=det.param_labels(variables.params))
  out = {"init_s": init_s}
  for kind in kinds:
    c = config.copy_and_resolve_references()
    if kind == "bilevel":
      c.weighting.kind = "bilevel"
      c.weighting.method = "jvp"
    else:
      c.weighting.kind = "fixed"
    weighting = ts.weighting_from_config(c, det, steps_per_epoch=100)
    step = ts.compile_train_step(ts.make_train_step(det, weighting, opt.tx, opt.lr, opt.weight_decay,
                                                    lam_update=True if kind == "bilevel" else None), mesh,
                                 compiler_options=det.compiler_options)
    state = ts.shard_state(ts.init_state(jax.tree.map(lambda x: x.copy(), variables), opt.tx, weighting), mesh)
    gb = ts.global_batch(batch, mesh, det.batch_keys)
    holder = [state]

    def call(step=step, holder=holder, gb=gb):
      s, m = step(holder[0], gb, gb)
      jax.block_until_ready(m)
      holder[0] = s

    first, times = time_calls(call, repeats)
    out[kind] = {"first_call_s": first, "times_s": times, "median_s": statistics.median(times)}
    print(f"  jax {kind}: first call (compile + run) {first:.1f} s, step median {statistics.median(times):.3f} s "
          f"({', '.join(f'{x:.3f}' for x in times)})", flush=True)
  return out


# ------------------------------------------------------------------ PyTorch restatement
def torch_step_fn(config, batch: dict, device: str = "cpu", precision: str = "tf32"):
  """A closure running one PyTorch training step of the same model, losses and optimiser on ``batch``,
  on ``device`` (``step_timing.torch_device``); it returns once the device has finished."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  from sjedd_jax.backbones import resnet  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors import mil_ranking as mil  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.mil_ranking import losses as jl  # pylint: disable=g-import-not-at-top
  from tests.test_resnet import TorchResNet  # pylint: disable=g-import-not-at-top

  m = config.model
  cfg = mil.loss_config(m)
  rcfg = resnet.get_config(m.backbone)
  d, num = int(m.dim), int(m.num_components)
  level = m.fpn_level
  inputs = {"P3": ("C3", "C4", "C5"), "P4": ("C4", "C5"), "P5": ("C5",)}[level]
  exp = 4 if rcfg.block == "bottleneck" else 1
  chans = {f"C{i + 2}": rcfg.widths[i] * exp for i in range(4)}

  def sine(h, w):
    npf = d // 2
    y = (torch.arange(h, dtype=torch.float32) + 1) / (h + 1e-6) * 2 * math.pi
    x = (torch.arange(w, dtype=torch.float32) + 1) / (w + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * torch.div(torch.arange(npf), 2, rounding_mode="floor") / npf)

    def emb(c):
      a = c[:, None] / dim_t
      return torch.stack([a[:, 0::2].sin(), a[:, 1::2].cos()], -1).reshape(c.shape[0], npf)

    py = emb(y)[:, None, :].expand(h, w, npf)
    px = emb(x)[None, :, :].expand(h, w, npf)
    return torch.cat([py, px], -1).reshape(h * w, d)

  class Model(nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = TorchResNet(rcfg)
      self.lateral = nn.ModuleDict({k: nn.Conv2d(chans[k], d, 1) for k in inputs})
      self.output = nn.Conv2d(d, d, 3, padding=1)
      self.class_tokens = nn.Parameter(0.02 * torch.randn(num, d))
      layer = nn.TransformerEncoderLayer(d, int(m.encoder_heads), int(m.encoder_ffn), float(m.dropout),
                                         activation="relu", batch_first=True, norm_first=True)
      self.encoder = nn.TransformerEncoder(layer, int(m.encoder_layers), norm=nn.LayerNorm(d),
                                           enable_nested_tensor=False)
      self.patch = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.ReLU(), nn.Conv2d(d, num, 1))
      self.gw = nn.Parameter(torch.empty(num, d).uniform_(-d ** -0.5, d ** -0.5))
      self.gb = nn.Parameter(torch.empty(num).uniform_(-d ** -0.5, d ** -0.5))

    def forward(self, x):
      feats = dict(zip(("C2", "C3", "C4", "C5"), self.backbone(x)))
      top = None
      for k in reversed(inputs):
        lat = self.lateral[k](feats[k])
        top = lat if top is None else lat + nn.functional.interpolate(top, size=lat.shape[-2:], mode="nearest")
      fmap = self.output(top)
      b, _, h, w = fmap.shape
      t = nn.functional.normalize(fmap.flatten(2).transpose(1, 2), dim=-1, eps=1e-6)
      pos = torch.cat([sine(h, w), torch.zeros(num, d)], 0)[None]
      xx = torch.cat([t, self.class_tokens[None].expand(b, num, d)], 1) + pos
      xx = self.encoder(xx)
      u_tok, v_tok = xx[:, :h * w], xx[:, h * w:]
      uh = nn.functional.normalize(u_tok, dim=-1, eps=1e-6)
      s = torch.relu(uh @ uh.transpose(1, 2))
      iu = torch.triu_indices(h * w, h * w, 1)
      u = torch.sort(s[:, iu[0], iu[1]], dim=-1).values
      f_u = self.patch(u_tok.transpose(1, 2).reshape(b, d, h, w)).mean((2, 3))
      f_v = (v_tok * self.gw[None]).sum(-1) + self.gb
      return f_u, f_v, 0.5 * (f_u + f_v), u

  dev, sync = step_timing.torch_device(device, precision)
  torch.manual_seed(0)
  model = Model().train()
  frozen = tuple(m.frozen_stages)
  stage = {"stem": ("conv1", "bn1"), "layer1": ("layer1",), "layer2": ("layer2",), "layer3": ("layer3",),
           "layer4": ("layer4",)}
  frozen_prefixes = tuple(f"backbone.{p}" for s in frozen for p in stage[s])
  groups = {"backbone": [], "head": []}
  for name, p in model.named_parameters():
    if name.startswith(frozen_prefixes):
      p.requires_grad_(False)
      continue
    groups["backbone" if name.startswith("backbone.") else "head"].append(p)
  o = config.optim
  mult = dict(o.get("lr_mult") or {})
  opt = torch.optim.AdamW([{"params": groups[g], "lr": o.lr * mult.get(g, 1.0)} for g in groups if groups[g]],
                          lr=o.lr, weight_decay=o.weight_decay)
  clip = float(o.get("clip_grad_norm", 0.0) or 0.0)
  k_grid = None
  x = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous().to(dev)
  y = torch.from_numpy(batch["y"]).to(dev)
  r = torch.from_numpy(batch["r"]).to(dev)
  j = torch.from_numpy(batch["J"]).to(dev)
  scale = torch.from_numpy(batch["task_scale"][0]).to(dev)
  graded = cfg.rank_target == "graded"

  def step():
    nonlocal k_grid
    f_u, f_v, f, u = model(x)
    n = u.shape[-1]
    if k_grid is None:
      k_grid = torch.from_numpy(jl.k_values(n, cfg.k_grid).astype(np.int64)).to(dev)
    c = 1 - u
    head = torch.cumsum(c, -1)
    tail = torch.flip(torch.cumsum(torch.flip(c, [-1]), -1), [-1])
    kf = k_grid.float()
    gaps = torch.clamp(head[:, k_grid - 1] / kf - tail[:, k_grid] / (n - kf), min=0)
    dstar = gaps.max(-1).values
    xs = dstar / cfg.tau
    neg_log_not = nn.functional.softplus(xs) - math.log(2)
    tt = 2 * torch.clamp(0.5 * xs, min=cfg.z_min)
    log1mexp = torch.where(tt < math.log(2), torch.log(-torch.expm1(-tt)), torch.log1p(-torch.exp(-tt)))
    neg_log_p = nn.functional.softplus(-tt) - log1mexp
    l_cls = j * neg_log_p + (1 - j) * (neg_log_not + c.mean(-1))

    def bce(logits, target):
      return nn.functional.softplus(logits) - target * logits

    l_u = bce(f_u, y).sum(-1)
    l_v = bce(f_v, y).sum(-1)
    with torch.no_grad():
      order = torch.sort(-f, dim=-1, stable=True).indices
      o_rank = torch.sort(order, dim=-1, stable=True).indices + 1
      yb = y > 0.5
      size = yb.sum(-1, keepdim=True)
      err = (o_rank - r.long()).abs().float()
      if cfg.rank_floor:
        err = torch.where(yb, torch.clamp(err, min=cfg.rank_floor), err)
      w = cfg.alpha * torch.where(~yb & (o_rank > size), torch.ones_like(err), err)
      target = y * (1 - 0.4 * (r - 1) / max(num - 1, 1)).clamp(0, 1) if graded else y
    l_rank = (w * bce(f, target)).sum(-1)
    vec = torch.stack([l_cls.mean(), l_u.mean(), l_v.mean(), l_rank.mean()]) * scale
    opt.zero_grad(set_to_none=True)
    vec.sum().backward()
    if clip > 0:
      torch.nn.utils.clip_grad_norm_([p for g in groups.values() for p in g], clip)
    opt.step()
    sync()
    return vec.detach()

  return step


def main(argv=None) -> int:
  from sjedd_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--sizes", default="synthetic,r50")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--batch_size", type=int, default=32)
  ap.add_argument("--skip", default="", help="comma list of steps to skip: jax_plain, jax_bilevel, torch")
  ap.add_argument("--out", default="")
  step_timing.add_torch_device_args(ap)
  ap.add_argument("--cpu_kernels", default="auto", choices=xla_cpu.KERNELS, help="model.cpu_kernels of the JAX steps: auto (eigen on CPU), eigen, ynnpack (XLA's default)")
  args = ap.parse_args(argv)
  global CPU_KERNELS
  CPU_KERNELS = args.cpu_kernels
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  skip = set(filter(None, args.skip.split(",")))
  from sjedd_jax import hostenv  # pylint: disable=g-import-not-at-top
  report = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "repeats": args.repeats,
            "host_malloc": hostenv.malloc_summary(), "sizes": {}}
  print(f"load average {report['load_before']}, {report['cpus']} CPUs, {report['host_malloc']}", flush=True)
  for size in filter(None, args.sizes.split(",")):
    config = load_config(size)
    from sjedd_jax import detectors  # pylint: disable=g-import-not-at-top
    det = detectors.make(config)
    batch = random_batch(det, args.batch_size, config.data.image_size)
    print(f"{size}: {config.model.backbone}, {config.data.image_size} px, batch {args.batch_size}, "
          f"d {config.model.dim}, {config.model.fpn_level}", flush=True)
    res = {"load_before": os.getloadavg()}
    kinds = tuple(k for k in ("plain", "bilevel") if f"jax_{k}" not in skip)
    if kinds:
      res["jax"] = jax_steps(config, batch, args.repeats, kinds)
    if "torch" not in skip:
      step = torch_step_fn(config, batch, args.torch_device, args.torch_precision)
      first, times = time_calls(step, args.repeats)
      res["torch"] = {"first_call_s": first, "times_s": times, "median_s": statistics.median(times),
                      "device": args.torch_device}
      print(f"  torch plain: first call {first:.2f} s, step median {statistics.median(times):.3f} s "
            f"({', '.join(f'{x:.3f}' for x in times)})", flush=True)
    res["load_after"] = os.getloadavg()
    jx = res.get("jax", {})
    if "plain" in jx and "torch" in res:
      res["torch_over_jax_plain"] = res["torch"]["median_s"] / jx["plain"]["median_s"]
    if "plain" in jx and "bilevel" in jx:
      res["bilevel_over_plain"] = jx["bilevel"]["median_s"] / jx["plain"]["median_s"]
    print(f"  ratios: {({k: round(v, 2) for k, v in res.items() if k.endswith(('_plain', '_over_plain'))})}, "
          f"load {res['load_before']} -> {res['load_after']}", flush=True)
    report["sizes"][size] = res
    if args.out:   # written after every size: a long run stopped early keeps what it measured
      with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
  return 0


if __name__ == "__main__":
  from sjedd_jax import hostenv  # pylint: disable=g-import-not-at-top
  hostenv.prepare_jax_process()  # as the trainer runs: SJEDD_HUGE_PAGES / SJEDD_MALLOC_KEEP / SJEDD_INLINE_DISPATCH=0 turn parts off
  sys.exit(main())
