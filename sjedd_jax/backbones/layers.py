"""Layers shared by the CNN backbones and detector heads, with PyTorch's semantics.

* ``BatchNorm``: running statistics as ``nnx.BatchStat`` (the model state a
  ``TrainState`` carries), updated exactly as ``torch.nn.BatchNorm*d`` in train
  mode: the running variance takes the *unbiased* batch variance, the output is
  normalised with the biased one; torch's ``momentum`` (0.1 by default) is the
  weight of the new batch. The mode is an explicit ``train`` argument, so a
  pure forward ``nnx.merge(graphdef, params, state)(x, train=...)`` says which it
  runs, and the updated statistics are read back with ``nnx.state(model, nnx.BatchStat)``.
  Under ``jit`` with the batch sharded over devices the means are global, so N
  devices compute the statistics of the whole batch, as one device does.
* ``dropout`` / ``channel_dropout``: a function of an explicit key (no hidden RNG
  state), so every evaluation inside one step can share the step's key.
* ``conv_1x1_as_matmul`` / ``set_pointwise``: 1x1 convolutions computed as one matrix product
  (the same function), which XLA:CPU runs 2-5x faster than its convolution, forward and backward.
* ``conv_strided_phases`` / ``set_strided``: a strided convolution whose derivative in its input
  (forward and reverse mode) runs as one stride-1 convolution per input phase instead of XLA:CPU's
  convolution over the zero-dilated gradient (ResNet-50's three strided 3x3 convs at 256 px, batch
  32: the MIL plain step 3.94 s -> 3.36 s, its bi-level step 12.12 s -> 11.11 s).
* ``sort``: ``jnp.sort``'s values, gradient and tangents through one single-operand sort of
  integer (value, index) keys, which XLA:CPU runs with a plain comparison instead of calling its
  float total-order comparator (the MIL similarity list, 32 x 32,640: 42 ms against 137 ms, and
  44 ms against 169 ms with the gradient).
* ``recomputed``: a module's forward whose backward pass keeps only its input and runs it again
  (``autodiff.recompute_in_backward``; the Xception blocks' ``remat``).
* Initialisers matching PyTorch's defaults (``torch_linear_init``, ``torch_conv_init``)
  and torchvision/timm's ``kaiming_normal_(mode="fan_out")`` for CNN convolutions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax.custom_derivatives import SymbolicZero

from sjedd_jax.autodiff import custom_backward, recompute_in_backward

# torch.nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out).
kaiming_normal_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch's default Linear/Conv weight init: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_default_kernel_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_default_bias_init(fan_in: int):
  """torch's default bias init for Linear/Conv: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / max(fan_in, 1) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class BatchNorm(nnx.Module):
  """``torch.nn.BatchNorm{1,2}d`` over the last axis (NHWC or NC): scale, bias, running mean/var.

  Args:
    num_features: channels (last axis).
    momentum: torch's momentum, the weight of the new batch in the running averages (0.1).
    eps: added to the variance (1e-5).
  Call: ``bn(x, train)``; ``train=True`` normalises with the batch statistics and
  updates the running ones, ``train=False`` uses the running ones.
  """

  def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5,
               use_scale: bool = True, use_bias: bool = True, dtype=None, rngs: nnx.Rngs | None = None):
    del rngs
    self.num_features = num_features
    self.momentum = float(momentum)
    self.eps = float(eps)
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32)) if use_scale else None
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32)) if use_bias else None
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dtype = self.dtype or x.dtype
    if train:
      scale = self.scale[...] if self.scale is not None else jnp.ones((x.shape[-1],), jnp.float32)
      bias = self.bias[...] if self.bias is not None else jnp.zeros((x.shape[-1],), jnp.float32)
      y, mean, var = batch_norm_train(x, scale, bias, self.eps, jnp.dtype(dtype))
      self._update_statistics(mean, var, x)
      return y
    xf = x.astype(jnp.float32)
    mean, var = self.mean[...], self.var[...]
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    if self.scale is not None:
      y = y * self.scale[...]
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(dtype)

  def _update_statistics(self, mean: jax.Array, var: jax.Array, x: jax.Array) -> None:
    """torch's running averages: the batch mean and the *unbiased* batch variance, weight ``momentum``."""
    n = 1
    for a in range(x.ndim - 1):
      n *= x.shape[a]
    m = self.momentum
    # set_value rather than ``self.mean[...] = ...``: with flax 0.12 the item assignment runs a check
    # over everything traced so far on each write, so tracing a deep CNN grew with the square of
    # its BatchNorm count (LiSiam's bi-level step: 32.5 s -> 3.9 s of tracing). Same values.
    self.mean.set_value((1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean))
    unbiased = var * (n / max(n - 1, 1))
    self.var.set_value((1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased))


