r"""The convolution forms the CNN backbones use on XLA:CPU, against the plain XLA ops and PyTorch.

    python benchmarks/cpu_conv_forms.py                  # every form, the default shapes
    python benchmarks/cpu_conv_forms.py --batch 8 --repeats 7 --json /tmp/forms.json

Each row times one layer's forward and forward + backward (gradients of ``sum(y * c)``, ``c`` a fixed
random cotangent, with respect to the input and the weights; compiled, the best of ``--repeats`` calls
after a warm-up),
NHWC float32, on shapes of ResNet-50 and Xception at 256 px. Each JAX form runs under both kernel
libraries of XLA:CPU (``sjedd_jax/xla_cpu.py``): ``[ynn]`` XLA's default (YNNPACK) and ``[eigen]``
its own Eigen kernels (what ``model.cpu_kernels="auto"`` picks on CPU):

* ``conv 3x3``: ``lax.conv_general_dilated`` with a 3x3 kernel, stride 1 and 2 (ResNet's and
  Xception's full convolutions);
* ``pointwise``: a 1x1 conv as ``lax.conv_general_dilated`` against ``layers.conv_1x1_as_matmul``
  (one ``(N*H*W, C) @ (C, O)`` product; what ``model.pointwise="matmul"`` runs);
* ``max pool``: ``nnx.max_pool`` (3, 2, 1) against ``layers.max_pool_3x3_s2`` (the first-maximum
  gather backward);
* ``depthwise``: XLA's grouped conv, the nine shifted multiply-adds differentiated by JAX, and
  ``xception.shifted_depthwise`` (its own backward; what ``model.depthwise="shifted"`` runs);
* ``torch``: the same layer in PyTorch (channels-last, ``torch.set_num_threads`` = the cores).

The load average is printed: on a shared machine the numbers are only as good as the idle time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DN = ("NHWC", "HWIO", "NHWC")


def best_time(fn, repeats: int) -> float:
  fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return min(times)


def jax_row(forms: dict, args: tuple, repeats: int) -> dict:
  """Each form under XLA:CPU's default kernels (``[ynn]``) and its Eigen kernels (``[eigen]``)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from sjedd_jax import xla_cpu  # pylint: disable=g-import-not-at-top
  out = {}
  for kernels, tag in (("ynnpack", "ynn"), ("eigen", "eigen")):
    options = xla_cpu.compiler_options(kernels)
    for name, f in forms.items():
      fwd = jax.jit(f, compiler_options=options)
      ct = jnp.asarray(np.random.default_rng(1).normal(size=jax.eval_shape(f, *args).shape), jnp.float32)
      grad = jax.jit(jax.grad(lambda *a, f=f: jnp.vdot(f(*a), ct), argnums=tuple(range(len(args)))),
                     compiler_options=options)
      out[f"{name} [{tag}]"] = {"fwd_ms": 1e3 * best_time(lambda: jax.block_until_ready(fwd(*args)), repeats),
                                "fwd_bwd_ms": 1e3 * best_time(lambda: jax.block_until_ready(grad(*args)), repeats)}
  return out


