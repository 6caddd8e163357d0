"""The paper's networks (§V): an MLP for the MNIST benchmarks and a CNN for the
vision mixture, each ending in a swappable output head.

Hidden layers use PyTorch's default init (U(±1/√fan_in) kernels, as the paper's
PyTorch models had) with zero biases.
"""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax

from dhp_jax import layers
from dhp_jax.ops import patch_conv

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
