"""Per-level task losses (spec section 4, Eqs. 5-6).

``fidelity`` is the paper's loss, ``bce`` the ablation. ``task_losses`` reduces
an elementwise loss to one value per level (primary, global, local), averaging
over observed (example, node) pairs only. A level with nothing observed in the
batch contributes 0, never NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-8


def fidelity(p: jax.Array, y: jax.Array, eps: float = EPS) -> jax.Array:
  """Elementwise fidelity loss 1 - sqrt(p y + eps) - sqrt((1-p)(1-y) + eps)."""
  return 1.0 - jnp.sqrt(p * y + eps) - jnp.sqrt((1.0 - p) * (1.0 - y) + eps)


def bce(p: jax.Array, y: jax.Array, eps: float = 1e-7) -> jax.Array:
  """Elementwise binary cross-entropy on probabilities (clipped to [eps, 1-eps])."""
  p = jnp.clip(p, eps, 1.0 - eps)
  return -(y * jnp.log(p) + (1.0 - y) * jnp.log1p(-p))


ELEMENTWISE = {"fidelity": fidelity, "bce": bce}


def level_matrix(levels: Sequence[int], num_levels: int = 3) -> np.ndarray:
  """(n, T) one-hot node -> level matrix."""
  levels = np.asarray(levels, np.int32)
  if levels.ndim != 1 or levels.min() < 0 or levels.max() >= num_levels:
    raise ValueError(f"levels must be a 1-d list of ints in [0, {num_levels}); got {levels.tolist()}")
  m = np.zeros((levels.size, num_levels), np.float32)
  m[np.arange(levels.size), levels] = 1.0
  return m


def task_losses(marginals: jax.Array, y: jax.Array, mask: jax.Array, levels: Sequence[int],
                loss: str = "fidelity", num_levels: int = 3) -> jax.Array:
  """The task losses [L_1, L_2, L_3]: per-level means over observed entries.

  Args:
    marginals: (B, n) probabilities P(y_k = 1).
    y: (B, n) 0/1 labels.
    mask: (B, n) 1 where observed, 0 where N/A.
    levels: (n,) level of each node (0 primary, 1 global, 2 local).
    loss: "fidelity" (the paper) or "bce" (ablation).
  Returns:
    (num_levels,) float32.
  """
  if loss not in ELEMENTWISE:
    raise ValueError(f"unknown loss {loss!r}; expected one of {list(ELEMENTWISE)}")
  lm = jnp.asarray(level_matrix(levels, num_levels))
  elem = ELEMENTWISE[loss](marginals.astype(jnp.float32), y.astype(jnp.float32))
  mask = mask.astype(jnp.float32)
  num = jnp.einsum("bn,nt->t", elem * mask, lm)
  den = jnp.einsum("bn,nt->t", mask, lm)
  return jnp.where(den > 0, num / jnp.maximum(den, 1.0), 0.0)
