"""The paper's networks (§V) in Flax NNX: ``MLP`` and ``CNN``, each ending in a head
built by ``make_head`` (names from ``heads_spec.HEADS``).

The same networks as ``dhp_jax.linen.networks``, with the same initialisers
(``ops.torch_kernel_init``) and the same parameter paths (``dense_0/kernel``,
``head/theta``, ...), so a linen params dict and an NNX ``nnx.state(model, nnx.Param)``
hold the same arrays under the same keys.
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence

import jax
from flax import nnx

from dhp_jax import heads_spec, ops
from dhp_jax.nnx import heads

# The output heads by name (names from ``heads_spec.HEADS``).
HEAD_MODULES = heads_spec.head_modules(heads)


def make_head(head: str, in_features: int, num_classes: int, *, eta_init: float = 1e-3,
              alpha_scale: float = 0.01, theta_init: str = "author",
              use_bias: bool = False, rngs: nnx.Rngs) -> nnx.Module:
  """The NNX head named ``head`` (one of ``heads_spec.HEADS``), in_features →
  num_classes; a plain head ignores the DHP hyperparameters η₀ and α scale."""
  heads_spec.check_head(head)
  module = HEAD_MODULES[head]
  options = dict(eta_init=eta_init, alpha_scale=alpha_scale, theta_init=theta_init,
                 use_bias=use_bias)
  # __init__'s parameters: the class's own signature is NNX's metaclass call (*args, **kwargs).
  accepted = inspect.signature(module.__init__).parameters
  return module(in_features, num_classes, rngs=rngs,
                **{k: v for k, v in options.items() if k in accepted})


def _dense(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(in_features, out_features, kernel_init=ops.torch_kernel_init,
                    rngs=rngs)


class MLP(nnx.Module):
  """``dhp_jax.linen.MLP`` in NNX: LeakyReLU hidden layers ``dense_i``, then ``head``.

  Permuted MNIST: MLP(784, (400, 400), 10); Split MNIST: hidden=(256, 256). Kernels
  U(±1/√fan_in), zero biases. ``__call__(x [B, ...], labels [B] or None, *, mask [B] or
  None) -> logits [B, num_classes]``; x is flattened to [B, in_features].
  """

  def __init__(self, in_features: int, hidden: Sequence[int] = (400, 400),
               num_classes: int = 10, *, head: str = "dhp", negative_slope: float = 0.01,
               eta_init: float = 1e-3, alpha_scale: float = 0.01,
               theta_init: str = "author", use_bias: bool = False, rngs: nnx.Rngs):
    widths = (in_features, *hidden)
    # Named attributes rather than a list: the state paths equal linen's (dense_0, ...).
    for i in range(len(hidden)):
      setattr(self, f"dense_{i}", _dense(widths[i], widths[i + 1], rngs))
    self.num_hidden = len(hidden)
    self.negative_slope = negative_slope
    self.head = make_head(head, widths[-1], num_classes, eta_init=eta_init,
                          alpha_scale=alpha_scale, theta_init=theta_init,
                          use_bias=use_bias, rngs=rngs)

  def __call__(self, x: jax.Array, labels: Optional[jax.Array] = None, *,
               mask: Optional[jax.Array] = None) -> jax.Array:
    h = x.reshape((x.shape[0], -1))
    for i in range(self.num_hidden):
      h = jax.nn.leaky_relu(getattr(self, f"dense_{i}")(h), self.negative_slope)
    return self.head(h, labels, mask=mask)


class CNN(nnx.Module):
  """``dhp_jax.linen.CNN`` in NNX: conv5×5·20 → LeakyReLU(0.3) → maxpool 2 → conv5×5·50 →
  LeakyReLU(0.3) → maxpool 2 → dense 500 → LeakyReLU(0.3) → head.

  ``input_shape`` (H, W, C) of x [B, H, W, C]; valid convolutions (PyTorch's padding 0)
  computed as patches · kernel (``ops.patch_conv``).
  """

  def __init__(self, num_classes: int = 50, *, input_shape: Sequence[int] = (32, 32, 3),
               head: str = "dhp", negative_slope: float = 0.3,
               features: Sequence[int] = (20, 50), hidden: int = 500,
               eta_init: float = 1e-4, alpha_scale: float = 0.01,
               theta_init: str = "author", use_bias: bool = False, rngs: nnx.Rngs):
    if len(input_shape) != 3:
      raise ValueError(f"input_shape must be (height, width, channels), got "
                       f"{input_shape!r}")
    height, width, channels = input_shape
    for i, out in enumerate(features):
      setattr(self, f"conv_{i}", nnx.Conv(
          channels, out, (5, 5), padding="VALID", kernel_init=ops.torch_kernel_init,
          conv_general_dilated=ops.patch_conv, rngs=rngs))
      channels, height, width = out, (height - 4) // 2, (width - 4) // 2
    if height < 1 or width < 1:
      raise ValueError(f"input_shape must leave at least 1×1 pixels after "
                       f"{len(features)} conv5×5 + maxpool2 stages, got {input_shape!r}")
    self.num_conv = len(features)
    self.negative_slope = negative_slope
    self.dense = _dense(height * width * channels, hidden, rngs)
    self.head = make_head(head, hidden, num_classes, eta_init=eta_init,
                          alpha_scale=alpha_scale, theta_init=theta_init,
                          use_bias=use_bias, rngs=rngs)

  def __call__(self, x: jax.Array, labels: Optional[jax.Array] = None, *,
               mask: Optional[jax.Array] = None) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"x must be [batch, height, width, channels], got shape {x.shape}")
    h = x
    for i in range(self.num_conv):
      h = jax.nn.leaky_relu(getattr(self, f"conv_{i}")(h), self.negative_slope)
      h = ops.max_pool(h, (2, 2))
    h = jax.nn.leaky_relu(self.dense(h.reshape((h.shape[0], -1))), self.negative_slope)
    return self.head(h, labels, mask=mask)
