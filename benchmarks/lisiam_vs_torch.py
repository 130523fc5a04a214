r"""LiSiam's training step: JAX (plain and bi-level, compiled) vs a PyTorch restatement, one process.

    python benchmarks/lisiam_vs_torch.py --sizes synthetic,299 --repeats 3

Per size, on one random batch of B face pairs (view 1 clean, view 2 degraded) with random 0/1
forgery masks (some pixels 255, ignored) and half real / half fake labels:

* ``jax plain``: ``train_step.make_train_step`` with the fixed weights (1, 1, 1, 0.4) of LiSiam (A),
  compiled on one device: view 1 through the whole network (backbone, OCR, segmentation decoder,
  SCU, mask-guided transformer, SE, MLP head), view 2 through the segmentation part, L_cls +
  L_seg + L_li + 0.4 L_aux, backward, the optimiser, BatchNorm statistics;
* ``jax bilevel``: the same with ``weighting.kind="bilevel"`` (spec section 10, the joint phase:
  the model step plus lambda's hypergradient on a validation batch);
* ``torch plain``: the same network restated in PyTorch (``tests/test_lisiam.py``'s ``TLiSiam``,
  tested there for parity with the JAX model within 1e-4, on ``tests/test_xception.py``'s
  restatement of timm's Xception; timm is not needed), the same four losses and one optimiser
  step with ``loss.backward()``. No PyTorch bi-level step is restated: the bi-level cost is
  reported as a ratio to JAX's own plain step.

Sizes: ``synthetic`` = configs/lisiam/synthetic.py (lisiam-tiny, 64 px, batch 16, AdamW);
``299`` = configs/lisiam/ffpp.py's joint phase (Xception to block12 with block3 and block12 at
stride 1, OCR 512/256, 299 px, SGD momentum 0.9, coupled weight decay 5e-4) at batch 16. Times
are the median of ``--repeats`` steps after one warm-up step (JAX: after compiling, timed
separately). The machine's load (``os.getloadavg``) is printed with each row.
"""

from __future__ import annotations

import argparse
import json
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


def jax_config(size: str, bilevel: bool, depthwise: str, batch_size: int):
  from sjedd_jax import config as config_lib
  if size == "synthetic":
    c = config_lib.load_config_file(os.path.join(ROOT, "configs", "lisiam", "synthetic.py"))
  elif size == "299":
    c = config_lib.load_config_file(os.path.join(ROOT, "configs", "lisiam", "ffpp.py"), "phase3")
    c.model.require_pretrained = False
  else:
    raise SystemExit(f"--sizes: unknown size {size!r}; expected synthetic or 299")
  c.model.depthwise = depthwise
  c.model.cpu_kernels = CPU_KERNELS
  if REMAT:
    c.model.remat = REMAT
  c.batch_size = batch_size
  if bilevel:
    c.weighting.kind = "bilevel"
    c.weighting.update_every = 1
  return c


def batch(rng, b, s):
  mask = rng.integers(0, 2, (b, s, s)).astype(np.uint8)
  mask[:, :4] = 255                                    # padding rows, ignored by L_seg
  y = np.tile(np.array([[0.0], [1.0]], np.float32), (b // 2, 1))
  mask[y[:, 0] == 0] = np.where(mask[y[:, 0] == 0] == 255, 255, 0)
  return {"image": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32),
          "image2": rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32), "mask": mask, "y": y}


def time_jax(size: str, bilevel: bool, repeats: int, depthwise: str, batch_size: int) -> dict:
  r = step_timing.time_train_step(jax_config(size, bilevel, depthwise, batch_size), batch, repeats)
  losses = {k: v for k, v in r.pop("metrics").items() if k.startswith("loss/")}
  return {**r, **losses}


# ------------------------------------------------------------------ PyTorch restatement
def torch_step(size: str, batch_size: int):
  """(step function, parameter count, threads) of the PyTorch restatement at ``size``."""
  import torch
  import torch.nn.functional as F
  from sjedd_jax.detectors import lisiam
  from tests.test_lisiam import TLiSiam

  c = jax_config(size, False, "xla", batch_size)
  cfg = lisiam.model_config(c)

  dev, sync = step_timing.torch_device(*TORCH)
  torch.manual_seed(0)
  model = TLiSiam(cfg).train()   # segment (both views) and classify (view 1)
  del model.backbone_net.fc     # the restated Xception's ImageNet classifier: LiSiam has none
  o = c.optim
  if o.name == "sgd":
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.get("momentum", 0.9), weight_decay=o.weight_decay)
  else:
    opt = torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)
  w = [float(x) for x in c.weighting.fixed]
  rng = np.random.default_rng(0)
  bt = batch(rng, c.batch_size, c.data.image_size)
  x1 = torch.from_numpy(bt["image"]).permute(0, 3, 1, 2).contiguous().to(dev)
  x2 = torch.from_numpy(bt["image2"]).permute(0, 3, 1, 2).contiguous().to(dev)
  mask = torch.from_numpy(bt["mask"].astype(np.int64)).to(dev)
  y = torch.from_numpy(bt["y"][:, 0].astype(np.int64)).to(dev)
  size_hw = mask.shape[1:]

  def seg_ce(logits):
    up = F.interpolate(logits, size=size_hw, mode="bilinear", align_corners=False)
    return F.cross_entropy(up, mask, ignore_index=255)

  def step():
    opt.zero_grad(set_to_none=True)
    aux1, seg1, feats1 = model.segment(x1)
    _, seg2, _ = model.segment(x2)
    logits = model.classify(feats1, seg1)
    losses = (F.cross_entropy(logits, y), seg_ce(seg1), (seg1 - seg2).abs().mean(), seg_ce(aux1))
    loss = sum(wi * li for wi, li in zip(w, losses))
    loss.backward()
    opt.step()
    sync()
    return [float(li.detach()) for li in losses]

  return step, sum(p.numel() for p in model.parameters()), torch.get_num_threads(), str(dev)


def time_torch(size: str, repeats: int, batch_size: int) -> dict:
  step, n, threads, device = torch_step(size, batch_size)
  out = {}
  first, times = step_timing.time_calls(lambda: out.update(losses=step()), repeats)
  losses = out["losses"]
  return {"first_step_s": first, "step_s": statistics.median(times), "times": times, "params": n,
          "threads": threads, "device": device, **dict(zip(("loss/cls", "loss/seg", "loss/li", "loss/aux"), losses))}


def main(argv=None):
  from sjedd_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  from sjedd_jax.backbones import xception  # pylint: disable=g-import-not-at-top
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--sizes", default="synthetic,299")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--batch_size", type=int, default=16, help="face pairs per step (x 2 views)")
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
  unknown = only - {"jax_plain", "jax_bilevel", "torch"}
  if unknown:
    ap.error(f"--only: unknown step(s) {sorted(unknown)}")
  rows = []
  for size in args.sizes.split(","):
    for name, fn in (("jax_plain", lambda: time_jax(size, False, args.repeats, args.depthwise, args.batch_size)),
                     ("jax_bilevel", lambda: time_jax(size, True, args.repeats, args.depthwise, args.batch_size)),
                     ("torch", lambda: time_torch(size, args.repeats, args.batch_size))):
      if name not in only:
        continue
      load0 = os.getloadavg()[0]
      r = fn()
      r.update(size=size, step=name, batch=args.batch_size, load_before=load0, load_after=os.getloadavg()[0])
      rows.append(r)
      print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}), flush=True)
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
