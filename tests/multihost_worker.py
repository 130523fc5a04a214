"""One process of the two-process (loopback coordinator) data-parallel test.

Usage: python tests/multihost_worker.py PROCESS_ID PORT OUT.npz
Each process owns 2 CPU devices and feeds its half of every global batch.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main():
  pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid)
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.dirname(__file__))
  import test_train_step as t  # pylint: disable=g-import-not-at-top
  from sjedd_jax import train_step as ts  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors import Variables  # pylint: disable=g-import-not-at-top

  assert jax.process_count() == 2 and jax.device_count() == 4
  params, opt, weighting, step = t._setup()
  mesh = ts.data_mesh()
  state = ts.shard_state(ts.init_state(Variables(params, {}), opt, weighting), mesh)
  fn = ts.compile_train_step(step, mesh)
  rng = np.random.default_rng(0)
  for _ in range(3):
    tr, va = t.make_batch(rng), t.make_batch(rng)     # the same global batch in every process
    half = lambda b: {k: v[pid * 4:(pid + 1) * 4] for k, v in b.items()}
    state, m = fn(state, ts.global_batch(half(tr), mesh), ts.global_batch(half(va), mesh))
  state = jax.device_get(state)
  if pid == 0:
    np.savez(out, lam=np.asarray(state.lam_state.lam), w1=np.asarray(state.params["w1"]),
             w2=np.asarray(state.params["w2"]), loss=np.asarray(jax.device_get(m["loss/primary"])))
  jax.distributed.shutdown()


if __name__ == "__main__":
  main()
