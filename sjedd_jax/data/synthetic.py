"""An embedded synthetic face-forgery world in the manifest format (issue 4, spec section 7).

Procedurally drawn faces (numpy + OpenCV) with 68 iBUG/dlib landmarks, many
identities and several "frames" (expression, head pose, lighting) per identity,
plus four forgery families written under FF++ source names so Table I applies:

    real            the camera frame: clean render + per-video sensor noise
    Deepfakes       identity swap: the inner face of ANOTHER identity, rendered
                    by a low-resolution "autoencoder" (down/up-sampled, little
                    skin texture), partially colour-corrected, soft-blended
    FaceSwap        identity swap: full-resolution graphics render, sub-pixel
                    mis-registered, mean-colour corrected, sharp-edged blend
    Face2Face       reenactment: lip + mouth of ANOTHER expression of the same
                    identity, re-rendered and warped, blended into the frame
    NeuralTextures  reenactment: as Face2Face through a low-resolution renderer
                    with a wider mask

The forged region comes from a renderer, not the camera: it lacks the frame's
sensor noise and most skin texture, and has a blending seam and a slight colour
mismatch. Nothing global marks a fake (colour, brightness and noise level vary per
video and overlap between real and fake), so a detector has to look at local
statistics. ``docs/data_synthetic.md`` records what a small model learns from it.

Splits are by identity (train/val/test, identity-disjoint; swap partners come from
the same split). Everything is a deterministic function of the parameters.

Example::

    d = ensure_synthetic("~/.cache/sjedd", num_identities=120, expressions_per_identity=8)
    recs = manifest.read(d, splits=["train"])
    train, test = cross_manipulation(manifest.read(d), train_sources=["Deepfakes"])
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from sjedd_jax.data import manifest, pools
from sjedd_jax.data import sources as sources_lib
from sjedd_jax.data import regions as regions_lib

GENERATOR_VERSION = 1
FORGERY_SOURCES = ("Deepfakes", "FaceSwap", "Face2Face", "NeuralTextures")
METHOD_OF = {"Deepfakes": "identity_swap", "FaceSwap": "identity_swap",
             "Face2Face": "expression_reenactment", "NeuralTextures": "expression_reenactment"}
SUPERSAMPLE = 2
ORACLE_DIR = "masks_oracle"  # ground-truth forgery masks of the fakes (write_oracle_masks)


# ----------------------------------------------------------------------------- face model

def sample_identity(rng: np.random.Generator) -> dict[str, Any]:
  """Identity parameters in canonical face units (face half-width ~0.44, y down)."""
  u = rng.uniform
  t = u(0, 1)  # skin tone, light -> dark
  skin = np.array([236, 198, 172]) * (1 - t) + np.array([105, 68, 48]) * t + rng.normal(0, 8, 3)
  hair_palette = np.array([[30, 22, 18], [70, 45, 25], [120, 80, 40], [190, 160, 110], [110, 105, 100], [20, 20, 25]])
  hair = hair_palette[rng.integers(len(hair_palette))] + rng.normal(0, 8, 3)
  lip = skin * np.array([0.92, 0.62, 0.62]) + rng.normal(0, 6, 3)
  iris_palette = np.array([[70, 45, 25], [40, 25, 15], [70, 110, 140], [80, 110, 70], [110, 85, 50]])
  return dict(
      W=u(0.40, 0.47), H=u(0.50, 0.60), jaw_q=u(0.55, 1.0), jaw_top=u(-0.12, -0.02),
      brow_y=u(-0.27, -0.21), brow_in=u(0.05, 0.09), brow_out=u(0.30, 0.36),
      brow_arch=u(0.02, 0.05), brow_thick=u(0.022, 0.042),
      eye_y=u(-0.13, -0.09), eye_x=u(0.165, 0.21), eye_w=u(0.065, 0.085), eye_h=u(0.026, 0.04),
      iris_r=u(0.55, 0.75), nose_tip=u(0.09, 0.15), nose_w=u(0.065, 0.095),
      mouth_y=u(0.27, 0.33), mouth_w=u(0.13, 0.18), lip_up=u(0.022, 0.036), lip_lo=u(0.028, 0.046),
      hairline=u(-0.50, -0.38), hair_style=int(rng.integers(3)), head_top=u(0.60, 0.70),
      skin=np.clip(skin, 0, 255), hair=np.clip(hair, 0, 255), lip_color=np.clip(lip, 0, 255),
      brow_color=np.clip(hair * 0.8 + rng.normal(0, 5, 3), 0, 255),
      iris=iris_palette[rng.integers(len(iris_palette))],
      tex_seed=int(rng.integers(2**31)), tex_amp=u(0.012, 0.028), blotch_amp=u(0.01, 0.03),
      moles=rng.uniform(-0.35, 0.35, (int(rng.integers(0, 5)), 2)) * np.array([1.0, 1.2]) + np.array([0, 0.1]),
  )


def sample_expression(rng: np.random.Generator, neutral: bool = False) -> dict[str, float]:
  if neutral:
    return dict(smile=0.0, open=0.0, brow=0.0, squint=0.0)
  return dict(smile=float(rng.uniform(-0.3, 1.0)),
              open=float(rng.uniform(0.0, 1.0) if rng.uniform() < 0.6 else 0.0),
              brow=float(rng.uniform(-0.4, 1.0)), squint=float(rng.uniform(0.0, 0.5)))


def different_mouth(rng: np.random.Generator, expr: dict[str, float]) -> dict[str, float]:
  """Another expression whose mouth differs clearly from ``expr`` (reenactment driver)."""
  for _ in range(100):
    e = sample_expression(rng)
    if abs(e["open"] - expr["open"]) + 0.6 * abs(e["smile"] - expr["smile"]) > 0.45:
      return e
  return dict(expr, open=1.0 - expr["open"])


def sample_pose(rng: np.random.Generator) -> dict[str, float]:
  u = rng.uniform
  return dict(roll=u(-9, 9), yaw=u(-0.3, 0.3), scale=u(0.93, 1.07), dx=u(-0.04, 0.04), dy=u(-0.04, 0.04),
              light_angle=u(0, 2 * math.pi), light=u(0.05, 0.25), gaze_x=u(-0.3, 0.3), gaze_y=u(-0.2, 0.2),
              exposure=u(0.85, 1.1))


def canonical_landmarks(p: dict[str, Any], e: dict[str, float]) -> np.ndarray:
  """68 iBUG landmarks in canonical units for identity ``p`` and expression ``e``."""
  lm = np.zeros((68, 2), np.float64)
  chin = p["H"] + 0.05 * e["open"]
  th = np.linspace(0, math.pi, 17)
  c, s = np.cos(th), np.sin(th)
  lm[0:17, 0] = -p["W"] * np.sign(c) * np.abs(c) ** p["jaw_q"]
  lm[0:17, 1] = p["jaw_top"] + (chin - p["jaw_top"]) * s ** 1.3
  # Brows: image-left brow 17 (outer) -> 21 (inner); image-right 22 (inner) -> 26 (outer).
  raise_ = 0.035 * e["brow"]
  t = np.linspace(0, 1, 5)
  bx = p["brow_out"] + (p["brow_in"] - p["brow_out"]) * t
  by = p["brow_y"] - raise_ - p["brow_arch"] * np.sin(math.pi * (0.25 + 0.75 * (1 - t)) * 0.9) + 0.01 * t
  lm[17:22] = np.stack([-bx, by], 1)
  lm[22:27] = np.stack([bx[::-1], by[::-1]], 1)
  # Nose: bridge 27-30 top to tip, base 31-35 image-left to image-right.
  top = p["brow_y"] + 0.07
  lm[27:31, 0] = 0.0
  lm[27:31, 1] = np.linspace(top, p["nose_tip"], 4)
  base_y = p["nose_tip"] + 0.03
  lm[31:36, 0] = np.linspace(-p["nose_w"], p["nose_w"], 5)
  lm[31:36, 1] = base_y - np.array([0.015, 0.0, -0.008, 0.0, 0.015])
  # Eyes: 36 outer, 37-38 upper lid, 39 inner, 40-41 lower lid (image-left eye); mirrored for 42-47.
  eh = p["eye_h"] * (1 - 0.5 * e["squint"])
  ang = np.array([math.pi, 2 * math.pi / 3, math.pi / 3, 0.0, -math.pi / 3, -2 * math.pi / 3])
  ex, ey = p["eye_w"] * np.cos(ang), -eh * np.sin(ang)
  ey = np.where(ey > 0, ey * 0.8, ey)
  lm[36:42] = np.stack([-p["eye_x"] + ex, p["eye_y"] + ey], 1)
  right = np.stack([p["eye_x"] - ex, p["eye_y"] + ey], 1)
  lm[42:48] = right[[3, 2, 1, 0, 5, 4]]
  # Mouth: 48 left corner, 49-53 upper outer, 54 right corner, 55-59 lower outer,
  # 60 left inner corner, 61-63 upper inner, 64 right inner corner, 65-67 lower inner.
  mw = p["mouth_w"] * (1 + 0.15 * e["smile"] - 0.1 * e["open"])
  my = p["mouth_y"]
  corner_y = my - 0.03 * e["smile"]
  gap = 0.075 * e["open"]
  up, lo = p["lip_up"], p["lip_lo"]
  xs = np.array([-1, -0.6, -0.25, 0, 0.25, 0.6, 1])
  bow = np.array([0, 0.5, 0.85, 0.75, 0.85, 0.5, 0])
  curve = (1 - xs ** 2)
  lm[48:55, 0] = mw * xs
  lm[48:55, 1] = corner_y + (my - corner_y) * curve - up * bow - 0.004
  low_x = np.array([0.6, 0.25, 0, -0.25, -0.6])
  lm[55:60, 0] = mw * low_x
  lm[55:60, 1] = corner_y + (my - corner_y) * (1 - low_x ** 2) + gap + lo * (1 - low_x ** 2) ** 0.7 + 0.004
  ix = np.array([-0.85, -0.35, 0, 0.35, 0.85])
  lm[60, :] = (-mw * 0.85, corner_y + (my - corner_y) * 0.28)
  lm[61:64, 0] = mw * ix[1:4]
  lm[61:64, 1] = corner_y + (my - corner_y) * (1 - ix[1:4] ** 2) + 0.002
  lm[64, :] = (mw * 0.85, corner_y + (my - corner_y) * 0.28)
  lm[65:68, 0] = mw * ix[3:0:-1]
  lm[65:68, 1] = corner_y + (my - corner_y) * (1 - ix[3:0:-1] ** 2) + gap + 0.002
  return lm


# Depth of each landmark (for the yaw approximation): jaw 0, nose tip 1.
_DEPTH = np.zeros(68)
_DEPTH[17:27] = 0.45
_DEPTH[27:31] = np.linspace(0.5, 1.0, 4)
_DEPTH[31:36] = 0.75
_DEPTH[36:48] = 0.35
_DEPTH[48:68] = 0.55


class _Frame:
  """Canonical -> crop-pixel mapping of one rendered frame (size is the render size)."""

  def __init__(self, pose: dict[str, float], size: int):
    self.size = size
    self.k = size / 1.17 * pose["scale"]
    a = math.radians(pose["roll"])
    self.rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    self.center = np.array([0.0, 0.17])
    self.offset = np.array([size / 2 + pose["dx"] * size, size / 2 + pose["dy"] * size])
    self.yaw = pose["yaw"]

  def __call__(self, pts: np.ndarray, depth: np.ndarray | float = 0.0) -> np.ndarray:
    pts = np.asarray(pts, np.float64).copy()
    pts[..., 0] = pts[..., 0] * (1 - 0.18 * abs(self.yaw)) + 0.16 * self.yaw * depth
    return (pts - self.center) @ self.rot.T * self.k + self.offset


def _fill(canvas: np.ndarray, mask: np.ndarray, color) -> None:
  """canvas <- canvas * (1 - mask) + color * mask, in place, within the mask's bounding box."""
  rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
  if not len(rows):
    return
  sl = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
  m = mask[sl][..., None]
  c = canvas[sl]
  c += m * (np.asarray(color, np.float32) / 255.0 - c)


