r"""Trains a detector: ``python -m sjedd_jax.train --config configs/ffpp.py --workdir DIR``.

The detector is ``config.detector`` (SJEDD by default in configs/; see sjedd_jax/detectors).

Config values can be overridden on the command line, big_vision style:
``--config.batch_size=64 --config.weighting.method=jvp``.

The run resumes from ``DIR/ckpt`` when it holds a checkpoint; a resumed run ends
with the same parameters as an uninterrupted one. At the end the held-out test
metrics are printed and written to ``DIR/metrics.json``.
"""

from __future__ import annotations

if __name__ == "__main__":  # before jax allocates anything: huge pages for XLA:CPU's buffers
  from sjedd_jax import hostenv
  hostenv.reexec_with_huge_pages()

import json
import logging as pylogging
import os
import sys
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm.auto import tqdm

from sjedd_jax import checkpointing, detectors, evaluator as evaluator_lib, optim, preflight, train_step as ts, writers
from sjedd_jax.config import ConfigError
from sjedd_jax.data import datasets, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (a get_config() module).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")


def _maybe_init_distributed(config) -> None:
  d = config.distributed
  if d.coordinator_address:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU cross-process collectives
    jax.distributed.initialize(coordinator_address=d.coordinator_address, num_processes=d.num_processes,
                               process_id=d.process_id)


def enable_compilation_cache(path: str) -> None:
  """Persistent XLA compilation cache: a rerun or resume skips recompiling the step."""
  if path:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _profile_range(spec: str) -> tuple[int, int] | None:
  if not spec:
    return None
  try:
    a, b = (int(x) for x in str(spec).split(","))
  except ValueError:
    raise ConfigError(f"config.profile_steps={spec!r}: expected 'first,last' step numbers") from None
  if not 0 <= a < b:
    raise ConfigError(f"config.profile_steps={spec!r}: need 0 <= first < last")
  return a, b


def _to_host(metrics: dict, vector_names: dict[str, tuple[str, ...]] | None = None) -> dict[str, float]:
  """Device metrics -> flat floats; vectors become name/<entry> (task names where known, else 1, 2, ...)."""
  out = {}
  for k, v in jax.device_get(metrics).items():
    v = np.asarray(v)
    if v.ndim == 0:
      out[k] = float(v)
    else:
      names = (vector_names or {}).get(k)
      flat = v.reshape(-1)
      if names is None or len(names) != flat.size:
        names = [str(i + 1) for i in range(flat.size)]
      for name, x in zip(names, flat):
        out[f"{k}/{name}"] = float(x)
  return out


