"""Baselines for the benchmark: the release's training step, and a fresh-forward step.

Two step makers with the interface of ``train_step.make_train_step``
(``step(state, train_batch, val_batch) -> (state, metrics)`` on a
``train_step.TrainState``), so the benchmark and the tests can swap them for
the optimised step:

``make_naive_step``: the work the authors' PyTorch step does (spec section 5),
  as FIVE separately compiled passes run one after another from Python, the way
  the release runs separate Python-level passes (no cross-pass fusion, no
  reuse):
    1. virtual step    g = grad sum_i lam_i L_i(theta; T); theta' = theta - a (g + wd theta)
    2. validation      d = grad L_1(theta'; V)       (+ ||d||, eps = radius / (||d|| + 1e-6))
    3. FD forward      L(theta + eps d; T)
    4. FD forward      L(theta - eps d; T)
    5. final step      grad sum_i lam_new_i L_i(theta; T) (a NEW forward and backward) + AdamW
  plus a tiny program for the Adam step on lambda. Build the task losses on a
  model with ``per_level_passes=True, text_context=77`` (``sjedd.build``) to
  have the release's per-loss work too: one whole CLIP forward per label level
  (three image-tower and three text-tower passes) at the full 77-token context.
  Passes 3-4 run forward only; the release also records an autograd graph there
  and back-propagates to lambda (cheap), so this baseline is, if anything,
  slightly cheaper than the release.

``make_fresh_step``: the same mathematics as the optimised step in ONE compiled
  program, but without the shared linearisation: step 1 is a plain
  ``jax.value_and_grad`` and the model gradient for the new lambda is a new
  ``jax.grad`` (a fresh forward and backward at theta), and the "jvp" method is
  a fresh ``jax.jvp``. The benchmark's "fresh" mode: what reusing the
  linearisation buys.

Example::

  detector, variables = sjedd.from_module(sjedd_model.build("ViT-B/32", per_level_passes=True, text_context=77))
  losses_fn = train_step.detector_losses_fn(detector, variables.state)
  sched = optax.constant_schedule(6e-7)
  opt = optim.adamw(sched, 1e-3)
  step = naive_step.make_naive_step(losses_fn, opt, sched, weight_decay=1e-3)
  state = train_step.init_state(variables, opt, naive_step.lambda_weighting())
  state, metrics = step(state, train_batch, val_batch)       # 6 compiled programs
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from sjedd_jax import bilevel
from sjedd_jax.train_step import TrainState

PyTree = Any


def lambda_weighting(lam_lr: float = 1e-3, lam_init: float = 1.0, num_tasks: int = 3,
                     method: str = "finite_difference", radius: float = 0.01) -> bilevel.AutoLambda:
  """The ``AutoLambda`` whose ``init()`` gives the lambda state these steps expect."""
  return bilevel.auto_lambda(num_tasks, optimizer=optax.adam(lam_lr), init_value=lam_init, method=method,
                             radius=radius, has_aux=True)


def _losses(task_losses_fn):
  return lambda p, b: task_losses_fn(p, b)[0]


def _weighted(task_losses_fn, lam, batch):
  """``params -> (sum_i lam_i L_i, (losses, aux))``."""
  def f(p):
    task, aux = task_losses_fn(p, batch)
    return jnp.vdot(lam, task), (task, aux)
  return f


def _axpy(a, x, y):
  return jax.tree.map(lambda xi, yi: (a * xi + yi).astype(yi.dtype), x, y)


def _metrics(task, lam, hyper, aux, grads, updates, params, lr, val_loss):
  return {
      "loss/primary": task[0], "loss/global": task[1], "loss/local": task[2],
      "loss/weighted": jnp.vdot(lam, task), "lambda": lam, "hypergradient": hyper,
      "accuracy": aux["accuracy"], "grad_norm": optax.tree.norm(grads),
      "update_norm": optax.tree.norm(updates), "param_norm": optax.tree.norm(params), "lr": lr,
      "val_primary_loss": val_loss,
  }


class NaiveStep:
  """The release's step as separately jitted passes; call it like a compiled step.

  Attributes ``programs`` (name -> jitted function) and ``calls`` (name -> calls
  per step) let the benchmark lower, compile and cost each pass.
  """

  def __init__(self, task_losses_fn: Callable, model_opt: optax.GradientTransformation,
               schedule: optax.Schedule, weight_decay: float, *, lam_lr: float = 1e-3,
               radius: float = 0.01, primary: Sequence[float] = (1.0, 0.0, 0.0),
               compiler_options: dict[str, Any] | None = None):
    losses = _losses(task_losses_fn)
    lam_opt = optax.adam(lam_lr)
    w = jnp.asarray(primary, jnp.float32)

    def virtual_step(params, lam, batch, step):
      """Pass 1: forward + backward at theta; theta' (SGD with decoupled weight decay)."""
      lr = schedule(step)
      g = jax.grad(lambda p: jnp.vdot(lam, losses(p, batch)))(params)
      return jax.tree.map(lambda p, gi: p - lr * (gi + weight_decay * p), params, g)

    def validation(theta_v, val_batch):
      """Pass 2: forward + backward at theta' on V; d, its norm and the FD radius."""
      val_loss, d = jax.value_and_grad(lambda p: jnp.vdot(w, losses(p, val_batch)))(theta_v)
      eps = radius / (optax.tree.norm(d) + 1e-6)
      return d, eps, val_loss

    def perturbed(params, d, scale, batch):
      """Passes 3 and 4: the task losses at theta + scale * d (forward only)."""
      return losses(_axpy(scale, d, params), batch)

    def lambda_step(lam_state, l_plus, l_minus, eps, step):
      hyper = -schedule(step) * (l_plus - l_minus) / (2.0 * eps)
      upd, opt_state = lam_opt.update(hyper, lam_state.opt_state, lam_state.lam)
      lam = optax.apply_updates(lam_state.lam, upd)
      return bilevel.BilevelState(lam=lam, opt_state=opt_state, count=lam_state.count + 1), hyper

    def final_step(params, opt_state, lam, batch, step):
      """Pass 5: a new forward + backward at theta with the new lambda, and AdamW."""
      (_, (task, aux)), grads = jax.value_and_grad(_weighted(task_losses_fn, lam, batch), has_aux=True)(params)
      updates, opt_state = model_opt.update(grads, opt_state, params)
      new_params = optax.apply_updates(params, updates)
      return new_params, opt_state, task, aux, optax.tree.norm(grads), optax.tree.norm(updates), \
          optax.tree.norm(new_params)

    jit = lambda f, **kw: jax.jit(f, compiler_options=compiler_options, **kw)
    self.programs = {"virtual_step": jit(virtual_step), "validation": jit(validation),
                     "perturbed": jit(perturbed), "lambda_step": jit(lambda_step),
                     "final_step": jit(final_step, donate_argnums=(0, 1))}
    self.calls = {"virtual_step": 1, "validation": 1, "perturbed": 2, "lambda_step": 1, "final_step": 1}
    self._schedule = schedule

  def example_args(self, state: TrainState, train_batch, val_batch) -> dict[str, tuple]:
    """Arguments of every pass (shape-correct; for lowering and cost analysis)."""
    p = self.programs
    theta_v = jax.eval_shape(p["virtual_step"], state.params, state.lam_state.lam, train_batch, state.step)
    d, eps, _ = jax.eval_shape(p["validation"], theta_v, val_batch)
    l_pm = jax.eval_shape(p["perturbed"], state.params, d, eps, train_batch)
    return {"virtual_step": (state.params, state.lam_state.lam, train_batch, state.step),
            "validation": (theta_v, val_batch),
            "perturbed": (state.params, d, eps, train_batch),
            "lambda_step": (state.lam_state, l_pm, l_pm, eps, state.step),
            "final_step": (state.params, state.opt_state, state.lam_state.lam, train_batch, state.step)}

  def __call__(self, state: TrainState, train_batch, val_batch):
    p = self.programs
    theta_v = p["virtual_step"](state.params, state.lam_state.lam, train_batch, state.step)   # 1
    d, eps, val_loss = p["validation"](theta_v, val_batch)                                    # 2
    del theta_v
    l_plus = p["perturbed"](state.params, d, eps, train_batch)                                # 3
    l_minus = p["perturbed"](state.params, d, -eps, train_batch)                              # 4
    del d
    lam_state, hyper = p["lambda_step"](state.lam_state, l_plus, l_minus, eps, state.step)
    lr = self._schedule(state.step)
    params, opt_state, task, aux, gnorm, unorm, pnorm = p["final_step"](                     # 5
        state.params, state.opt_state, lam_state.lam, train_batch, state.step)
    metrics = {"loss/primary": task[0], "loss/global": task[1], "loss/local": task[2],
               "loss/weighted": jnp.vdot(lam_state.lam, task), "lambda": lam_state.lam,
               "hypergradient": hyper, "accuracy": aux["accuracy"], "grad_norm": gnorm,
               "update_norm": unorm, "param_norm": pnorm, "lr": lr, "val_primary_loss": val_loss}
    return state._replace(step=state.step + 1, params=params, opt_state=opt_state, lam_state=lam_state), metrics


