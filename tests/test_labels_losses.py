"""Table I labels and the per-level task losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sjedd_jax.detectors.sjedd import hierarchy
from sjedd_jax.detectors.sjedd import labels
from sjedd_jax.detectors.sjedd import losses


def test_table_i_rows():
  y, m = labels.ffpp_label("real")
  assert y.sum() == 0 and m.all()
  y, m = labels.ffpp_label("aug_eye")
  np.testing.assert_array_equal(y, [1, 0, 0, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(m, [1, 0, 1, 1, 1, 1, 1, 1, 1, 1])
  y, m = labels.ffpp_label("aug_nose")
  np.testing.assert_array_equal(y, [1, 0, 0, 1, 0, 0, 0, 0, 1, 0])
  assert m.all()
  for s in ("Deepfakes", "FaceSwap"):
    y, m = labels.ffpp_label(s)
    np.testing.assert_array_equal(y, [1, 0, 1, 1, 1, 1, 1, 1, 1, 1])
    assert m[1] == 0 and m.sum() == 9
  for s in ("Face2Face", "NeuralTextures"):
    y, m = labels.ffpp_label(s)
    np.testing.assert_array_equal(y, [1, 1, 0, 1, 0, 0, 1, 1, 0, 0])
    assert m.all()
  y, m = labels.ffpp_label("aug_lip_mouth", unobserved_as_zero=True)
  np.testing.assert_array_equal(y, [1, 0, 0, 1, 0, 0, 1, 1, 0, 0])
  assert m.all()
  with pytest.raises(KeyError, match="FaceShifter"):
    labels.ffpp_label("FaceShifter")


def test_every_table_i_label_is_a_legal_state():
  states = hierarchy.ffpp().legal_states
  for s in labels.SOURCES:
    y, m = labels.ffpp_label(s)
    # Some legal state agrees with y on all observed entries.
    agree = ((states == y) | (m == 0)).all(1)
    assert agree.any(), s


def test_fidelity_values():
  p = jnp.array([0.0, 1.0, 0.5, 0.3])
  y = jnp.array([0.0, 1.0, 1.0, 0.0])
  l = np.asarray(losses.fidelity(p, y))
  expected = 1 - np.sqrt(np.array([0, 1, .5, 0]) + 1e-8) - np.sqrt(np.array([1, 0, 0, .7]) + 1e-8)
  np.testing.assert_allclose(l, expected, atol=1e-7)
  assert abs(l[0]) < 1e-3 and abs(l[1]) < 1e-3
  g = jax.grad(lambda p: losses.fidelity(p, y).sum())(p)
  assert np.isfinite(np.asarray(g)).all()


def test_task_losses_masked_means():
  levels = hierarchy.FFPP_LEVELS
  rng = np.random.default_rng(0)
  p = rng.uniform(size=(4, 10)).astype(np.float32)
  ys, ms = zip(*[labels.ffpp_label(s) for s in ("real", "Deepfakes", "aug_eye", "Face2Face")])
  y, m = np.stack(ys), np.stack(ms)
  out = np.asarray(losses.task_losses(jnp.asarray(p), jnp.asarray(y), jnp.asarray(m), levels))
  elem = 1 - np.sqrt(p * y + 1e-8) - np.sqrt((1 - p) * (1 - y) + 1e-8)
  lv = np.asarray(levels)
  for t in range(3):
    sel = (lv == t)[None, :] * m
    np.testing.assert_allclose(out[t], (elem * sel).sum() / sel.sum(), rtol=1e-5)
  out_bce = np.asarray(losses.task_losses(jnp.asarray(p), jnp.asarray(y), jnp.asarray(m), levels, loss="bce"))
  bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
  sel = (lv == 0)[None, :] * m
  np.testing.assert_allclose(out_bce[0], (bce * sel).sum() / sel.sum(), rtol=1e-5)


def test_task_losses_no_observed_level_is_zero_not_nan():
  levels = hierarchy.FFPP_LEVELS
  p = jnp.full((2, 10), 0.3)
  y = jnp.zeros((2, 10))
  mask = jnp.zeros((2, 10)).at[:, 0].set(1.0)  # binary-only labels
  out, g = jax.value_and_grad(lambda p: losses.task_losses(p, y, mask, levels).sum())(p), None
  l = np.asarray(losses.task_losses(p, y, mask, levels))
  assert l[1] == 0 and l[2] == 0 and l[0] > 0
  grad = jax.grad(lambda p: losses.task_losses(p, y, mask, levels).sum())(p)
  assert np.isfinite(np.asarray(grad)).all()
  assert float(jnp.abs(grad[:, 1:]).sum()) == 0.0
  with pytest.raises(ValueError, match="unknown loss"):
    losses.task_losses(p, y, mask, levels, loss="hinge")
