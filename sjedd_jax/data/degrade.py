"""LiSiam's two training views (spec lisiam.md section 1): shared geometry, then IQD on view 2.

Image-quality degradation (IQD) [P: "JPEG compression, resizing and Gaussian blur, each
with probability 50 % in random order"; parameters R]:

| op (order shuffled per sample) | p   | parameter                                                   |
|--------------------------------|-----|-------------------------------------------------------------|
| jpeg   (OpenCV encode/decode)  | 0.5 | quality ~ U{10..99}                                          |
| blur   (Gaussian, per channel) | 0.5 | sigma ~ U[0.1, 1.0) px (scipy ``gaussian_filter``, reflect)  |
| resize (NEAREST down, BILINEAR back) | 0.5 | side s ~ U{100..199} at 299 px; ``for_size(64)``: U{21..42} |

Shared geometric augmentation [R], identical for view 1, view 2 and the label mask
({0 pristine, 1 forged, 255 ignored}, e.g. from ``masks.record_mask``): resize so
the shorter side is round(size * r), r ~ U(0.8, 1.2] (image bilinear, mask nearest);
a random size x size window (where the resized image is smaller the window reaches past
it and the outside is padding: image ``pad_value``, mask 255 = ignored); horizontal flip
with p 0.5; optional patch shuffle (p 0 by default [I]; the release uses 0.5: drop a
``shuffle_border`` px border, cut ``shuffle_tile`` px tiles, swap neighbouring tiles in
each row and neighbouring rows pairwise, resize back). Then IQD on view 2 only; the
mask of view 2 is that of view 1.

Padding [I]: the release pads the *normalised* image with 0, i.e. the colour that
normalises to 0. Views here are uint8 before normalisation, so ``pad_value`` is that
colour: 128 for mean 0.5 / std 0.5 (127.5 exactly; 128 normalises to 0.004). For
another normalisation give its mean colour (e.g. CLIP's (122, 116, 104)).

Differences from the release [I]: its blur filters the shared array in place, so view 1
is blurred too when blur fires first; here nothing is modified in place (inputs are
never written). The release's images are BGR; these functions take RGB (JPEG is
encoded from the right channel order). Every random choice comes from the explicit
``np.random.Generator`` (per element, as grain's ``random_map`` passes one):

    v1, v2, m = two_views(image, mask, rng, size=64, params=ViewParams.for_size(64))
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from scipy import ndimage

RELEASE_SIZE = 299
OPS = ("jpeg", "blur", "resize")


@dataclasses.dataclass(frozen=True)
class IQDParams:
  """Image-quality degradation; integer ranges are inclusive, ``blur_sigma`` is [lo, hi)."""
  p_jpeg: float = 0.5
  jpeg_quality: tuple[int, int] = (10, 99)
  p_blur: float = 0.5
  blur_sigma: tuple[float, float] = (0.1, 1.0)
  p_resize: float = 0.5
  resize_side: tuple[int, int] = (100, 199)

  @classmethod
  def for_size(cls, size: int, **overrides) -> IQDParams:
    """The release's parameters with the resize side scaled from 299 px to ``size`` (floor).

    ``for_size(299)`` is the release; ``for_size(64)`` resizes to U{21..42}. JPEG
    quality and blur sigma are kept (spec section 9).
    """
    lo, hi = cls.resize_side
    side = (max(1, int(lo * size / RELEASE_SIZE)), max(1, int(hi * size / RELEASE_SIZE)))
    return cls(**dict(dict(resize_side=side), **overrides))


@dataclasses.dataclass(frozen=True)
class ViewParams:
  """Shared geometric augmentation of the two views, plus the IQD of view 2."""
  scale: tuple[float, float] = (0.8, 1.2)   # r ~ U(lo, hi]
  p_flip: float = 0.5
  p_shuffle: float = 0.0                    # release: 0.5 [R]; off by default [I]
  shuffle_border: int = 10
  shuffle_tile: int = 10
  pad_value: int | tuple[int, int, int] = 128
  iqd: IQDParams = IQDParams()

  @classmethod
  def for_size(cls, size: int, **overrides) -> ViewParams:
    """Release parameters scaled from 299 px to ``size`` (IQD resize side, shuffle border/tile)."""
    f = size / RELEASE_SIZE
    base = dict(shuffle_border=max(1, round(10 * f)), shuffle_tile=max(2, round(10 * f)),
                iqd=IQDParams.for_size(size))
    return cls(**dict(base, **overrides))


# ----------------------------------------------------------------------------- checks

def _check_image(image, where: str = "image") -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"{where}: expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
  return image


def _check_mask(mask, shape, where: str = "mask") -> np.ndarray:
  mask = np.asarray(mask)
  if mask.ndim != 2 or mask.dtype != np.uint8:
    raise ValueError(f"{where}: expected an (H, W) uint8 label mask, got {mask.shape} {mask.dtype}")
  if mask.shape != tuple(shape):
    raise ValueError(f"{where}: shape {mask.shape} differs from the image's {tuple(shape)}")
  return mask


# ----------------------------------------------------------------------------- IQD ops

def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  """JPEG encode/decode with OpenCV at ``quality`` (RGB in, RGB out)."""
  image = _check_image(image)
  ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
  if not ok:
    raise ValueError(f"JPEG encoding at quality {quality} failed for an image of {image.shape}")
  return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian blur of each channel (scipy ``gaussian_filter``, reflect border, truncate 4), rounded."""
  image = _check_image(image)
  out = ndimage.gaussian_filter(image.astype(np.float32), sigma=(float(sigma), float(sigma), 0.0), mode="reflect")
  return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def resize_down_up(image: np.ndarray, side: int) -> np.ndarray:
  """Resize to ``side`` x ``side`` with nearest neighbour (PIL's NEAREST sampling), bilinear back."""
  image = _check_image(image)
  h, w = image.shape[:2]
  small = cv2.resize(image, (int(side), int(side)), interpolation=cv2.INTER_NEAREST_EXACT)
  return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def sample_iqd(rng: np.random.Generator, params: IQDParams = IQDParams()) -> list[tuple[str, float]]:
  """The IQD of one sample: ``[(op, parameter), ...]`` in the order applied (maybe empty).

  Draws: a permutation of the three ops, then per op (in that order) one uniform for
  "fires?" and, if it fires, its parameter.
  """
  p = {"jpeg": params.p_jpeg, "blur": params.p_blur, "resize": params.p_resize}
  ops = []
  for k in rng.permutation(len(OPS)):
    name = OPS[int(k)]
    if rng.uniform() >= p[name]:
      continue
    if name == "jpeg":
      value = float(rng.integers(params.jpeg_quality[0], params.jpeg_quality[1] + 1))
    elif name == "blur":
      value = float(rng.uniform(*params.blur_sigma))
    else:
      value = float(rng.integers(params.resize_side[0], params.resize_side[1] + 1))
    ops.append((name, value))
  return ops


