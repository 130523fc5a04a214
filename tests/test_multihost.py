"""Two JAX processes on one machine (loopback coordinator) == one process, same global batch."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

import test_train_step as t
from sjedd_jax import train_step as ts
from sjedd_jax.detectors import Variables


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
  port, out = str(_free_port()), str(tmp_path / "mh.npz")
  worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, worker, str(i), port, out], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  multi = np.load(out)

  params, opt, weighting, step = t._setup()
  mesh = ts.data_mesh(jax.devices()[:1])
  state = ts.shard_state(ts.init_state(Variables(params, {}), opt, weighting), mesh)
  fn = ts.compile_train_step(step, mesh)
  rng = np.random.default_rng(0)
  for _ in range(3):
    tr, va = t.make_batch(rng), t.make_batch(rng)
    state, m = fn(state, ts.global_batch(tr, mesh), ts.global_batch(va, mesh))
  state = jax.device_get(state)
  np.testing.assert_allclose(multi["lam"], state.lam_state.lam, rtol=1e-5)
  np.testing.assert_allclose(multi["w1"], state.params["w1"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(multi["w2"], state.params["w2"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(multi["loss"], m["loss/primary"], rtol=1e-5)
