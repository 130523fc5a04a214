"""Timing pieces shared by the detectors' step benchmarks (``benchmarks/*_vs_torch.py``).

* ``time_calls(fn, repeats)``: one warm-up call (which compiles, for JAX), then ``repeats`` timed
  calls;
* ``time_train_step(config, make_batch, repeats)``: the trainer's compiled step
  (``train_step.make_train_step``) of ``config``'s detector, weighting and optimiser on one
  device, timed on two fixed batches (training, validation), with the XLA temporaries its
  compiled program allocates (``memory_analysis``, GiB);
* ``torch_device(name, precision)``: PyTorch's new tensors on "cpu" or "cuda" (with TF32 as JAX's
  default float32 precision on GPUs has it, or "highest" for none), and a function that waits for
  the device, for the PyTorch side of the same benchmarks; ``add_torch_device_args(parser)``:
  their ``--torch_device`` and ``--torch_precision`` options.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable

import numpy as np


def time_calls(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
  """(seconds of the first call, seconds of each of the ``repeats`` calls after it).

  Python's garbage collector runs once between the first call and the timed ones: a collection
  falling inside the timed calls (freeing an earlier benchmark's compiled program, say) would be
  timed as part of a step.
  """
  t = time.perf_counter()
  fn()
  first = time.perf_counter() - t
  gc.collect()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return first, times


TORCH_PRECISION = ("tf32", "highest")


def add_torch_device_args(parser) -> None:
  """``--torch_device`` and ``--torch_precision`` on an argparse parser (``torch_device``'s arguments)."""
  parser.add_argument("--torch_device", default="cpu", choices=["cpu", "cuda"], help="where the PyTorch step runs")
  parser.add_argument("--torch_precision", default="tf32", choices=TORCH_PRECISION,
                      help="on a GPU: tf32 (JAX's default float32 precision there) or highest")


def torch_device(name: str = "cpu", precision: str = "tf32"):
  """``(torch.device, sync)``: makes ``name`` ("cpu", "cuda") PyTorch's default device for new
  tensors and modules; ``sync()`` waits until the device has finished (a no-op on the CPU).

  On a GPU, ``precision="tf32"`` lets float32 matrix products and convolutions run in TF32, as JAX
  does by default there (``jax_default_matmul_precision`` unset); "highest" runs them in float32
  (compare with ``JAX_DEFAULT_MATMUL_PRECISION=highest``). cuDNN picks its fastest kernels in the
  warm-up step (``cudnn.benchmark``), as XLA autotunes while compiling.
  """
  import torch  # pylint: disable=g-import-not-at-top
  if precision not in TORCH_PRECISION:
    raise SystemExit(f"torch precision {precision!r} not one of {list(TORCH_PRECISION)}")
  dev = torch.device(name)
  if dev.type == "cuda":
    if not torch.cuda.is_available():
      raise SystemExit(f"--torch_device {name}: PyTorch {torch.__version__} sees no GPU")
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.benchmark = True
  elif dev.type != "cpu":
    raise SystemExit(f"--torch_device {name!r}: cpu or cuda")
  torch.set_default_device(dev)
  return dev, (torch.cuda.synchronize if dev.type == "cuda" else (lambda: None))


def time_train_step(config, make_batch: Callable[[np.random.Generator, int, int], dict], repeats: int,
                    keys_from_detector: bool = True) -> dict:
  """``{"first_step_s", "step_s" (median), "times", "params", "xla_temp_gib", "metrics"}`` of ``config``'s compiled
  training step on batches ``make_batch(rng, config.batch_size, config.data.image_size)``.

  ``keys_from_detector``: pass only ``Detector.batch_keys`` to the step (else the whole batch).
  The first step's time includes compiling.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from sjedd_jax import detectors, optim, train_step as ts  # pylint: disable=g-import-not-at-top
  det = detectors.make(config)
  variables = det.init(0)
  opt = optim.make(config.optim, total_steps=1000, steps_per_epoch=100, params=variables.params,
                   labels=det.param_labels(variables.params))
  weighting = ts.weighting_from_config(config, det, steps_per_epoch=100)
  mesh = ts.data_mesh(jax.devices()[:1])
  step = ts.compile_train_step(ts.make_train_step(det, weighting, opt.tx, opt.lr, opt.weight_decay), mesh,
                               compiler_options=det.compiler_options)
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables.params))
  holder = {"state": ts.shard_state(ts.init_state(variables, opt.tx, weighting), mesh)}
  rng = np.random.default_rng(0)
  keys = det.batch_keys if keys_from_detector else None
  tb, vb = (ts.global_batch(make_batch(rng, config.batch_size, config.data.image_size), mesh, keys)
            for _ in range(2))

  compiled = {}

  def call():
    if "step" not in compiled:   # compiled on the first (warm-up) call, which is timed
      compiled["step"] = step.lower(holder["state"], tb, vb).compile()
    holder["state"], holder["metrics"] = compiled["step"](holder["state"], tb, vb)
    jax.block_until_ready(holder["metrics"])

  first, times = time_calls(call, repeats)
  memory = compiled["step"].memory_analysis()
  temp = getattr(memory, "temp_size_in_bytes", None) if memory is not None else None
  return {"first_step_s": first, "step_s": statistics.median(times), "times": times, "params": params,
          "xla_temp_gib": temp / 2**30 if temp is not None else None,
          "metrics": {k: float(v) for k, v in jax.device_get(holder["metrics"]).items() if np.ndim(v) == 0}}
