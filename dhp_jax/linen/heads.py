"""Flax linen output heads: thin wrappers; the DHP computation lives in ``hebbian``.

Every head maps ``h`` [B, m] → logits [B, d] and accepts ``labels`` (ignored by the
non-plastic heads) so models can swap heads without branching.

Variables:
  ``DHPSoftmax``:     params {theta, alpha, eta[, bias]}; collection 'hebb' {hebb}.
  ``MatchedSoftmax``: params {theta1, theta2[, bias]}.
  ``Softmax``:        params {theta[, bias]}.

``dhp_jax.nnx.heads`` holds the NNX twins, under the same names (``heads_spec``).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dhp_jax import hebbian

HEBB_COLLECTION = "hebb"


class DHPSoftmax(nn.Module):
  """DHP Softmax head (paper Eq. 2–3). The trace lives in the ``'hebb'`` collection.

  The trace is updated only when ``labels`` are given *and* ``'hebb'`` is mutable, so
  ``model.apply(variables, h)`` evaluates with the latest trace and
  ``model.apply(variables, h, labels, mutable=['hebb'])`` is a training forward pass.
  """
  num_classes: int
  eta_init: float = 1e-3
  alpha_scale: float = 0.01
  theta_init: str = "author"
  use_bias: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, labels: Optional[jax.Array] = None, *,
               mask: Optional[jax.Array] = None) -> jax.Array:
    shape = (h.shape[-1], self.num_classes)
    theta = self.param("theta", hebbian.theta_initializer(self.theta_init), shape)
    alpha = self.param("alpha", hebbian.alpha_initializer(self.alpha_scale), shape)
    eta = self.param("eta", lambda _: jnp.asarray(self.eta_init, jnp.float32))
    bias = (self.param("bias", nn.initializers.zeros_init(), (self.num_classes,))
            if self.use_bias else None)
    hebb = self.variable(HEBB_COLLECTION, "hebb", hebbian.init_hebb, *shape)
    # The trace must stay zero through init: it starts at zero at the first task.
    update = (labels is not None and self.is_mutable_collection(HEBB_COLLECTION)
              and not self.is_initializing())
    logits, new_hebb = hebbian.dhp_apply(
        hebbian.DHPParams(theta, alpha, eta, bias), hebb.value, h,
        labels if update else None, mask=mask)
    if update:
      hebb.value = new_hebb
    return logits


class _PlainHead(nn.Module):
  """A head without plasticity: ``logits(h)`` (+ b); ``labels`` and ``mask`` unused."""
  num_classes: int
  theta_init: str = "author"
  use_bias: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, labels: Optional[jax.Array] = None, *,
               mask: Optional[jax.Array] = None) -> jax.Array:
    del labels, mask  # not plastic
    logits = self.logits(h, (h.shape[-1], self.num_classes))
    if self.use_bias:
      logits = logits + self.param("bias", nn.initializers.zeros_init(), (self.num_classes,))
    return logits

  @nn.nowrap
  def theta(self, name: str, shape: tuple) -> jax.Array:
    return self.param(name, hebbian.theta_initializer(self.theta_init), shape)


class MatchedSoftmax(_PlainHead):
  """The paper's capacity-matched plain head (§V): ``z = h·(θ₁ + θ₂) (+ b)``.

  θ₁ is initialised exactly like the DHP head's θ and θ₂ = 0, so at step 0 it computes
  what DHP with α = 0 computes. θ₁ and θ₂ receive identical gradients (SPEC §1).
  """

  @nn.nowrap
  def logits(self, h: jax.Array, shape: tuple) -> jax.Array:
    theta1 = self.theta("theta1", shape)   # first: the order draws the init keys
    return h @ (theta1 + self.param("theta2", nn.initializers.zeros_init(), shape))


class Softmax(_PlainHead):
  """A plain linear softmax head ``z = h·θ (+ b)`` with the same θ init options."""

  @nn.nowrap
  def logits(self, h: jax.Array, shape: tuple) -> jax.Array:
    return h @ self.theta("theta", shape)
