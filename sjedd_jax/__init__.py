"""sjedd_jax: SJEDD, the semantics-oriented joint-embedding DeepFake detector, in JAX/Flax."""

__version__ = "0.1.0"
