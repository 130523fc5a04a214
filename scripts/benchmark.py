#!/usr/bin/env python
r"""Training-step benchmark: the optimised SJEDD step vs the release's work, side by side.

  # a config file (+ big_vision style overrides), or a preset and batch size:
  python scripts/benchmark.py --config configs/synthetic.py --batch_size 32
  python scripts/benchmark.py --preset ViT-B/32 --batch_size 8 --steps 3 --warmup 1
  python scripts/benchmark.py --preset ViT-B/32 --batch_size 32 --modes fused,jvp,naive --peak_tflops 989

Every mode runs the same bi-level training step (spec section 5) on the same
random weights and device-resident random batches; only how the work is done
differs. Modes (``--modes``, comma separated):

  fused      the default: one XLA program, one pass of each tower per loss
             evaluation, 17-token text context, finite differences, the final
             model gradient a second VJP of the step-1 linearisation
  jvp        exact JVP hypergradient (weighting.method="jvp") instead of FD
  fresh      the final model gradient by a new jax.grad (fresh forward+backward)
             instead of reusing the linearisation (``naive_step.make_fresh_step``)
  fresh_fd_vmap  as fresh, the two finite-difference forwards as one vmapped pass
  ctx77      the full 77-token text context
  compact    only the templates' token-embedding rows (model.compact_vocab)
  full_vocab the whole 49408-row token table (for configs that set compact_vocab)
  bf16       bfloat16 compute (model.dtype)
  per_level  the release's per-loss work (three CLIP forwards per loss, 77
             tokens) inside the fused program
  naive      the release's work as it runs it: per-level passes at 77 tokens,
             five separately compiled passes, no reuse (``naive_step``)
  scan       as fused, each tower's residual blocks as one ``jax.lax.scan``
             (``model.scan_layers``, the default: the same as fused unless a
             config turns it off)
  unrolled   as fused, the residual blocks unrolled (``model.scan_layers=False``)
  naive_scan as naive, with ``scan_layers`` (naive itself runs them unrolled, as
             the release does)

Reported per mode: steps/s and images/s (median step time and min-max spread
over ``--steps`` timed steps after ``--warmup``), compile time, FLOPs per step
from XLA's cost analysis (summed over the naive mode's programs; for scan_layers
modes, of the same step unrolled, since XLA counts a loop body once), model-FLOPs
utilisation against ``--peak_tflops`` (or a table of known peaks), XLA's memory
analysis (peak bytes of the program) and the process's peak RSS (CPU) or the
device's peak bytes in use (GPU); then the input pipeline alone (images/s) and
the hand-count vs XLA FLOPs of the towers. Output: a Markdown report (stdout,
and ``--out``) to paste into docs/performance.md.

Timing: each timed step is synchronised (``block_until_ready``) to time it; the
training loop itself (``sjedd_jax.train``) synchronises only to log metrics.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjedd_jax import config as config_lib, detectors, hostenv, optim, train_step as ts
from sjedd_jax.detectors import sjedd as sjedd_det
from sjedd_jax.detectors.sjedd import labels
from benchmarks import naive_step
from sjedd_jax.backbones.clip import modeling as clip_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "A configs/*.py file (default: base config + --preset).",
                                          lock_config=False)
_PRESET = flags.DEFINE_string("preset", None, "CLIP preset (ViT-B/32, tiny, ...) when no --config is given; "
                              "with --config it overrides config.model.clip.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Global batch size (default: the config's).")
_MODES = flags.DEFINE_list("modes", ["fused", "compact", "jvp", "fresh", "ctx77", "bf16", "per_level", "naive"],
                           "Modes to compare (see the module docstring).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps per mode.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed steps per mode after compiling.")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Round-robin rounds of --steps timed steps per mode, all modes "
                               "kept in memory (>1 spreads a shared machine's load over all modes; memory adds up: "
                               "at ViT-B/32 batch 8 on CPU, two modes take about 7 GiB and all seven "
                               "were killed at 24 GiB).")
_PEAK = flags.DEFINE_float("peak_tflops", None, "Peak dense TFLOP/s of one device for MFU (default: known "
                           "peaks by device kind; none for CPU).")
_LR = flags.DEFINE_float("lr", None, "Model learning rate (default: the config's optim.lr).")
_PIPELINE = flags.DEFINE_bool("pipeline", True, "Also time the input pipeline alone.")
_PIPELINE_DATA = flags.DEFINE_string("pipeline_data", None, "Dataset directory for the pipeline timing "
                                     "(default: generated 317x317 PNGs).")
_PIPELINE_BATCHES = flags.DEFINE_integer("pipeline_batches", 8, "Timed input-pipeline batches.")
_FLOP_CHECK = flags.DEFINE_bool("flop_check", True, "Compare XLA's tower FLOPs with the hand count.")
_OUT = flags.DEFINE_string("out", None, "Also write the Markdown report here.")
_HUGE_PAGES = flags.DEFINE_bool("huge_pages", True, "Re-run this command with glibc.malloc.hugetlb=1 (sjedd_jax/hostenv.py); "
                  "--nohuge_pages keeps glibc's default.")
_MALLOC_KEEP = flags.DEFINE_bool("malloc_keep", True, "Re-run this command with glibc's malloc keeping freed memory for the next "
                  "step (hostenv.KEEP: mmap_max=0, trim_threshold, top_pad); --nomalloc_keep keeps glibc's default.")

# Dense peak TFLOP/s per device, by a substring of jax's device_kind, per compute dtype.
KNOWN_PEAKS = {
    "H200": {"bfloat16": 989.0, "float32": 494.0},   # float32 via TF32 tensor cores
    "H100": {"bfloat16": 989.0, "float32": 494.0},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "TPU v5p": {"bfloat16": 459.0, "float32": 459.0},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
}

_NAIVE = {"model.per_level_passes": True, "model.text_context": 77, "model.compact_vocab": False,
          "model.scan_layers": False}
_SCAN = {"model.scan_layers": True}
MODES = {
    # name: (config overrides, step kind, description)
    "fused": ({}, "fused", "one program, 1 tower pass/loss, 17 tok, FD, reused linearisation"),
    "jvp": ({"weighting.method": "jvp"}, "fused", "as fused, exact JVP hypergradient"),
    "fresh": ({}, "fresh", "as fused, final gradient by a fresh forward+backward"),
    "fresh_fd_vmap": ({}, "fresh_fd_vmap", "as fresh, the two FD forwards as one vmapped pass"),
    "ctx77": ({"model.text_context": 77}, "fused", "as fused, 77-token text context"),
    "bf16": ({"model.dtype": "bfloat16"}, "fused", "as fused, bfloat16 compute"),
    "per_level": ({"model.per_level_passes": True, "model.text_context": 77}, "fused",
                  "as fused, release's 3 CLIP passes/loss at 77 tok"),
    "compact": ({"model.compact_vocab": True}, "fused", "as fused, only the templates' token rows"),
    "held": ({}, "held", "as fused, a step that holds lambda (update_every > 1, its own program)"),
    "cond_held": ({}, "cond_held", "as held, but the held branch of one lax.cond program"),
    "full_vocab": ({"model.compact_vocab": False}, "fused", "as fused, the whole 49408-row token table"),
    "naive": (_NAIVE, "naive", "release's work: 3 CLIP passes/loss, 77 tok, 5 separate programs"),
    "scan": (_SCAN, "fused", "as fused, the residual blocks as one lax.scan"),
    "unrolled": ({"model.scan_layers": False}, "fused", "as fused, the residual blocks unrolled"),
    "naive_scan": ({**_NAIVE, **_SCAN}, "naive", "as naive, the residual blocks as one lax.scan"),
}


# ------------------------------------------------------------------ helpers
def _cost(compiled) -> dict:
  cost = compiled.cost_analysis()
  return (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}


def _mem_bytes(compiled) -> float | None:
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if m is None:
    return None
  peak = getattr(m, "peak_memory_in_bytes", 0)
  if peak:
    return float(peak)
  return float(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _rss_peak_gib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def _device_peak_gib() -> float | None:
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats or "peak_bytes_in_use" not in stats:
    return None
  return stats["peak_bytes_in_use"] / 2 ** 30


def peak_tflops(dtype: str) -> float | None:
  if _PEAK.value:
    return _PEAK.value
  kind = jax.devices()[0].device_kind
  for key, peaks in KNOWN_PEAKS.items():
    if key.lower() in kind.lower():
      return peaks.get(dtype)
  return None


def base_config() -> ml_collections.ConfigDict:
  if _CONFIG.value is not None:
    c = ml_collections.ConfigDict(_CONFIG.value)
  else:
    c = config_lib.base_config("sjedd")
    c.model.clip = _PRESET.value or "ViT-B/32"
  if _PRESET.value:
    c.model.clip = _PRESET.value
  c.model.pretrained = ""  # random weights: speed does not depend on them
  c.data.image_size = clip_lib.get_config(c.model.clip).image_size
  if _BATCH.value:
    c.batch_size = _BATCH.value
  if _LR.value is not None:
    c.optim.lr = _LR.value
  return c


def apply_overrides(c: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(c.to_dict())
  for key, value in overrides.items():
    config_lib.set_dotted(c, key, value)
  return c


def random_batch(rng: np.random.Generator, batch: int, size: int, num_nodes: int) -> dict:
  sources = [labels.SOURCES[i % len(labels.SOURCES)] for i in rng.permutation(batch)]
  ys, ms = zip(*[labels.ffpp_label(s) for s in sources])
  return {"image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
          "y": np.stack(ys)[:, :num_nodes], "observed": np.stack(ms)[:, :num_nodes]}


# ------------------------------------------------------------ one mode
def build_step(c: ml_collections.ConfigDict, kind: str):
  """(step, state, train_batch, val_batch, dtype) for a config and a step kind."""
  detector = detectors.make(c)
  variables = detector.init(c.seed)
  losses_fn = ts.detector_losses_fn(detector, variables.state)   # the baselines' (params, batch) form
  schedule = optim.make_schedule("constant", c.optim.lr, total_steps=1)
  opt = optim.adamw(schedule, c.optim.weight_decay, b1=c.optim.b1, b2=c.optim.b2, eps=c.optim.eps)
  w = c.weighting
  weighting = ts.make_weighting("bilevel", lam_lr=w.lam_lr, lam_init=w.lam_init, method=w.method,
                                radius=w.radius, update_every=2 ** 30 if kind == "cond_held" else 1)
  mesh = ts.data_mesh()
  state = ts.init_state(variables, opt, weighting, seed=c.seed)
  if kind == "cond_held":  # count 1: every timed step takes the cond's held branch
    state = state._replace(lam_state=state.lam_state._replace(count=jnp.ones((), jnp.int32)))
  state = ts.shard_state(state, mesh)
  rng = np.random.default_rng(c.seed)
  n = sjedd_det.hierarchy_from_config(c).num_nodes
  tb, vb = (ts.global_batch(random_batch(rng, c.batch_size, c.data.image_size, n), mesh) for _ in range(2))
  if kind in ("fused", "held", "cond_held"):
    step = ts.compile_train_step(ts.make_train_step(detector, weighting, opt, schedule, c.optim.weight_decay,
                                                    lam_update=False if kind == "held" else None),
                                 mesh, compiler_options=detector.compiler_options)
  elif kind in ("fresh", "fresh_fd_vmap"):
    step = ts.compile_train_step(naive_step.make_fresh_step(losses_fn, opt, schedule, c.optim.weight_decay,
                                                            lam_lr=w.lam_lr, method=w.method, radius=w.radius,
                                                            fd_batched=kind == "fresh_fd_vmap"),
                                 mesh)
  elif kind == "naive":
    step = naive_step.make_naive_step(losses_fn, opt, schedule, c.optim.weight_decay, lam_lr=w.lam_lr,
                                      radius=w.radius)
  else:
    raise ValueError(f"unknown step kind {kind!r}")
  return step, state, tb, vb


def compile_mode(step, state, tb, vb, kind: str):
  """Compiles ahead of time; returns (callable step, compile s, FLOPs/step, XLA peak bytes)."""
  t0 = time.perf_counter()
  if kind != "naive":
    compiled = step.lower(state, tb, vb).compile()
    return compiled, time.perf_counter() - t0, _cost(compiled).get("flops", float("nan")), _mem_bytes(compiled)
  flops, mem = 0.0, 0.0
  for name, args in step.example_args(state, tb, vb).items():
    compiled = step.programs[name].lower(*args).compile()
    step.programs[name] = compiled
    flops += step.calls[name] * _cost(compiled).get("flops", float("nan"))
    mem = max(mem, _mem_bytes(compiled) or 0.0)
  return step, time.perf_counter() - t0, flops, mem or None


def lowered_flops(step, state, tb, vb, kind: str) -> float:
  """FLOPs per step from XLA's cost analysis of the lowered (not yet optimised) program(s)."""
  if kind != "naive":
    return _cost(step.lower(state, tb, vb)).get("flops", float("nan"))
  return sum(step.calls[name] * _cost(step.programs[name].lower(*args)).get("flops", float("nan"))
             for name, args in step.example_args(state, tb, vb).items())


