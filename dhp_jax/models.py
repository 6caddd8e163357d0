"""The old home of the linen networks (now ``dhp_jax.linen``), kept so existing imports
work. What both front ends share moved to the core: ``HEADS`` to ``dhp_jax.heads_spec``;
``torch_kernel_init``, ``patch_conv`` and ``restrict_logits`` to ``dhp_jax.ops``.

Every public name forwards to its new home with a ``DeprecationWarning``.
"""
from dhp_jax import _moved

__getattr__ = _moved.forwarder("dhp_jax.models", {
    **dict.fromkeys(("MLP", "CNN", "make_head", "HEAD_MODULES"), "dhp_jax.linen"),
    "HEADS": "dhp_jax.heads_spec",
    **dict.fromkeys(("torch_kernel_init", "patch_conv", "restrict_logits"), "dhp_jax.ops"),
})