def _batch_norm_train(x, scale, bias, eps, out_dtype):
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.float32)
  mean = jnp.mean(xf, axis=axes)
  var = jnp.mean(jnp.square(xf - mean), axis=axes)
  rstd = jax.lax.rsqrt(var + eps)
  y = (xf - mean) * rstd * scale + bias
  return (y.astype(out_dtype or x.dtype), mean, var), (x, mean, rstd, scale)


def _batch_norm_plain(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float, out_dtype=None):
  """Training-mode BatchNorm over every axis but the last: ``(y, batch mean, biased batch variance)``,
  ``y = (x - mean) / sqrt(var + eps) * scale + bias`` computed in float32 and cast to ``out_dtype``
  (default ``x.dtype``).

  Its backward is the closed form (``rstd * scale * (dy - mean(dy) - xhat * mean(dy * xhat))``, the
  scale and bias gradients, and the statistics' own cotangents) from ``x`` alone, where autodiff
  keeps ``x - mean`` and more: about 20 % less activation memory and a faster backward on a CNN."""
  return _batch_norm_train(x, scale, bias, eps, out_dtype)[0]


def _bn_bwd(eps, out_dtype, res, cts):
  del eps, out_dtype
  x, mean, rstd, scale = res
  dy, d_mean, d_var = cts
  axes = tuple(range(x.ndim - 1))
  n = x.size // x.shape[-1]
  xc = x.astype(jnp.float32) - mean
  xhat = xc * rstd
  dy = dy.astype(jnp.float32)
  d_bias = jnp.sum(dy, axis=axes)
  d_scale = jnp.sum(dy * xhat, axis=axes)
  dx = rstd * scale * (dy - d_bias / n - xhat * (d_scale / n)) + d_mean / n + d_var * (2.0 / n) * xc
  return dx.astype(x.dtype), d_scale, d_bias


batch_norm_train = custom_backward(_batch_norm_plain, _batch_norm_train, _bn_bwd, nondiff_argnums=(3, 4))


# ------------------------------------------------------------------ 1x1 convolutions as matmuls
POINTWISE = ("matmul", "xla", "auto")
_NHWC = ("NHWC", "HWIO", "NHWC")


def pointwise_impl(kind: str) -> str:
  """The 1x1-conv form a config's ``pointwise`` asks for: "matmul" or "xla" as given; "auto" is
  "matmul" on the CPU backend (XLA:CPU's convolution is 2-5x slower than its matrix product for a
  1x1 kernel, forward and backward, measured in docs/performance.md) and "xla" elsewhere."""
  return backend_impl("pointwise", kind, POINTWISE, on_cpu="matmul")


def backend_impl(name: str, kind: str, allowed: Sequence[str], on_cpu: str, elsewhere: str = "xla") -> str:
  """A config switch with an "auto" value: ``kind`` as given, or for "auto" ``on_cpu`` on the CPU
  backend and ``elsewhere`` on the others; a ValueError naming ``name`` for a value not in ``allowed``."""
  if kind not in allowed:
    raise ValueError(f"{name}={kind!r}; expected one of {list(allowed)}")
  if kind == "auto":
    return on_cpu if jax.default_backend() == "cpu" else elsewhere
  return kind


