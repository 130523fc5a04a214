"""``sjedd_jax.xla_cpu``: the kernel-library switch (``model.cpu_kernels``) of the detectors' programs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sjedd_jax import config as config_lib
from sjedd_jax import detectors, train_step as ts, xla_cpu
from sjedd_jax.config import ConfigError

DN = ("NHWC", "HWIO", "NHWC")
needs_option = pytest.mark.skipif(jax.default_backend() != "cpu" or not xla_cpu.option_supported(),
                                  reason="XLA:CPU of this jaxlib has no ynn fusion option")


def _conv_program(options):
  x, w, m = jnp.ones((2, 16, 16, 8)), jnp.ones((3, 3, 8, 8)), jnp.ones((8, 8))
  f = jax.jit(lambda x, w, m: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN) @ m,
              compiler_options=options)
  return f.lower(x, w, m).compile().as_text()


def test_resolution_and_errors():
  assert xla_cpu.cpu_kernels_impl("eigen") == "eigen"
  assert xla_cpu.cpu_kernels_impl("ynnpack") == "ynnpack"
  assert xla_cpu.cpu_kernels_impl("auto") == ("eigen" if jax.default_backend() == "cpu" else "ynnpack")
  assert xla_cpu.compiler_options("ynnpack") is None
  with pytest.raises(ValueError, match=r"model.cpu_kernels='fast'.*\['auto', 'eigen', 'ynnpack'\]"):
    xla_cpu.compiler_options("fast")


@needs_option
def test_eigen_program_has_no_ynnpack_call_and_same_values():
  assert xla_cpu.compiler_options("eigen") == {xla_cpu.OPTION: xla_cpu.EIGEN}
  assert "ynn_fusion" not in _conv_program(xla_cpu.compiler_options("eigen"))
  assert "ynn_fusion" in jax.jit(lambda x: jnp.sum(x, axis=(0, 1, 2)), compiler_options=xla_cpu.compiler_options(
      "eigen")).lower(jnp.ones((4, 8, 8, 16))).compile().as_text()   # reductions stay with YNNPACK
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 12, 12, 16)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(3, 3, 16, 32)) * 0.1, jnp.float32)

  def loss(x, w):
    return jnp.sum(jnp.tanh(jax.lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)))

  ref = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(x, w)
  got = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)), compiler_options=xla_cpu.compiler_options("eigen"))(x, w)
  for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@needs_option
def test_compile_train_step_passes_the_options():
  mesh = ts.data_mesh(jax.devices()[:1])

  def step(state, batch, val):
    del val
    y = jax.lax.conv_general_dilated(batch["x"], state, (1, 1), "SAME", dimension_numbers=DN)
    return state - 0.1 * jnp.mean(y), {"loss": jnp.mean(y)}

  state, batch = jnp.ones((3, 3, 4, 4)), {"x": jnp.ones((2, 8, 8, 4))}
  compiled = ts.compile_train_step(step, mesh, donate=False, compiler_options=xla_cpu.compiler_options("eigen"))
  assert "ynn_fusion" not in compiled.lower(state, batch, batch).compile().as_text()


@pytest.mark.parametrize("name,expected", [("mil_ranking", "eigen"), ("mc_lcr", "eigen"), ("lisiam", "eigen"),
                                           ("sjedd", "ynnpack")])
def test_detector_defaults(name, expected):
  """Each detector's default, as its ``make`` wires it into ``Detector.compiler_options``."""
  c = config_lib.base_config(name)
  assert c.model.cpu_kernels == ("ynnpack" if name == "sjedd" else "auto")
  assert detectors.make(c).compiler_options == xla_cpu.compiler_options(expected)


def test_bad_value_is_a_config_error():
  c = config_lib.base_config("mc_lcr")
  c.model.cpu_kernels = "fast"
  with pytest.raises(ConfigError, match="model.cpu_kernels='fast'"):
    detectors.make(c)
