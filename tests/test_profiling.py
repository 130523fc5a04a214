"""``config.profile_steps="a,b"`` writes a jax.profiler trace of steps [a, b) to workdir/profile.

A tiny training run (the "test" CLIP on a 32 px synthetic world), stopped after
step 3 so no final evaluation runs, with fixed loss weights (the bi-level step
takes twice as long to compile and the trace is the same business either way);
docs/profiling.md explains how to read it.
"""

import glob
import gzip
import json
import os
import re

import pytest

from configs import synthetic as synthetic_config  # noqa: E402  (repo root is on sys.path under pytest)
from tests import tiny


def tiny_config(cache, **over):
  c = tiny.shrink(synthetic_config.get_config(), cache)
  # Render in this process: synthetic.generate's fork()ed pool deadlocks in OpenCV
  # when the parent process has used OpenCV's threads before (as test_predict does).
  c.data.synthetic.workers = 0
  c.total_steps = 4
  c.log_every = 2
  c.eval_every = 100
  c.ckpt_every = 100
  c.optim.warmup_steps = 1
  c.weighting.kind = "fixed"
  for k, v in over.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("synthetic_cache")


@pytest.fixture(scope="module")
def profiled_run(cache, tmp_path_factory):
  from sjedd_jax import train  # pylint: disable=g-import-not-at-top
  # Steps 1-5 traced; the metrics of steps 0-2 are logged (fetched to the host) after step 2.
  config = tiny_config(cache, profile_steps="1,6", log_every=3, total_steps=8)
  workdir = tmp_path_factory.mktemp("profiled") / "run"
  out = train.run(config, str(workdir), progress=False, stop_after=6)
  assert out["stopped_at"] == 6
  return config, workdir, out["params"]


def test_profile_steps_write_a_trace(profiled_run):
  _, workdir, _ = profiled_run
  traces = glob.glob(str(workdir / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  traces += glob.glob(str(workdir / "profile" / "**" / "*.trace.json.gz"), recursive=True)
  assert traces, f"no trace under {workdir / 'profile'}: {list(os.walk(workdir / 'profile'))}"
  assert all(os.path.getsize(t) > 1000 for t in traces)
  # A TensorBoard/XProf trace, and (jax writes one next to it) a Perfetto/Chrome JSON one.
  assert any(t.endswith(".xplane.pb") for t in traces)
  json_traces = [t for t in traces if t.endswith(".trace.json.gz")]
  if json_traces:
    with gzip.open(json_traces[0]) as f:
      events = json.load(f)["traceEvents"]
    steps = {e["args"]["step_num"] for e in events if e.get("name") == "train" and "args" in e}
    assert steps == {"1", "2", "3", "4", "5"}  # StepTraceAnnotation of exactly the profiled steps [1, 6)
    assert any(e.get("name") == "PjitFunction(train_step)" for e in events)


def test_the_only_host_sync_in_the_loop_is_metric_logging(profiled_run):
  """In the trace, each step dispatches one program, and the host waits for the device only to log."""
  from benchmarks import trace_report  # pylint: disable=g-import-not-at-top
  _, workdir, _ = profiled_run
  report = trace_report.load(str(workdir / "profile"))
  assert [s.step for s in report.steps] == [1, 2, 3, 4, 5]
  assert all(s.dispatches == ["train_step"] for s in report.steps), report.table()
  assert report.synced_after == [2], report.table()  # log_every=3: after step 2, and nowhere else
  assert trace_report.main([str(workdir / "profile")]) == 0


def test_trace_report_errors(tmp_path, capsys):
  from benchmarks import trace_report  # pylint: disable=g-import-not-at-top
  assert trace_report.main([str(tmp_path)]) == 2
  assert "no *.trace.json.gz under" in capsys.readouterr().err


def test_bad_profile_steps_are_rejected(cache, tmp_path):
  from sjedd_jax import config as config_lib, train  # pylint: disable=g-import-not-at-top
  for spec in ("3", "3,1", "a,b"):
    with pytest.raises(config_lib.ConfigError, match="profile_steps"):
      train.run(tiny_config(cache, profile_steps=spec), str(tmp_path / "bad"), progress=False)


def test_cost_analysis_recipe_in_the_docs(cache):
  """The docs' ``compiled_train_step`` runs as written and XLA reports the step's cost."""
  with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                         "profiling.md")) as f:
    text = f.read()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  (recipe,) = [b for b in blocks if "def compiled_train_step" in b]
  namespace = {}
  exec(compile(recipe, "docs/profiling.md", "exec"), namespace)  # pylint: disable=exec-used
  compiled = namespace["compiled_train_step"](tiny_config(cache))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  assert cost["flops"] > 1e6 and cost["bytes accessed"] > 0
  mem = compiled.memory_analysis()
  assert mem.alias_size_in_bytes > 0  # the donated state is updated in place


def test_predict_from_the_run_checkpoint(profiled_run, tmp_path):
  """``predict --config CFG --workdir DIR --checkpoint latest`` scores with the run's parameters."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sjedd_jax import predict  # pylint: disable=g-import-not-at-top
  from sjedd_jax.data import model_input, videos  # pylint: disable=g-import-not-at-top
  config, workdir, params = profiled_run
  detector, restored = predict.load_model(config=config, workdir=str(workdir), checkpoint="latest")
  for a, b in zip(jax.tree.leaves(jax.device_get(restored.params)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  face = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
  videos.write_image(str(tmp_path / "face.png"), face)
  (res,) = predict.predict_files(detector, restored, [str(tmp_path)], face_detector=None, progress=False,
                                 batch_size=4)
  x = model_input.preprocess_np(face, config.data.image_size, detector.mean, detector.std)[None]
  want = np.asarray(jax.jit(detector.predict)(params, restored.state, x)["marginals"])[0]
  np.testing.assert_allclose(list(res["marginals"].values()), want, atol=1e-5)