def apply_iqd(image: np.ndarray, ops: list[tuple[str, float]]) -> np.ndarray:
  """Applies ``sample_iqd``'s ops in order; returns a new array (the input is never written)."""
  out = np.array(_check_image(image), copy=True)
  for name, value in ops:
    if name == "jpeg":
      out = jpeg(out, int(value))
    elif name == "blur":
      out = gaussian_blur(out, value)
    elif name == "resize":
      out = resize_down_up(out, int(value))
    else:
      raise ValueError(f"unknown IQD op {name!r}; expected one of {OPS}")
  return out


def degrade(image: np.ndarray, rng: np.random.Generator, params: IQDParams = IQDParams()) -> np.ndarray:
  """One random image-quality degradation of ``image`` (a new array)."""
  return apply_iqd(image, sample_iqd(rng, params))


# ----------------------------------------------------------------------------- shared geometry

@dataclasses.dataclass(frozen=True)
class Geometry:
  """One sample's shared geometric augmentation."""
  height: int      # resized image
  width: int
  y0: int          # window's top-left corner in the resized image (negative: padding)
  x0: int
  flip: bool
  shuffle: bool


def sample_geometry(rng: np.random.Generator, shape: tuple[int, int], size: int,
                    params: ViewParams = ViewParams()) -> Geometry:
  """Draws r ~ U(lo, hi] (shorter side -> round(size * r)), the window, flip and shuffle."""
  lo, hi = params.scale
  r = hi - rng.uniform(0.0, hi - lo)  # U(lo, hi]
  h, w = int(shape[0]), int(shape[1])
  f = round(size * r) / min(h, w)
  nh, nw = max(1, round(h * f)), max(1, round(w * f))
  y0 = int(rng.integers(min(0, nh - size), max(0, nh - size) + 1))
  x0 = int(rng.integers(min(0, nw - size), max(0, nw - size) + 1))
  flip = bool(rng.uniform() < params.p_flip)
  shuffle = bool(rng.uniform() < params.p_shuffle)
  return Geometry(nh, nw, y0, x0, flip, shuffle)


