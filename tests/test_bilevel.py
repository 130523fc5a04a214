"""The bi-level optimiser: closed form, FD vs JVP, and behaviour on a multitask problem."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sjedd_jax import bilevel


def quadratic_problem(seed=0, n=6, T=3):
  rng = np.random.default_rng(seed)
  A = []
  for _ in range(T):
    q = rng.normal(size=(n, n))
    A.append(q @ q.T / n + np.eye(n) * 0.5)
  A = np.stack(A)                      # (T, n, n)
  a_tr = rng.normal(size=(T, n))
  a_va = rng.normal(size=(T, n))
  theta = {"w": rng.normal(size=(n,)) * 0.5}
  return A, a_tr, a_va, theta


def quad_losses(params, batch):
  A, a = batch["A"], batch["a"]
  r = params["w"][None, :] - a          # (T, n)
  return 0.5 * jnp.einsum("ti,tij,tj->t", r, A, r)


def closed_form(A, a_tr, a_va, theta, lam, lr, wd, primary):
  th = theta["w"]
  grads = np.einsum("tij,tj->ti", A, th[None] - a_tr)       # grad L_i(theta; T)
  g = (lam[:, None] * grads).sum(0)
  th_v = th - lr * (g + wd * th)
  d = (np.asarray(primary)[:, None] * np.einsum("tij,tj->ti", A, th_v[None] - a_va)).sum(0)
  return -lr * grads @ d, g


@pytest.mark.parametrize("method", ["finite_difference", "jvp"])
def test_quadratic_closed_form(method):
  A, a_tr, a_va, theta = quadratic_problem()
  lam = np.array([1.0, 0.7, 1.3])
  lr, wd = 0.1, 0.01
  expected, _ = closed_form(A, a_tr, a_va, theta, lam, lr, wd, (1.0, 0.0, 0.0))
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  tr = {"A": f32(A), "a": f32(a_tr)}
  va = {"A": f32(A), "a": f32(a_va)}
  hg = jax.jit(lambda p, l: bilevel.hypergradient(quad_losses, p, l, tr, va, lr=lr, weight_decay=wd,
                                                   method=method))({"w": f32(theta["w"])}, f32(lam))
  rel = np.abs(np.asarray(hg) - expected) / np.abs(expected)
  assert rel.max() < 1e-3, (np.asarray(hg), expected)


def test_step_gradient_uses_new_lambda():
  A, a_tr, a_va, theta = quadratic_problem(1)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  tr = {"A": f32(A), "a": f32(a_tr)}
  va = {"A": f32(A), "a": f32(a_va)}
  opt = optax.sgd(0.5)
  w = bilevel.auto_lambda(3, optimizer=opt, primary=(1.0, 0.0, 0.0))
  state = w.init()
  params = {"w": f32(theta["w"])}
  grads, new_state, info = jax.jit(lambda s, p: w.step(s, quad_losses, p, tr, va, lr=0.1))(state, params)
  hyper, _ = closed_form(A, a_tr, a_va, theta, np.ones(3), 0.1, 0.0, (1, 0, 0))
  np.testing.assert_allclose(np.asarray(info["hypergradient"]), hyper, rtol=1e-3)
  lam_new = 1.0 - 0.5 * hyper
  np.testing.assert_allclose(np.asarray(new_state.lam), lam_new, rtol=1e-4)
  _, g_new = closed_form(A, a_tr, a_va, theta, lam_new, 0.1, 0.0, (1, 0, 0))
  np.testing.assert_allclose(np.asarray(grads["w"]), g_new, rtol=1e-4, atol=1e-6)
  assert int(new_state.count) == 1


def mlp_init(key, sizes=(5, 16, 16, 3)):
  params = []
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    k1, key = jax.random.split(key)
    params.append({"w": jax.random.normal(k1, (a, b)) / np.sqrt(a), "b": jnp.zeros(b)})
  return params


def mlp_losses(params, batch):
  h = batch["x"]
  for layer in params[:-1]:
    h = jnp.tanh(h @ layer["w"] + layer["b"])
  out = h @ params[-1]["w"] + params[-1]["b"]      # (B, 3): one output per task
  return jnp.mean((out - batch["y"]) ** 2, axis=0)


def test_mlp_fd_and_jvp_agree():
  key = jax.random.PRNGKey(0)
  params = mlp_init(key)
  kx, ky, kv, kw = jax.random.split(jax.random.PRNGKey(1), 4)
  tr = {"x": jax.random.normal(kx, (32, 5)), "y": jax.random.normal(ky, (32, 3))}
  va = {"x": jax.random.normal(kv, (32, 5)), "y": jax.random.normal(kw, (32, 3))}
  lam = jnp.array([1.0, 0.5, 2.0])
  f = jax.jit(lambda p, method: bilevel.hypergradient(mlp_losses, p, lam, tr, va, lr=0.05,
                                                      weight_decay=1e-3, method=method),
              static_argnums=1)
  fd, jv = np.asarray(f(params, "finite_difference")), np.asarray(f(params, "jvp"))
  assert np.abs(jv).min() > 1e-5
  np.testing.assert_allclose(fd, jv, rtol=2e-2, atol=1e-6)


def test_update_every_and_fixed_weights():
  A, a_tr, a_va, theta = quadratic_problem(2)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  tr = {"A": f32(A), "a": f32(a_tr)}
  va = {"A": f32(A), "a": f32(a_va)}
  params = {"w": f32(theta["w"])}
  w = bilevel.auto_lambda(3, update_every=2)
  step = jax.jit(lambda s: w.step(s, quad_losses, params, tr, va, lr=0.1))
  s = w.init()
  lams = []
  for _ in range(4):
    _, s, info = step(s)
    lams.append(np.asarray(s.lam))
    assert bool(info["lam_updated"]) == (len(lams) % 2 == 1)
  np.testing.assert_array_equal(lams[1], lams[0])
  assert not np.array_equal(lams[2], lams[1])
  # One program per branch, picked on the host (what sjedd_jax.train does), gives the same run.
  branch = {u: jax.jit(lambda s, u=u: w.step(s, quad_losses, params, tr, va, lr=0.1, update=u))
            for u in (True, False)}
  s = w.init()
  for i in range(4):
    _, s, info = branch[i % 2 == 0](s)
    assert bool(info["lam_updated"]) == (i % 2 == 0)
    np.testing.assert_allclose(np.asarray(s.lam), lams[i], rtol=1e-6)
  fw = bilevel.fixed_weights([1.0, 0.1, 0.1])
  g, s2, info = jax.jit(lambda s: fw.step(s, quad_losses, params, tr))(fw.init())
  _, g_ref = closed_form(A, a_tr, a_va, theta, np.array([1, .1, .1]), 0.1, 0, (1, 0, 0))
  np.testing.assert_allclose(np.asarray(g["w"]), g_ref, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(s2.lam), [1, .1, .1])
  with pytest.raises(ValueError, match="method"):
    bilevel.auto_lambda(3, method="neumann")
  with pytest.raises(ValueError, match="shape"):
    bilevel.auto_lambda(3, primary=(1.0, 0.0))


def test_lambda_grows_for_helpful_task_and_shrinks_for_noise():
  """Primary: few noisy samples of y = X w*. Aux: many clean samples of the same map.
  Noise task: a random, unrelated map. Bi-level weighting should favour aux over noise."""
  rng = np.random.default_rng(0)
  n_feat = 8
  w_star = rng.normal(size=n_feat)
  w_noise = rng.normal(size=n_feat)

  def make(nb):
    x = rng.normal(size=(nb, n_feat))
    return {"x": x, "y0": x @ w_star + 0.3 * rng.normal(size=nb), "y1": x @ w_star,
            "y2": x @ w_noise}

  def losses_fn(params, b):
    pred = b["x"] @ params["w"]
    return jnp.stack([jnp.mean((pred - b[k]) ** 2) for k in ("y0", "y1", "y2")])

  w = bilevel.auto_lambda(3, optimizer=optax.adam(1e-2))
  model_opt = optax.sgd(0.02)

  @jax.jit
  def step(params, opt_state, lam_state, tr, va):
    grads, lam_state, info = w.step(lam_state, losses_fn, params, tr, va, lr=0.02)
    upd, opt_state = model_opt.update(grads, opt_state, params)
    return optax.apply_updates(params, upd), opt_state, lam_state, info

  params = {"w": jnp.zeros(n_feat)}
  opt_state, lam_state = model_opt.init(params), w.init()
  for _ in range(300):
    tr = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), make(16))
    va = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), make(16))
    params, opt_state, lam_state, info = step(params, opt_state, lam_state, tr, va)
  lam = np.asarray(lam_state.lam)
  print("lambda after 300 steps:", lam)
  assert lam[1] > 1.3, lam
  assert lam[2] < 0.7, lam
  assert lam[1] > lam[2] + 1.0


def test_dwa_weights_follow_loss_ratios():
  w = bilevel.dwa(3, temperature=2.0, period=2)
  # Task losses shrink at different rates: task 2 stalls, so it should get the largest weight.
  seq = [jnp.array([4.0, 4.0, 4.0]), jnp.array([4.0, 4.0, 4.0]),
         jnp.array([2.0, 3.0, 4.0]), jnp.array([2.0, 3.0, 4.0]), jnp.array([1.0, 2.0, 4.0])]
  state = w.init()
  lams = []
  for l in seq:
    fn = lambda p, b, l=l: l * p["s"]
    _, state, info = w.step(state, fn, {"s": jnp.ones(())}, None)
    lams.append(np.asarray(state.lam))
  np.testing.assert_allclose(lams[0], 1.0)
  np.testing.assert_allclose(lams[2], 1.0)           # only one finished period so far
  ratio = np.array([2 / 4, 3 / 4, 4 / 4])
  expected = 3 * np.exp(ratio / 2) / np.exp(ratio / 2).sum()
  np.testing.assert_allclose(lams[3], expected, rtol=1e-6)
  np.testing.assert_allclose(lams[4], lams[3])        # held within a period
  assert lams[3][2] > lams[3][1] > lams[3][0]


def test_dwa_state_can_be_donated():
  w = bilevel.dwa(3)
  f = jax.jit(lambda s: jax.tree.map(lambda x: x + 1, s), donate_argnums=0)
  jax.block_until_ready(f(w.init()))   # fails if two fields share one buffer
