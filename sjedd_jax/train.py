r"""Trains a detector: ``python -m sjedd_jax.train --config configs/ffpp.py --workdir DIR``.

The detector is ``config.detector`` (SJEDD by default in configs/; see sjedd_jax/detectors).

Config values can be overridden on the command line, big_vision style:
``--config.batch_size=64 --config.weighting.method=jvp``.

The run resumes from ``DIR/ckpt`` when it holds a checkpoint; a resumed run ends
with the same parameters as an uninterrupted one. At the end the held-out test
metrics are printed and written to ``DIR/metrics.json``.

Guards (docs/reliability.md): the config that defines the run is saved in
``DIR/config.json`` and a rerun with another one is refused with the keys that
differ (``--fresh`` moves the old run aside and starts again, ``--accept_config``
resumes with the new config); numeric config values are checked at start; the
dataset is checked (every manifest row parsed, every image path present) before
the first step; training that produces a non-finite loss or parameters stops at
once, naming the step and the last good checkpoint, and never saves a
checkpoint with them; a finished run is reported again, not redone.
"""

from __future__ import annotations

if __name__ == "__main__":  # before jax allocates anything: how glibc's malloc serves XLA:CPU's buffers
  from sjedd_jax import hostenv
  hostenv.prepare_jax_process()  # malloc keeps the step's buffers, in huge pages, on the calling thread

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

from sjedd_jax import checkpointing, cli, detectors, evaluator as evaluator_lib, optim, preflight, train_step as ts
from sjedd_jax import writers
from sjedd_jax import config as config_lib
from sjedd_jax.config import ConfigError
from sjedd_jax.data import datasets, pipeline

CONFIG_JSON = "config.json"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """The CLI's flags, defined on demand (absl flags are global: importing this module next to
  ``evaluate``/``predict`` must not redefine ``--config``); ``fv`` for in-process runs (tests)."""
  config_flags.DEFINE_config_file("config", None, "Training config file (a get_config() module).",
                                  lock_config=True, flag_values=fv)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.", flag_values=fv)
  flags.DEFINE_bool("fresh", False, "The workdir holds a run: move it aside (WORKDIR/previous_<time>/) and "
                    "start again.", flag_values=fv)
  flags.DEFINE_bool("accept_config", False, "Resume the run in the workdir with this config although its "
                    "run-defining keys differ from the saved one.", flag_values=fv)


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


# ------------------------------------------------------------------ the workdir guard
def _checkpoint_steps(workdir: str) -> list[int]:
  d = os.path.join(workdir, "ckpt")
  return sorted(int(x) for x in os.listdir(d) if x.isdigit()) if os.path.isdir(d) else []


def _holds_run(workdir: str) -> bool:
  return bool(_checkpoint_steps(workdir)) or os.path.exists(os.path.join(workdir, "metrics.json"))


def _saved_config(workdir: str) -> dict | None:
  """The run-defining config saved in ``workdir`` (config.json, else the latest checkpoint's meta)."""
  path = os.path.join(workdir, CONFIG_JSON)
  if os.path.exists(path):
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ConfigError(f"{path}: unreadable saved config ({e}); move it away to start afresh") from None
  steps = _checkpoint_steps(workdir)
  if steps:
    meta = os.path.join(workdir, "ckpt", str(steps[-1]), "meta", "metadata")
    try:
      with open(meta) as f:
        return json.load(f).get("config")
    except (OSError, json.JSONDecodeError, AttributeError):
      return None
  return None


def _move_aside(workdir: str) -> str:
  """Moves a previous run's files into ``WORKDIR/previous_<time>/`` (nothing is deleted)."""
  dest = os.path.join(workdir, "previous_" + time.strftime("%Y%m%d-%H%M%S"))
  os.makedirs(dest)
  for name in os.listdir(workdir):
    if not name.startswith("previous_"):
      os.replace(os.path.join(workdir, name), os.path.join(dest, name))
  return dest