def _poly_mask(shape, pts, closed=True, thickness=0) -> np.ndarray:
  m = np.zeros(shape, np.uint8)
  p = np.round(np.asarray(pts) * 16).astype(np.int32)
  if thickness > 0:
    cv2.polylines(m, [p], closed, 255, thickness, cv2.LINE_AA, shift=4)
  else:
    cv2.fillPoly(m, [p], 255, cv2.LINE_AA, shift=4)
  return m.astype(np.float32) / 255.0


def _ellipse_mask(shape, center, axes, angle=0.0) -> np.ndarray:
  m = np.zeros(shape, np.uint8)
  c = tuple(int(round(v * 16)) for v in center)
  ax = tuple(max(1, int(round(v * 16))) for v in axes)
  cv2.ellipse(m, c, ax, angle, 0, 360, 255, -1, cv2.LINE_AA, shift=4)
  return m.astype(np.float32) / 255.0


@functools.lru_cache(maxsize=64)
def _texture(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
  """Per-identity skin texture: fine pores (sigma ~0.5 px at output size) and blotches."""
  rng = np.random.default_rng(seed)
  fine = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), 0.9)
  fine /= fine.std() + 1e-6
  blotch = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 24)
  blotch /= blotch.std() + 1e-6
  return fine, blotch


