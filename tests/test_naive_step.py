"""The benchmark's modes do the same mathematics: optimised steps vs the release-work baseline.

One training step from identical weights and batches, float32, on the "test"
CLIP: the fused step (finite differences, and exact JVP), the fresh-forward
step and the naive step (the release's work: per-level CLIP passes at 77 tokens,
five separately compiled passes) give the same task losses, hypergradient and
updated lambda (1e-4). The JVP mode equals the exact directional derivative
that the release's finite difference approximates (1e-4), and the finite
difference at the release's radius is within 1% of it (truncation error).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sjedd_jax import optim, train_step as ts
from sjedd_jax.detectors import Variables
from sjedd_jax.detectors import sjedd as sjedd_det
from sjedd_jax.detectors.sjedd import labels
from benchmarks import naive_step
from sjedd_jax.backbones.clip import modeling as clip_lib
from sjedd_jax.backbones.clip import params as params_lib
from sjedd_jax.detectors.sjedd import model as sjedd

LR, WD = 5e-2, 1e-3
SIZE = 16
# Unoptimised XLA code: the same numbers, compiled 2-3x faster (tests only).
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def random_clip(seed=0):
  """A one-layer-per-tower CLIP with random numpy weights (no JAX initialisers to compile)."""
  cfg = clip_lib.get_config("test", vision_layers=1, text_layers=1, image_size=SIZE)
  model = nnx.eval_shape(lambda: clip_lib.CLIP(cfg, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(seed)
  flat = {k: (1.0 if k.endswith("scale") else 0.0) + 0.1 * rng.standard_normal(s).astype(np.float32)
          for k, s in params_lib.flatten_shapes(model).items()}
  return params_lib.assign(model, flat)


def _batch(rng, b=6, size=SIZE):
  sources = np.asarray(labels.SOURCES)[rng.permutation(len(labels.SOURCES))[:b] % len(labels.SOURCES)]
  ys, ms = zip(*[labels.ffpp_label(s) for s in sources])
  return {"image": jnp.asarray(rng.normal(size=(b, size, size, 3)).astype(np.float32)),
          "y": jnp.asarray(np.stack(ys)), "observed": jnp.asarray(np.stack(ms))}


@pytest.fixture(scope="module")
def setup():
  fast = sjedd.SJEDD(random_clip())
  naive_model = sjedd.SJEDD(fast.clip, sjedd.SJEDDConfig(per_level_passes=True, text_context=77))
  assert fast.text_context == 17 and naive_model.text_context == 77
  rng = np.random.default_rng(0)
  train_b, val_b = _batch(rng), _batch(rng)
  sched = optax.constant_schedule(LR)
  opt = optim.adamw(sched, WD)

  def losses_fn(model):
    det, variables = sjedd_det.from_module(model)
    return det, ts.detector_losses_fn(det, variables.state), variables

  fast_det, fast_fn, fast_vars = losses_fn(fast)
  _, naive_fn, naive_vars = losses_fn(naive_model)
  params, params_n = fast_vars.params, naive_vars.params
  assert jax.tree.structure(params) == jax.tree.structure(params_n)
  weighting = naive_step.lambda_weighting(lam_lr=1e-2)

  def fresh_state():
    return ts.init_state(Variables(jax.tree.map(jnp.copy, params), fast_vars.state), opt, weighting)

  out = {}
  for method in ("finite_difference", "jvp"):
    w = ts.make_weighting("bilevel", lam_lr=1e-2, method=method)
    step = jax.jit(ts.make_train_step(fast_det, w, opt, sched, WD), compiler_options=FAST_COMPILE)
    out[f"fused_{method}"] = step(fresh_state(), train_b, val_b)
  fresh = jax.jit(naive_step.make_fresh_step(fast_fn, opt, sched, WD, lam_lr=1e-2),
                  compiler_options=FAST_COMPILE)
  out["fresh"] = fresh(fresh_state(), train_b, val_b)
  naive = naive_step.make_naive_step(naive_fn, opt, sched, WD, lam_lr=1e-2, compiler_options=FAST_COMPILE)
  state0 = fresh_state()
  # The exact directional derivative grad L_i(theta) . d that the release's finite
  # difference approximates, on the release-work losses, along the naive step's d.
  theta_v = naive.programs["virtual_step"](state0.params, state0.lam_state.lam, train_b, state0.step)
  d = naive.programs["validation"](theta_v, val_b)[0]
  jvp = jax.jit(lambda p, d: jax.jvp(lambda q: naive_fn(q, train_b)[0], (p,), (d,))[1],
                compiler_options=FAST_COMPILE)
  out["exact_hypergradient"] = -LR * jvp(state0.params, d)
  out["naive"] = naive(state0, train_b, val_b)
  return jax.device_get(out)


KEYS = ("loss/primary", "loss/global", "loss/local", "val_primary_loss", "grad_norm")


def _close(a, b, rtol, what):
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max(), err_msg=what)


@pytest.mark.parametrize("mode", ["fused_finite_difference", "fused_jvp", "fresh"])
def test_same_losses_hypergradient_and_lambda_as_naive(setup, mode):
  (_, m_ref), (state, m) = setup["naive"], setup[mode]
  for k in KEYS:
    np.testing.assert_allclose(m[k], m_ref[k], rtol=1e-4, err_msg=k)
  h, h_ref = m["hypergradient"], m_ref["hypergradient"]
  assert np.abs(h_ref).min() > 1e-5, h_ref  # a non-degenerate comparison
  if mode == "fused_jvp":
    # Exact: the directional derivative the release's finite difference approximates.
    _close(h, setup["exact_hypergradient"], 1e-4, "hypergradient vs exact JVP")
    # The finite difference at the release's radius 0.01 is within its truncation error.
    _close(h, h_ref, 1e-2, "hypergradient vs naive finite difference")
  else:
    _close(h, h_ref, 1e-4, "hypergradient")
  np.testing.assert_allclose(m["lambda"], m_ref["lambda"], rtol=1e-4, err_msg="lambda")
  assert not np.allclose(m["lambda"], 1.0)  # lambda moved
  np.testing.assert_allclose(state.lam_state.lam, m_ref["lambda"], rtol=1e-4)


def test_fd_batched_same_numbers():
  """The two finite-difference forwards as one vmapped pass give the same hypergradient."""
  from sjedd_jax.detectors.sjedd import hierarchy  # pylint: disable=g-import-not-at-top

  def scores(params, images):
    return jnp.tanh(images.reshape(images.shape[0], -1) @ params["w1"]) @ params["w2"]

  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  params = {"w1": jax.random.normal(k1, (48, 16)) * 0.3, "w2": jax.random.normal(k2, (16, 10))}
  fn = ts.detector_losses_fn(sjedd_det.scores_detector(scores, hierarchy.ffpp()), {})
  sched = optax.constant_schedule(0.1)
  opt = optim.adamw(sched, WD)
  rng = np.random.default_rng(3)
  tb, vb = _batch(rng, 8, 4), _batch(rng, 8, 4)
  out = []
  for batched in (False, True):
    step = jax.jit(naive_step.make_fresh_step(fn, opt, sched, WD, fd_batched=batched),
                   compiler_options=FAST_COMPILE)
    out.append(jax.device_get(step(ts.init_state(Variables(params, {}), opt, naive_step.lambda_weighting()), tb, vb)[1]))
  assert np.abs(out[0]["hypergradient"]).min() > 1e-5
  # The batched matmuls sum in another order: the losses differ by float32 rounding
  # (~1e-7), which the finite difference divides by 2 eps (here ~1e-3 relative).
  np.testing.assert_allclose(out[1]["hypergradient"], out[0]["hypergradient"], rtol=5e-3)
  np.testing.assert_allclose(out[1]["lambda"], out[0]["lambda"], rtol=1e-6)