def _nhwc(lhs: jax.Array, rhs: jax.Array, dimension_numbers) -> bool:
  """Whether a ``conv_general_dilated`` call is 2-D with NHWC input, HWIO kernel and NHWC output."""
  return lhs.ndim == 4 and rhs.ndim == 4 and (
      dimension_numbers is None
      or dimension_numbers == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))


def conv_1x1_as_matmul(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                       dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                       preferred_element_type=None, out_sharding=None):
  """``jax.lax.conv_general_dilated`` (a drop-in for ``nnx.Conv(conv_general_dilated=...)``) that
  computes a 1x1, ungrouped, NHWC/HWIO convolution as zero padding, a strided slice and one
  ``(N*H*W, C) @ (C, O)`` product. Every other convolution goes to ``lax.conv_general_dilated``."""
  if (not _nhwc(lhs, rhs, dimension_numbers) or tuple(rhs.shape[:2]) != (1, 1) or feature_group_count != 1
      or batch_group_count != 1 or any(d != 1 for d in (lhs_dilation or (1, 1))) or out_sharding is not None
      or (isinstance(padding, str) and padding not in ("SAME", "VALID"))):
    kwargs = {} if out_sharding is None else {"out_sharding": out_sharding}
    if dimension_numbers is None:
      dimension_numbers = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                        dimension_numbers, feature_group_count, batch_group_count,
                                        precision=precision, preferred_element_type=preferred_element_type,
                                        **kwargs)
  x = lhs
  if not isinstance(padding, str):  # for a 1x1 kernel "SAME" and "VALID" pad nothing
    pads = [tuple(int(v) for v in p) for p in padding]
    if any(pads[0] + pads[1]):
      x = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  sh, sw = window_strides
  if (sh, sw) != (1, 1):
    x = x[:, ::sh, ::sw, :]
  n, h, w, c = x.shape
  y = jnp.dot(x.reshape(n * h * w, c), rhs.reshape(c, rhs.shape[-1]), precision=precision,
              preferred_element_type=preferred_element_type)
  return y.reshape(n, h, w, rhs.shape[-1])


def set_pointwise(model: nnx.Module, kind: str) -> nnx.Module:
  """Every ``nnx.Conv`` with a 1x1 kernel in ``model`` computes as ``kind`` says (``pointwise_impl``),
  in place: the same parameters, state paths and function. Returns ``model``."""
  fn = conv_1x1_as_matmul if pointwise_impl(kind) == "matmul" else jax.lax.conv_general_dilated
  for _, module in nnx.iter_modules(model):
    if isinstance(module, nnx.Conv) and tuple(module.kernel_size) == (1, 1):
      module.conv_general_dilated = fn
  return model


# ------------------------------------------------------------------ strided convolutions
STRIDED = ("phases", "xla", "auto")


def strided_impl(kind: str) -> str:
  """The strided-conv form a config's ``strided`` asks for: "phases" or "xla" as given; "auto" is
  "phases" on the CPU backend (XLA:CPU computes a strided convolution's input gradient as one
  convolution over the zero-dilated gradient, several times slower than the stride-1 convolutions
  here, docs/performance.md) and "xla" elsewhere."""
  return backend_impl("strided", kind, STRIDED, on_cpu="phases")


