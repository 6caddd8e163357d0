"""The paper's networks (§V): an MLP for the MNIST benchmarks and a CNN for the
vision mixture, each ending in a swappable output head.

Hidden layers use PyTorch's default init (U(±1/√fan_in) kernels, as the paper's
PyTorch models had) with zero biases.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from dhp_jax import layers

# The output heads by name ('matched' = the paper's capacity-matched baseline).
HEAD_MODULES = {"dhp": layers.DHPSoftmax, "softmax": layers.Softmax,
                "matched": layers.MatchedSoftmax}
HEADS = tuple(HEAD_MODULES)

# PyTorch's kaiming_uniform_(a=√5) default is U(±1/√fan_in) = variance_scaling(1/3).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def make_head(head: str, num_classes: int, *, eta_init: float = 1e-3,
              alpha_scale: float = 0.01, theta_init: str = "author",
              use_bias: bool = False, name: str = "head") -> nn.Module:
  """The output head named ``head`` (one of ``HEADS``); a plain head ignores the DHP
  hyperparameters η₀ and α scale."""
  if head not in HEAD_MODULES:
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")
  module = HEAD_MODULES[head]
  options = dict(eta_init=eta_init, alpha_scale=alpha_scale, theta_init=theta_init,
                 use_bias=use_bias)
  return module(num_classes, name=name,
                **{k: v for k, v in options.items() if k in module.__dataclass_fields__})


class MLP(nn.Module):
  """MLP with LeakyReLU hidden layers and a DHP / plain / matched softmax head.

  Permuted MNIST: hidden=(400, 400); Split MNIST: hidden=(256, 256).
  ``__call__(x [B, ...], labels [B] or None, mask [B] or None) -> logits [B, num_classes]``.
  """
  hidden: Sequence[int] = (400, 400)
  num_classes: int = 10
  head: str = "dhp"
  negative_slope: float = 0.01   # PyTorch's LeakyReLU default
  eta_init: float = 1e-3
  alpha_scale: float = 0.01
  theta_init: str = "author"
  use_bias: bool = False         # head bias (Eq. 2 has none)

  @nn.compact
  def __call__(self, x: jax.Array, labels: Optional[jax.Array] = None, *,
               mask: Optional[jax.Array] = None) -> jax.Array:
    h = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.hidden):
      h = nn.Dense(width, kernel_init=torch_kernel_init, name=f"dense_{i}")(h)
      h = nn.leaky_relu(h, self.negative_slope)
    return make_head(self.head, self.num_classes, eta_init=self.eta_init,
                     alpha_scale=self.alpha_scale, theta_init=self.theta_init,
                     use_bias=self.use_bias)(h, labels, mask=mask)


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


class CNN(nn.Module):
  """Vision-mixture CNN: conv5×5·20 → LeakyReLU(0.3) → maxpool 2 → conv5×5·50 →
  LeakyReLU(0.3) → maxpool 2 → dense 500 → LeakyReLU(0.3) → head.

  ``x``: float [B, 32, 32, 3] (valid convolutions, as PyTorch's default padding 0).
  """
  num_classes: int = 50
  head: str = "dhp"
  negative_slope: float = 0.3
  features: Sequence[int] = (20, 50)
  hidden: int = 500
  eta_init: float = 1e-4
  alpha_scale: float = 0.01
  theta_init: str = "author"
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, labels: Optional[jax.Array] = None, *,
               mask: Optional[jax.Array] = None) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"x must be [batch, height, width, channels], got shape {x.shape}")
    h = x
    for i, channels in enumerate(self.features):
      h = nn.Conv(channels, (5, 5), padding="VALID", kernel_init=torch_kernel_init,
                  conv_general_dilated=patch_conv, name=f"conv_{i}")(h)
      h = nn.leaky_relu(h, self.negative_slope)
      h = nn.max_pool(h, (2, 2), strides=(2, 2))
    h = h.reshape((h.shape[0], -1))
    h = nn.Dense(self.hidden, kernel_init=torch_kernel_init, name="dense")(h)
    h = nn.leaky_relu(h, self.negative_slope)
    return make_head(self.head, self.num_classes, eta_init=self.eta_init,
                     alpha_scale=self.alpha_scale, theta_init=self.theta_init,
                     use_bias=self.use_bias)(h, labels, mask=mask)


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
