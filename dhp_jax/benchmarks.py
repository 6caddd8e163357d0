"""The old name of ``dhp_jax.streams`` (the task streams), kept so existing imports work.

``benchmarks/`` at the top of the repository holds the speed scripts; the streams live in
``dhp_jax.streams``. Every attribute is forwarded there, with a ``DeprecationWarning``.
"""
import warnings

from dhp_jax import streams as _streams


def __getattr__(name: str):
  warnings.warn("dhp_jax.benchmarks is now dhp_jax.streams", DeprecationWarning, stacklevel=2)
  return getattr(_streams, name)