def guard_workdir(config, workdir: str, *, fresh: bool = False, accept_config: bool = False) -> None:
  """Refuses to continue a run in ``workdir`` with another run-defining config; saves this one.

  ``fresh`` moves a previous run aside first; ``accept_config`` resumes it with the
  new config (the change is appended to ``config_history.jsonl``).
  """
  if fresh and _holds_run(workdir):
    dest = _move_aside(workdir)
    print(f"--fresh: the previous run in {workdir} was moved to {dest}", file=sys.stderr)
  saved = _saved_config(workdir) if _holds_run(workdir) else None
  new = config.to_dict()
  if saved is not None:
    diff = config_lib.config_diff(saved, new)
    if diff and not accept_config:
      raise ConfigError(
          f"{workdir} holds a run with another config ({'; '.join(diff)}). Rerun with --fresh to start afresh "
          "(the old run is moved to WORKDIR/previous_<time>/), with --accept_config to resume it with this "
          "config, or give another --workdir")
    if diff:
      with open(os.path.join(workdir, "config_history.jsonl"), "a") as f:
        f.write(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changes": diff}, default=str) + "\n")
  if jax.process_index() == 0:
    path = os.path.join(workdir, CONFIG_JSON)
    with open(path + ".tmp", "w") as f:
      json.dump(new, f, indent=2, default=str)
    os.replace(path + ".tmp", path)


def _nonfinite(metrics_host: dict[str, float]) -> list[str]:
  keys = [k for k in metrics_host if k.startswith(("loss/", "param_norm", "grad_norm", "lambda"))]
  return [f"{k}={metrics_host[k]}" for k in keys if not np.isfinite(metrics_host[k])]


def _json_safe(final: dict) -> dict:
  """NaN/inf -> null, with the reason in ``final["undefined"]`` (strict JSON, no bare NaN)."""
  reasons = {}

  def clean(x, key):
    if isinstance(x, dict):
      return {k: clean(v, f"{key}/{k}" if key else k) for k, v in x.items()}
    if isinstance(x, float) and not np.isfinite(x):
      reasons[key] = ("undefined: the split has one class only (AUC needs real and fake images)"
                      if "auc" in key or "eer" in key else f"not finite ({x})")
      return None
    return x

  out = clean(final, "")
  if reasons:
    out["undefined"] = reasons
  return out


def _finished(workdir: str, total_steps: int) -> dict | None:
  """The metrics of a finished run of ``total_steps`` steps in ``workdir``, or None."""
  path = os.path.join(workdir, "metrics.json")
  steps = _checkpoint_steps(workdir)
  if not os.path.exists(path) or not steps or steps[-1] != total_steps:
    return None
  try:
    with open(path) as f:
      final = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  return final if final.get("steps") == total_steps else None


def _last_train_metrics(jsonl: str, step: int) -> dict[str, float]:
  recs = [r for r in writers.read_jsonl(jsonl) if r["step"] <= step and any(k.startswith("loss/") for k in r)] \
      if os.path.exists(jsonl) else []
  return {k: v for k, v in recs[-1].items() if k not in ("step", "time")} if recs else {}


def run(config, workdir: str, *, progress: bool = True, stop_after: int | None = None, fresh: bool = False,
        accept_config: bool = False) -> dict[str, Any]:
  """Trains (or resumes) in ``workdir``; returns the final metrics.

  ``stop_after``: stop (with a checkpoint) after this many total steps, as if the
  process had been killed there; used by the resume test. ``fresh`` /
  ``accept_config``: see ``guard_workdir``.
  """
  t_start = time.time()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  if not os.access(workdir, os.W_OK):
    raise ConfigError(f"--workdir {workdir} is not writable")
  guard_workdir(config, workdir, fresh=fresh, accept_config=accept_config)
  _maybe_init_distributed(config)
  enable_compilation_cache(config.get("compilation_cache_dir", ""))
  if config.profiler_port:
    jax.profiler.start_server(config.profiler_port)
  profile = _profile_range(config.profile_steps)

  preflight.check(config)
  detector = detectors.make(config)
  data_dir = datasets.dataset_dir(config, progress=progress)
  preflight.check_data(config, detector, data_dir, progress=progress)
  train_cfg = datasets.data_config(config, detector, data_dir, "train", train=True)
  train_data = pipeline.load(train_cfg)
  steps_per_epoch = pipeline.steps_per_epoch(train_cfg, train_data)
  total_steps = config.total_steps or config.num_epochs * steps_per_epoch
  done_steps = _checkpoint_steps(workdir)
  if done_steps and done_steps[-1] > total_steps:
    raise ConfigError(f"{workdir} holds a run at step {done_steps[-1]}, beyond this config's {total_steps} steps; "
                      "give total_steps >= that to continue it, or another --workdir")
  finished = _finished(workdir, total_steps)
  if finished is not None and stop_after is None:
    print(f"{workdir}: this run finished already ({total_steps} steps); its results:", file=sys.stderr)
    return finished

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
                                                          lam_update=u, scale_lr=plateau is not None), mesh,
                                      compiler_options=detector.compiler_options)
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
    print(f"resuming from step {start} of {total_steps} ({os.path.join(workdir, 'ckpt', str(start))})",
          file=sys.stderr)
  if start >= total_steps > 0:  # killed during the final evaluation: redo it, without duplicate records
    writers.truncate_after(os.path.join(workdir, writers.JSONL_NAME), start)
    writers.drop_records(os.path.join(workdir, writers.JSONL_NAME),
                         lambda r: r["step"] >= total_steps and not any(k.startswith("loss/") for k in r))
  writer = writers.MetricWriter(workdir, resume_step=start)  # drops records a killed run wrote after `start`
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
    eval_now = done % eval_every == 0 and done < total_steps
    ckpt_now = done % config.ckpt_every == 0 or done == end
    if done % config.log_every == 0 or done == end or eval_now or ckpt_now:
      metrics_host = _to_host(metrics, vector_names)  # the only host sync in the loop
      bad = _nonfinite(metrics_host)
      if bad:
        bar.close()
        writer.scalars(done, {k: v for k, v in metrics_host.items() if np.isfinite(v)})
        writer.close()
        ckpt.close()
        last = ckpt.latest_step()
        raise cli.DivergenceError(
            f"training diverged at step {done}: {', '.join(bad[:6])}. No checkpoint was saved with these values; "
            + (f"the last good checkpoint is step {last} in {os.path.join(workdir, 'ckpt')}"
               if last else "no checkpoint had been saved yet")
            + ". Lower config.optim.lr (now " + f"{config.optim.lr:g}) and start again with --fresh.")
    if done % config.log_every == 0 or done == end:
      dt = time.time() - t_log
      metrics_host["steps_per_s"] = n_log / dt
      metrics_host["images_per_s"] = n_log * config.batch_size / dt
      writer.scalars(done, metrics_host)
      bar.set_postfix({"loss": f"{metrics_host[f'loss/{primary}']:.3f}",
                       "lam": ",".join(f"{metrics_host[f'lambda/{n}']:.2f}" for n in detector.task_names),
                       "img/s": f"{metrics_host['images_per_s']:.0f}"})
      t_log, n_log = time.time(), 0
    bar.update(1)
    if eval_now:
      bar.write(f"step {done}: " + ", ".join(f"{k}={v:.4f}" for k, v in validate(done).items()))
    if ckpt_now:
      ckpt.save(done, state, data_state(), meta, force=True)
  bar.close()
  ckpt.wait()

  if end < total_steps:  # stopped early on purpose
    ckpt.close()
    writer.close()
    return {"stopped_at": end, "params": jax.device_get(state.params)}

  if not metrics_host:  # resumed after the last step (killed during the final evaluation)
    metrics_host = _last_train_metrics(os.path.join(workdir, writers.JSONL_NAME), total_steps)
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
  final = _json_safe(final)
  writer.scalars(total_steps, {k: v for k, v in final.items() if isinstance(v, float)})
  if jax.process_index() == 0:
    evaluator_lib.write_report(workdir, results, curves)
    path = os.path.join(workdir, "metrics.json")  # written last and atomically: its presence marks a finished run
    with open(path + ".tmp", "w") as f:
      json.dump(final, f, indent=2, default=lambda x: None, allow_nan=False)
    os.replace(path + ".tmp", path)
  writer.close()
  ckpt.close()
  return final


def main(argv, fv: flags.FlagValues = flags.FLAGS):
  pylogging.getLogger("jax._src.xla_bridge").setLevel(pylogging.WARNING)
  if "verbosity" not in fv or not fv["verbosity"].present:  # orbax is chatty at INFO; -v 0 brings it back
    logging.set_verbosity(logging.WARNING)
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if fv.workdir is None:
    raise app.UsageError("--workdir is required")
  if not fv["config"].present:
    raise app.UsageError("--config is required")
  final = run(cli.config_value(fv["config"]), fv.workdir, fresh=fv.fresh, accept_config=fv.accept_config)
  auc = final.get("test/frame_auc")
  video = final.get("test/video_auc")
  print("held-out test frame AUC: " + (f"{auc:.4f}" if auc is not None else "undefined (one class)")
        + (f", video AUC: {video:.4f}" if video is not None else "")
        + f"  ({final['wall_time_s']:.0f} s; metrics in {os.path.join(fv.workdir, 'metrics.json')})")


if __name__ == "__main__":
  define_flags()
  cli.run(main)
