"""Label-preserving perturbations: shape/dtype kept, image changed, seeded, level 2 > level 1."""


import cv2
import numpy as np
import pytest
import skimage.data

from sjedd_jax.data import perturb


@pytest.fixture(scope="module")
def image():
  return cv2.resize(skimage.data.astronaut(), (112, 112), interpolation=cv2.INTER_AREA)


def psnr(a, b):
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


@pytest.mark.parametrize("name", perturb.NAMES)
def test_each_perturbation(image, name):
  before = image.copy()
  psnrs = {}
  for level in (1, 2):
    outs = [perturb.apply(image, name, level, np.random.default_rng(s)) for s in range(6)]
    for out in outs:
      assert out.shape == image.shape and out.dtype == np.uint8
      assert not np.array_equal(out, image)
    again = perturb.apply(image, name, level, np.random.default_rng(3))
    np.testing.assert_array_equal(again, outs[3])
    psnrs[level] = np.mean([psnr(image, o) for o in outs])
  np.testing.assert_array_equal(image, before)  # input untouched
  assert psnrs[2] < psnrs[1], psnrs


def test_deeperforensics_blocks(image):
  out = perturb.apply(image, "patch", 2, np.random.default_rng(0), patch_mode="deeperforensics")
  assert out.shape == image.shape and (out == 128).all(-1).sum() >= 8 * 8


def test_patch_substitution_copies_a_block(image):
  out = perturb.patch_substitution(image, 16, np.random.default_rng(1))
  changed = np.nonzero((out != image).any(-1))
  ys, xs = changed
  assert ys.max() - ys.min() < 16 and xs.max() - xs.min() < 16  # one 16x16 block at most


def test_perturb_probability_and_choice(image):
  small = image[:32, :32]
  rng = np.random.default_rng(0)
  n, changed = 400, 0
  for _ in range(n):
    changed += not np.array_equal(perturb.perturb(small, rng), small)
  assert 0.22 < changed / n < 0.38  # p = 0.3
  fn = perturb.make(probability=1.0, names=("blur",))
  a = fn(small, np.random.default_rng(5))
  b = fn(small, np.random.default_rng(5))
  np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="unknown perturbation"):
    perturb.make(names=("sharpen",))
  with pytest.raises(ValueError, match="uint8"):
    perturb.apply(small.astype(np.float32), "blur", 1, rng)
