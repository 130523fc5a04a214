"""The model optimiser of a config: schedules, parameter groups (lr multipliers, frozen groups), plateau."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sjedd_jax import bilevel, config as config_lib, optim


def _optim(**over):
  o = config_lib.base_config().optim
  for k, v in over.items():
    o[k] = v
  return o


def test_poly_and_warmup_multistep_schedules():
  s = optim.make_schedule("poly", 2e-3, total_steps=100, power=0.9)
  lr_min = 2e-3 * 0.01
  for t in (0, 10, 50, 99, 100):
    np.testing.assert_allclose(float(s(t)), (2e-3 - lr_min) * (1 - t / 100) ** 0.9 + lr_min, rtol=1e-5)
  w = optim.make_schedule("warmup_multistep", 1e-3, total_steps=1000, steps_per_epoch=10, warmup_epochs=20,
                          milestones=(70, 120))
  assert float(w(0)) == pytest.approx(1e-3 / 20) and float(w(19 * 10)) == pytest.approx(1e-3)
  assert float(w(69 * 10)) == pytest.approx(1e-3) and float(w(70 * 10)) == pytest.approx(1e-4)
  assert float(w(130 * 10)) == pytest.approx(1e-5)


def test_groups_scale_and_freeze_and_the_virtual_step_sees_them():
  params = {"backbone": {"w": jnp.ones(3)}, "head": {"w": jnp.ones(2)}, "frozen": {"w": jnp.ones(2)}}
  labels = {"backbone": {"w": "backbone"}, "head": {"w": "head"}, "frozen": {"w": "frozen"}}
  o = _optim(name="sgd", lr=0.1, schedule="constant", weight_decay=0.0, momentum=0.0,
             lr_mult=ml_collections.ConfigDict({"backbone": 0.1}), frozen=("frozen",))
  opt = optim.make(o, total_steps=10, steps_per_epoch=1, params=params, labels=labels)
  grads = jax.tree.map(jnp.ones_like, params)
  upd, _ = opt.tx.update(grads, opt.tx.init(params), params)
  np.testing.assert_allclose(upd["backbone"]["w"], -0.01, rtol=1e-6)
  np.testing.assert_allclose(upd["head"]["w"], -0.1, rtol=1e-6)
  np.testing.assert_array_equal(upd["frozen"]["w"], 0.0)
  lr = opt.lr(0)
  assert float(lr["backbone"]["w"]) == pytest.approx(0.01) and float(lr["frozen"]["w"]) == 0.0
  # The bi-level virtual step with that lr pytree leaves the frozen group where it is.
  theta_v = bilevel._virtual_step(params, grads, lr, opt.weight_decay)  # pylint: disable=protected-access
  np.testing.assert_array_equal(theta_v["frozen"]["w"], 1.0)
  np.testing.assert_allclose(theta_v["head"]["w"], 0.9, rtol=1e-6)
  with pytest.raises(config_lib.ConfigError, match="groups"):
    optim.make(_optim(frozen=("nope",)), total_steps=1, steps_per_epoch=1, params=params, labels=labels)
  with pytest.raises(config_lib.ConfigError, match="param_labels"):
    optim.make(_optim(frozen=("frozen",)), total_steps=1, steps_per_epoch=1, params=params)


def test_sgd_with_coupled_decay_matches_torch():
  torch = pytest.importorskip("torch")
  w0 = np.array([1.0, -2.0, 0.5], np.float32)
  g = np.array([0.3, 0.1, -0.2], np.float32)
  p = torch.nn.Parameter(torch.tensor(w0))
  sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=5e-4)
  o = _optim(name="sgd", lr=0.1, schedule="constant", weight_decay=5e-4, momentum=0.9)
  opt = optim.make(o, total_steps=3, steps_per_epoch=1)
  params, st = jnp.asarray(w0), None
  st = opt.tx.init(params)
  for _ in range(3):
    p.grad = torch.tensor(g)
    sgd.step()
    upd, st = opt.tx.update(jnp.asarray(g), st, params)
    params = optax.apply_updates(params, upd)
  np.testing.assert_allclose(np.asarray(params), p.detach().numpy(), rtol=1e-6)


def test_plateau_halves_after_patience_checks_without_gain():
  pl = optim.Plateau(patience=2, factor=0.5, mode="min")
  scales = [pl.update(v) for v in (1.0, 0.9, 0.95, 0.91, 0.92, 0.5, 0.6, 0.6, 0.6)]
  assert scales == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]
  again = optim.Plateau(patience=2)
  again.load(pl.state())
  assert again.state() == pl.state()
  assert optim.plateau_from_config(_optim()) is None
  with pytest.raises(config_lib.ConfigError):
    optim.Plateau(patience=0)
