"""Flax NNX heads and models: thin wrappers; the DHP computation lives in ``hebbian``.

The same networks as ``layers`` and ``models`` (linen), with the same initialisers and
the same parameter paths (``dense_0/kernel``, ``head/theta``, ...), so a linen params
dict and an NNX ``nnx.state(model, nnx.Param)`` hold the same arrays under the same keys.
Heads ``DHPSoftmax``, ``MatchedSoftmax``, ``Softmax`` (by name: ``make_head``, names from
``models.HEADS``); networks ``MLP``, ``CNN``.

Variables:
  ``nnx.Param``  every trained weight: θ, α, η, biases, kernels.
  ``HebbTrace``  the DHP Hebb trace (m, d). Its own ``nnx.Variable`` type, never a
                 Param: ``nnx.Optimizer(..., wrt=nnx.Param)``, ``nnx.grad`` and the
                 consolidation penalties never see it; ``nnx.state(model, HebbTrace)``
                 saves and restores it.

Glue for the pure consolidation code (``dhp_jax.consolidation``):
  ``split_apply(model)``        ``(params, apply_fn)`` for the importance estimators.
  ``update_opt_state(optimizer, fn, ...)``  applies e.g. ``consolidation.set_penalty``
                                to the optax state inside an ``nnx.Optimizer``, in place.
  ``ensemble(make_model, keys)`` N independently initialised models stacked by
                                ``nnx.vmap`` (one leading axis on every Variable).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dhp_jax import hebbian, layers, models, ops


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


# Each linen head's NNX twin. ``models.make_head`` owns the head names and decides which
# hyperparameters each head takes; the twin is built from the linen head's fields.
_TWINS = {layers.DHPSoftmax: DHPSoftmax, layers.MatchedSoftmax: MatchedSoftmax,
          layers.Softmax: Softmax}


def make_head(head: str, in_features: int, num_classes: int, *, eta_init: float = 1e-3,
              alpha_scale: float = 0.01, theta_init: str = "author",
              use_bias: bool = False, rngs: nnx.Rngs) -> nnx.Module:
  """The NNX head named ``head`` (one of ``models.HEADS``), in_features → num_classes."""
  spec = models.make_head(head, num_classes, eta_init=eta_init, alpha_scale=alpha_scale,
                          theta_init=theta_init, use_bias=use_bias)
  fields = {field.name: getattr(spec, field.name) for field in dataclasses.fields(spec)
            if field.name not in ("parent", "name")}
  return _TWINS[type(spec)](in_features, **fields, rngs=rngs)


def _dense(in_features: int, out_features: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(in_features, out_features, kernel_init=models.torch_kernel_init,
                    rngs=rngs)


class MLP(nnx.Module):
  """``models.MLP`` in NNX: LeakyReLU hidden layers ``dense_i``, then ``head``.

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
  """``models.CNN`` in NNX: conv5×5·20 → LeakyReLU(0.3) → maxpool 2 → conv5×5·50 →
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
          channels, out, (5, 5), padding="VALID", kernel_init=models.torch_kernel_init,
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
      h = nnx.max_pool(h, (2, 2), strides=(2, 2))
    h = jax.nn.leaky_relu(self.dense(h.reshape((h.shape[0], -1))), self.negative_slope)
    return self.head(h, labels, mask=mask)


# ------------------------------------------------------------------ consolidation glue

def split_apply(model: nnx.Module) -> tuple[nnx.State, Callable]:
  """``(params, apply_fn)`` for ``consolidation.fisher_diagonal`` / ``mas_importance``.

  params: ``nnx.State`` of plain arrays, the model's ``nnx.Param``s (the structure that
    ``nnx.Optimizer`` hands to optax, so the estimates go straight into ``set_penalty``).
  apply_fn: ``(params, x [B, ...]) -> logits [B, C]``, an evaluation forward pass (no
    labels: the trace is read, never written) of a fresh copy, so ``model`` is untouched.
    Restrict it to a task's outputs with ``models.restrict_logits`` if needed.
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def apply_fn(params, x):
    return nnx.merge(graphdef, params, rest)(x)

  return nnx.as_pure(params), apply_fn


def update_opt_state(optimizer: nnx.Optimizer, fn: Callable, *args, **kwargs) -> None:
  """In place: ``optimizer.opt_state ← fn(opt_state, *args, **kwargs)`` on plain arrays.

  ``nnx.Optimizer`` wraps every array of the optax state in an ``OptState`` variable,
  while optax (and ``consolidation.set_penalty``/``reset_omega``) work on the plain state
  that ``tx.init`` built. This unwraps the state and the arguments (``nnx.state(model,
  nnx.Param)`` is accepted as is), applies ``fn`` and writes the result back into the
  same variables, so it also works inside ``nnx.jit``. E.g.
  ``update_opt_state(optimizer, consolidation.set_penalty, importance=Ω, anchor=θ*)``.
  Read the state with ``consolidation.get_penalty(nnx.as_pure(optimizer.opt_state))``.
  """
  new = fn(nnx.as_pure(optimizer.opt_state), *nnx.as_pure(args), **nnx.as_pure(kwargs))
  nnx.update(optimizer.opt_state, nnx.state(new))


def ensemble(make_model: Callable[[nnx.Rngs], nnx.Module], keys: jax.Array) -> nnx.Module:
  """``make_model(nnx.Rngs(key))`` for every key, stacked by ``nnx.vmap``.

  Args:
    make_model: builds one model from its ``nnx.Rngs``.
    keys: PRNG key array [N] (e.g. ``jax.random.split(key, N)``, or
      ``jax.vmap(jax.random.key)(seeds)`` for seed s → ``key(s)``).
  Returns:
    One model whose Variables (Params and the Hebb trace) have a leading axis [N];
    member i equals ``make_model(nnx.Rngs(keys[i]))``. Train it with a step wrapped in
    ``nnx.vmap`` (and ``nnx.jit``), e.g. an ``nnx.Optimizer`` made under ``nnx.vmap`` too.
  """
  if not (isinstance(keys, jax.Array) and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
          and keys.ndim == 1):
    raise ValueError(f"keys must be a 1-D PRNG key array [N] (jax.random.split(key, N)), "
                     f"got {getattr(keys, 'dtype', type(keys))} "
                     f"of shape {jnp.shape(keys)}")
  return nnx.vmap(lambda key: make_model(nnx.Rngs(key)))(keys)