def _conv_nhwc(x: jax.Array, w: jax.Array, strides: tuple[int, int],
               padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


def phase_sum_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
                   padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """A strided NHWC/HWIO convolution as a sum of stride-1 convolutions, one per input phase: with
  the kernel tap ``t = stride * q + r``, output ``o`` reads padded input ``stride * (o + q) + r``,
  so the taps of remainder ``r`` form a stride-1 VALID convolution over the input positions of
  remainder ``r``. The same sums as ``lax.conv_general_dilated`` in another order (float rounding).

  Linear in ``x``: its transpose (what reverse mode runs for the input gradient) is a stride-1
  convolution per phase and the interleaving of the phases, where XLA transposes a strided
  convolution into one convolution over the zero-dilated gradient (several times slower on XLA:CPU).
  """
  (sh, sw), ((ph0, ph1), (pw0, pw1)) = strides, padding
  kh, kw = w.shape[:2]
  oh = (x.shape[1] + ph0 + ph1 - kh) // sh + 1
  ow = (x.shape[2] + pw0 + pw1 - kw) // sw + 1
  # Pad at the end too, so that every phase has its taps' rows; the outputs kept never read them.
  need_h, need_w = sh * (oh + -(-kh // sh) - 1), sw * (ow + -(-kw // sw) - 1)
  xp = jnp.pad(x, ((0, 0), (ph0, max(ph1, need_h - x.shape[1] - ph0)),
                   (pw0, max(pw1, need_w - x.shape[2] - pw0)), (0, 0)))
  y = None
  for ry in range(min(sh, kh)):
    for rx in range(min(sw, kw)):
      wr = w[ry::sh, rx::sw]
      xr = xp[:, ry::sh, rx::sw, :][:, :oh + wr.shape[0] - 1, :ow + wr.shape[1] - 1, :]
      part = _conv_nhwc(xr, wr, (1, 1), ((0, 0), (0, 0)))
      y = part if y is None else y + part
  return y


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def strided_conv(x: jax.Array, w: jax.Array, strides: tuple[int, int],
                 padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """``lax.conv_general_dilated`` (NHWC/HWIO, explicit padding) with the same forward values, whose
  derivative in ``x`` is ``phase_sum_conv`` of the tangent: forward mode and reverse mode (the
  transpose of that linear map: stride-1 convolutions per phase) never run XLA's convolution over
  a zero-dilated gradient. The derivative in ``w`` is the convolution's own."""
  return _conv_nhwc(x, w, strides, padding)


@functools.partial(strided_conv.defjvp, symbolic_zeros=True)
def _strided_conv_jvp(strides, padding, primals, tangents):
  x, w = primals
  tx, tw = tangents
  y = _conv_nhwc(x, w, strides, padding)
  parts = []
  if not isinstance(tx, SymbolicZero):
    parts.append(phase_sum_conv(tx, w, strides, padding))
  if not isinstance(tw, SymbolicZero):
    parts.append(_conv_nhwc(x, tw, strides, padding))
  return y, (sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y))


def conv_strided_phases(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                        dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                        preferred_element_type=None, out_sharding=None):
  """``jax.lax.conv_general_dilated`` (a drop-in for ``nnx.Conv(conv_general_dilated=...)``) that runs a
  strided, ungrouped, undilated NHWC/HWIO convolution with explicit padding as ``strided_conv``: the
  same forward (the same XLA convolution), its derivative in the input as one stride-1 convolution per
  input phase. Every other convolution goes to ``conv_1x1_as_matmul`` (itself ``lax`` for kernels above 1x1)."""
  if (_nhwc(lhs, rhs, dimension_numbers) and tuple(window_strides) != (1, 1) and feature_group_count == 1 and batch_group_count == 1
      and all(d == 1 for d in (lhs_dilation or (1, 1))) and all(d == 1 for d in (rhs_dilation or (1, 1)))
      and not isinstance(padding, str) and precision is None and preferred_element_type is None
      and out_sharding is None):
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return strided_conv(lhs, rhs, tuple(int(s) for s in window_strides), pads)
  return conv_1x1_as_matmul(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                            feature_group_count, batch_group_count, precision, preferred_element_type,
                            out_sharding)


def set_strided(model: nnx.Module, kind: str) -> nnx.Module:
  """Every strided ``nnx.Conv`` with a kernel above 1x1 in ``model`` computes as ``kind`` says
  (``strided_impl``), in place: the same parameters, state paths, forward and function (the input
  gradient sums in another order). Returns ``model``."""
  fn = conv_strided_phases if strided_impl(kind) == "phases" else jax.lax.conv_general_dilated
  for _, module in nnx.iter_modules(model):
    if not isinstance(module, nnx.Conv) or tuple(module.kernel_size) == (1, 1):
      continue
    strides = (module.strides,) * 2 if isinstance(module.strides, int) else tuple(module.strides or (1, 1))
    if strides != (1, 1):
      module.conv_general_dilated = fn
  return model


def dropout(x: jax.Array, rate: float, rng: jax.Array | None, train: bool,
            broadcast_dims: Sequence[int] = ()) -> jax.Array:
  """Inverted dropout with an explicit key; identity when not training or ``rate == 0``.

  ``broadcast_dims`` share one mask value along those axes (NHWC channel dropout,
  torch's ``Dropout2d``: ``broadcast_dims=(1, 2)``).
  """
  if not train or rate <= 0.0:
    return x
  if rng is None:
    raise ValueError("dropout in training needs a key (pass the step's rng)")
  if rate >= 1.0:
    return jnp.zeros_like(x)
  shape = list(x.shape)
  for d in broadcast_dims:
    shape[d] = 1
  keep = jax.random.bernoulli(rng, 1.0 - rate, tuple(shape))
  return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x)).astype(x.dtype)


def channel_dropout(x: jax.Array, rate: float, rng: jax.Array | None, train: bool) -> jax.Array:
  """``torch.nn.Dropout2d`` on NHWC: whole channels of each example dropped."""
  return dropout(x, rate, rng, train, broadcast_dims=(1, 2))


def sort(x: jax.Array, axis: int = -1) -> jax.Array:
  """``jnp.sort(x, axis)`` (stable, ascending, -0.0 equal to +0.0, NaNs last): the same values,
  gradient and tangents, faster on XLA:CPU.

  ``jnp.sort`` of floats compiles to a sort whose comparator implements the float total order and,
  under autodiff, carries an index operand for the permutation; XLA:CPU calls that comparator per
  comparison. Here each float32 becomes an order-preserving int32 (the bit pattern, its low 31
  bits flipped for negative values), shifted left past the bits of its index along ``axis`` and
  or-ed with it: one int64 key whose plain integer order is ``jnp.sort``'s stable order. The sorted
  keys' low bits are the permutation, and ``x`` gathered by it (``take_along_axis``, linear, so
  autodiff's gradient and tangents follow the permutation exactly as ``jnp.sort``'s do) is the
  result. Other dtypes, and float32 axes of more than 2**31 entries, use ``jnp.sort``.
  """
  axis = axis % x.ndim if x.ndim else 0
  n = x.shape[axis] if x.ndim else 1
  if x.dtype != jnp.float32 or n <= 1 or n > 2**31:
    return jnp.sort(x, axis=axis)
  shift = max(1, (n - 1).bit_length())
  v = jax.lax.stop_gradient(x)
  v = jnp.where(v == 0, jnp.zeros_like(v), v)                  # -0.0 sorts with +0.0
  v = jnp.where(jnp.isnan(v), jnp.full_like(v, jnp.nan), v)     # one positive NaN: after +inf
  bits = jax.lax.bitcast_convert_type(v, jnp.int32)
  ordered = jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)
  with jax.enable_x64(True):  # the keys only: int64 inside this function, nothing leaves it
    index = jax.lax.broadcasted_iota(jnp.int64, x.shape, axis)
    keys = jax.lax.sort((ordered.astype(jnp.int64) << shift) | index, dimension=axis, is_stable=False)
    perm = (keys & ((1 << shift) - 1)).astype(jnp.int32)
  return jnp.take_along_axis(x, perm, axis=axis)


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """``torch.nn.MaxPool2d(window, stride, padding)`` on NHWC (padding with -inf, floor mode).

  The ResNet stem's and Xception's pool (3, 2, 1) runs as ``max_pool_3x3_s2``: the same values and
  gradients (ties included), with a backward about 2x faster on XLA:CPU than ``nnx.max_pool``'s."""
  if (window, stride, padding) == (3, 2, 1) and x.ndim == 4:
    return max_pool_3x3_s2(x)
  return nnx.max_pool(x, (window, window), (stride, stride), ((padding, padding), (padding, padding)))