def unrolled_flops(c: ml_collections.ConfigDict, kind: str) -> float:
  """A scan_layers mode's real FLOPs: XLA's cost analysis counts a loop body once, so the
  count comes from the same step with the blocks unrolled (lowered, not compiled)."""
  step, state, tb, vb = build_step(apply_overrides(c, {"model.scan_layers": False}), kind)
  return lowered_flops(step, state, tb, vb, kind)


class Mode:
  """One compiled mode, its state and batches; ``time(n)`` appends n synchronised step times."""

  def __init__(self, name: str, c: ml_collections.ConfigDict):
    overrides, self.kind, self.desc = MODES[name]
    self.name, self.c = name, apply_overrides(c, overrides)
    step, self.state, self.tb, self.vb = build_step(self.c, self.kind)
    self.step, self.compile_s, self.flops, self.xla_mem = compile_mode(step, self.state, self.tb, self.vb,
                                                                      self.kind)
    if self.c.model.get("scan_layers"):
      self.flops = unrolled_flops(self.c, self.kind)
    self.times, self.metrics, self.loads = [], None, []
    for _ in range(_WARMUP.value):
      self.state, self.metrics = self.step(self.state, self.tb, self.vb)
    jax.block_until_ready(self.state)
    self.rss_gib, self.device_peak_gib = _rss_peak_gib(), _device_peak_gib()

  def time(self, n: int) -> None:
    self.loads.append(os.getloadavg()[0])
    for _ in range(n):
      t0 = time.perf_counter()
      self.state, self.metrics = self.step(self.state, self.tb, self.vb)
      jax.block_until_ready(self.state)
      self.times.append(time.perf_counter() - t0)

  def result(self) -> dict:
    m, times, c = jax.device_get(self.metrics), self.times, self.c
    med = statistics.median(times)
    peak = peak_tflops(c.model.dtype)
    res = dict(mode=self.name, desc=self.desc, dtype=c.model.dtype, step_s=med, min_s=min(times),
               max_s=max(times), steps_per_s=1.0 / med, images_per_s=c.batch_size / med,
               compile_s=self.compile_s, flops=self.flops, tflops_per_s=self.flops / med / 1e12,
               mfu=(self.flops / med / 1e12 / peak) if peak else None,
               xla_mem_gib=(self.xla_mem / 2 ** 30) if self.xla_mem else None, rss_gib=self.rss_gib,
               device_peak_gib=self.device_peak_gib, loss=float(m["loss/primary"]),
               hyper=np.asarray(m["hypergradient"]).tolist(), load=statistics.mean(self.loads),
               scan=bool(c.model.get("scan_layers")))
    print(f"  {self.name}: {med * 1e3:.1f} ms/step (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}, "
          f"n={len(times)}), compile {self.compile_s:.1f} s, {self.flops / 1e9:.1f} GFLOP/step, "
          f"load {res['load']:.2f}", flush=True)
    return res

  def close(self) -> None:
    self.step = self.state = self.tb = self.vb = None


