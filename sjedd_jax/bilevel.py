"""Bi-level loss weighting (Auto-Lambda style), as a small optax-like library.

The weights ``lam`` of a multitask loss ``sum_i lam_i L_i(theta; T)`` are tuned
to minimise a *primary* loss on a validation minibatch after one unrolled
model step (spec section 5):

  1. g      = grad_theta sum_i lam_i L_i(theta; T)
  2. theta' = theta - alpha (g + wd theta)                 (virtual step)
  3. d      = grad_theta' L_primary(theta'; V)
  4. eps    = radius / (||d|| + 1e-6)
  5. h_i    = (L_i(theta + eps d; T) - L_i(theta - eps d; T)) / (2 eps)
              ~ grad_theta L_i(theta; T) . d        ("jvp": exactly that)
  6. grad_lam = -alpha h,  lam <- optimiser(lam, grad_lam)
  7. the model gradient for the new lam, sum_i lam_new_i grad L_i(theta; T).

The task losses are linearised once at theta (``jax.linearize``). Step 1's and
step 7's gradients are two transposes (VJPs) of that one linearisation, so the
model gradient for the new weights costs a backward pass but no forward pass,
and the exact "jvp" method of step 5 is a tangent pass over the same
linearisation, again without a forward pass.

Everything here is a pure function of pytrees and can be traced inside a
caller's ``jax.jit``/``shard_map`` step. Under ``jit`` with a batch sharded over
devices, every mean and norm is global, so N devices compute exactly what one
device computes on the same global batch.

Example::

    import optax
    from sjedd_jax import bilevel

    def task_losses_fn(params, batch):      # -> (T,) vector of task losses
      pred = model_apply(params, batch["x"])
      return jnp.stack([mse(pred[:, 0], batch["y0"]), mse(pred[:, 1], batch["y1"])])

    weighting = bilevel.auto_lambda(num_tasks=2, primary=(1.0, 0.0))
    model_opt = optax.adamw(1e-3, weight_decay=1e-4)
    lam_state, opt_state = weighting.init(), model_opt.init(params)

    @jax.jit
    def train_step(params, opt_state, lam_state, train_batch, val_batch):
      grads, lam_state, info = weighting.step(
          lam_state, task_losses_fn, params, train_batch, val_batch,
          lr=1e-3, weight_decay=1e-4)
      updates, opt_state = model_opt.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, lam_state, info
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sjedd_jax import autodiff

PyTree = Any
TaskLossesFn = Callable[[PyTree, Any], jax.Array]  # (params, batch) -> (T,) [, aux]

METHODS = ("finite_difference", "jvp")


def _tree_axpy(a, x, y):
  """a * x + y over pytrees (a a scalar)."""
  return jax.tree.map(lambda xi, yi: (a * xi + yi).astype(yi.dtype), x, y)


def _check_method(method: str) -> None:
  if method not in METHODS:
    raise ValueError(f"unknown hypergradient method {method!r}; expected one of {METHODS}")


def _primary_vector(primary, num_tasks: int) -> jax.Array:
  w = jnp.asarray(primary, jnp.float32)
  if w.shape != (num_tasks,):
    raise ValueError(f"primary weights have shape {w.shape}, expected ({num_tasks},)")
  return w


def _linearise(task_losses_fn, params, batch, has_aux):
  """Task losses at params, their linearisation, and its transpose (the VJP)."""
  f = lambda p: task_losses_fn(p, batch)
  if has_aux:
    losses, f_jvp, aux = jax.linearize(f, params, has_aux=True)
  else:
    (losses, f_jvp), aux = jax.linearize(f, params), None
  f_vjp = jax.linear_transpose(f_jvp, params)
  return losses, f_jvp, (lambda ct: f_vjp(ct.astype(losses.dtype))[0]), aux


def _losses_only(task_losses_fn, has_aux):
  if has_aux:
    return lambda p, b: task_losses_fn(p, b)[0]
  return task_losses_fn


def _is_scalar(x) -> bool:
  leaves = jax.tree.leaves(x)
  return len(leaves) == 1 and not isinstance(x, (dict, list, tuple)) and jnp.ndim(leaves[0]) == 0


def _virtual_step(params, g, lr, weight_decay):
  """theta' = theta - lr (g + wd theta): SGD with (coupled) weight decay; lr and wd are scalars
  or pytrees with the structure of ``params`` (per-group learning rates; 0 for a frozen group)."""
  if _is_scalar(lr) and _is_scalar(weight_decay):
    return jax.tree.map(lambda p, gi: p - lr * (gi + weight_decay * p), params, g)
  lr_t = lr if not _is_scalar(lr) else jax.tree.map(lambda _: lr, params)
  wd_t = weight_decay if not _is_scalar(weight_decay) else jax.tree.map(lambda _: weight_decay, params)
  return jax.tree.map(lambda p, gi, a, w: p - a * (gi + w * p), params, g, lr_t, wd_t)


def _directional(task_losses_fn, params, lam, g, f_jvp, train_batch, val_batch, *,
                 lr, weight_decay, primary, method, radius, has_aux):
  """Steps 2-6: the hypergradient d(outer)/d(lam) = -grad L_i(theta; T) . (lr d), plus diagnostics.

  With a scalar ``lr`` that is -lr (grad L_i . d); with a pytree of learning
  rates the direction is lr * d, leaf by leaf.
  """
  losses_fn = _losses_only(task_losses_fn, has_aux)
  w = _primary_vector(primary, lam.shape[0])
  # 2. virtual step (SGD with weight decay, at the model's current lr).
  theta_v = _virtual_step(params, g, lr, weight_decay)
  # 3. gradient of the primary loss at theta' on the validation batch.
  val_loss, d = jax.value_and_grad(lambda p: jnp.vdot(w, losses_fn(p, val_batch)))(theta_v)
  d_norm = optax.tree.norm(d)
  scalar_lr = _is_scalar(lr)
  direction = d if scalar_lr else jax.tree.map(lambda a, di: a * di, lr, d)
  if method == "jvp":
    h = f_jvp(direction)
    eps = jnp.zeros((), jnp.float32)
  else:
    # 4.-5. central finite difference along the direction.
    e_norm = d_norm if scalar_lr else optax.tree.norm(direction)
    eps = radius / (e_norm + 1e-6)
    l_plus = losses_fn(_tree_axpy(eps, direction, params), train_batch)
    l_minus = losses_fn(_tree_axpy(-eps, direction, params), train_batch)
    h = (l_plus - l_minus) / (2.0 * eps)
  hyper = -lr * h if scalar_lr else -h                        # 6.
  return hyper, {"val_primary_loss": val_loss, "d_norm": d_norm, "fd_eps": eps}


def hypergradient(task_losses_fn: TaskLossesFn, params: PyTree, lam: jax.Array, train_batch: Any,
                  val_batch: Any, *, lr, weight_decay=0.0, primary: Sequence[float] = (1.0, 0.0, 0.0),
                  method: str = "finite_difference", radius: float = 0.01,
                  has_aux: bool = False) -> jax.Array:
  """d(outer loss)/d(lam) of spec section 5, steps 1-6. Returns shape (T,).

  Args:
    task_losses_fn: ``(params, batch) -> (T,)`` task losses (``-> ((T,), aux)``
      with ``has_aux=True``). ``params`` is any pytree of float arrays.
    params: the model parameters theta.
    lam: (T,) current loss weights.
    train_batch, val_batch: the training minibatch T and validation minibatch V.
    lr: the model optimiser's current learning rate alpha (virtual step size).
    weight_decay: the model optimiser's (decoupled) weight decay.
    primary: weights of the tasks in the outer (validation) loss.
    method: "finite_difference" (the paper) or "jvp" (exact directional derivative).
    radius: finite-difference radius; eps = radius / (||d|| + 1e-6).
  """
  _check_method(method)
  lam = jnp.asarray(lam, jnp.float32)
  _, f_jvp, f_vjp, _ = _linearise(task_losses_fn, params, train_batch, has_aux)
  g = f_vjp(lam)
  hyper, _ = _directional(task_losses_fn, params, lam, g, f_jvp, train_batch, val_batch, lr=lr,
                          weight_decay=weight_decay, primary=primary, method=method, radius=radius,
                          has_aux=has_aux)
  return hyper


class BilevelState(NamedTuple):
  """State of the loss-weight learner."""
  lam: jax.Array         # (T,) current loss weights
  opt_state: Any         # state of the optimiser of lam
  count: jax.Array       # int32, steps taken


class AutoLambda(NamedTuple):
  """An optax-style pair of pure functions; see ``auto_lambda``."""
  init: Callable[[], BilevelState]
  step: Callable[..., tuple[PyTree, BilevelState, dict]]


def auto_lambda(num_tasks: int = 3, *, optimizer: optax.GradientTransformation | None = None,
                init_value: float | Sequence[float] = 1.0, primary: Sequence[float] | None = None,
                method: str = "finite_difference", radius: float = 0.01, update_every: int = 1,
                has_aux: bool = False, nonneg: bool = False) -> AutoLambda:
  """Learns multitask loss weights by one-step bi-level optimisation.

  Args:
    num_tasks: T, the number of task losses.
    optimizer: the optax transformation for lam (default Adam, lr 1e-3).
    init_value: initial lam (scalar or (T,)), default 1.0.
    primary: outer-loss task weights, default (1, 0, ..., 0): task 0 is primary.
    method: "finite_difference" (spec default) or "jvp" (the exact directional derivative; its
      steps trace ``task_losses_fn`` inside ``autodiff.forward_mode_forms()``, so this library's
      layers with a ``jax.custom_vjp`` backward take their forward-differentiable form).
    radius: finite-difference radius (spec: 0.01).
    update_every: update lam every k-th step only (lam is held in between, and
      the hypergradient work is skipped with ``lax.cond``). ``step(...,
      update=True/False)`` fixes the branch when tracing instead, for callers
      that compile one program per branch and pick on the host (a held step
      then costs one forward and one backward; ``sjedd_jax.train`` does this).
    has_aux: ``task_losses_fn`` returns ``(losses, aux)``; aux is passed back in
      ``info["aux"]``. It is the aux of the linearised evaluation at ``params`` on
      the training batch only (never of the passes at theta', theta +- eps d), so a
      model's state (BatchNorm running statistics) returned there is the state to
      keep: feed the running statistics in by closure, return the updated ones in aux.
    nonneg: project lam onto lam >= 0 after each update (a negative weight would
      reward the opposite of a task: anti-clustering, inconsistency).

  ``lr`` and ``weight_decay`` of ``step`` are the model optimiser's current values
  for the virtual step; either may be a pytree with the structure of ``params``
  (per-group learning rates, e.g. under ``optax.multi_transform``; 0 for a frozen
  group), and the hypergradient then follows the direction lr * d leaf by leaf.
  Stochastic layers (dropout) must see the same randomness in every evaluation
  of one step, or the finite difference measures the noise: pass the step's key
  inside the batches (``sjedd_jax.train_step`` puts ``batch["rng"]``).

  Returns:
    ``AutoLambda(init, step)``:
      ``init() -> BilevelState``;
      ``step(state, task_losses_fn, params, train_batch, val_batch, *, lr,
      weight_decay=0.0) -> (grads, new_state, info)`` where ``grads`` is the
      gradient of ``sum_i lam_new_i L_i(params; train_batch)`` with respect to
      ``params`` (feed it to the model optimiser), and ``info`` holds
      ``task_losses`` (T,), ``lam`` (new), ``hypergradient`` (T,; zeros on
      skipped steps), ``lam_updated``, ``val_primary_loss``, ``d_norm``, ``fd_eps``.
  """
  _check_method(method)
  if update_every < 1:
    raise ValueError(f"update_every must be >= 1, got {update_every}")
  optimizer = optimizer if optimizer is not None else optax.adam(1e-3)
  primary = tuple(primary) if primary is not None else (1.0,) + (0.0,) * (num_tasks - 1)
  _primary_vector(primary, num_tasks)

  def init() -> BilevelState:
    lam = jnp.broadcast_to(jnp.asarray(init_value, jnp.float32), (num_tasks,))
    return BilevelState(lam=lam, opt_state=optimizer.init(lam), count=jnp.zeros((), jnp.int32))

  def step(state: BilevelState, task_losses_fn: TaskLossesFn, params: PyTree, train_batch: Any,
           val_batch: Any, *, lr, weight_decay=0.0, update: bool | None = None):
    lr = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), lr)
    if method == "jvp" and update is not False:  # a forward-mode pass: no jax.custom_vjp (autodiff.py)
      task_losses_fn = autodiff.in_forward_mode_forms(task_losses_fn)
    losses, f_jvp, f_vjp, aux = _linearise(task_losses_fn, params, train_batch, has_aux)
    if losses.shape != (num_tasks,):
      raise ValueError(f"task_losses_fn returned shape {losses.shape}, expected ({num_tasks},)")
    g = f_vjp(state.lam)  # 1.

    def update_branch(_):
      hyper, diag = _directional(task_losses_fn, params, state.lam, g, f_jvp, train_batch, val_batch,
                                 lr=lr, weight_decay=weight_decay, primary=primary, method=method,
                                 radius=radius, has_aux=has_aux)
      upd, opt_state = optimizer.update(hyper, state.opt_state, state.lam)
      lam = optax.apply_updates(state.lam, upd)
      if nonneg:
        lam = jnp.maximum(lam, 0.0)
      grads = f_vjp(lam)                                       # 7. same linearisation
      return grads, lam, opt_state, hyper, diag

    def hold(_):
      zero = jnp.zeros((), jnp.float32)
      diag = {"val_primary_loss": zero, "d_norm": zero, "fd_eps": zero}
      return g, state.lam, state.opt_state, jnp.zeros_like(state.lam), diag

    if update is False:
      grads, lam, opt_state, hyper, diag = hold(None)
      updated = jnp.zeros((), jnp.bool_)
    elif update is True or update_every == 1:
      grads, lam, opt_state, hyper, diag = update_branch(None)
      updated = jnp.ones((), jnp.bool_)
    else:
      updated = state.count % update_every == 0
      grads, lam, opt_state, hyper, diag = jax.lax.cond(updated, update_branch, hold, None)
    new_state = BilevelState(lam=lam, opt_state=opt_state, count=state.count + 1)
    info = {"task_losses": losses, "lam": lam, "hypergradient": hyper, "lam_updated": updated, **diag}
    if has_aux:
      info["aux"] = aux
    return grads, new_state, info

  return AutoLambda(init=init, step=step)


def fixed_weights(weights: Sequence[float], *, has_aux: bool = False) -> AutoLambda:
  """The same interface with constant weights (ablations: {1, 0.1, 0.1}, {1, 1, 1})."""
  weights = tuple(float(w) for w in weights)

  def init() -> BilevelState:
    lam = jnp.asarray(weights, jnp.float32)
    return BilevelState(lam=lam, opt_state=optax.EmptyState(), count=jnp.zeros((), jnp.int32))

  def step(state, task_losses_fn, params, train_batch, val_batch=None, *, lr=None, weight_decay=0.0,
           update=None):
    del val_batch, lr, weight_decay, update
    losses, _, f_vjp, aux = _linearise(task_losses_fn, params, train_batch, has_aux)
    grads = f_vjp(state.lam)
    zero = jnp.zeros((), jnp.float32)
    info = {"task_losses": losses, "lam": state.lam, "hypergradient": jnp.zeros_like(state.lam),
            "lam_updated": jnp.zeros((), jnp.bool_), "val_primary_loss": zero, "d_norm": zero,
            "fd_eps": zero}
    if has_aux:
      info["aux"] = aux
    return grads, state._replace(count=state.count + 1), info

  return AutoLambda(init=init, step=step)


class DWAState(NamedTuple):
  """State of dynamic weight average."""
  lam: jax.Array         # (T,) weights in use this period
  running: jax.Array     # (T,) sum of task losses in the current period
  last: jax.Array        # (T,) mean task losses of the previous period
  before: jax.Array      # (T,) mean task losses of the period before that
  periods: jax.Array     # int32, completed periods
  count: jax.Array       # int32, steps taken


def dwa(num_tasks: int = 3, *, temperature: float = 2.0, period: int = 1, has_aux: bool = False) -> AutoLambda:
  """Dynamic weight average (Liu et al., CVPR 2019), in the same interface as ``auto_lambda``.

  lam_k = T exp(w_k / temperature) / sum_i exp(w_i / temperature), with
  w_k = L_k(previous period) / L_k(period before); every task starts at 1 and no
  task has priority (the Table VII row of SJEDD). ``period`` is the number of
  steps averaged per period (the original uses epochs; 1 = per step).
  """
  if period < 1 or temperature <= 0:
    raise ValueError(f"dwa needs period >= 1 and temperature > 0, got {period}, {temperature}")

  def init() -> DWAState:
    # Distinct buffers per field: a caller may donate the state to a jitted step.
    ones = lambda: jnp.ones((num_tasks,), jnp.float32)
    zero = lambda: jnp.zeros((), jnp.int32)
    return DWAState(lam=ones(), running=jnp.zeros((num_tasks,), jnp.float32), last=ones(), before=ones(),
                    periods=zero(), count=zero())

  def step(state: DWAState, task_losses_fn, params, train_batch, val_batch=None, *, lr=None, weight_decay=0.0,
           update=None):
    del val_batch, lr, weight_decay, update
    losses, _, f_vjp, aux = _linearise(task_losses_fn, params, train_batch, has_aux)
    grads = f_vjp(state.lam)
    running = state.running + jax.lax.stop_gradient(losses)
    count = state.count + 1
    done = count % period == 0
    mean = running / period
    last = jnp.where(done, mean, state.last)
    before = jnp.where(done, state.last, state.before)
    periods = state.periods + done.astype(jnp.int32)
    ratio = last / jnp.maximum(before, 1e-12)
    new_lam = num_tasks * jax.nn.softmax(ratio / temperature)
    lam = jnp.where(done & (periods >= 2), new_lam, state.lam)
    new_state = DWAState(lam=lam, running=jnp.where(done, 0.0, running), last=last, before=before,
                         periods=periods, count=count)
    zero = jnp.zeros((), jnp.float32)
    info = {"task_losses": losses, "lam": lam, "hypergradient": jnp.zeros_like(lam), "lam_updated": done,
            "val_primary_loss": zero, "d_norm": zero, "fd_eps": zero}
    if has_aux:
      info["aux"] = aux
    return grads, new_state, info

  return AutoLambda(init=init, step=step)
