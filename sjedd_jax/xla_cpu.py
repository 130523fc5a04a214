"""Which kernel library XLA:CPU runs a detector's convolutions and matrix products with.

jaxlib 0.10's XLA:CPU hands convolutions, matrix products and reductions to
YNNPACK (the successor of XNNPACK) by default: the debug option
``xla_cpu_experimental_ynn_fusion_type`` lists the operation kinds it turns into
YNNPACK calls (individual convolutions, individual dots, reductions). Leaving only
the reductions there sends convolutions and matrix products back to XLA:CPU's own
Eigen kernels. On the 2-core AVX-512 machine of docs/performance.md ("Kernel
libraries of XLA:CPU") Eigen's convolutions are faster for the layers these
detectors run (up to 3x for a 3x3 convolution's gradient, 1.5x for a 3x3 forward)
and its tall matrix products up to 1.4x. Whole training steps gain 1.2-1.4x at the
papers' sizes (MC-LCR 256 px batch 16: 5.2 s -> 3.7 s; MIL ResNet-50 batch 32:
5.8 s -> 4.8 s); at the twins' sizes the steps are dominated by per-operation
overhead and do not change. The reductions (BatchNorm's statistics) stay with
YNNPACK: XLA's own reductions made the MIL step 1.3x and its bi-level step 1.7x
slower.

The choice is a per-program compiler option (``jax.jit(..., compiler_options=...)``),
so a detector makes it for its own programs (the training step, ``predict``)
and leaves every other program in the process alone. The switch is
``config.model.cpu_kernels``:

* ``"auto"``: ``"eigen"`` on the CPU backend (the default of MIL, MC-LCR and LiSiam);
* ``"eigen"``: XLA:CPU's own convolutions and matrix products (reductions stay with YNNPACK);
* ``"ynnpack"``: XLA:CPU's default (SJEDD's default: its published numbers were
  computed that way, and a different kernel rounds differently).

On other backends the option means nothing and no option is passed. A jaxlib
that does not know the option gets none under ``"auto"`` and a clear error under
``"eigen"``.
"""

from __future__ import annotations

import functools

import jax

KERNELS = ("auto", "eigen", "ynnpack")
OPTION = "xla_cpu_experimental_ynn_fusion_type"   # repeated enum, comma-separated names
EIGEN = "LIBRARY_FUSION_TYPE_REDUCE"                # only reductions go to YNNPACK


def cpu_kernels_impl(kind: str) -> str:
  """``kind`` resolved: "eigen" or "ynnpack" ("auto" is "eigen" on the CPU backend)."""
  from sjedd_jax.backbones import layers  # pylint: disable=g-import-not-at-top
  return layers.backend_impl("model.cpu_kernels", kind, KERNELS, on_cpu="eigen", elsewhere="ynnpack")


@functools.cache
def option_supported() -> bool:
  """Whether this jaxlib's XLA:CPU accepts ``OPTION`` (compiles one tiny program, once)."""
  try:
    jax.jit(lambda x: x + 1, compiler_options={OPTION: EIGEN}).lower(1.0).compile()
    return True
  except Exception:  # pylint: disable=broad-except  (an unknown option is an XlaRuntimeError)
    return False


def from_model_config(m, default: str = "auto") -> dict[str, str] | None:
  """``compiler_options`` of ``config.model`` ``m`` (its ``cpu_kernels``; ``default`` when absent or ``m``
  is None); a ConfigError names the field for a bad value."""
  from sjedd_jax.config import ConfigError  # pylint: disable=g-import-not-at-top
  kind = default if m is None else m.get("cpu_kernels", default)
  try:
    return compiler_options(kind)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def compiler_options(kind: str) -> dict[str, str] | None:
  """The ``jax.jit`` compiler options that select ``kind``'s kernels; None for XLA's default."""
  impl = cpu_kernels_impl(kind)
  if impl == "ynnpack" or jax.default_backend() != "cpu":
    return None
  if not option_supported():
    if kind == "eigen":
      raise ValueError(f"model.cpu_kernels='eigen': this jaxlib ({jax.__version__}) has no XLA option {OPTION}; "
                       "use 'auto' or 'ynnpack'")
    return None
  return {OPTION: EIGEN}