def run_modes(names, c, on_result=lambda results: None) -> list[dict]:
  """Sequentially (rounds=1: each mode built, timed and freed in turn), or round-robin over
  ``--rounds`` rounds with every mode kept alive (fairer on a shared, noisy machine).
  ``on_result(results so far)`` is called after each sequential mode (partial reports)."""
  rounds = _ROUNDS.value
  if rounds <= 1:
    out = []
    for name in names:
      mode = Mode(name, c)
      mode.time(_STEPS.value)
      out.append(mode.result())
      mode.close()
      on_result(out)
    return out
  modes = [Mode(name, c) for name in names]
  for _ in range(rounds):
    for mode in modes:
      mode.time(_STEPS.value)
  return [mode.result() for mode in modes]


# ---------------------------------------------------------- FLOP hand count
def hand_count(cfg: clip_lib.CLIPConfig, text_tokens: int) -> tuple[float, float]:
  """Forward FLOPs (2 per multiply-add) of one image and of one template of ``text_tokens``."""
  def block(tokens, width, mlp):
    dense = 2 * tokens * (width * 3 * width + width * width + 2 * width * mlp)
    attention = 2 * 2 * tokens * tokens * width  # q k^T and p v, all heads
    return dense + attention
  t = cfg.grid ** 2 + 1
  image = (2 * cfg.grid ** 2 * cfg.patch_size ** 2 * 3 * cfg.vision_width
           + cfg.vision_layers * block(t, cfg.vision_width, cfg.vision_mlp_dim)
           + 2 * cfg.vision_width * cfg.embed_dim)
  text = text_tokens and (cfg.text_layers * block(text_tokens, cfg.text_width, cfg.text_mlp_dim)
                          + 2 * cfg.text_width * cfg.embed_dim)
  return float(image), float(text)