def render(p: dict[str, Any], e: dict[str, float], pose: dict[str, float], background: np.ndarray,
           size: int, texture: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
  """Draws one face: (float32 (size, size, 3) RGB in [0, 1], (68, 2) landmarks in output pixels).

  ``background`` is a float32 (S, S, 3) image at the render size S = SUPERSAMPLE * size.
  ``texture`` scales the identity's skin texture (renderers of fakes use less).
  """
  S = size * SUPERSAMPLE
  shape = (S, S)
  fr = _Frame(pose, S)
  can = canonical_landmarks(p, e)
  lm = fr(can, _DEPTH)
  img = background.copy()
  # Neck and head.
  W = p["W"]
  neck = fr(np.array([[-0.62 * W, 0.2], [0.62 * W, 0.2], [0.7 * W, 1.2], [-0.7 * W, 1.2]]))
  _fill(img, _poly_mask(shape, neck), p["skin"] * 0.78)
  th = np.linspace(0, math.pi, 15)
  top = np.stack([-W * np.cos(th) * 1.02, p["jaw_top"] - (p["head_top"] + p["jaw_top"]) * np.sin(th) ** 0.9], 1)
  head = np.concatenate([lm[0:17], fr(top[::-1][1:-1], 0.1)], 0)
  face_m = _poly_mask(shape, head)
  skin_col = p["skin"]
  _fill(img, face_m, skin_col)
  # Skin texture and shading (inside the face only).
  fine, blotch = _texture(p["tex_seed"], S)
  la = pose["light_angle"]
  yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S - 0.5
  light = 1 + pose["light"] * (np.cos(la) * xx + np.sin(la) * yy) * 2
  edge = cv2.GaussianBlur(face_m, (0, 0), S * 0.05)
  shade = light * (0.82 + 0.18 * edge) * (1 + texture * (p["tex_amp"] * fine + p["blotch_amp"] * blotch))
  img *= (1 + face_m * (shade - 1))[..., None]
  for mx, my in p["moles"]:
    c = fr(np.array([mx, my]), 0.3)
    _fill(img, _ellipse_mask(shape, c, (0.012 * fr.k, 0.012 * fr.k)) * 0.7 * face_m, skin_col * 0.55)
  # Hair.
  if p["hair_style"] > 0:
    hth = np.linspace(0, math.pi, 15)
    outer = np.stack([-W * np.cos(hth) * 1.1, p["hairline"] + 0.05 - (p["head_top"] + 0.1) * np.sin(hth) ** 0.8], 1)
    wave = np.stack([np.linspace(W * 1.05, -W * 1.05, 9), p["hairline"] + 0.04 * np.sin(np.linspace(0, 3, 9)) +
                     0.1 * np.linspace(-1, 1, 9) ** 2], 1)
    pts = np.concatenate([outer, wave], 0)
    if p["hair_style"] == 2:  # long hair: sides down to the jaw
      pts = np.concatenate([[[-W * 1.2, 0.35]], outer, [[W * 1.2, 0.35], [W * 0.98, 0.3]], wave[1:-1],
                            [[-W * 0.98, 0.3]]], 0)
    _fill(img, _poly_mask(shape, fr(pts, 0.1)), p["hair"] * (0.9 + 0.2 * pose["light"]))
  # Brows.
  th_px = max(1, int(round(p["brow_thick"] * fr.k)))
  for g in (regions_lib.BROW_L, regions_lib.BROW_R):
    _fill(img, _poly_mask(shape, lm[list(g)], closed=False, thickness=th_px) * 0.9, p["brow_color"])
  # Eyes: sclera, iris, pupil, upper lid.
  for g in (regions_lib.EYE_L, regions_lib.EYE_R):
    pts = lm[list(g)]
    eye_m = _poly_mask(shape, pts)
    _fill(img, eye_m, np.array([232, 226, 220]) * (0.9 + 0.1 * pose["exposure"]))
    c = pts.mean(0) + np.array([pose["gaze_x"], pose["gaze_y"]]) * p["eye_w"] * fr.k * 0.5
    r = p["eye_h"] * fr.k * (0.9 + p["iris_r"] * 0.5)
    _fill(img, _ellipse_mask(shape, c, (r, r)) * eye_m, p["iris"])
    _fill(img, _ellipse_mask(shape, c, (r * 0.45, r * 0.45)) * eye_m, (15, 12, 12))
    upper = pts[[0, 1, 2, 3]]  # corner, two upper-lid points, corner (both eyes)
    _fill(img, _poly_mask(shape, upper, closed=False, thickness=max(1, int(round(0.012 * fr.k)))) * 0.8,
          (40, 25, 20))
  # Nose: side shadow, nostrils, tip highlight.
  shadow_side = 1.0 if math.cos(la) < 0 else -1.0
  bridge = lm[27:31] + np.array([shadow_side * 0.025 * fr.k, 0])
  _fill(img, cv2.GaussianBlur(_poly_mask(shape, bridge, closed=False, thickness=max(1, int(0.02 * fr.k))),
                              (0, 0), 0.01 * fr.k + 0.5) * 0.35, skin_col * 0.6)
  for i in (32, 34):
    _fill(img, _ellipse_mask(shape, lm[i] + np.array([0, -0.004 * fr.k]), (0.018 * fr.k, 0.009 * fr.k)) * 0.8,
          skin_col * 0.35)
  _fill(img, _ellipse_mask(shape, lm[30] + np.array([0, 0.01 * fr.k]), (0.025 * fr.k, 0.015 * fr.k)) * 0.25,
        np.minimum(skin_col * 1.15, 255))
  # Mouth: lips, then the opening with teeth.
  _fill(img, _poly_mask(shape, lm[48:60]), p["lip_color"])
  if e["open"] > 0.05:
    inner = lm[60:68]
    in_m = _poly_mask(shape, inner)
    _fill(img, in_m, (70, 25, 30))
    teeth = _ellipse_mask(shape, (inner[:, 0].mean(), inner[1:4, 1].mean()),
                          (0.8 * p["mouth_w"] * fr.k, 0.018 * fr.k * (0.5 + e["open"])))
    _fill(img, teeth * in_m, (225, 220, 205))
  _fill(img, _poly_mask(shape, lm[60:68], thickness=max(1, int(0.008 * fr.k))) * 0.5, p["lip_color"] * 0.55)
  img *= pose["exposure"]
  img = cv2.GaussianBlur(img, (0, 0), 0.45)
  out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
  lm_out = (lm + 0.5) / SUPERSAMPLE - 0.5
  return np.clip(out, 0, 1), lm_out.astype(np.float32)


def sample_background(rng: np.random.Generator, size: int) -> np.ndarray:
  """A per-video background at render size: a colour gradient plus a few soft shapes."""
  S = size * SUPERSAMPLE
  c0, c1 = rng.uniform(0.1, 0.9, 3), rng.uniform(0.1, 0.9, 3)
  a = rng.uniform(0, 2 * math.pi)
  yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / S - 0.5
  t = np.clip(0.5 + (np.cos(a) * xx + np.sin(a) * yy), 0, 1)[..., None]
  img = (c0 * (1 - t) + c1 * t).astype(np.float32)
  for _ in range(int(rng.integers(1, 5))):
    m = np.zeros((S, S), np.uint8)
    if rng.uniform() < 0.5:
      p0 = rng.uniform(-0.2, 1.2, 2) * S
      cv2.rectangle(m, tuple(int(v) for v in p0), tuple(int(v) for v in p0 + rng.uniform(0.1, 0.6, 2) * S), 255, -1)
    else:
      cv2.circle(m, tuple(int(v) for v in rng.uniform(0, 1, 2) * S), int(rng.uniform(0.05, 0.3) * S), 255, -1)
    _fill(img, cv2.GaussianBlur(m.astype(np.float32) / 255, (0, 0), rng.uniform(0.5, 4)) * rng.uniform(0.3, 0.9),
          rng.uniform(20, 235, 3))
  return img


# ----------------------------------------------------------------------------- forgeries

def _camera_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
  """Sensor noise: luminance plus weaker chroma noise, in [0, 1] units."""
  lum = rng.normal(0, sigma, shape[:2] + (1,))
  chroma = rng.normal(0, 0.5 * sigma, shape)
  return (lum + chroma).astype(np.float32)


def _reinhard(src: np.ndarray, dst: np.ndarray, mask: np.ndarray, strength: float = 1.0,
              std: bool = True, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
  """Colour transfer of ``src`` towards ``dst`` statistics inside ``mask`` (Lab; Reinhard et al. 2001)."""
  s = cv2.cvtColor(np.clip(src, 0, 1).astype(np.float32), cv2.COLOR_RGB2Lab)
  d = cv2.cvtColor(np.clip(dst, 0, 1).astype(np.float32), cv2.COLOR_RGB2Lab)
  w = mask[..., None] / (mask.sum() + 1e-6)
  ms, md = (s * w).sum((0, 1)), (d * w).sum((0, 1))
  if std:
    ss = np.sqrt(((s - ms) ** 2 * w).sum((0, 1))) + 1e-3
    sd = np.sqrt(((d - md) ** 2 * w).sum((0, 1))) + 1e-3
    t = (s - ms) / ss * sd + md
  else:
    t = s - ms + md
  t = s + strength * (t - s) + np.asarray(offset, np.float32)
  return np.clip(cv2.cvtColor(t.astype(np.float32), cv2.COLOR_Lab2RGB), 0, 1)


def _subpixel_warp(rng: np.random.Generator, img: np.ndarray, amount: float) -> np.ndarray:
  """A small random similarity warp with bilinear resampling (mis-registration + smoothing)."""
  h, w = img.shape[:2]
  ang = rng.uniform(-1.5, 1.5) * amount
  sc = 1 + rng.uniform(-0.02, 0.02) * amount
  m = cv2.getRotationMatrix2D((w / 2, h / 2), ang, sc)
  m[:, 2] += rng.uniform(0.25, 0.75, 2) * amount * rng.choice([-1, 1], 2)
  return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _down_up(img: np.ndarray, factor: float) -> np.ndarray:
  h, w = img.shape[:2]
  small = cv2.resize(img, (max(4, int(round(w * factor))), max(4, int(round(h * factor)))),
                     interpolation=cv2.INTER_AREA)
  return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


# Per-family renderer settings: texture kept, down-sampling factor, warp, mask (region, dilate,
# blur as fractions of the face size), colour correction (strength, std matching).
FAMILIES = {
    "Deepfakes": dict(texture=0.3, down=0.5, warp=0.3, region="inner_face", dilate=0.02, blur=0.035,
                      color=0.85, std=True, shift=(5.0, 3.5)),
    "FaceSwap": dict(texture=0.4, down=0.6, warp=1.0, region="inner_face", dilate=0.0, blur=0.012,
                     color=1.0, std=False, shift=(6.0, 4.0)),
    "Face2Face": dict(texture=0.3, down=0.45, warp=1.0, region="lip_mouth", dilate=0.09, blur=0.025,
                      color=0.9, std=True, shift=(7.0, 5.0)),
    "NeuralTextures": dict(texture=0.3, down=0.45, warp=0.3, region="lip_mouth", dilate=0.12, blur=0.04,
                           color=0.8, std=True, shift=(7.0, 5.0)),
}


def forge(family: str, rng: np.random.Generator, frame: np.ndarray, frame_lm: np.ndarray,
          rendered: np.ndarray, rendered_lm: np.ndarray,
          checker: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Blends the renderer output ``rendered`` into the camera ``frame``; returns (image, landmarks, mask).

  Identity swaps replace the inner face (landmarks 17-67 follow the source),
  reenactments the lip + mouth (landmarks 48-67 follow the driver expression).
  ``checker`` > 0 gives the renderer a transposed-convolution-like trace: its output
  becomes g (1 + checker (-1)^(x+y)) (a peak at the (P/2, P/2) bin of patch spectra
  under the mask; MC-LCR spec section 9). No random draw depends on it.
  """
  cfg = FAMILIES[family]
  g = rendered
  if cfg["down"]:
    g = _down_up(g, cfg["down"])
  if cfg["warp"]:
    g = _subpixel_warp(rng, g, cfg["warp"])
  groups = regions_lib.REGIONS[cfg["region"]]
  pts = [frame_lm[list(gr)] for gr in groups] + [rendered_lm[list(gr)] for gr in groups]
  scale = regions_lib.face_size(frame_lm)
  hard = regions_lib.soft_mask(pts, frame.shape[:2], scale, cfg["dilate"], 0.0)
  mask = regions_lib.soft_mask(pts, frame.shape[:2], scale, cfg["dilate"], cfg["blur"])
  # Partial colour correction, then a residual mismatch of the renderer: a random Lab offset
  # (random sign, so no global cue).
  d_l, d_ab = cfg["shift"]
  offset = rng.uniform(0.4, 1.0, 3) * rng.choice([-1.0, 1.0], 3) * np.array([d_l, d_ab, d_ab])
  g = _reinhard(g, frame, hard, cfg["color"], cfg["std"], offset)
  if checker:
    yy, xx = np.indices(g.shape[:2])
    g = g * (1.0 + checker * np.where((yy + xx) % 2 == 0, 1.0, -1.0))[..., None].astype(g.dtype)
  out = mask[..., None] * g + (1 - mask[..., None]) * frame
  lm = frame_lm.copy()
  first = 17 if cfg["region"] == "inner_face" else 48
  lm[first:] = rendered_lm[first:]
  return out, lm, mask


# ----------------------------------------------------------------------------- generation

def default_params(**overrides) -> dict[str, Any]:
  """The world's parameters with ``overrides``. ``checkerboard`` (a (min, max) range of the
  trace amplitude e, default off) and ``checkerboard_sources`` (the families that get it,
  default all four) enter the parameters (and the world's hash) only when on, so the
  default world keeps its bytes and its fingerprint."""
  checker = overrides.pop("checkerboard", 0) or 0
  checker_sources = overrides.pop("checkerboard_sources", None)
  params = dict(seed=0, num_identities=120, expressions_per_identity=8, image_size=64,
                sources=("real",) + FORGERY_SOURCES, split_fractions=(0.7, 0.15, 0.15),
                noise=(0.012, 0.03), post_noise=(0.002, 0.006), version=GENERATOR_VERSION)
  if checker:
    lo, hi = (checker, checker) if np.isscalar(checker) else tuple(checker)
    if not 0 < lo <= hi < 0.5:
      raise ValueError(f"checkerboard={checker!r}: expected an amplitude (or (min, max)) in (0, 0.5)")
    params["checkerboard"] = [float(lo), float(hi)]
    params["checkerboard_sources"] = list(checker_sources or FORGERY_SOURCES)
  unknown = set(overrides) - set(params)
  if unknown:
    raise TypeError(f"unknown synthetic-world parameter(s) {sorted(unknown)}; allowed: {sorted(params)}")
  params.update(overrides)
  params["sources"] = list(params["sources"])
  params["split_fractions"] = list(params["split_fractions"])
  params["noise"], params["post_noise"] = list(params["noise"]), list(params["post_noise"])
  for key, lo, hi in (("seed", 0, 2 ** 32 - 1), ("num_identities", 2, 100_000), ("expressions_per_identity", 1, 10_000),
                      ("image_size", 16, 2048)):
    v = params[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
      raise ValueError(f"synthetic world: {key}={v!r} must be a whole number in [{lo}, {hi}]")
  bad = [s for s in params["sources"] if s not in ("real",) + FORGERY_SOURCES]
  if bad:
    raise ValueError(f"unknown source(s) {bad}; expected among {('real',) + FORGERY_SOURCES}")
  return params


def identity_name(i: int) -> str:
  return f"{i:04d}"


def assign_splits(n: int, seed: int, fractions: Sequence[float]) -> dict[int, str]:
  """Identity -> split, identity-disjoint; each split gets at least 2 identities when n >= 6."""
  order = np.random.default_rng([seed, 3]).permutation(n)
  f = np.asarray(fractions, np.float64) / np.sum(fractions)
  n_val, n_test = (max(2 if n >= 6 else 0, int(round(x * n))) for x in f[1:])
  n_train = n - n_val - n_test
  if n_train < 2:
    raise ValueError(f"num_identities={n} is too small for split fractions {list(fractions)}")
  names = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
  return {int(i): s for i, s in zip(order, names)}


def swap_partners(split_of: dict[int, str], seed: int) -> dict[str, dict[int, int]]:
  """For each swap family, target identity -> source identity (another identity of the same split)."""
  out = {"Deepfakes": {}, "FaceSwap": {}}
  rng = np.random.default_rng([seed, 2])
  for split in manifest.SPLITS:
    ids = sorted(i for i, s in split_of.items() if s == split)
    if not ids:
      continue
    if len(ids) < 2:
      raise ValueError(f"split {split!r} has a single identity; identity swaps need two")
    order = [ids[j] for j in rng.permutation(len(ids))]
    n = len(order)
    for k, t in enumerate(order):
      out["Deepfakes"][t] = order[(k + 1) % n]
      out["FaceSwap"][t] = order[(k + 2) % n] if n > 2 else order[(k + 1) % n]
  return out


def _identity(seed: int, i: int) -> dict[str, Any]:
  return sample_identity(np.random.default_rng([seed, 0, i]))


def _to_uint8(img: np.ndarray) -> np.ndarray:
  return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)


def _video_task(args) -> list[dict]:
  """Renders one identity's real video and its forgeries; writes the PNGs; returns record dicts.

  With a sixth argument ``True`` (``write_oracle_masks``) it replays the same RNG streams
  but writes only each fake's hard blend mask (``forge``'s mask > 0.5, 0/255 PNG) under
  ``ORACLE_DIR`` and returns the masks' relative paths; no image or record is written.
  """
  out_dir, params, i, split, partners = args[:5]
  oracle = bool(args[5]) if len(args) > 5 else False
  seed, size = params["seed"], params["image_size"]
  p = _identity(seed, i)
  rng = np.random.default_rng([seed, 1, i])
  bg = sample_background(rng, size)
  sigma = rng.uniform(*params["noise"])
  post = rng.uniform(*params["post_noise"])
  E = params["expressions_per_identity"]
  exprs = [sample_expression(rng, neutral=(j == 0)) for j in range(E)]
  poses = [sample_pose(rng) for _ in range(E)]
  name = identity_name(i)
  recs = []

  def emit(source, video, j, img, lm, frng, blend=None):
    rel = f"{source}/{video.split('/')[-1]}/{j:03d}.png"
    if oracle:  # the image's post-noise stream is its own: skipping it changes no other draw
      if blend is not None:
        _write_mask(os.path.join(out_dir, ORACLE_DIR, rel), blend > 0.5)
        recs.append(f"{ORACLE_DIR}/{rel}")
      return
    img = img + frng.normal(0, post, img.shape).astype(np.float32)
    path = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, cv2.cvtColor(_to_uint8(img), cv2.COLOR_RGB2BGR))
    recs.append(dict(path=rel, source=source, is_fake=int(source != "real"), video_id=video, split=split,
                     identity=name, frame=j, landmarks=lm.tolist(), method=METHOD_OF.get(source)))

  for j in range(E):
    clean, lm = render(p, exprs[j], poses[j], bg, size)
    frng = np.random.default_rng([seed, 4, i, j])
    frame = clean + _camera_noise(frng, clean.shape, sigma)
    if "real" in params["sources"]:
      emit("real", f"real/{name}", j, frame, lm, np.random.default_rng([seed, 5, i, j, 0]))
    for k, fam in enumerate(FORGERY_SOURCES):
      if fam not in params["sources"]:
        continue
      frng = np.random.default_rng([seed, 5, i, j, k + 1])
      cfg = FAMILIES[fam]
      pose = dict(poses[j])
      pose["light"] = float(np.clip(pose["light"] + frng.uniform(-0.05, 0.05), 0, 0.3))
      if fam in partners:
        src = partners[fam]
        g, g_lm = render(_identity(seed, src), exprs[j], pose, bg, size, texture=cfg["texture"])
        video = f"{fam}/{name}_{identity_name(src)}"
      else:
        driver = different_mouth(frng, exprs[j])
        g, g_lm = render(p, dict(exprs[j], smile=driver["smile"], open=driver["open"]), pose, bg, size,
                         texture=cfg["texture"])
        video = f"{fam}/{name}"
      checker = 0.0
      if fam in params.get("checkerboard_sources", ()):  # its own stream: no other draw changes
        checker = float(np.random.default_rng([seed, 9, i, j, k + 1]).uniform(*params["checkerboard"]))
      img, f_lm, blend = forge(fam, frng, frame, lm, g, g_lm, checker)
      emit(fam, video, j, img, f_lm, frng, blend)
  return recs


def _write_mask(path: str, mask: np.ndarray) -> None:
  """Writes a boolean mask as a 0/255 PNG, atomically (temp file + rename)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  ok, buf = cv2.imencode(".png", np.where(mask, 255, 0).astype(np.uint8))
  if not ok:
    raise OSError(f"{path}: could not encode the mask PNG")
  tmp = f"{path}.tmp{os.getpid()}.png"
  buf.tofile(tmp)
  os.replace(tmp, path)


def write_oracle_masks(dataset_dir: str | os.PathLike, *, workers: int | None = None,
                       progress: bool = True) -> int:
  """Writes the ground-truth forgery mask of every fake of a generated world; returns the count.

  The mask of ``<Family>/<video>/<j>.png`` is ``ORACLE_DIR/<Family>/<video>/<j>.png``
  (0/255 PNG): the blend mask ``forge`` used, thresholded at 0.5. A separate pass that
  replays the generator's RNG streams (it renders the world again, writing no image), so
  the world's images, manifest and fingerprint are unchanged. Reals have none (all
  zero). Images added by an expansion (``aug_*``) get none. The manifest is not changed.
  """
  dataset_dir = os.fspath(dataset_dir)
  gen = manifest.read_metadata(dataset_dir).get("generator")
  if not gen or not gen.get("complete"):
    raise ValueError(f"{dataset_dir!r} holds no complete synthetic world (dataset.json has no finished "
                     f"'generator' entry): generate it first")
  params = gen["params"]
  n, seed = params["num_identities"], params["seed"]
  split_of = assign_splits(n, seed, params["split_fractions"])
  partners = swap_partners(split_of, seed)
  tasks = [(dataset_dir, params, i, split_of[i], {f: partners[f][i] for f in partners}, True) for i in range(n)]
  workers = min(2, os.cpu_count() or 1) if workers is None else workers
  bar = tqdm(total=len(tasks), desc="oracle masks", unit="identity", disable=not progress)
  written = 0
  if workers > 1:
    with pools.pool_context().Pool(workers, initializer=pools.init_worker) as pool:
      for r in pool.imap(_video_task, tasks, chunksize=2):
        written += len(r)
        bar.update()
  else:
    with pools.single_threaded_cv2():
      for t in tasks:
        written += len(_video_task(t))
        bar.update()
  bar.close()
  return written


ORACLE_COMPLETE = "complete.json"


def ensure_oracle_masks(dataset_dir: str | os.PathLike, *, progress: bool = True,
                        workers: int | None = None) -> str:
  """The world's oracle masks written once (``write_oracle_masks``) and named in its manifest.

  Every fake of the four families gets ``forgery_mask = masks_oracle/<its path>``
  (the manifest is rewritten atomically, every other field kept); a marker file
  makes this a no-op the next time. Returns ``dataset_dir``.
  """
  d = os.fspath(dataset_dir)
  marker = os.path.join(d, ORACLE_DIR, ORACLE_COMPLETE)
  if os.path.exists(marker):
    return d
  write_oracle_masks(d, workers=workers, progress=progress)
  records = manifest.read(d)
  for r in records:
    rel = f"{ORACLE_DIR}/{r.path}"
    if r.source in FORGERY_SOURCES and os.path.exists(os.path.join(d, rel)):
      r.forgery_mask = rel
  manifest.write(d, records)
  with open(marker, "w") as f:
    json.dump({"masks": sum(r.forgery_mask is not None for r in records)}, f)
  return d


def _fingerprint(params: dict[str, Any]) -> str:
  return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]


def is_complete(dataset_dir: str | os.PathLike, params: dict[str, Any] | None = None) -> bool:
  """True if ``dataset_dir`` holds a finished world (generated with ``params``, if given)."""
  meta = manifest.read_metadata(dataset_dir)
  gen = meta.get("generator")
  if not gen or not gen.get("complete"):
    return False
  if params is not None and gen.get("params") != params:
    return False
  try:
    recs = manifest.read(dataset_dir)
  except (FileNotFoundError, manifest.ManifestError):
    return False
  return len(recs) >= gen.get("num_records", 0) and all(
      os.path.exists(os.path.join(dataset_dir, r.path)) for r in recs[:: max(1, len(recs) // 50)])


def generate(out_dir: str | os.PathLike, *, seed: int = 0, num_identities: int = 120,
             expressions_per_identity: int = 8, image_size: int = 64, workers: int | None = None,
             progress: bool = True, **kwargs) -> str:
  """Generates the synthetic world into ``out_dir`` (manifest + PNGs + dataset.json); returns ``out_dir``.

  If ``out_dir`` already holds a complete world with the same parameters it is reused.
  ``workers``: processes (default: up to 2; 0 or 1 renders in this process).
  Extra ``kwargs``: ``sources``, ``split_fractions``, ``noise`` and ``post_noise``
  (sensor-noise sigma ranges in [0, 1] units, sampled per video / per image).
  """
  params = default_params(seed=seed, num_identities=num_identities,
                          expressions_per_identity=expressions_per_identity, image_size=image_size, **kwargs)
  out_dir = os.fspath(out_dir)
  if is_complete(out_dir, params):
    return out_dir
  os.makedirs(out_dir, exist_ok=True)
  meta = manifest.read_metadata(out_dir)
  if meta.get("generator"):  # a stale or unfinished world: mark unfinished before rewriting
    manifest.write_metadata(out_dir, dict(meta, generator=dict(meta["generator"], complete=False)))
  split_of = assign_splits(num_identities, seed, params["split_fractions"])
  partners = swap_partners(split_of, seed)
  tasks = [(out_dir, params, i, split_of[i], {f: partners[f][i] for f in partners})
           for i in range(num_identities)]
  workers = min(2, os.cpu_count() or 1) if workers is None else workers
  bar = tqdm(total=len(tasks), desc="synthetic world", unit="identity", disable=not progress)
  results = []
  if workers > 1:
    with pools.pool_context().Pool(workers, initializer=pools.init_worker) as pool:
      for r in pool.imap(_video_task, tasks, chunksize=2):
        results.append(r)
        bar.update()
  else:
    with pools.single_threaded_cv2():
      for t in tasks:
        results.append(_video_task(t))
        bar.update()
  bar.close()
  records = [manifest.Record(**d) for r in results for d in r]
  counts = {s: sum(r.source == s for r in records) for s in params["sources"]}
  metadata = dict(
      name="synthetic_ffpp", hierarchy="ffpp", image_size=image_size,
      notes="Procedural face-forgery world (sjedd_jax.data.synthetic); FF++ source names, Table I labels.",
      generator=dict(params=params, fingerprint=_fingerprint(params), num_records=len(records), counts=counts,
                     complete=True))
  manifest.write(out_dir, records)
  manifest.write_metadata(out_dir, metadata)  # fresh: drops the record of any earlier expansion
  return out_dir


def ensure_synthetic(cache_dir: str | os.PathLike, *, expand: bool = True, expand_seed: int | None = None,
                     per_region: int | None = None, progress: bool = True, workers: int | None = None,
                     **params) -> str:
  """The dataset directory of a synthetic world under ``cache_dir``, generated (and expanded) once.

  The directory name carries a hash of the parameters, so different worlds
  coexist. With ``expand`` the section-7 expansion (``aug_eye``, ``aug_lip_mouth``,
  ``aug_nose``) is added in place by ``sjedd_jax.data.expand.expand``.
  """
  full = default_params(**params)
  d = os.path.join(os.path.expanduser(os.fspath(cache_dir)), f"synthetic_{_fingerprint(full)}")
  generate(d, progress=progress, workers=workers, **{k: v for k, v in full.items() if k != "version"})
  if expand:
    from sjedd_jax.data import expand as expand_lib  # pylint: disable=g-import-not-at-top
    expand_lib.expand(d, d, seed=full["seed"] if expand_seed is None else expand_seed,
                      per_region=per_region, progress=progress, workers=workers)
  return d


# ----------------------------------------------------------------------------- protocols

def filter_records(records: Iterable[manifest.Record], *, sources: Sequence[str] | None = None,
                   methods: Sequence[str] | None = None, splits: Sequence[str] | None = None,
                   include_real: bool = True) -> list[manifest.Record]:
  """Keeps records whose source (or method) is listed, plus real ones if ``include_real``."""
  out = []
  for r in records:
    if splits is not None and r.split not in splits:
      continue
    if r.source == "real":
      if include_real:
        out.append(r)
      continue
    if sources is None and methods is None:
      out.append(r)
    elif (sources is not None and r.source in sources) or (methods is not None and r.method in methods):
      out.append(r)
  return out


def cross_manipulation(records: Iterable[manifest.Record], train_sources: Sequence[str],
                       test_sources: Sequence[str] | None = None, include_aug: bool = True,
                       train_splits: Sequence[str] = ("train",), test_splits: Sequence[str] = ("test",),
                       ) -> tuple[list[manifest.Record], list[manifest.Record]]:
  """Table III protocol: train on some forgery sources (+ the expansion), test on the others.

  Returns (train records, test records); both keep the real faces of their splits.
  ``test_sources`` defaults to the FF++ forgery sources not trained on.
  """
  records = list(records)
  unknown = [s for s in train_sources if s not in {r.source for r in records}]
  if unknown:
    raise ValueError(f"train source(s) {unknown} not in the dataset")
  if test_sources is None:
    test_sources = [s for s in FORGERY_SOURCES if s not in train_sources]
  train_keep = list(train_sources) + (list(sources_lib.AUG_SOURCES) if include_aug else [])
  train = filter_records(records, sources=train_keep, splits=train_splits)
  test = filter_records(records, sources=list(test_sources), splits=test_splits)
  return train, test