def _max_pool_3x3_s2_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The pooled map and, per output, which of the 9 window taps (3 i + j) holds its first maximum
  in raster order (PyTorch's choice among ties), as int8."""
  _, h, w, _ = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1 + h % 2), (1, 1 + w % 2), (0, 0)), constant_values=-jnp.inf)
  best = which = None
  for i in range(3):
    for j in range(3):
      tap = xp[:, i:i + 2 * ho - 1:2, j:j + 2 * wo - 1:2, :]
      if best is None:
        best, which = tap, jnp.zeros(tap.shape, jnp.int8)
      else:
        better = tap > best  # strictly: an earlier tap keeps a tie
        best = jnp.where(better, tap, best)
        which = jnp.where(better, jnp.int8(3 * i + j), which)
  return best, which


def _max_pool_plain(x: jax.Array) -> jax.Array:
  """``MaxPool2d(3, 2, 1)`` on NHWC. The backward routes each output's gradient to its first
  maximum, gathering per output phase (even/odd row x even/odd column) on the pooled grid and
  interleaving the four phases, instead of XLA:CPU's slow select-and-scatter."""
  return _max_pool_3x3_s2_argmax(x)[0]


def _max_pool_fwd(x):
  y, which = _max_pool_3x3_s2_argmax(x)
  return y, (which, x.shape)


