"""DHP Softmax as pure functions over explicit state (paper §IV, Eq. 2–3, Algorithm 1).

State of the plastic output layer, ``m`` hidden units → ``d`` classes:

* ``DHPParams`` — trained by SGD: slow weights ``theta`` (m, d), plasticity
  coefficients ``alpha`` (m, d), Hebbian rate ``eta`` () and an optional ``bias`` (d,).
* ``hebb`` (m, d) — the Hebbian trace. Not a parameter: zero at the start of the first
  task only, carried across batches, epochs and tasks, updated in the training forward
  pass only.

Nothing here holds state: every function takes the state in and returns it.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

THETA_INITS = ("author", "dense")


class DHPParams(NamedTuple):
  """Trainable parameters of a DHP Softmax layer.

  theta: float [m, d] slow weights.
  alpha: float [m, d] plasticity coefficients (α in Eq. 2).
  eta:   float []     Hebbian rate / decay (η in Eq. 3), one learned scalar.
  bias:  float [d] or None (Eq. 2 has none; offered for convenience).
  """
  theta: jax.Array
  alpha: jax.Array
  eta: jax.Array
  bias: Optional[jax.Array] = None


def _check_sizes(in_features, num_classes):
  for name, value in (("in_features", in_features), ("num_classes", num_classes)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def theta_initializer(theta_init: str = "author"):
  """Returns a Flax-style initializer ``(key, (m, d), dtype) -> theta``.

  'author': θ ~ U(−1/√d, 1/√d). The author's PyTorch snippet applies
    ``kaiming_uniform_(a=√5)`` to θ stored as (in, out), so the fan-in it sees is the
    number of classes d; this init is much larger than a dense layer's and, per
    SPEC §1, explains much of DHP's gain over a default-initialised baseline.
  'dense': θ ~ U(−1/√m, 1/√m), PyTorch's ``nn.Linear`` default (fan-in m).
  """
  if theta_init not in THETA_INITS:
    raise ValueError(f"theta_init must be one of {THETA_INITS}, got {theta_init!r}")

  def init(key, shape, dtype=jnp.float32):
    m, d = shape
    fan_in = d if theta_init == "author" else m
    bound = 1.0 / math.sqrt(fan_in)
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def alpha_initializer(alpha_scale: float = 0.01):
  """Returns ``(key, shape, dtype) -> alpha_scale * U(0, 1)`` (author's snippet)."""

  def init(key, shape, dtype=jnp.float32):
    return alpha_scale * jax.random.uniform(key, shape, dtype)

  return init


def dhp_init(key: jax.Array, in_features: int, num_classes: int, *,
             eta_init: float = 1e-3, alpha_scale: float = 0.01,
             theta_init: str = "author", use_bias: bool = False,
             dtype=jnp.float32) -> DHPParams:
  """Initial ``DHPParams`` for an ``in_features`` → ``num_classes`` DHP Softmax.

  theta (m, d) per ``theta_initializer(theta_init)``; alpha (m, d) = alpha_scale·U(0,1);
  eta () = eta_init; bias (d,) zeros when ``use_bias`` else None.
  """
  _check_sizes(in_features, num_classes)
  theta_key, alpha_key = jax.random.split(key)
  shape = (in_features, num_classes)
  return DHPParams(
      theta=theta_initializer(theta_init)(theta_key, shape, dtype),
      alpha=alpha_initializer(alpha_scale)(alpha_key, shape, dtype),
      eta=jnp.asarray(eta_init, dtype),
      bias=jnp.zeros((num_classes,), dtype) if use_bias else None)


def init_hebb(in_features: int, num_classes: int, dtype=jnp.float32) -> jax.Array:
  """The Hebb trace at the start of the first task: zeros [in_features, num_classes]."""
  _check_sizes(in_features, num_classes)
  return jnp.zeros((in_features, num_classes), dtype)


def _valid_entries(labels, mask):
  valid = labels >= 0
  if mask is not None:
    valid = valid & mask.astype(bool)
  return valid


def hebb_update(hebb: jax.Array, h: jax.Array, labels: jax.Array, eta: jax.Array,
                num_classes: int, mask: Optional[jax.Array] = None) -> jax.Array:
  """Algorithm 1, lines 3–9: move each present class's column towards its mean activation.

  For every class c present in ``labels``: h̃_c = mean{h_b : y_b = c} and
  ``hebb[:, c] ← (1 − η)·hebb[:, c] + η·h̃_c`` (Eq. 3); other columns are unchanged.

  Args:
    hebb: float [m, d] trace.
    h: float [B, m] penultimate activations.
    labels: int [B] in [0, d); entries < 0 are ignored (padding).
    eta: float [] Hebbian rate. Deliberately not clipped (SPEC §1: a clip here has zero
      gradient outside [0, 1] and traps η).
    num_classes: d.
    mask: optional bool [B]; False entries are ignored.
  Returns:
    float [m, d] updated trace.
  """
  valid = _valid_entries(labels, mask)
  segment = jnp.where(valid, labels, 0)
  weight = valid.astype(h.dtype)
  # One scatter for the per-class sums and one for the counts: no loop over classes.
  sums = jax.ops.segment_sum(h * weight[:, None], segment, num_segments=num_classes)
  counts = jax.ops.segment_sum(weight, segment, num_segments=num_classes)
  means = sums / jnp.maximum(counts, 1.0)[:, None]            # [d, m]
  present = counts > 0                                        # [d]
  updated = (1.0 - eta) * hebb + eta * means.T
  return jnp.where(present[None, :], updated, hebb)


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_apply_inputs(params: DHPParams, hebb, h, labels, mask):
  m, d = params.theta.shape
  if jnp.ndim(h) != 2:
    raise ValueError(f"h must be 2-D [batch, in_features={m}], got shape {jnp.shape(h)}")
  if h.shape[1] != m:
    raise ValueError(f"h must have shape [batch, {m}] to match theta {params.theta.shape}, "
                     f"got {h.shape}")
  if params.alpha.shape != (m, d):
    raise ValueError(f"params.alpha must have shape {(m, d)}, got {params.alpha.shape}")
  if jnp.shape(params.eta) != ():
    raise ValueError(f"params.eta must be a scalar (shape ()), got {jnp.shape(params.eta)}")
  if jnp.shape(hebb) != (m, d):
    raise ValueError(f"hebb must have shape {(m, d)}, got {jnp.shape(hebb)}")
  batch = h.shape[0]
  if labels is not None:
    if jnp.ndim(labels) != 1 or labels.shape[0] != batch:
      raise ValueError(f"labels must be 1-D of length batch={batch}, got shape "
                       f"{jnp.shape(labels)}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    # NumPy, not jnp: under jit a jnp op on concrete (closed-over) labels is traced.
    if _is_concrete(labels) and labels.size and int(np.asarray(labels).max()) >= d:
      raise ValueError(f"labels must lie in [0, num_classes={d}) (negative = ignored), "
                       f"got max label {int(np.asarray(labels).max())}")
  if mask is not None and (jnp.ndim(mask) != 1 or mask.shape[0] != batch):
    raise ValueError(f"mask must be 1-D of length batch={batch}, got shape {jnp.shape(mask)}")


def dhp_apply(params: DHPParams, hebb: jax.Array, h: jax.Array,
              labels: Optional[jax.Array] = None, *,
              mask: Optional[jax.Array] = None) -> tuple[jax.Array, jax.Array]:
  """DHP Softmax pre-activations (Eq. 2), updating the trace first when labels are given.

  Args:
    params: ``DHPParams`` with theta/alpha [m, d], eta [], bias [d] or None.
    hebb: float [m, d] trace carried from the previous step. Treated as a constant
      (stop-gradient): gradients reach θ, α, η and ``h`` through this step's update only.
    h: float [B, m] penultimate activations.
    labels: int [B] class labels (training) or None (evaluation: trace used, unchanged).
    mask: optional bool [B]; False rows do not update the trace (padded batches).
  Returns:
    ``(logits [B, d], new_hebb [m, d])``. ``new_hebb`` is not stop-gradiented, so it
    stays a differentiable function of η and ``h`` for users who unroll several steps.
  """
  _check_apply_inputs(params, hebb, h, labels, mask)
  hebb = jax.lax.stop_gradient(hebb)
  if labels is not None:
    hebb = hebb_update(hebb, h, labels, params.eta, params.theta.shape[1], mask)
  logits = h @ (params.theta + params.alpha * hebb)
  if params.bias is not None:
    logits = logits + params.bias
  return logits, hebb
