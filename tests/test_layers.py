"""The XLA:CPU fast forms in ``backbones/layers.py`` and Xception's depthwise conv: the same
function (values and gradients) as the plain XLA ops they replace."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sjedd_jax import autodiff
from sjedd_jax.backbones import layers
from sjedd_jax.backbones.xception import modeling as xm

DN = ("NHWC", "HWIO", "NHWC")


def _grads(f, *args):
  return jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=tuple(range(len(args))))(*args)


@pytest.mark.parametrize("stride,pad", [(1, 0), (2, 0), (1, 1), (2, 1), (3, (0, 2))])
def test_conv_1x1_as_matmul_is_the_conv(stride, pad):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 9, 7, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(1, 1, 5, 6)), jnp.float32)
  p = (pad, pad) if isinstance(pad, int) else pad
  padding = (p, p)
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)
  new = lambda x, w: layers.conv_1x1_as_matmul(x, w, (stride, stride), padding)
  np.testing.assert_allclose(new(x, w), ref(x, w), atol=1e-5)
  for a, b in zip(_grads(new, x, w), _grads(ref, x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_conv_1x1_as_matmul_passes_other_convs_to_xla():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 4, 6)), jnp.float32)
  ref = jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)
  got = layers.conv_1x1_as_matmul(x, w, (2, 2), ((1, 1), (1, 1)),
                                  dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, w.shape, DN))
  np.testing.assert_array_equal(got, ref)
  wg = jnp.asarray(rng.normal(size=(1, 1, 1, 4)), jnp.float32)  # grouped 1x1: not a plain matmul
  ref = jax.lax.conv_general_dilated(x, wg, (1, 1), "VALID", dimension_numbers=DN, feature_group_count=4)
  np.testing.assert_array_equal(layers.conv_1x1_as_matmul(x, wg, (1, 1), "VALID", feature_group_count=4), ref)


def test_set_pointwise_switches_only_1x1_convs():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Conv(3, 4, (1, 1), strides=2, use_bias=True, rngs=rngs)
      self.b = nnx.Conv(4, 4, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
      self.c = nnx.List([nnx.Conv(4, 2, (1, 1), padding=((1, 1), (1, 1)), rngs=rngs)])

    def __call__(self, x):
      return self.c[0](self.b(self.a(x)))

  net = Net(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 11, 11, 3)), jnp.float32)
  ref = net(x)
  layers.set_pointwise(net, "matmul")
  assert net.a.conv_general_dilated is layers.conv_1x1_as_matmul
  assert net.c[0].conv_general_dilated is layers.conv_1x1_as_matmul
  assert net.b.conv_general_dilated is jax.lax.conv_general_dilated
  np.testing.assert_allclose(net(x), ref, atol=1e-5)
  layers.set_pointwise(net, "xla")
  assert net.a.conv_general_dilated is jax.lax.conv_general_dilated
  assert layers.pointwise_impl("auto") == ("matmul" if jax.default_backend() == "cpu" else "xla")
  with pytest.raises(ValueError, match="pointwise='fast'"):
    layers.set_pointwise(net, "fast")


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 9, 7, 4), (1, 1, 1, 2), (3, 16, 5, 2)])
def test_max_pool_3x3_s2_is_nnx_max_pool_with_torch_ties(shape):
  rng = np.random.default_rng(3)
  ref = lambda x: nnx.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)))
  for x in (rng.normal(size=shape), np.round(rng.normal(size=shape)), np.zeros(shape)):  # ties
    x = jnp.asarray(x, jnp.float32)
    np.testing.assert_array_equal(layers.max_pool(x, 3, 2, 1), ref(x))
    w = jnp.asarray(rng.normal(size=ref(x).shape), jnp.float32)
    g_new = jax.grad(lambda x: jnp.sum(layers.max_pool(x, 3, 2, 1) * w))(x)
    g_ref = jax.grad(lambda x: jnp.sum(ref(x) * w))(x)
    np.testing.assert_array_equal(g_new, g_ref)  # the first maximum (raster order) takes the gradient
  xb = jnp.asarray(rng.normal(size=shape), jnp.bfloat16)
  np.testing.assert_array_equal(layers.max_pool(xb, 3, 2, 1), ref(xb))


def test_max_pool_first_maximum_gets_the_gradient():
  x = jnp.ones((1, 3, 3, 1), jnp.float32)  # 2 x 2 outputs; every tap of a window ties
  g = jax.grad(lambda x: jnp.sum(layers.max_pool(x, 3, 2, 1)))(x)
  # torch.nn.functional.max_pool2d(torch.ones(1, 1, 3, 3), 3, 2, 1) backward: each output's first
  # in-image tap in raster order, (0, 0), (0, 1), (1, 0), (1, 1).
  expected = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]], np.float32)[None, :, :, None]
  np.testing.assert_array_equal(g, expected)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 3e-2)])
def test_shifted_depthwise_is_the_grouped_conv(dtype, tol):
  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(2, 7, 6, 5)), dtype)
  k = jnp.asarray(rng.normal(size=(3, 3, 1, 5)), dtype)
  ref = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DN,
                                                  feature_group_count=5)
  np.testing.assert_allclose(np.asarray(xm.shifted_depthwise(x, k), np.float32),
                             np.asarray(ref(x, k), np.float32), rtol=tol, atol=tol)
  # Against float32 gradients of the same (rounded) inputs: the kernel gradient sums in float32.
  f32 = [a.astype(jnp.float32) for a in (x, k)]
  for a, b in zip(_grads(xm.shifted_depthwise, x, k), _grads(ref, *f32)):
    assert a.dtype == dtype
    np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=tol, atol=tol * float(jnp.abs(b).max()))


def _tiny_losses(params, x):
  """Two task losses through every custom-VJP piece: BatchNorm (train), the 3/2/1 max pool and the
  shifted depthwise conv."""
  bn = layers.BatchNorm(4)
  bn.scale.set_value(params["scale"])
  y = layers.max_pool(bn(x, True), 3, 2, 1)
  y = xm.ShiftedDepthwise(params["k"], jnp.float32)(y)
  return jnp.stack([jnp.mean(jnp.sin(y)), jnp.mean(jnp.square(y))])


@pytest.mark.parametrize("shape,kernel,stride,pad", [
    ((2, 8, 8, 3), 3, 2, ((1, 1), (1, 1))),      # ResNet's strided 3x3
    ((2, 9, 7, 2), 3, 2, ((1, 1), (1, 1))),      # odd sizes: the last phase is shorter
    ((1, 10, 11, 2), 3, 2, ((0, 0), (0, 0))),    # Xception's VALID entry conv
    ((1, 12, 12, 2), 7, 2, ((3, 3), (3, 3))),    # ResNet's stem
    ((1, 13, 9, 2), 3, 3, ((1, 1), (1, 1))),     # stride 3
    ((1, 9, 9, 2), 4, 2, ((2, 1), (1, 2))),      # even kernel, asymmetric padding
    ((1, 8, 10, 2), 3, (2, 1), ((1, 1), (1, 1))),  # one strided axis
    ((1, 9, 9, 2), 2, 3, ((0, 0), (0, 0))),      # stride above the kernel: positions no tap reaches
])
def test_strided_conv_phases_is_the_conv(shape, kernel, stride, pad):
  rng = np.random.default_rng(3)
  strides = (stride, stride) if isinstance(stride, int) else stride
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, shape[-1], 3)), jnp.float32)
  ref = lambda x, w: jax.lax.conv_general_dilated(x, w, strides, pad, dimension_numbers=DN)
  new = lambda x, w: layers.conv_strided_phases(x, w, strides, pad)
  np.testing.assert_array_equal(new(x, w), ref(x, w))            # the same forward
  (dx, dw), (rx, rw) = _grads(new, x, w), _grads(ref, x, w)
  np.testing.assert_array_equal(dw, rw)                          # XLA's weight gradient
  np.testing.assert_allclose(dx, rx, rtol=1e-5, atol=1e-5)       # the input gradient by phases
  tangents = (jnp.ones_like(x), jnp.full_like(w, 0.5))
  np.testing.assert_allclose(jax.jvp(new, (x, w), tangents)[1], jax.jvp(ref, (x, w), tangents)[1],
                             rtol=1e-5, atol=1e-4)                 # forward mode (the bi-level "jvp")
  over = lambda f: jax.jvp(lambda x: _grads(f, x, w)[1], (x,), (tangents[0],))[1]  # forward over reverse
  np.testing.assert_allclose(over(new), over(ref), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(layers.phase_sum_conv(x, w, strides, pad), ref(x, w), rtol=1e-5, atol=1e-5)


def test_set_strided_switches_only_strided_convs_above_1x1():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Conv(3, 4, (3, 3), strides=2, padding=((1, 1), (1, 1)), use_bias=False, rngs=rngs)
      self.b = nnx.Conv(4, 4, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)
      self.c = nnx.Conv(4, 2, (1, 1), strides=2, rngs=rngs)

    def __call__(self, x):
      return self.c(self.b(self.a(x)))

  net = Net(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 12, 12, 3)), jnp.float32)
  ref, ref_grad = net(x), jax.grad(lambda x: jnp.sum(jnp.sin(net(x))))(x)
  layers.set_strided(net, "phases")
  assert net.a.conv_general_dilated is layers.conv_strided_phases
  assert net.b.conv_general_dilated is jax.lax.conv_general_dilated
  assert net.c.conv_general_dilated is jax.lax.conv_general_dilated
  np.testing.assert_array_equal(net(x), ref)
  np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(jnp.sin(net(x))))(x), ref_grad, rtol=1e-5, atol=1e-5)
  layers.set_strided(net, "xla")
  assert net.a.conv_general_dilated is jax.lax.conv_general_dilated
  assert layers.strided_impl("auto") == ("phases" if jax.default_backend() == "cpu" else "xla")
  with pytest.raises(ValueError, match="strided='fast'"):
    layers.set_strided(net, "fast")


def test_forward_mode_forms_allow_jvp_with_the_same_derivatives():
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  params = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, size=(4,)), jnp.float32),
            "k": jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.float32)}
  tangent = jax.tree.map(jnp.ones_like, params)
  _, f_jvp = jax.linearize(lambda p: _tiny_losses(p, x), params)
  with pytest.raises(TypeError, match="custom_vjp"):
    f_jvp(tangent)
  with autodiff.forward_mode_forms():
    assert autodiff.forward_mode()
    _, f_jvp = jax.linearize(lambda p: _tiny_losses(p, x), params)
  assert not autodiff.forward_mode()
  jvp = f_jvp(tangent)
  jac = jax.jacrev(lambda p: _tiny_losses(p, x))(params)  # reverse mode through the custom VJPs
  expected = sum(jnp.tensordot(jac[k], tangent[k], axes=tangent[k].ndim) for k in params)
  np.testing.assert_allclose(jvp, expected, rtol=1e-5, atol=1e-6)


def test_jvp_hypergradient_step_traces_the_plain_forms():
  from sjedd_jax import bilevel  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(6)
  x = jnp.asarray(rng.normal(size=(2, 8, 8, 4)), jnp.float32)
  params = {"scale": jnp.ones((4,), jnp.float32), "k": jnp.asarray(rng.normal(size=(3, 3, 1, 4)), jnp.float32)}
  out = {}
  for method in ("jvp", "finite_difference"):
    weighting = bilevel.auto_lambda(2, method=method, radius=1e-3)
    grads, _, info = jax.jit(lambda p, w=weighting: w.step(w.init(), _tiny_losses, p, x, x, lr=0.1))(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    out[method] = np.asarray(info["hypergradient"])
  np.testing.assert_allclose(out["finite_difference"], out["jvp"], rtol=5e-2, atol=5e-2 * np.abs(out["jvp"]).max())


def _mlp(ws, x):
  for w in ws:
    x = jnp.tanh(x @ w)
  return x


def _sq_loss(f):
  return lambda ws, x: jnp.sum(jnp.square(f(ws, x)))


def test_recompute_in_backward_same_derivatives_and_xla_keeps_the_recomputation():
  rng = np.random.default_rng(7)
  ws = [jnp.asarray(rng.normal(size=(48, 48)) / 7, jnp.float32) for _ in range(4)]
  x = jnp.asarray(rng.normal(size=(16, 48)), jnp.float32)
  re = autodiff.recompute_in_backward(_mlp)
  np.testing.assert_array_equal(re(ws, x), _mlp(ws, x))
  expected = jax.grad(_sq_loss(_mlp), argnums=(0, 1))(ws, x)
  got = jax.jit(jax.grad(_sq_loss(re), argnums=(0, 1)))(ws, x)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got, expected)

  def dots(f):
    return jax.jit(jax.grad(_sq_loss(f))).lower(ws, x).compile().as_text().count("dot(")

  # The four forward products run again in the backward pass: XLA neither merges them with the
  # forward pass (as it does jax.checkpoint's on CPU) nor drops them.
  assert dots(re) >= dots(_mlp) + 4
  # Forward mode (the bi-level step's exact JVP) differentiates the plain function.
  tangent = jax.tree.map(jnp.ones_like, ws)
  with autodiff.forward_mode_forms():
    _, jvp = jax.jvp(lambda w: _sq_loss(re)(w, x), (ws,), (tangent,))
  _, expected_jvp = jax.jvp(lambda w: _sq_loss(_mlp)(w, x), (ws,), (tangent,))
  np.testing.assert_allclose(jvp, expected_jvp, rtol=1e-5)


def _bits(x):
  return np.asarray(jax.lax.bitcast_convert_type(x, jnp.int32))


def test_sort_is_jnp_sort_bit_for_bit_with_its_derivatives():
  """``layers.sort``: jnp.sort's values (-0.0 with +0.0, NaNs last, infinities, ties in index
  order), gradient and tangents, on either axis, under jit, vmap and on non-float32 input."""
  rng = np.random.default_rng(0)
  y = rng.normal(size=(5, 997)).astype(np.float32)
  y[:, ::7], y[:, 1::9], y[:, 2::11] = 0.0, -0.0, np.nan
  y[:, 3::13], y[:, 4::17], y[:, 5::19] = np.inf, -np.inf, 1.5
  y = jnp.asarray(y)
  for axis in (0, 1, -1):
    np.testing.assert_array_equal(_bits(layers.sort(y, axis)), _bits(jnp.sort(y, axis=axis)))
  np.testing.assert_array_equal(_bits(jax.jit(layers.sort)(y)), _bits(jnp.sort(y, axis=-1)))
  z = jnp.asarray(rng.normal(size=(3, 4, 50)).astype(np.float32)).at[..., ::3].set(0.5)
  w = jnp.asarray(rng.normal(size=(3, 4, 50)).astype(np.float32))
  loss = lambda sort_fn: (lambda v: (sort_fn(v) * w).sum())
  np.testing.assert_array_equal(jax.grad(loss(layers.sort))(z), jax.grad(loss(jnp.sort))(z))
  np.testing.assert_array_equal(jax.jvp(layers.sort, (z,), (w,))[1], jax.jvp(jnp.sort, (z,), (w,))[1])
  np.testing.assert_array_equal(jax.vmap(layers.sort)(z), jnp.sort(z, axis=-1))
  b = z.astype(jnp.bfloat16)   # other dtypes: jnp.sort itself
  np.testing.assert_array_equal(np.asarray(layers.sort(b), np.float32), np.asarray(jnp.sort(b), np.float32))
  assert not jax.config.jax_enable_x64 and layers.sort(z).dtype == jnp.float32