def torch_row(layer, x: np.ndarray, repeats: int) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last).requires_grad_(True)
  with torch.no_grad():
    shape = layer(xt).shape
  ct = torch.tensor(np.random.default_rng(1).normal(size=shape).astype(np.float32))

  def fwd():
    with torch.no_grad():
      layer(xt)

  def fwd_bwd():
    xt.grad = None
    (layer(xt) * ct).sum().backward()

  return {"fwd_ms": 1e3 * best_time(fwd, repeats), "fwd_bwd_ms": 1e3 * best_time(fwd_bwd, repeats)}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--json", default="", help="write the rows here too")
  args = ap.parse_args(argv)

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sjedd_jax.backbones import layers  # pylint: disable=g-import-not-at-top
  from sjedd_jax.backbones.xception import modeling as xm  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(os.cpu_count() or 1)
  rng = np.random.default_rng(0)
  n = args.batch
  print(f"load average {os.getloadavg()}, {os.cpu_count()} CPUs, jax {jax.__version__}, torch {torch.__version__}, "
        f"batch {n}", flush=True)
  rows = []

  def report(kind, shape, res):
    cells = "  ".join(f"{k}: {v['fwd_ms']:.1f} / {v['fwd_bwd_ms']:.1f}" for k, v in res.items())
    print(f"{kind:10s} {shape:28s} (fwd / fwd+bwd ms)  {cells}", flush=True)
    rows.append({"kind": kind, "shape": shape, **{k: v for k, v in res.items()}})

  for h, c, o, s in ((64, 64, 64, 1), (32, 128, 128, 1), (16, 256, 256, 1), (64, 128, 128, 2), (128, 32, 64, 1)):
    x = rng.normal(size=(n, h, h, c)).astype(np.float32)
    w = (rng.normal(size=(3, 3, c, o)) * 0.05).astype(np.float32)
    res = jax_row({"xla conv": lambda x, w: jax.lax.conv_general_dilated(x, w, (s, s), ((1, 1), (1, 1)),
                                                                         dimension_numbers=DN)},
                  (jnp.asarray(x), jnp.asarray(w)), args.repeats)
    conv = torch.nn.Conv2d(c, o, 3, stride=s, padding=1, bias=False).to(memory_format=torch.channels_last)
    res["torch"] = torch_row(conv, x, args.repeats)
    report("conv 3x3", f"{h}x{h}x{c} -> {o}, stride {s}", res)

  for h, c, o, s in ((64, 64, 256, 1), (64, 256, 64, 1), (32, 512, 128, 1), (64, 256, 512, 2), (32, 728, 728, 1)):
    x = rng.normal(size=(n, h, h, c)).astype(np.float32)
    w = (rng.normal(size=(1, 1, c, o)) * 0.05).astype(np.float32)
    res = jax_row({"xla conv": lambda x, w: jax.lax.conv_general_dilated(x, w, (s, s), "VALID", dimension_numbers=DN),
                   "matmul": lambda x, w: layers.conv_1x1_as_matmul(x, w, (s, s), "VALID")},
                  (jnp.asarray(x), jnp.asarray(w)), args.repeats)
    conv = torch.nn.Conv2d(c, o, 1, stride=s, bias=False).to(memory_format=torch.channels_last)
    res["torch"] = torch_row(conv, x, args.repeats)
    report("pointwise", f"{h}x{h}x{c} -> {o}, stride {s}", res)

  for h, c in ((128, 64), (64, 256), (32, 728)):
    x = rng.normal(size=(n, h, h, c)).astype(np.float32)
    res = jax_row({"nnx.max_pool": lambda x: nnx.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))),
                   "layers": layers.max_pool_3x3_s2}, (jnp.asarray(x),), args.repeats)
    res["torch"] = torch_row(torch.nn.MaxPool2d(3, 2, 1), x, args.repeats)
    report("max pool", f"{h}x{h}x{c}, 3/2/1", res)

  for h, c in ((64, 256), (32, 728), (16, 728)):
    x = rng.normal(size=(n, h, h, c)).astype(np.float32)
    k = rng.normal(size=(3, 3, 1, c)).astype(np.float32)
    res = jax_row({"xla grouped": lambda x, k: jax.lax.conv_general_dilated(
                       x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN, feature_group_count=c),
                   "shifted (autodiff)": xm._shifted,  # pylint: disable=protected-access
                   "shifted_depthwise": xm.shifted_depthwise},
                  (jnp.asarray(x), jnp.asarray(k)), args.repeats)
    conv = torch.nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False).to(memory_format=torch.channels_last)
    res["torch"] = torch_row(conv, x, args.repeats)
    report("depthwise", f"{h}x{h}x{c}, 3x3", res)

  print(f"load average after {os.getloadavg()}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"batch": n, "load_after": os.getloadavg(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