def xla_tower_flops(cfg: clip_lib.CLIPConfig, text_tokens: int) -> tuple[float, float]:
  from flax import nnx  # pylint: disable=g-import-not-at-top
  cfg = cfg.replace(scan_layers=False)  # XLA counts a loop body once
  model = nnx.eval_shape(lambda: clip_lib.CLIP(cfg, rngs=nnx.Rngs(0)))
  g, state = nnx.split(model)
  img = jax.ShapeDtypeStruct((1, cfg.image_size, cfg.image_size, 3), jnp.float32)
  ids = jax.ShapeDtypeStruct((1, text_tokens), jnp.int32)
  fi = jax.jit(lambda s, x: nnx.merge(g, s).encode_image(x)).lower(state, img).compile()
  ft = jax.jit(lambda s, t: nnx.merge(g, s).encode_text(t)).lower(state, ids).compile()
  return _cost(fi)["flops"], _cost(ft)["flops"]


# ----------------------------------------------------------------- pipeline
def pipeline_rate(c: ml_collections.ConfigDict) -> tuple[float, str]:
  import benchmark_pipeline  # pylint: disable=g-import-not-at-top
  from sjedd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  tmp = None
  data_dir = _PIPELINE_DATA.value
  if not data_dir:
    tmp = tempfile.TemporaryDirectory()
    data_dir = tmp.name
    benchmark_pipeline.make_dataset(data_dir, max(4 * c.batch_size, 64))
  cfg = pipeline.DataConfig(data_dir=data_dir, batch_size=c.batch_size, image_size=c.data.image_size,
                            perturb_probability=c.data.perturb_probability, workers=c.data.workers)
  rate, _ = benchmark_pipeline.bench(cfg, pipeline.load(cfg), _PIPELINE_BATCHES.value)
  if tmp is not None:
    tmp.cleanup()
  return rate, ("generated 317x317 PNGs" if not _PIPELINE_DATA.value else data_dir)


