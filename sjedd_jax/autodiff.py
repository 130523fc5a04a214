"""Which form the library's layers with a custom backward take when traced.

``layers.max_pool_3x3_s2``, ``layers.batch_norm_train`` and Xception's ``shifted_depthwise`` are
made by ``custom_backward``: a ``jax.custom_vjp`` (their own backward) that reverse mode uses and
forward mode (``jax.jvp``, the tangent of ``jax.linearize``) cannot. Traced inside
``forward_mode_forms()`` they run as their plain JAX form, which both modes differentiate: the same
function, with JAX's slower backward. ``bilevel.auto_lambda`` traces the task losses inside it when
its hypergradient is the exact JVP (``method="jvp"``); any other forward-mode use of these layers
needs the same block.

``recompute_in_backward(fn)`` trades compute for memory the same way: its backward pass runs ``fn``
again from its arguments (the Xception blocks' ``remat="blocks"``).
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp

_FORWARD_MODE = [False]


@contextlib.contextmanager
def forward_mode_forms():
  """Within the block, the layers with a custom backward are traced in forward-differentiable form."""
  before = _FORWARD_MODE[0]
  _FORWARD_MODE[0] = True
  try:
    yield
  finally:
    _FORWARD_MODE[0] = before


def forward_mode() -> bool:
  """Whether ``forward_mode_forms`` is active (read when tracing)."""
  return _FORWARD_MODE[0]


def custom_backward(plain, fwd, bwd, nondiff_argnums: tuple[int, ...] = ()):
  """``plain`` with the backward ``fwd``/``bwd`` (as ``jax.custom_vjp(plain).defvjp(fwd, bwd)``),
  except when traced inside ``forward_mode_forms()``, where ``plain`` itself runs."""
  custom = jax.custom_vjp(plain, nondiff_argnums=nondiff_argnums)
  custom.defvjp(fwd, bwd)

  @functools.wraps(plain)
  def dispatch(*args):
    return plain(*args) if forward_mode() else custom(*args)

  return dispatch


def in_forward_mode_forms(fn):
  """``fn`` that traces its body inside ``forward_mode_forms()``."""

  def wrapped(*args, **kwargs):
    with forward_mode_forms():
      return fn(*args, **kwargs)

  return wrapped


def recompute_in_backward(fn):
  """``fn(*args)`` whose reverse-mode derivative keeps only ``args`` and runs ``fn`` again in the
  backward pass (``jax.checkpoint``'s rematerialisation, in a form XLA:CPU keeps).

  XLA:CPU merges ``jax.checkpoint``'s recomputation back into the forward pass (its optimization
  barriers do not survive XLA:CPU's pipeline), so it saves no memory there: LiSiam's backbone
  gradient at 299 px, 2 images, keeps 1.39 GiB of temporaries with or without it, and the compiled
  program has 140 matrix products either way (176 before XLA's passes). With this function: 0.24
  GiB and 176 products. The last argument's arrays with a leading batch axis get
  ``0 * cotangent[:, first element]`` added: the same values, but the recomputation now depends
  on the cotangent, so XLA can neither merge it with the forward pass nor run it before the
  backward pass reaches it. The zero is per example, so under data parallelism each device's
  recomputation waits only for its own cotangent. A cotangent that is
  inf or NaN makes the recomputed values NaN (the gradient is not finite then either).
  """

  def fwd(*args):
    return fn(*args), args

  def bwd(args, ct):
    args = (*args[:-1], _after_cotangent(args[-1], ct))
    _, vjp = jax.vjp(fn, *args)
    return vjp(ct)

  return custom_backward(fn, fwd, bwd)


def _after_cotangent(x, ct):
  """``x`` with a zero from ``ct`` added to each of its arrays that share ``ct``'s batch axis."""
  batch = {a.shape[0] for a in jax.tree.leaves(x) if getattr(a, "ndim", 0) >= 1}
  leaves = [c for c in jax.tree.leaves(ct) if getattr(c, "ndim", 0) >= 1 and c.shape[0] in batch
            and jnp.issubdtype(c.dtype, jnp.inexact)]
  if not leaves:   # nothing to tie to: only a barrier, which XLA:CPU may drop (then no memory is saved)
    return jax.lax.optimization_barrier((x, ct))[0]
  c = leaves[0]
  zero = c.reshape(c.shape[0], -1)[:, :1].astype(jnp.float32) * 0.0      # (B, 1)

  def tie(a):
    if getattr(a, "ndim", 0) >= 1 and a.shape[0] == c.shape[0] and jnp.issubdtype(a.dtype, jnp.inexact):
      return a + zero.reshape((c.shape[0],) + (1,) * (a.ndim - 1)).astype(a.dtype)
    return a

  return jax.tree.map(tie, x)
