"""Array operations the networks of both front ends (``dhp_jax.linen``, ``dhp_jax.nnx``)
are built from, with no network of their own.

``torch_kernel_init``                 the hidden layers' kernel init (PyTorch's default).
``conv_patches(x, kernel_hw, ...)``   receptive fields of a 2-D convolution.
``patch_conv(lhs, rhs, ...)``         ``lax.conv_general_dilated`` as patches · kernel, for
                                      ``nn.Conv`` / ``nnx.Conv(conv_general_dilated=...)``.
``max_pool(x, window)``               non-overlapping max pool, ``nn.max_pool``'s values and
                                      gradients without XLA:CPU's select-and-scatter.
``restrict_logits(logits, slice)``    a task's outputs (task-incremental streams).

The consolidation estimators' per-sample shortcut reads convolutions through these too,
so they import no network module.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from dhp_jax import native

# PyTorch's kaiming_uniform_(a=√5) default is U(±1/√fan_in) = variance_scaling(1/3).
torch_kernel_init = jax.nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv_patches(x: jax.Array, kernel_hw: Sequence[int], strides: Sequence[int] = (1, 1),
                 padding="VALID", dilation: Sequence[int] = (1, 1)) -> jax.Array:
  """Receptive fields of a 2-D convolution: x [B, H, W, C] → [B, H', W', kh, kw, C].

  ``padding``: 'VALID' | 'SAME' | ((lo, hi), (lo, hi)). Strided slices of the padded
  input (an identity-kernel convolution, as ``lax.conv_general_dilated_patches``, costs
  C·kh·kw times more FLOPs).
  """
  kernel_hw, strides, dilation = (tuple(int(v) for v in t)
                                  for t in (kernel_hw, strides, dilation))
  window = [(k - 1) * d + 1 for k, d in zip(kernel_hw, dilation)]
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  padding = tuple(tuple(int(v) for v in pair) for pair in padding)
  if strides == dilation == (1, 1):
    return _unit_stride_patches(x, kernel_hw, padding)
  return _strided_patches(x, kernel_hw, strides, padding, dilation)


def _strided_patches(x, kernel_hw, strides, padding, dilation):
  window = [(k - 1) * d + 1 for k, d in zip(kernel_hw, dilation)]
  x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
  rows, cols = ((x.shape[1 + a] - window[a]) // strides[a] + 1 for a in (0, 1))
  return jnp.stack([
      jnp.stack([x[:, i * dilation[0]: i * dilation[0] + (rows - 1) * strides[0] + 1: strides[0],
                   j * dilation[1]: j * dilation[1] + (cols - 1) * strides[1] + 1: strides[1]]
                 for j in range(kernel_hw[1])], axis=3)
      for i in range(kernel_hw[0])], axis=3)


def _on_cpu_natively(native_fn, xla_fn, operand):
  """``native_fn(operand)`` where the program runs on the CPU and the ``native`` kernels
  are there (float32), else ``xla_fn(operand)``: the same values either way."""
  if operand.dtype != jnp.float32 or not native.available():
    return xla_fn(operand)
  return jax.lax.platform_dependent(operand, cpu=native_fn, default=xla_fn)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _unit_stride_patches(x, kernel_hw, padding):
  return _on_cpu_natively(lambda x: native.im2col(x, kernel_hw, padding),
                          lambda x: _strided_patches(x, kernel_hw, (1, 1), padding, (1, 1)),
                          x)


def _unit_stride_patches_forward(x, kernel_hw, padding):
  return _unit_stride_patches(x, kernel_hw, padding), None


def _unit_stride_patches_backward(kernel_hw, padding, _, cotangent):
  """col2im: the cotangent [B, H', W', kh, kw, C] of every window offset added back at its
  pixels (``native.col2im`` on the CPU, else ``_xla_col2im``; the same sums)."""
  (top, bottom), (left, right) = padding
  hw = (cotangent.shape[1] + kernel_hw[0] - 1 - top - bottom,
        cotangent.shape[2] + kernel_hw[1] - 1 - left - right)
  return (_on_cpu_natively(lambda g: native.col2im(g, padding, hw),
                           lambda g: _xla_col2im(g, padding), cotangent),)


def _xla_col2im(cotangent, padding):
  """col2im in XLA: one in-place dynamic-update-slice add per window offset, last offset
  first — the order of JAX's own transpose of the stacked slices, so the sums are
  bit-identical. Why: XLA:CPU materialises that transpose's kh·kw padded copies of x
  (BUILD_NOTES §2.9)."""
  batch, rows, cols, kh, kw, channels = cotangent.shape
  (top, bottom), (left, right) = padding
  grad = jnp.zeros((batch, rows + kh - 1, cols + kw - 1, channels), cotangent.dtype)
  for i in reversed(range(kh)):
    for j in reversed(range(kw)):
      start = (0, i, j, 0)
      window = jax.lax.dynamic_slice(grad, start, (batch, rows, cols, channels))
      grad = jax.lax.dynamic_update_slice(grad, window + cotangent[:, :, :, i, j], start)
  return grad[:, top: grad.shape[1] - bottom, left: grad.shape[2] - right]


_unit_stride_patches.defvjp(_unit_stride_patches_forward, _unit_stride_patches_backward)


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


def _window_views(x: jax.Array, window: tuple[int, int]) -> list[jax.Array]:
  """x [B, H, W, C] (H, W multiples of the window) → the kh·kw elements of every window,
  each [B, H // kh, W // kw, C], in row-major window order."""
  kh, kw = window
  return [x[:, i::kh, j::kw] for i in range(kh) for j in range(kw)]


def _largest(views: list[jax.Array]) -> jax.Array:
  return functools.reduce(jnp.maximum, views)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, window: tuple[int, int]) -> jax.Array:
  return _largest(_window_views(x, window))


