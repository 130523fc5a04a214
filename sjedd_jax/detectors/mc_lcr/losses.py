"""MC-LCR's losses: binary cross-entropy from the logit and the supervised contrastive loss.

Spec: ``/work/shared/spec/mc_lcr.md`` section 3. Pure functions of arrays; they trace
under ``jax.jit`` / ``jax.linearize``. ``supcon`` forms the full (B, B) similarity
matrix, so under ``jit`` with the batch sharded over devices it is the loss of the
global batch (under ``shard_map``, all-gather ``z`` and ``y`` first).

The paper's total (Eq. 15) is L = alpha L_SC + (1 - alpha) L_CE with alpha = 0.5; here
``task_losses`` returns the vector [L_CE, L_SC] and the weighting is the trainer's.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

DENOMINATORS = ("all", "negatives")
REDUCTIONS = ("mean", "sum")


def bce_with_logits(s: jax.Array, y: jax.Array) -> jax.Array:
  """Mean binary cross-entropy from logits (Eq. 14), stable: mean(softplus(s) - y s).

  Args:
    s: (B,) logits, P(fake) = sigmoid(s).
    y: (B,) labels in {0, 1} (1 = fake); floats in [0, 1] are accepted as soft targets.
  """
  s = jnp.asarray(s)
  y = jnp.asarray(y)
  if s.shape != y.shape:
    raise ValueError(f"bce_with_logits: logits {tuple(s.shape)} and labels {tuple(y.shape)} differ in shape")
  s = s.astype(jnp.float32)
  return jnp.mean(jax.nn.softplus(s) - y.astype(jnp.float32) * s)


def supcon(z: jax.Array, y: jax.Array, tau: float = 0.1, denominator: str = "all", reduction: str = "mean",
           scale: float = 1.0) -> jax.Array:
  """Supervised contrastive loss (Khosla et al.'s L_out, single view; Eq. 13).

  With S = Z Z^T / tau, positives P(i) = {p != i : y_p = y_i} and the denominator set
  A(i) = {a != i} (``"all"``, the default) or {a : y_a != y_i} (``"negatives"``, Eq. 13
  as printed):
    l_i = -scale / |P(i)| sum_{p in P(i)} [S_ip - log sum_{a in A(i)} exp(S_ia)].
  Anchors with no positive (or an empty denominator set) are left out; ``"mean"``
  averages l_i over the remaining anchors (0 when none remain), ``"sum"`` adds them
  (Eq. 13 as printed). The log-sum-exp subtracts the row maximum over A(i).
  ``scale = temperature / base_temperature`` of SupContrast's code (default 1).

  Args:
    z: (B, d) embeddings (unit vectors in MC-LCR; not normalised here).
    y: (B,) integer (or 0/1 float) class labels.
    tau: temperature (0.1).
    denominator: ``"all"`` or ``"negatives"``.
    reduction: ``"mean"`` or ``"sum"``.
    scale: factor on every l_i.

  Returns:
    Scalar float32.
  """
  if denominator not in DENOMINATORS:
    raise ValueError(f"supcon: denominator {denominator!r} not one of {list(DENOMINATORS)}")
  if reduction not in REDUCTIONS:
    raise ValueError(f"supcon: reduction {reduction!r} not one of {list(REDUCTIONS)}")
  z = jnp.asarray(z)
  y = jnp.asarray(y)
  if z.ndim != 2 or y.shape != z.shape[:1]:
    raise ValueError(f"supcon: expected z (B, d) and y (B,), got z {tuple(z.shape)} and y {tuple(y.shape)}")
  if isinstance(tau, (int, float)) and not tau > 0:
    raise ValueError(f"supcon: tau must be > 0, got {tau}")
  zf = z.astype(jnp.float32)
  b = zf.shape[0]
  sim = jnp.matmul(zf, zf.T, precision=jax.lax.Precision.HIGHEST) / tau  # (B, B)
  not_self = ~jnp.eye(b, dtype=bool)
  same = y[:, None] == y[None, :]
  positive = same & not_self
  in_denominator = not_self if denominator == "all" else ~same
  has_den = jnp.any(in_denominator, axis=1)
  row_max = jnp.max(jnp.where(in_denominator, sim, -jnp.inf), axis=1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(has_den[:, None], row_max, 0.0))
  den = jnp.sum(jnp.where(in_denominator, jnp.exp(sim - row_max), 0.0), axis=1, keepdims=True)
  log_den = row_max + jnp.log(jnp.where(has_den[:, None], den, 1.0))
  log_prob = sim - log_den
  n_pos = jnp.sum(positive, axis=1)
  valid = (n_pos > 0) & has_den
  mean_log_prob_pos = jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / jnp.maximum(n_pos, 1)
  per_anchor = jnp.where(valid, -scale * mean_log_prob_pos, 0.0)
  total = jnp.sum(per_anchor)
  if reduction == "sum":
    return total
  return total / jnp.maximum(jnp.sum(valid), 1).astype(jnp.float32)


def task_losses(outputs: Mapping[str, jax.Array], y: jax.Array, *, tau: float = 0.1, denominator: str = "all",
                reduction: str = "mean", scale: float = 1.0) -> jax.Array:
  """The two task losses of MC-LCR, [L_CE, L_SC], from the head's outputs.

  Args:
    outputs: ``MCLCRHead`` outputs with ``"logit"`` (B,) and ``"z"`` (B, d).
    y: (B,) labels, 1 = fake, 0 = real.
    tau, denominator, reduction, scale: passed to ``supcon``.

  Returns:
    (2,) float32: [bce_with_logits(logit, y), supcon(z, y, ...)].
  """
  for key in ("logit", "z"):
    if key not in outputs:
      raise ValueError(f"task_losses: outputs lack {key!r}; got keys {sorted(outputs)}")
  l_ce = bce_with_logits(outputs["logit"], y)
  l_sc = supcon(outputs["z"], y, tau=tau, denominator=denominator, reduction=reduction, scale=scale)
  return jnp.stack([l_ce, l_sc])


def cosine_separation(z: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Mean cosine of z within class and across classes (spec section 9 check 2; Fig. 7 made numeric).

  ``within`` averages z_i . z_j / (|z_i| |z_j|) over all ordered pairs i != j with
  y_i = y_j, ``across`` over the pairs with y_i != y_j; for two classes both come from
  the class sums in O(B d). NaN where a set of pairs is empty.

  Args:
    z: (B, d) embeddings.
    y: (B,) binary labels (1 = fake).

  Returns:
    ``(within, across)``, float32 scalars; the separation is ``within - across``.
  """
  z = jnp.asarray(z, jnp.float32)
  y = jnp.asarray(y)
  if z.ndim != 2 or y.shape != z.shape[:1]:
    raise ValueError(f"cosine_separation: expected z (B, d) and y (B,), got z {tuple(z.shape)} and y {tuple(y.shape)}")
  u = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  fake = (y > 0.5).astype(jnp.float32)[:, None]
  s1 = jnp.sum(u * fake, axis=0)
  s0 = jnp.sum(u * (1.0 - fake), axis=0)
  n1 = jnp.sum(fake)
  n0 = z.shape[0] - n1
  sq = jnp.sum(u * u, axis=-1)  # 1, or 0 for a zero vector
  self1 = jnp.sum(sq * fake[:, 0])
  self0 = jnp.sum(sq * (1.0 - fake[:, 0]))
  within_pairs = n1 * (n1 - 1.0) + n0 * (n0 - 1.0)
  within = (jnp.dot(s1, s1) - self1 + jnp.dot(s0, s0) - self0) / within_pairs
  across = jnp.dot(s0, s1) / (n0 * n1)
  return within, across
