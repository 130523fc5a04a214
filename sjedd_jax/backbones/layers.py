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
* Initialisers matching PyTorch's defaults (``torch_linear_init``, ``torch_conv_init``)
  and torchvision/timm's ``kaiming_normal_(mode="fan_out")`` for CNN convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

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
    xf = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      n = 1
      for a in axes:
        n *= x.shape[a]
      mean = jnp.mean(xf, axis=axes)
      var = jnp.mean(jnp.square(xf - mean), axis=axes)
      m = self.momentum
      # set_value rather than ``self.mean[...] = ...``: with flax 0.12 the item assignment runs a check
      # over everything traced so far on each write, so tracing a deep CNN grew with the square of
      # its BatchNorm count (LiSiam's bi-level step: 32.5 s -> 3.9 s of tracing). Same values.
      self.mean.set_value((1.0 - m) * self.mean[...] + m * jax.lax.stop_gradient(mean))
      unbiased = var * (n / max(n - 1, 1))
      self.var.set_value((1.0 - m) * self.var[...] + m * jax.lax.stop_gradient(unbiased))
    else:
      mean, var = self.mean[...], self.var[...]
    y = (xf - mean) * jax.lax.rsqrt(var + self.eps)
    if self.scale is not None:
      y = y * self.scale[...]
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(dtype)


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


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """``torch.nn.MaxPool2d(window, stride, padding)`` on NHWC (padding with -inf, floor mode)."""
  return nnx.max_pool(x, (window, window), (stride, stride), ((padding, padding), (padding, padding)))