def _max_pool_forward(x, window):
  views = _window_views(x, window)
  pooled = _largest(views)
  winner = jnp.full(pooled.shape, len(views) - 1, jnp.int8)
  for n in reversed(range(len(views) - 1)):   # the first maximum wins ties
    winner = jnp.where(views[n] == pooled, jnp.int8(n), winner)
  return pooled, winner


def _max_pool_backward(window, winner, cotangent):
  """Each window's cotangent goes to its first maximum (XLA's select-and-scatter with
  ``ge``, and PyTorch's rule), assembled by stacking rather than scattering."""
  kh, kw = window
  parts = [jnp.where(winner == n, cotangent, 0) for n in range(kh * kw)]
  rows = [jnp.stack(parts[i * kw:(i + 1) * kw], axis=3) for i in range(kh)]  # [B,H',W',kw,C]
  batch, height, width, channels = cotangent.shape
  return (jnp.stack(rows, axis=2).reshape(batch, height * kh, width * kw, channels),)


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def max_pool(x: jax.Array, window: Sequence[int] = (2, 2)) -> jax.Array:
  """``nn.max_pool(x, window, strides=window)`` ('VALID'): x [B, H, W, C] →
  [B, H // kh, W // kw, C], with the same values and gradients (each window's cotangent to
  its first maximum in row-major order, as XLA's select-and-scatter and PyTorch do).

  Why: inside the epoch's ``lax.scan`` XLA:CPU runs ``reduce_window`` and the
  select-and-scatter of its gradient as slow scalar loops (the CNN's largest cost after
  the matmuls); here both are elementwise selects over the windows' strided views, with the
  winner kept as int8 for the backward pass (BUILD_NOTES §2.9).
  """
  window = tuple(int(k) for k in window)
  if x.ndim != 4 or len(window) != 2 or min(window) < 1 or window[0] * window[1] > 127:
    raise ValueError(f"max_pool expects x [batch, height, width, channels] and a 2-D "
                     f"window of at most 127 elements, got x {x.shape} and window {window}")
  # A trailing remainder of rows or columns is dropped, as 'VALID' does.
  return _max_pool(x[:, :x.shape[1] // window[0] * window[0],
                     :x.shape[2] // window[1] * window[1]], window)


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
