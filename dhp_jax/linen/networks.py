"""The paper's networks (§V) in Flax linen: an MLP for the MNIST benchmarks and a CNN for
the vision mixture, each ending in a swappable output head (``make_head``).

Hidden layers use PyTorch's default init (``ops.torch_kernel_init``: U(±1/√fan_in)
kernels, as the paper's PyTorch models had) with zero biases. ``dhp_jax.nnx.networks``
builds the same networks with the same parameter paths.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax

from dhp_jax import heads_spec
from dhp_jax.linen import heads
from dhp_jax.ops import max_pool, patch_conv, torch_kernel_init

# The output heads by name (names from ``heads_spec.HEADS``).
HEAD_MODULES = heads_spec.head_modules(heads)


def make_head(head: str, num_classes: int, *, eta_init: float = 1e-3,
              alpha_scale: float = 0.01, theta_init: str = "author",
              use_bias: bool = False, name: str = "head") -> nn.Module:
  """The output head named ``head`` (one of ``heads_spec.HEADS``); a plain head ignores
  the DHP hyperparameters η₀ and α scale."""
  heads_spec.check_head(head)
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
      h = max_pool(h, (2, 2))
    h = h.reshape((h.shape[0], -1))
    h = nn.Dense(self.hidden, kernel_init=torch_kernel_init, name="dense")(h)
    h = nn.leaky_relu(h, self.negative_slope)
    return make_head(self.head, self.num_classes, eta_init=self.eta_init,
                     alpha_scale=self.alpha_scale, theta_init=self.theta_init,
                     use_bias=self.use_bias)(h, labels, mask=mask)

