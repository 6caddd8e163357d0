"""Synaptic Intelligence (Zenke et al. 2017): the path integral ω as an optax wrapper,
and the per-task importance it gives."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dhp_jax.consolidation._checks import PyTree, check_like, check_positive
from dhp_jax.consolidation.penalty import _field_of, _find_state


class PathIntegralState(NamedTuple):
  """SI's running path integral ω (structure of the params) and the wrapped state."""
  omega: PyTree
  inner_state: Any


def track_path_integral(inner: optax.GradientTransformation
                        ) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` and accumulates ``ω += −g ⊙ u`` at every step (Zenke et al. 2017).

  g is the gradient entering the wrapper and u the update ``inner`` returns (the applied
  parameter change Δθ with ``optax.apply_updates``). Put the penalty inside ``inner`` so g
  is the *unregularised* task-loss gradient, as in the original pathint code:
  ``track_path_integral(optax.chain(quadratic_penalty(λ), optax.sgd(lr)))``.
  ω is tracked for every leaf; the penalty alone decides which leaves are penalised.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return PathIntegralState(omega=optax.tree_utils.tree_zeros_like(params),
                             inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    new_updates, inner_state = inner.update(updates, state.inner_state, params,
                                            **extra_args)
    omega = jax.tree.map(lambda w, g, u: w - g * u, state.omega, updates, new_updates)
    return new_updates, PathIntegralState(omega=omega, inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_omega(opt_state) -> PyTree:
  """SI's ω inside a (wrapped) optimizer state built with ``track_path_integral``."""
  return _find_state(opt_state, PathIntegralState, "track_path_integral(...)").omega


def reset_omega(opt_state):
  """Returns ``opt_state`` with ω set to zero (start of a task)."""
  omega = get_omega(opt_state)
  return optax.tree_utils.tree_set(opt_state, _field_of(PathIntegralState.__name__),
                                   omega=optax.tree_utils.tree_zeros_like(omega))


def si_importance(omega: PyTree, params: PyTree, anchor: PyTree, xi: float) -> PyTree:
  """SI's per-task importance ``ω / ((θ − θ*)² + ξ)`` (Zenke et al. 2017, Eq. 5).

  Args:
    omega: the task's path integral (``get_omega``), structure of ``params``.
    params: θ at the end of the task.
    anchor: θ at the start of the task.
    xi: damping ξ > 0.
  """
  check_positive("xi", xi)
  check_like("omega", omega, params)
  check_like("anchor", anchor, params)
  return jax.tree.map(lambda w, theta, start: w / ((theta - start) ** 2 + xi),
                      omega, params, anchor)


def si_accumulate(importance: PyTree, omega: PyTree, params: PyTree, anchor: PyTree,
                  xi: float) -> tuple[PyTree, PyTree]:
  """SI at a task boundary: ``(max(Ω + si_importance(...), 0), params)``.

  Ω is summed over tasks; the clip at 0 follows the original pathint code (a negative Ω
  would push θ away from θ*). Reset ω afterwards (``reset_omega``).
  """
  check_like("importance", importance, params)
  new = si_importance(omega, params, anchor, xi)
  return jax.tree.map(lambda old, add: jnp.maximum(old + add, 0), importance, new), params

