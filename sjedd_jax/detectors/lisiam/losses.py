"""LiSiam's losses as pure functions (spec lisiam.md section 3); NHWC logits, batch-mean reductions.

* ``cls_loss``  L_cls = mean_b CE(alpha_b, y_b) (Eq. 16);
* ``seg_loss``  L_seg = CE of the segmentation logits, bilinearly upsampled (no antialias) to the
  mask's resolution, averaged over the pixels whose label is not 255 (Eq. 17; torch's
  ``ignore_index=255``); the same function gives the auxiliary OCR loss on A;
* ``li_loss``   L_li = mean |X_s^1 - X_s^2| over B x 2 x h x w, on logits (the release) or on
  the softmax maps (``on="probs"``), gradients into both branches (Eq. 15, release mean).

Every function is a mean over the whole (global) batch, so under ``jit`` with the batch
sharded the result is what one device computes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sjedd_jax.detectors.lisiam.model import resize_bilinear

IGNORE = 255
LI_ON = ("logits", "probs")


def cls_loss(logits: jax.Array, y: jax.Array) -> jax.Array:
  """Mean cross-entropy of (B, 2) logits against labels y in {0, 1} (any shape that flattens to (B,))."""
  y = jnp.reshape(y, (logits.shape[0],)).astype(jnp.int32)
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def seg_loss(logits: jax.Array, mask: jax.Array, ignore: int = IGNORE) -> jax.Array:
  """Pixel cross-entropy of (B, h, w, 2) logits upsampled to the (B, H, W) ``mask``'s size.

  Labels 0/1; ``ignore`` (255) pixels count nowhere. 0 when no pixel is labelled.
  """
  mask = jnp.asarray(mask)
  if mask.ndim != 3 or mask.shape[0] != logits.shape[0]:
    raise ValueError(f"seg_loss: mask must be (B, H, W) with B = {logits.shape[0]}, got {mask.shape}")
  up = resize_bilinear(logits.astype(jnp.float32), mask.shape[1:3])
  labels = jnp.round(mask.astype(jnp.float32)).astype(jnp.int32)
  valid = labels != ignore
  logp = jax.nn.log_softmax(up, axis=-1)
  picked = jnp.take_along_axis(logp, jnp.where(valid, labels, 0)[..., None], axis=-1)[..., 0]
  count = jnp.sum(valid)
  return -jnp.sum(jnp.where(valid, picked, 0.0)) / jnp.maximum(count, 1).astype(jnp.float32)


def li_loss(seg1: jax.Array, seg2: jax.Array, on: str = "logits") -> jax.Array:
  """Localization invariance: mean |X_s^1 - X_s^2| over every element (logits or softmax maps)."""
  if on not in LI_ON:
    raise ValueError(f"li_on={on!r}; expected one of {LI_ON}")
  a, b = seg1.astype(jnp.float32), seg2.astype(jnp.float32)
  if on == "probs":
    a, b = jax.nn.softmax(a, axis=-1), jax.nn.softmax(b, axis=-1)
  return jnp.mean(jnp.abs(a - b))


def accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
  y = jnp.reshape(y, (logits.shape[0],))
  return jnp.mean(((logits[:, 1] > logits[:, 0]) == (y > 0.5)).astype(jnp.float32))
