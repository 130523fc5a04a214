"""Which form the library's layers with a custom backward take when traced.

``layers.max_pool_3x3_s2``, ``layers.batch_norm_train`` and Xception's ``shifted_depthwise`` are
made by ``custom_backward``: a ``jax.custom_vjp`` (their own backward) that reverse mode uses and
forward mode (``jax.jvp``, the tangent of ``jax.linearize``) cannot. Traced inside
``forward_mode_forms()`` they run as their plain JAX form, which both modes differentiate: the same
function, with JAX's slower backward. ``bilevel.auto_lambda`` traces the task losses inside it when
its hypergradient is the exact JVP (``method="jvp"``); any other forward-mode use of these layers
needs the same block.
"""

from __future__ import annotations

import contextlib
import functools

import jax

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
