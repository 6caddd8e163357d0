"""Array operations the networks of both front ends (``dhp_jax.linen``, ``dhp_jax.nnx``)
are built from, with no network of their own.

``torch_kernel_init``                 the hidden layers' kernel init (PyTorch's default).
``conv_patches(x, kernel_hw, ...)``   receptive fields of a 2-D convolution.
``patch_conv(lhs, rhs, ...)``         ``lax.conv_general_dilated`` as patches · kernel, for
                                      ``nn.Conv`` / ``nnx.Conv(conv_general_dilated=...)``.
``restrict_logits(logits, slice)``    a task's outputs (task-incremental streams).

The consolidation estimators' per-sample shortcut reads convolutions through these too,
so they import no network module.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

# PyTorch's kaiming_uniform_(a=√5) default is U(±1/√fan_in) = variance_scaling(1/3).
torch_kernel_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv_patches(x: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int] = (1, 1),
                 padding="VALID", dilation: Sequence[int] = (1, 1)) -> jax.Array:
  """Receptive fields of a 2-D convolution: x [B, H, W, C] → [B, H', W', kh, kw, C].

  ``padding``: 'VALID' | 'SAME' | ((lo, hi), (lo, hi)). Strided slices of the padded
  input (an identity-kernel convolution, as ``lax.conv_general_dilated_patches``, costs
  C·kh·kw times more FLOPs).
  """
  window = [(k - 1) * d + 1 for k, d in zip(kernel_hw, dilation)]
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  rows, cols = ((x.shape[1 + a] - window[a]) // strides[a] + 1 for a in (0, 1))
  return jnp.stack([
      jnp.stack([x[:, i * dilation[0]: i * dilation[0] + (rows - 1) * strides[0] + 1: strides[0],
                   j * dilation[1]: j * dilation[1] + (cols - 1) * strides[1] + 1: strides[1]]
                 for j in range(kernel_hw[1])], axis=3)
      for i in range(kernel_hw[0])], axis=3)


def patch_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
               dimension_numbers=None, feature_group_count=1, precision=None,
               preferred_element_type=None, out_sharding=None) -> jax.Array:
  """``lax.conv_general_dilated`` (as ``nn.Conv`` / ``nnx.Conv(conv_general_dilated=...)``
  call it) for 2-D NHWC/HWIO convolutions, computed as patches · kernel: one matmul.

  Why: XLA:CPU runs a convolution inside a while loop (our ``lax.scan`` epoch) ~5× slower
  than the same convolution outside one, while dots run at full speed in both (measured in
  BUILD_NOTES.md). Anything else (grouped, input-dilated, other layouts) goes to ``lax``.
  """
  # nnx.Conv always passes out_sharding (None without a mesh); older jax lacks the argument.
  sharding = {} if out_sharding is None else {"out_sharding": out_sharding}
  ones = (1,) * (lhs.ndim - 2)
  plain = (lhs.ndim == 4 and feature_group_count == 1
           and tuple(lhs_dilation or ones) == ones
           and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, ("NHWC", "HWIO", "NHWC")))
  if not plain:
    return jax.lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
        rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
        feature_group_count=feature_group_count, precision=precision,
        preferred_element_type=preferred_element_type, **sharding)
  patches = conv_patches(lhs, rhs.shape[:2], window_strides, padding, rhs_dilation or ones)
  return jnp.dot(patches.reshape(*patches.shape[:3], -1), rhs.reshape(-1, rhs.shape[-1]),
                 precision=precision, preferred_element_type=preferred_element_type,
                 **sharding)


def restrict_logits(logits: jax.Array,
                    output_slice: Optional[tuple[int, int]]) -> jax.Array:
  """Task-incremental outputs: ``logits[:, start:stop]``, or all logits when None.

  The slice is static (one compiled program per distinct task slice).
  """
  if output_slice is None:
    return logits
  start, stop = output_slice
  if not 0 <= start < stop <= logits.shape[-1]:
    raise ValueError(f"output_slice must satisfy 0 <= start < stop <= "
                     f"{logits.shape[-1]}, got {output_slice}")
  return logits[..., start:stop]