# ------------------------------------------------------------------- report
def _fmt(x, spec, none="n/a"):
  return none if x is None or (isinstance(x, float) and np.isnan(x)) else format(x, spec)


def report(c, results, argv, pipe, flop_rows) -> str:
  dev = jax.devices()[0]
  lines = [
      f"Date: {datetime.date.today().isoformat()}. Machine: {platform.machine()} {dev.platform} "
      f"({dev.device_kind}, {jax.device_count()} device(s), {os.cpu_count()} CPU cores), "
      f"jax {jax.__version__}, {hostenv.malloc_summary()}. Load average (1 min) during the runs: "
      f"{min(r['load'] for r in results):.2f}-{max(r['load'] for r in results):.2f}.",
      f"Config: CLIP {c.model.clip}, batch {c.batch_size}, {c.data.image_size} px, "
      f"lr {c.optim.lr}, {_ROUNDS.value} round(s) x {_STEPS.value} timed steps per mode after "
      f"{_WARMUP.value} warm-up.",
      "", "```", "python " + " ".join(shlex.quote(a) for a in argv), "```", "",
      "| mode | what | dtype | ms/step (median [min-max]) | steps/s | images/s | vs naive | compile s "
      "| GFLOP/step (XLA) | TFLOP/s | MFU | XLA peak GiB | RSS peak GiB | load |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  naive = next((r for r in results if r["mode"] == "naive"), None)
  for r in results:
    speed = _fmt(naive["step_s"] / r["step_s"], ".2f") + "x" if naive else "n/a"
    mem = r["device_peak_gib"] if r["device_peak_gib"] is not None else r["rss_gib"]
    lines.append(
        f"| {r['mode']} | {r['desc']} | {r['dtype']} | {r['step_s'] * 1e3:.0f} [{r['min_s'] * 1e3:.0f}-"
        f"{r['max_s'] * 1e3:.0f}] | {r['steps_per_s']:.3f} | {r['images_per_s']:.2f} | {speed} | "
        f"{r['compile_s']:.1f} | {r['flops'] / 1e9:.1f} | {r['tflops_per_s']:.3f} | "
        f"{_fmt(r['mfu'] and 100 * r['mfu'], '.1f')}{'%' if r['mfu'] else ''} | "
        f"{_fmt(r['xla_mem_gib'], '.2f')} | {mem:.2f} | {r['load']:.1f} |")
  lines.append("")
  if any(r["scan"] for r in results):
    lines.append("GFLOP/step of the modes with `model.scan_layers` (the default): XLA's cost analysis counts a "
                 "loop body once, so their count is that of the same step with the blocks unrolled, lowered "
                 "but not optimised. Building that unrolled twin can raise the RSS peak of these modes.")
    lines.append("")
  lines.append("Primary loss after each mode's last step (same weights, batches and number of steps in "
               "every mode): " + "; ".join(f"{r['mode']} {r['loss']:.5f}" for r in results) +
               ". (Equality of losses and hypergradients across modes is tested in tests/test_naive_step.py.)")
  if pipe:
    rate, where = pipe
    lines += ["", f"Input pipeline alone ({where}, batch {c.batch_size}, {c.data.image_size} px, "
              f"{c.data.workers} workers): {rate:.1f} images/s."]
  if flop_rows:
    lines += ["", "| forward FLOPs | hand count | XLA cost analysis | ratio |", "|---|---|---|---|"]
    for label, hand, xla in flop_rows:
      lines.append(f"| {label} | {hand / 1e9:.3f} G | {xla / 1e9:.3f} G | {xla / hand:.3f} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  # before anything runs: the command starts again with the tunables set
  hostenv.prepare_jax_process(huge=_HUGE_PAGES.value, keep=_MALLOC_KEEP.value)  # as the trainer runs
  c = base_config()
  print(f"benchmark: CLIP {c.model.clip}, batch {c.batch_size}, modes {_MODES.value}", flush=True)
  unknown = [m for m in _MODES.value if m not in MODES]
  if unknown:
    raise app.UsageError(f"unknown mode(s) {unknown}; known: {sorted(MODES)}")
  flop_rows = []
  if _FLOP_CHECK.value:
    cfg = clip_lib.get_config(c.model.clip)
    for tokens in (17, cfg.context_length):
      hi, ht = hand_count(cfg, tokens)
      xi, xt = xla_tower_flops(cfg, tokens)
      if tokens == 17:
        flop_rows.append((f"{c.model.clip} image tower, per image", hi, xi))
      flop_rows.append((f"{c.model.clip} text tower, per template at {tokens} tokens", ht, xt))
  def write(results, pipe=None):
    text = report(c, results, sys.argv, pipe, flop_rows)
    if _OUT.value:  # rewritten after every mode, so a long run that is stopped keeps its rows
      with open(_OUT.value, "w") as f:
        f.write(text)
    return text

  results = run_modes(_MODES.value, c, write)
  pipe = pipeline_rate(c) if _PIPELINE.value else None
  print(write(results, pipe))


if __name__ == "__main__":
  app.run(main)