def run(config, workdir: str, *, progress: bool = True, stop_after: int | None = None) -> dict[str, Any]:
  """Trains (or resumes) in ``workdir``; returns the final metrics.

  ``stop_after``: stop (with a checkpoint) after this many total steps, as if the
  process had been killed there; used by the resume test.
  """
  t_start = time.time()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  _maybe_init_distributed(config)
  enable_compilation_cache(config.get("compilation_cache_dir", ""))
  if config.profiler_port:
    jax.profiler.start_server(config.profiler_port)
  profile = _profile_range(config.profile_steps)

  preflight.check(config)
  detector = detectors.make(config)
  data_dir = datasets.dataset_dir(config, progress=progress)
  train_cfg = datasets.data_config(config, detector, data_dir, "train", train=True)
  train_data = pipeline.load(train_cfg)
  steps_per_epoch = pipeline.steps_per_epoch(train_cfg, train_data)
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch

  variables = detector.init(config.seed)
  labels = detector.param_labels(variables.params) if detector.param_labels is not None else None
  opt = optim.make(config.optim, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                   params=variables.params, labels=labels)
  weighting = ts.weighting_from_config(config, detector, steps_per_epoch)
  every = config.weighting.update_every if config.weighting.kind == "bilevel" else 1

  mesh = ts.data_mesh()
  if config.batch_size % mesh.devices.size:
    raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {mesh.devices.size} devices")
  if config.eval_batch_size % mesh.devices.size:
    raise ConfigError(f"eval_batch_size={config.eval_batch_size} is not divisible by the "
                      f"{mesh.devices.size} devices")
  train_it, val_it = pipeline.train_streams(train_cfg, train_data)
  state = ts.shard_state(ts.init_state(variables, opt.tx, weighting, seed=config.seed), mesh)
  # With update_every > 1, one program per branch, picked on the host: a held step then runs only
  # the forward and backward at theta (a lax.cond in one program costs more than the branch it skips).
  plateau = optim.plateau_from_config(config.optim)
  programs = {u: ts.compile_train_step(ts.make_train_step(detector, weighting, opt.tx, opt.lr, opt.weight_decay,
                                                          lam_update=u, scale_lr=plateau is not None), mesh)
              for u in ((True, False) if every > 1 else (None,))}
  compiled_for = lambda step: programs[step % every == 0 if every > 1 else None]
  evaluator = evaluator_lib.Evaluator(detector, mesh)
  vector_names = ts.vector_names(detector)
  batch_keys = tuple(detector.batch_keys)

  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_ckpts)
  meta = {"config": config.to_dict(), "data_dir": data_dir, "total_steps": total_steps,
          "steps_per_epoch": steps_per_epoch}
  start = ckpt.latest_step() or 0
  if start:
    state, data_state, _ = ckpt.restore(state)
    train_it.set_state(data_state["train"])
    val_it.set_state(data_state["val"])
    if plateau is not None:
      plateau.load(data_state.get("plateau"))
    logging.info("resumed from step %d in %s", start, workdir)
  writer = writers.MetricWriter(workdir, resume_step=start if start else None)
  val_cfg = datasets.data_config(config, detector, data_dir, "val", train=False)

  def data_state():
    out = {"train": train_it.get_state(), "val": val_it.get_state()}
    if plateau is not None:
      out["plateau"] = plateau.state()
    return out

  def validate(step):
    nonlocal state
    res = evaluator.run(val_cfg, detectors.Variables(state.params, state.model_state), progress=False)
    m = {"val/frame_auc": res["frame"]["auc"], "val/frame_acc": res["frame"]["acc"]}
    if res.get("video"):
      m["val/video_auc"] = res["video"]["auc"]
    if plateau is not None:
      name = config.optim.plateau_metric
      flat = {**m, "val/frame_log_loss": res["frame"]["log_loss"]}
      if name not in flat:
        raise ConfigError(f"config.optim.plateau_metric={name!r}; expected one of {sorted(flat)}")
      m[name] = flat[name]
      m["lr_scale"] = plateau.update(flat[name])
      state = state._replace(lr_scale=jax.device_put(np.float32(m["lr_scale"]), ts.replicated(mesh)))
    writer.scalars(step, m)
    ckpt.save_best(step, state, data_state(), meta, m)
    return m

  end = total_steps if stop_after is None else min(total_steps, stop_after)
  bar = tqdm(total=total_steps, initial=start, desc="train", unit="step", disable=not progress,
             dynamic_ncols=True)
  eval_every = config.eval_every or steps_per_epoch
  t_log, n_log = time.time(), 0
  metrics_host: dict[str, float] = {}
  tracing = False
  primary = detector.task_names[0]
  for step in range(start, end):
    if profile and profile[0] <= step < profile[1] and not tracing:  # also when resuming inside the window
      jax.profiler.start_trace(os.path.join(workdir, "profile"))
      tracing = True
    # An implicit device-to-host copy here would stall the loop on the device every step: refuse it.
    with jax.profiler.StepTraceAnnotation("train", step_num=step), jax.transfer_guard_device_to_host("disallow"):
      train_b, val_b = next(train_it), next(val_it)
      state, metrics = compiled_for(step)(state, ts.global_batch(train_b, mesh, batch_keys),
                                          ts.global_batch(val_b, mesh, batch_keys))
    n_log += 1
    done = step + 1
    if tracing and (done == profile[1] or done == end):
      jax.block_until_ready(state)
      jax.profiler.stop_trace()
      tracing = False
    if done % config.log_every == 0 or done == end:
      metrics_host = _to_host(metrics, vector_names)  # the only host sync in the loop
      dt = time.time() - t_log
      metrics_host["steps_per_s"] = n_log / dt
      metrics_host["images_per_s"] = n_log * config.batch_size / dt
      writer.scalars(done, metrics_host)
      bar.set_postfix({"loss": f"{metrics_host[f'loss/{primary}']:.3f}",
                       "lam": ",".join(f"{metrics_host[f'lambda/{n}']:.2f}" for n in detector.task_names),
                       "img/s": f"{metrics_host['images_per_s']:.0f}"})
      t_log, n_log = time.time(), 0
    bar.update(1)
    if done % eval_every == 0 and done < total_steps:
      bar.write(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in validate(done).items()))
    if done % config.ckpt_every == 0 or done == end:
      ckpt.save(done, state, data_state(), meta, force=True)
  bar.close()
  ckpt.wait()

  if end < total_steps:  # stopped early on purpose
    ckpt.close()
    writer.close()
    return {"stopped_at": end, "params": jax.device_get(state.params)}

  final_val = validate(total_steps)
  ckpt.wait()
  # Model selection on the validation split, then the held-out test sets.
  best_state = state
  if ckpt.best_value() is not None:
    best_state, _, best_meta = ckpt.restore(state, which="best")
    logging.info("testing the best checkpoint (val AUC %.4f)", ckpt.best_value())
  best = detectors.Variables(best_state.params, best_state.model_state)
  results, curves = {}, {}
  for name, (d, split_name, sources) in datasets.test_sets(config, data_dir).items():
    cfg = datasets.data_config(config, detector, d, split_name, train=False, sources=sources)
    results[name], curves[name] = evaluator.run(cfg, best, progress=progress, return_scores=True)
  if detector.export is not None:
    detector.export(best, os.path.join(workdir, "export"), config)
  final = {
      "test/frame_auc": results["test"]["frame"]["auc"],
      "test/video_auc": (results["test"].get("video") or {}).get("auc"),
      "test/frame_acc": results["test"]["frame"]["acc"],
      **{k: v for k, v in final_val.items()},
      "best_val/frame_auc": ckpt.best_value(),
      "steps": total_steps,
      "wall_time_s": time.time() - t_start,
      "final_train_metrics": metrics_host,
      "test_sets": {k: {"frame_auc": r["frame"]["auc"], "video_auc": (r.get("video") or {}).get("auc")}
                    for k, r in results.items()},
  }
  if jax.process_index() == 0:
    evaluator_lib.write_report(workdir, results, curves)
    with open(os.path.join(workdir, "metrics.json"), "w") as f:
      json.dump(final, f, indent=2, default=lambda x: None)
  writer.scalars(total_steps, {k: v for k, v in final.items() if isinstance(v, float)})
  writer.close()
  ckpt.close()
  return final


def main(argv):
  pylogging.getLogger("jax._src.xla_bridge").setLevel(pylogging.WARNING)
  if not flags.FLAGS["verbosity"].present:  # orbax is chatty at INFO; -v 0 brings it back
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  try:
    final = run(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"held-out test frame AUC: {final['test/frame_auc']:.4f}"
        + (f", video AUC: {final['test/video_auc']:.4f}" if final.get("test/video_auc") is not None else "")
        + f"  ({final['wall_time_s']:.0f} s; metrics in {os.path.join(_WORKDIR.value, 'metrics.json')})")


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