def _window(a: np.ndarray, y0: int, x0: int, size: int, fill) -> np.ndarray:
  out = np.empty((size, size) + a.shape[2:], a.dtype)
  out[...] = np.asarray(fill, a.dtype)
  h, w = a.shape[:2]
  sy, sx = max(0, y0), max(0, x0)
  ey, ex = min(h, y0 + size), min(w, x0 + size)
  if ey > sy and ex > sx:
    out[sy - y0:ey - y0, sx - x0:ex - x0] = a[sy:ey, sx:ex]
  return out


def _pairwise(n: int) -> np.ndarray:
  """0..n-1 with neighbours swapped pairwise (0<->1, 2<->3, ...); an odd last one stays."""
  idx = np.arange(n)
  m = n // 2 * 2
  idx[:m] = idx[:m].reshape(-1, 2)[:, ::-1].ravel()
  return idx


def patch_shuffle(a: np.ndarray, border: int, tile: int, interpolation: int) -> np.ndarray:
  """Drops a ``border``, swaps neighbouring ``tile`` x ``tile`` tiles and tile rows pairwise, resizes back."""
  h, w = a.shape[:2]
  inner = a[border:h - border, border:w - border]
  ny, nx = inner.shape[0] // tile, inner.shape[1] // tile
  if ny < 2 or nx < 2:
    return np.array(a, copy=True)
  g = inner[:ny * tile, :nx * tile]
  tiles = g.reshape((ny, tile, nx, tile) + g.shape[2:]).swapaxes(1, 2)
  tiles = tiles[_pairwise(ny)][:, _pairwise(nx)]
  g = np.ascontiguousarray(tiles.swapaxes(1, 2).reshape((ny * tile, nx * tile) + g.shape[2:]))
  return cv2.resize(g, (w, h), interpolation=interpolation)


def apply_geometry(a: np.ndarray, geo: Geometry, size: int, params: ViewParams = ViewParams(),
                   is_mask: bool = False) -> np.ndarray:
  """Applies ``geo`` to an image (bilinear, ``pad_value``) or a mask (nearest, pad 255)."""
  interp = cv2.INTER_NEAREST_EXACT if is_mask else cv2.INTER_LINEAR
  fill = 255 if is_mask else params.pad_value
  out = a
  if (geo.height, geo.width) != a.shape[:2]:
    out = cv2.resize(a, (geo.width, geo.height), interpolation=interp)
  out = _window(out, geo.y0, geo.x0, size, fill)
  if geo.flip:
    out = out[:, ::-1]
  if geo.shuffle:
    out = patch_shuffle(out, params.shuffle_border, params.shuffle_tile, interp)
  return np.ascontiguousarray(out)


def two_views(image: np.ndarray, mask: np.ndarray | None, rng: np.random.Generator, size: int,
              params: ViewParams | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """LiSiam's training views of one sample.

  Args:
    image: (H, W, 3) uint8 RGB crop (never modified).
    mask: (H, W) uint8 label mask in {0, 1, 255}: 0 pristine, 1 forged, 255 ignored, as
      ``masks.record_mask`` makes it (a 0/255 mask PNG must be mapped first: ``png > 127``);
      None: all 0 (a real face).
    rng: the element's generator; geometry is drawn first, then the IQD.
    size: output side.
    params: ``ViewParams()`` (the release's, for 299 px) by default; ``ViewParams.for_size(n)``.

  Returns:
    ``(view1, view2, mask)``: two (size, size, 3) uint8 images (view 2 = view 1 + IQD)
    and a (size, size) uint8 mask in {0, 1, 255} (255 = padding, ignored by the loss).
  """
  params = ViewParams() if params is None else params
  image = _check_image(image)
  if mask is None:
    m = np.zeros(image.shape[:2], np.uint8)
  else:
    m = _check_mask(mask, image.shape[:2])
    if not np.isin(m, (0, 1, 255)).all():
      raise ValueError(f"mask: values {np.unique(m)[:8].tolist()} are not labels in {{0, 1, 255}} "
                       f"(map a 0/255 mask PNG with png > 127 or masks.record_mask)")
  geo = sample_geometry(rng, image.shape[:2], size, params)
  view1 = apply_geometry(image, geo, size, params)
  m = apply_geometry(m, geo, size, params, is_mask=True)
  view2 = degrade(view1, rng, params.iqd)
  return view1, view2, m
