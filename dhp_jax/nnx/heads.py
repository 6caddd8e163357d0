"""Flax NNX output heads: thin wrappers; the DHP computation lives in ``hebbian``.

The NNX twins of ``dhp_jax.linen.heads``, under the same names (``heads_spec``), with the
same initialisers and parameter names (``theta``, ``alpha``, ``eta``, ``bias``, ...).
Every head maps ``h`` [B, m] → logits [B, d] and accepts ``labels`` (ignored by the
non-plastic heads).

Variables:
  ``nnx.Param``  every trained weight: θ, α, η, biases.
  ``HebbTrace``  the DHP Hebb trace (m, d). Its own ``nnx.Variable`` type, never a
                 Param: ``nnx.Optimizer(..., wrt=nnx.Param)``, ``nnx.grad`` and the
                 consolidation penalties never see it; ``nnx.state(model, HebbTrace)``
                 saves and restores it.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import nnx

from dhp_jax import hebbian


class HebbTrace(nnx.Variable):
  """The DHP Hebb trace, float [m, d]: state carried between steps, not a parameter."""


def _plain_logits(h: jax.Array, theta: jax.Array, bias: Optional[nnx.Param]) -> jax.Array:
  logits = h @ theta
  return logits if bias is None else logits + bias[...]


def _bias(use_bias: bool, num_classes: int) -> Optional[nnx.Param]:
  return nnx.Param(jnp.zeros((num_classes,), jnp.float32)) if use_bias else None


class DHPSoftmax(nnx.Module):
  """DHP Softmax head (paper Eq. 2–3) over ``hebbian.dhp_apply``.

  Params: ``theta`` [m, d] (``hebbian.theta_initializer``), ``alpha`` [m, d]
  (alpha_scale·U(0, 1)), ``eta`` [] (= eta_init), ``bias`` [d] zeros when ``use_bias``;
  ``hebb`` [m, d] zeros (a ``HebbTrace``).

  ``__call__(h [B, m], labels [B] or None, *, mask [B] or None) -> logits [B, d]``.
  With labels it is a training forward pass: the trace is updated first (Algorithm 1)
  and the new trace is stored in ``hebb``. Without labels it evaluates with the stored
  trace and leaves it unchanged. Gradients reach θ, α, η and ``h`` through this step's
  update; the stored trace is data (stop-gradient), as in the linen head.
  """

  def __init__(self, in_features: int, num_classes: int, *, eta_init: float = 1e-3,
               alpha_scale: float = 0.01, theta_init: str = "author",
               use_bias: bool = False, rngs: nnx.Rngs):
    shape = (in_features, num_classes)
    self.hebb = HebbTrace(hebbian.init_hebb(*shape))       # checks the sizes
    self.theta = nnx.Param(hebbian.theta_initializer(theta_init)(rngs.params(), shape))
    self.alpha = nnx.Param(hebbian.alpha_initializer(alpha_scale)(rngs.params(), shape))
    self.eta = nnx.Param(jnp.asarray(eta_init, jnp.float32))
    self.bias = _bias(use_bias, num_classes)

  def dhp_params(self) -> hebbian.DHPParams:
    """The current parameters as the pure core's ``DHPParams``."""
    return hebbian.DHPParams(self.theta[...], self.alpha[...], self.eta[...],
                             None if self.bias is None else self.bias[...])

  def __call__(self, h: jax.Array, labels: Optional[jax.Array] = None, *,
               mask: Optional[jax.Array] = None) -> jax.Array:
    logits, new_hebb = hebbian.dhp_apply(self.dhp_params(), self.hebb[...], h, labels,
                                         mask=mask)
    if labels is not None:
      # dhp_apply returns the trace differentiable (for unrolling); stored, it is data.
      self.hebb[...] = jax.lax.stop_gradient(new_hebb)
    return logits


class MatchedSoftmax(nnx.Module):
  """The capacity-matched plain head (§V): ``z = h·(θ₁ + θ₂) (+ b)``.

  θ₁ is drawn exactly like ``DHPSoftmax``'s θ (the first key of ``rngs``) and θ₂ = 0, so
  at step 0 it computes what DHP with α = 0 computes. ``labels``/``mask`` are ignored.
  """

  def __init__(self, in_features: int, num_classes: int, *, theta_init: str = "author",
               use_bias: bool = False, rngs: nnx.Rngs):
    shape = (in_features, num_classes)
    self.theta1 = nnx.Param(hebbian.theta_initializer(theta_init)(rngs.params(), shape))
    self.theta2 = nnx.Param(jnp.zeros(shape, jnp.float32))
    self.bias = _bias(use_bias, num_classes)

  def __call__(self, h, labels=None, *, mask=None) -> jax.Array:
    del labels, mask  # not plastic
    return _plain_logits(h, self.theta1[...] + self.theta2[...], self.bias)


class Softmax(nnx.Module):
  """A plain linear head ``z = h·θ (+ b)``, θ drawn like ``DHPSoftmax``'s."""

  def __init__(self, in_features: int, num_classes: int, *, theta_init: str = "author",
               use_bias: bool = False, rngs: nnx.Rngs):
    shape = (in_features, num_classes)
    self.theta = nnx.Param(hebbian.theta_initializer(theta_init)(rngs.params(), shape))
    self.bias = _bias(use_bias, num_classes)

  def __call__(self, h, labels=None, *, mask=None) -> jax.Array:
    del labels, mask
    return _plain_logits(h, self.theta[...], self.bias)
