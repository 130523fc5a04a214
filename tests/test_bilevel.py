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


# --------------------------------------------------------------- lr pytree, nonneg, model state, dropout
def test_lr_pytree_closed_form_and_frozen_group():
  """Per-group learning rates: the hypergradient follows lr * d leaf by leaf; lr 0 freezes a group."""
  A, a_tr, a_va, theta = quadratic_problem(2)
  lam = np.array([1.0, 0.5, 2.0])
  wd = 0.01
  lr_vec = np.array([0.1] * 3 + [0.0] * 3)           # second half frozen
  th = theta["w"]
  grads = np.einsum("tij,tj->ti", A, th[None] - a_tr)
  g = (lam[:, None] * grads).sum(0)
  th_v = th - lr_vec * (g + wd * th)
  d = np.einsum("ij,j->i", A[0], th_v - a_va[0])
  expected = -grads @ (lr_vec * d)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  tr = {"A": f32(A), "a": f32(a_tr)}
  va = {"A": f32(A), "a": f32(a_va)}

  def split_losses(p, b):
    return quad_losses({"w": jnp.concatenate([p["a"], p["b"]])}, b)

  params = {"a": f32(th[:3]), "b": f32(th[3:])}
  for method in ("finite_difference", "jvp"):
    hg = bilevel.hypergradient(split_losses, params, f32(lam), tr, va, lr={"a": 0.1, "b": 0.0},
                               weight_decay=wd, method=method)
    np.testing.assert_allclose(hg, expected, rtol=2e-3, atol=1e-6, err_msg=method)
  # A pytree of equal rates is the scalar case.
  same = bilevel.hypergradient(split_losses, params, f32(lam), tr, va, lr={"a": 0.1, "b": 0.1},
                               weight_decay=wd, method="jvp")
  scalar = bilevel.hypergradient(split_losses, params, f32(lam), tr, va, lr=0.1, weight_decay=wd, method="jvp")
  np.testing.assert_allclose(same, scalar, rtol=1e-5, atol=1e-7)


def test_nonneg_projection():
  A, a_tr, a_va, theta = quadratic_problem(3)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  tr = {"A": f32(A), "a": f32(a_tr)}
  va = {"A": f32(A), "a": f32(a_va)}
  params = {"w": f32(theta["w"])}
  lams = {}
  for nonneg in (False, True):
    w = bilevel.auto_lambda(3, optimizer=optax.sgd(1e4), nonneg=nonneg, method="jvp")
    _, state, info = w.step(w.init(), quad_losses, params, tr, va, lr=0.1)
    lams[nonneg] = np.asarray(state.lam)
  assert lams[False].min() < 0, lams  # this step pushes a weight below zero...
  np.testing.assert_array_equal(lams[True], np.maximum(lams[False], 0.0))  # ...which nonneg projects to 0


class _BNDropoutNet:
  """A two-layer net with BatchNorm and dropout in NNX, used as a pure function (params, state, batch)."""

  @staticmethod
  def build():
    from flax import nnx
    from sjedd_jax.backbones import layers

    class Net(nnx.Module):
      def __init__(self, rngs):
        self.l1 = nnx.Linear(6, 16, rngs=rngs)
        self.bn = layers.BatchNorm(16)
        self.l2 = nnx.Linear(16, 3, rngs=rngs)

      def __call__(self, x, train, rng):
        h = jax.nn.relu(self.bn(self.l1(x), train))
        return self.l2(layers.dropout(h, 0.3, rng, train))

    return nnx.split(Net(nnx.Rngs(0)), nnx.Param, ...)

  @staticmethod
  def task_losses_fn(graphdef, state):
    from flax import nnx

    def fn(params, batch):
      model = nnx.merge(graphdef, params, state, copy=True)
      out = model(batch["x"], True, batch["rng"])
      losses = jnp.mean((out - batch["y"]) ** 2, axis=0)
      return losses, {"state": nnx.state(model, nnx.BatchStat)}

    return fn


def _bn_batches(seed):
  rng = np.random.default_rng(seed)
  mk = lambda: {"x": jnp.asarray(rng.normal(size=(16, 6)), jnp.float32),
                "y": jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)}
  return mk(), mk()


def test_batchnorm_state_comes_from_theta_and_dropout_key_is_shared():
  from flax import nnx
  graphdef, params, state = _BNDropoutNet.build()
  fn = _BNDropoutNet.task_losses_fn(graphdef, state)
  tr, va = _bn_batches(0)
  key_t, key_v = jax.random.split(jax.random.key(7))
  tr, va = {**tr, "rng": key_t}, {**va, "rng": key_v}
  out = {}
  for method in ("finite_difference", "jvp"):
    w = bilevel.auto_lambda(3, method=method, has_aux=True, radius=1e-3)
    _, _, info = jax.jit(lambda p, b, v, w=w: w.step(w.init(), fn, p, b, v, lr=0.05))(params, tr, va)
    out[method] = info
  # The running statistics returned are those of ONE training forward at theta, on the training batch.
  model = nnx.merge(graphdef, params, state, copy=True)
  model(tr["x"], True, tr["rng"])
  want = nnx.state(model, nnx.BatchStat)
  for m in out.values():
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), m["aux"]["state"], want)
  before = jax.tree.leaves(state)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(want), before))  # they did move
  # With one key for every evaluation, the finite difference is the directional derivative (not noise).
  fd, jv = np.asarray(out["finite_difference"]["hypergradient"]), np.asarray(out["jvp"]["hypergradient"])
  assert np.abs(jv).min() > 1e-6
  np.testing.assert_allclose(fd, jv, rtol=2e-2, atol=2e-2 * np.abs(jv).max())