def make_naive_step(task_losses_fn: Callable, model_opt: optax.GradientTransformation,
                    schedule: optax.Schedule, weight_decay: float, *, lam_lr: float = 1e-3,
                    radius: float = 0.01, primary: Sequence[float] = (1.0, 0.0, 0.0),
                    compiler_options: dict[str, Any] | None = None) -> NaiveStep:
  """The release's step (five separately compiled passes); see the module docstring.

  ``compiler_options`` go to every ``jax.jit`` (e.g. ``{"xla_backend_optimization_level": 0}``
  for fast compiles in tests).
  """
  return NaiveStep(task_losses_fn, model_opt, schedule, weight_decay, lam_lr=lam_lr, radius=radius,
                   primary=primary, compiler_options=compiler_options)


def make_fresh_step(task_losses_fn: Callable, model_opt: optax.GradientTransformation,
                    schedule: optax.Schedule, weight_decay: float, *, lam_lr: float = 1e-3,
                    method: str = "finite_difference", radius: float = 0.01,
                    primary: Sequence[float] = (1.0, 0.0, 0.0), fd_batched: bool = False) -> Callable:
  """One pure step (jit it with ``train_step.compile_train_step``) without linearisation reuse.

  Same mathematics as ``make_train_step(..., make_weighting("bilevel"))``; the
  model gradient for the new lambda is a new ``jax.grad`` at theta.
  ``fd_batched``: the two finite-difference forwards as ONE ``jax.vmap``-ed pass
  over theta + eps d and theta - eps d (same numbers, one program region).
  """
  bilevel._check_method(method)  # pylint: disable=protected-access
  losses = _losses(task_losses_fn)
  lam_opt = optax.adam(lam_lr)
  w = jnp.asarray(primary, jnp.float32)

  weighted = lambda lam, batch: _weighted(task_losses_fn, lam, batch)

  def train_step(state: TrainState, train_batch, val_batch):
    lr = schedule(state.step)
    params, lam = state.params, state.lam_state.lam
    g = jax.grad(weighted(lam, train_batch), has_aux=True)(params)[0]                   # 1.
    theta_v = jax.tree.map(lambda p, gi: p - lr * (gi + weight_decay * p), params, g)   # 2.
    val_loss, d = jax.value_and_grad(lambda p: jnp.vdot(w, losses(p, val_batch)))(theta_v)  # 3.
    if method == "jvp":
      h = jax.jvp(lambda p: losses(p, train_batch), (params,), (d,))[1]
    else:
      eps = radius / (optax.tree.norm(d) + 1e-6)                                        # 4.
      if fd_batched:
        l_pm = jax.vmap(lambda s: losses(_axpy(s, d, params), train_batch))(jnp.stack([eps, -eps]))
        h = (l_pm[0] - l_pm[1]) / (2.0 * eps)                                           # 5.
      else:
        h = (losses(_axpy(eps, d, params), train_batch)
             - losses(_axpy(-eps, d, params), train_batch)) / (2.0 * eps)               # 5.
    hyper = -lr * h                                                                     # 6.
    upd, lam_opt_state = lam_opt.update(hyper, state.lam_state.opt_state, lam)
    lam_new = optax.apply_updates(lam, upd)
    (_, (task, aux)), grads = jax.value_and_grad(weighted(lam_new, train_batch), has_aux=True)(params)  # 7.
    updates, opt_state = model_opt.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    lam_state = bilevel.BilevelState(lam=lam_new, opt_state=lam_opt_state, count=state.lam_state.count + 1)
    metrics = _metrics(task, lam_new, hyper, aux, grads, updates, new_params, lr, val_loss)
    return state._replace(step=state.step + 1, params=new_params, opt_state=opt_state, lam_state=lam_state), metrics

  return train_step
