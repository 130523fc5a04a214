"""Which form the library's layers with a custom backward take when traced.

``layers.max_pool_3x3_s2``, ``layers.batch_norm_train`` and Xception's ``shifted_depthwise`` have
their own backward (``jax.custom_vjp``): reverse mode uses it, forward mode (``jax.jvp``, the tangent
of ``jax.linearize``) cannot. Traced inside ``forward_mode_forms()`` they run as plain JAX ops that
both modes differentiate: the same function, with the slower backward. ``bilevel.auto_lambda``
traces the task losses inside it when its hypergradient is the exact JVP (``method="jvp"``); any
other forward-mode use of these layers needs the same block.
"""

from __future__ import annotations

import contextlib

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


def in_forward_mode_forms(fn):
  """``fn`` that traces its body inside ``forward_mode_forms()``."""

  def wrapped(*args, **kwargs):
    with forward_mode_forms():
      return fn(*args, **kwargs)

  return wrapped
