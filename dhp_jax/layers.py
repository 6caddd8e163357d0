"""The old home of the linen heads (now ``dhp_jax.linen``), kept so existing imports work.

Every public name forwards to ``dhp_jax.linen`` with a ``DeprecationWarning``.
"""
from dhp_jax import _moved

__getattr__ = _moved.forwarder("dhp_jax.layers", dict.fromkeys(
    ("DHPSoftmax", "MatchedSoftmax", "Softmax", "HEBB_COLLECTION"), "dhp_jax.linen"))
