"""The compiled bi-level step: schedules, one step, and 4-device == 1-device."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sjedd_jax import optim, train_step as ts
from sjedd_jax.detectors import Variables
from sjedd_jax.detectors import sjedd as sjedd_det
from sjedd_jax.detectors.sjedd import hierarchy
from sjedd_jax.detectors.sjedd import labels


def linear_scores(params, images):
  x = images.reshape(images.shape[0], -1)
  return jnp.tanh(x @ params["w1"]) @ params["w2"] + params["b"]


def make_batch(rng, b=8, hw=4):
  sources = rng.choice(labels.SOURCES, size=b)
  ys, ms = zip(*[labels.ffpp_label(s) for s in sources])
  return {"image": rng.normal(size=(b, hw, hw, 3)).astype(np.float32),
          "y": np.stack(ys), "observed": np.stack(ms)}


def test_release_cosine_matches_pytorch_closed_form():
  sched = optim.release_cosine(6e-7, steps_per_epoch=10, t_max=5)
  for epoch in range(20):
    expected = 6e-7 * (1 + np.cos(np.pi * epoch / 5)) / 2
    np.testing.assert_allclose(float(sched(epoch * 10 + 3)), expected, rtol=1e-5, atol=1e-13)
  with pytest.raises(ValueError, match="unknown lr schedule"):
    optim.make_schedule("step", 1e-3, total_steps=10)


def _setup(method="finite_difference"):
  h = hierarchy.ffpp()
  key = jax.random.PRNGKey(0)
  k1, k2 = jax.random.split(key)
  params = {"w1": jax.random.normal(k1, (48, 16)) * 0.2, "w2": jax.random.normal(k2, (16, 10)) * 0.5,
            "b": jnp.zeros(10)}
  det = sjedd_det.scores_detector(linear_scores, h)
  weighting = ts.make_weighting("bilevel", lam_lr=1e-2, method=method)
  sched = optim.make_schedule("constant", 1e-2, total_steps=10)
  opt = optax.adamw(sched, weight_decay=1e-3)
  step = ts.make_train_step(det, weighting, opt, sched, 1e-3)
  return params, opt, weighting, step


def _run(mesh, n_steps=3, method="finite_difference"):
  params, opt, weighting, step = _setup(method)
  state = ts.shard_state(ts.init_state(Variables(params, {}), opt, weighting), mesh)
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
  state = ts.init_state(Variables(params, {}), opt, weighting)
  new_state, m = jax.jit(step)(state, tr, va)
  fn = ts.detector_losses_fn(sjedd_det.scores_detector(linear_scores, hierarchy.ffpp()), {})
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


# ------------------------------------------------ a detector with BatchNorm and dropout (model state, keys)
def bn_dropout_detector():
  """A toy detector: Linear -> BatchNorm -> ReLU -> dropout -> Linear(2 tasks), through ModuleHandle."""
  from flax import nnx
  from sjedd_jax.backbones import layers
  from sjedd_jax.detectors import interface

  class Net(nnx.Module):
    def __init__(self, rngs):
      # No bias before BatchNorm: its gradient is zero up to rounding, which Adam would amplify to +-lr.
      self.l1 = nnx.Linear(48, 16, use_bias=False, rngs=rngs)
      self.bn = layers.BatchNorm(16)
      self.l2 = nnx.Linear(16, 2, rngs=rngs)

    def __call__(self, x, train, rng=None):
      h = jax.nn.relu(self.bn(self.l1(x.reshape(x.shape[0], -1)), train))
      return self.l2(layers.dropout(h, 0.25, rng, train))

  handle = interface.ModuleHandle("toy")

  def task_losses(params, state, batch, rng, train):
    model = handle.merge(params, state)
    logits = model(batch["image"], train, rng)
    y = batch["y"]
    ce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits[:, 0], y[:, 0]))
    aux = jnp.mean((jax.nn.sigmoid(logits[:, 1]) - y[:, 1]) ** 2)
    acc = jnp.mean(((logits[:, 0] > 0) == (y[:, 0] > 0.5)).astype(jnp.float32))
    return jnp.stack([ce, aux]), handle.state_of(model), {"accuracy": acc}

  def predict(params, state, images):
    return {"p_fake": jax.nn.sigmoid(handle.merge(params, state)(images, False)[:, 0])}

  return interface.Detector(
      name="toy", task_names=("ce", "aux"), batch_keys=("image", "y"), label_fn=None,
      init=lambda seed: handle.split(Net(nnx.Rngs(seed))), task_losses=task_losses, predict=predict,
      image_size=4, mean=(0.5,) * 3, std=(0.5,) * 3)


def _toy_batch(rng, b=8):
  y = np.stack([rng.integers(0, 2, b), rng.integers(0, 2, b)], -1).astype(np.float32)
  return {"image": rng.normal(size=(b, 4, 4, 3)).astype(np.float32), "y": y}


def _run_toy(mesh, n_steps=3, state=None, rng_seed=0):
  det = bn_dropout_detector()
  variables = det.init(0)
  weighting = ts.make_weighting("bilevel", num_tasks=2, lam_lr=1e-2, primary=(1.0, 0.0))
  sched = optim.make_schedule("constant", 5e-2, total_steps=10)
  opt = optax.adamw(sched, weight_decay=1e-3)
  step = ts.compile_train_step(ts.make_train_step(det, weighting, opt, sched, 1e-3), mesh)
  state = ts.shard_state(ts.init_state(variables, opt, weighting, seed=3) if state is None else state, mesh)
  rng = np.random.default_rng(rng_seed)
  out = []
  for _ in range(n_steps):
    state, m = step(state, ts.global_batch(_toy_batch(rng), mesh), ts.global_batch(_toy_batch(rng), mesh))
    out.append(jax.device_get(m))
  return jax.device_get(state), out


def test_batchnorm_dropout_detector_four_devices_equal_one():
  """Model state (BatchNorm statistics over the global batch) and dropout masks do not depend on sharding."""
  s1, m1 = _run_toy(ts.data_mesh(jax.devices()[:1]))
  s4, m4 = _run_toy(ts.data_mesh(jax.devices()[:4]))
  for a, b in zip(m1, m4):
    assert set(a) >= {"loss/ce", "loss/aux", "lambda", "accuracy"}
    for k in a:
      np.testing.assert_allclose(a[k], b[k], rtol=2e-4, atol=1e-6, err_msg=k)
  for tree in ("params", "model_state"):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 getattr(s1, tree), getattr(s4, tree))
  # The running statistics moved (a training forward updates them) and lambda learned.
  mean, var = s1.model_state["bn"]["mean"], s1.model_state["bn"]["var"]
  assert not np.allclose(mean, 0.0) and not np.allclose(var, 1.0)
  assert not np.allclose(s1.lam_state.lam, 1.0)


def test_step_keys_make_a_resumed_run_exact():
  """Dropout keys come from (base key, step): 3 steps == 2 steps, then 1 more from the saved state."""
  mesh = ts.data_mesh(jax.devices()[:1])
  full, _ = _run_toy(mesh, n_steps=3)
  part, _ = _run_toy(mesh, n_steps=2)
  # Resume: the third step's batches are the third ones drawn by the same generator.
  rng = np.random.default_rng(0)
  for _ in range(4):
    _toy_batch(rng)
  det = bn_dropout_detector()
  det.init(0)
  weighting = ts.make_weighting("bilevel", num_tasks=2, lam_lr=1e-2, primary=(1.0, 0.0))
  sched = optim.make_schedule("constant", 5e-2, total_steps=10)
  opt = optax.adamw(sched, weight_decay=1e-3)
  step = ts.compile_train_step(ts.make_train_step(det, weighting, opt, sched, 1e-3), mesh)
  resumed, _ = step(ts.shard_state(part, mesh), ts.global_batch(_toy_batch(rng), mesh),
                    ts.global_batch(_toy_batch(rng), mesh))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), full)


def test_prepare_runs_once_at_theta_and_reaches_every_training_pass():
  """Detector.prepare: one pre-pass per step at theta; every pass over the training batch (theta and,
  with finite differences, theta +- eps d) sees what it put in the batch; the validation pass does not."""
  base = bn_dropout_detector()
  seen, prepared = [], []

  def prepare(params, state, batch):
    prepared.append(batch["image"].shape[0])
    return {**batch, "held": jnp.zeros(())}

  def task_losses(params, state, batch, rng, train):
    seen.append((batch["image"].shape[0], "held" in batch))
    return base.task_losses(params, state, {k: v for k, v in batch.items() if k != "held"}, rng, train)

  det = base._replace(prepare=prepare, task_losses=task_losses)
  mesh = ts.data_mesh(jax.devices()[:1])
  weighting = ts.make_weighting("bilevel", num_tasks=2, lam_lr=1e-2, primary=(1.0, 0.0),
                                method="finite_difference")
  sched = optim.make_schedule("constant", 5e-2, total_steps=10)
  opt = optax.sgd(sched)
  step = ts.make_train_step(det, weighting, opt, sched, 0.0)
  state = ts.init_state(det.init(0), opt, weighting, seed=3)
  rng = np.random.default_rng(0)
  jax.eval_shape(step, state, _toy_batch(rng, 8), _toy_batch(rng, 6))   # traces every pass
  assert prepared == [8]
  train_passes = [held for b, held in seen if b == 8]
  assert len(train_passes) >= 2 and all(train_passes), seen      # theta and theta +- eps d
  assert [held for b, held in seen if b == 6] and not any(held for b, held in seen if b == 6), seen


def test_mil_ranking_holds_rank_weights_only_for_finite_differences():
  from sjedd_jax import config as config_lib
  from sjedd_jax.detectors import mil_ranking
  c = config_lib.base_config("mil_ranking")
  c.weighting.kind, c.weighting.method = "bilevel", "finite_difference"
  assert mil_ranking.holds_rank_weights(c)
  c.weighting.method = "jvp"
  assert not mil_ranking.holds_rank_weights(c)
  c.weighting.kind, c.weighting.method = "fixed", "finite_difference"
  assert not mil_ranking.holds_rank_weights(c)