def _max_pool_bwd(res, g):
  which, (n, h, w, c) = res
  ho, wo = g.shape[1:3]
  zero = jnp.zeros_like(g)

  def next_one(a, axis):  # a[o + 1] at o, zero past the end
    pad = [(0, 0)] * 4
    pad[axis] = (0, 1)
    return jax.lax.slice_in_dim(jnp.pad(a, pad), 1, a.shape[axis] + 1, axis=axis)

  # Padded input row 2a + 1 + r: r = 0 is tap 1 of output a; r = 1 is tap 2 of output a and tap 0 of a + 1.
  taps = {0: ((1, False),), 1: ((2, False), (0, True))}
  phases = []
  for r in (0, 1):
    row = []
    for q in (0, 1):
      acc = None
      for i, down in taps[r]:
        for j, right in taps[q]:
          t = jnp.where(which == 3 * i + j, g, zero)
          if down:
            t = next_one(t, 1)
          if right:
            t = next_one(t, 2)
          acc = t if acc is None else acc + t
      row.append(acc)
    phases.append(jnp.stack(row, axis=3))                        # (N, Ho, Wo, 2, C)
  dx = jnp.stack(phases, axis=2).reshape(n, 2 * ho, 2 * wo, c)   # (N, Ho, 2, Wo, 2, C)
  return (dx[:, :h, :w, :],)


max_pool_3x3_s2 = custom_backward(_max_pool_plain, _max_pool_fwd, _max_pool_bwd)


def recomputed(module: nnx.Module, forward: Callable[[nnx.Module, jax.Array, bool], jax.Array], x: jax.Array,
               train: bool) -> jax.Array:
  """``forward(module, x, train)`` whose backward pass keeps only ``x`` and the module's variables
  and runs the forward again (``autodiff.recompute_in_backward``); the BatchNorm statistics a
  training forward computes are written back to ``module`` as usual."""
  graphdef, params, rest = nnx.split(module, nnx.Param, ...)

  def pure(params, rest, x):
    m = nnx.merge(graphdef, params, rest, copy=True)
    y = forward(m, x, train)
    return y, nnx.split(m, nnx.Param, ...)[2]

  y, rest = recompute_in_backward(pure)(params, rest, x)
  nnx.update(module, rest)
  return y
