"""The compiled bi-level step: schedules, one step, and 4-device == 1-device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sjedd_jax import hierarchy, labels, train_step as ts


def linear_scores(params, images):
  x = images.reshape(images.shape[0], -1)
  return jnp.tanh(x @ params["w1"]) @ params["w2"] + params["b"]


def make_batch(rng, b=8, hw=4):
  sources = rng.choice(labels.SOURCES, size=b)
  ys, ms = zip(*[labels.ffpp_label(s) for s in sources])
  return {"image": rng.normal(size=(b, hw, hw, 3)).astype(np.float32),
          "y": np.stack(ys), "mask": np.stack(ms)}


def test_release_cosine_matches_pytorch_closed_form():
  sched = ts.release_cosine(6e-7, steps_per_epoch=10, t_max=5)
  for epoch in range(20):
    expected = 6e-7 * (1 + np.cos(np.pi * epoch / 5)) / 2
    np.testing.assert_allclose(float(sched(epoch * 10 + 3)), expected, rtol=1e-5, atol=1e-13)
  with pytest.raises(ValueError, match="unknown lr schedule"):
    ts.make_schedule("step", 1e-3, total_steps=10)


def _setup(method="finite_difference"):
  h = hierarchy.ffpp()
  key = jax.random.PRNGKey(0)
  k1, k2 = jax.random.split(key)
  params = {"w1": jax.random.normal(k1, (48, 16)) * 0.2, "w2": jax.random.normal(k2, (16, 10)) * 0.5,
            "b": jnp.zeros(10)}
  fn = ts.make_task_losses_fn(linear_scores, h)
  weighting = ts.make_weighting("bilevel", lam_lr=1e-2, method=method)
  sched = ts.make_schedule("constant", 1e-2, total_steps=10)
  opt = optax.adamw(sched, weight_decay=1e-3)
  step = ts.make_train_step(fn, weighting, opt, sched, 1e-3)
  return params, opt, weighting, step


def _run(mesh, n_steps=3, method="finite_difference"):
  params, opt, weighting, step = _setup(method)
  state = ts.shard_state(ts.init_state(params, opt, weighting), mesh)
  fn = ts.compile_train_step(step, mesh)
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n_steps):
    tr, va = make_batch(rng), make_batch(rng)
    state, m = fn(state, ts.global_batch(tr, mesh), ts.global_batch(va, mesh))
    out.append(jax.device_get(m))
  return jax.device_get(state), out


def test_four_devices_equal_one_device():
  assert len(jax.devices()) >= 4, "conftest should give 4 host devices"
  s1, m1 = _run(ts.data_mesh(jax.devices()[:1]))
  s4, m4 = _run(ts.data_mesh(jax.devices()[:4]))
  for a, b in zip(m1, m4):
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-6, err_msg=k)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s1.params, s4.params)
  np.testing.assert_allclose(s1.lam_state.lam, s4.lam_state.lam, rtol=1e-5)
  # Lambda actually moved and the model learned something.
  assert not np.allclose(s1.lam_state.lam, 1.0)
  assert int(s1.step) == 3


def test_step_matches_library_composition():
  """The compiled step equals calling the bi-level library and AdamW by hand."""
  params, opt, weighting, step = _setup("jvp")
  rng = np.random.default_rng(1)
  tr, va = make_batch(rng), make_batch(rng)
  state = ts.init_state(params, opt, weighting)
  new_state, m = jax.jit(step)(state, tr, va)
  fn = ts.make_task_losses_fn(linear_scores, hierarchy.ffpp())
  hg = ts.bilevel.hypergradient(fn, params, jnp.ones(3), tr, va, lr=1e-2, weight_decay=1e-3, method="jvp",
                                has_aux=True)
  # One fused program vs op-by-op: float32 rounding, relative to the vector's scale.
  np.testing.assert_allclose(m["hypergradient"], hg, rtol=1e-4, atol=1e-4 * float(jnp.abs(hg).max()))
  upd, _ = optax.adam(1e-2).update(hg, optax.adam(1e-2).init(jnp.ones(3)), jnp.ones(3))
  np.testing.assert_allclose(new_state.lam_state.lam, 1.0 + upd, rtol=1e-6)
  lam = new_state.lam_state.lam
  g = jax.grad(lambda p: jnp.vdot(lam, fn(p, tr)[0]))(params)
  u, _ = opt.update(g, opt.init(params), params)
  ref = optax.apply_updates(params, u)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), new_state.params, ref)
