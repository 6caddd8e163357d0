"""The quadratic penalty on the slow weights (paper Eq. 1/4) as an optax transformation.

``L̃ = Lⁿ + λ Σ_k Ω_k (θ_k − θ*_k)²`` over the slow weights only — never the DHP
plasticity coefficients α, the Hebbian rate η or the Hebb trace (not a parameter at all).
The penalty acts on gradients, so it adds ``2·λ·Ω·(θ − θ*)`` (factor 2, no ½).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional

import jax
import optax

from dhp_jax.consolidation._checks import PyTree, check_like, check_nonnegative
from dhp_jax.hebbian import DHPParams

PLASTIC_FIELDS = ("alpha", "eta")   # the DHP head's non-slow parameters


def _key_name(key) -> Any:
  return getattr(key, "key", getattr(key, "name", getattr(key, "idx", None)))


def _is_dhp_node(node) -> bool:
  """A DHP head's parameters: ``DHPParams`` or a Flax ``DHPSoftmax`` params dict."""
  return isinstance(node, DHPParams) or (
      isinstance(node, Mapping) and "theta" in node and "alpha" in node)


def dhp_field_mask(params: PyTree, in_head: Callable[[str], bool],
                   elsewhere: bool) -> PyTree:
  """A pytree of Python bools like ``params``: ``in_head(name)`` for each entry of a DHP
  head (a ``DHPParams``, or a dict holding both ``theta`` and ``alpha``), wherever it
  sits; ``elsewhere`` for every other leaf."""
  def mask_node(path, node):
    del path
    if not _is_dhp_node(node):
      return elsewhere
    return jax.tree_util.tree_map_with_path(lambda sub, _: in_head(_key_name(sub[0])), node)

  return jax.tree_util.tree_map_with_path(mask_node, params, is_leaf=_is_dhp_node)


def slow_weights_mask(params: PyTree) -> PyTree:
  """True for every slow weight, False for the DHP plastic parameters α and η.

  Args:
    params: any parameter pytree (Flax params dict, ``DHPParams``, nested mixes).
  Returns:
    A pytree of Python bools with the structure of ``params``: False exactly for the
    ``alpha``/``eta`` entries of a ``DHPParams`` or of a dict holding both ``theta`` and
    ``alpha`` (a ``DHPSoftmax`` params dict), wherever it sits; True for everything else
    (kernels, biases, θ, θ₁, θ₂). The Hebb trace is not a parameter and never appears.
  """
  return dhp_field_mask(params, lambda name: name not in PLASTIC_FIELDS, True)


# ----------------------------------------------------------------------------- penalty

class QuadraticPenaltyState(NamedTuple):
  """Ω and θ* of the quadratic penalty; both have the structure of the params."""
  importance: PyTree   # Ω ≥ 0
  anchor: PyTree       # θ*


def quadratic_penalty(strength: float, mask: Optional[Callable[[PyTree], PyTree]] = None
                      ) -> optax.GradientTransformation:
  """Adds ``2·λ·Ω·(θ − θ*)`` to the gradient of every slow weight (paper Eq. 1/4).

  That is the gradient of ``λ Σ_k Ω_k (θ_k − θ*_k)²`` (no ½). α and η (see
  ``slow_weights_mask``, decided from the params' structure at update time) pass through
  untouched; ``mask(params)`` (a pytree of bools like the params) chooses other leaves.
  The state starts at Ω = 0, θ* = 0 (no penalty); set both between tasks with
  ``set_penalty``, which checks them against the params once (the update trusts its
  state: no checks in the jitted hot path). Use as
  ``optax.chain(quadratic_penalty(λ), optax.sgd(lr))``.

  Args:
    strength: λ ≥ 0 (a traced value is accepted, e.g. under ``optax.inject_hyperparams``).
  """
  check_nonnegative("strength", strength)
  mask = slow_weights_mask if mask is None else mask

  def init_fn(params):
    return QuadraticPenaltyState(importance=optax.tree_utils.tree_zeros_like(params),
                                 anchor=optax.tree_utils.tree_zeros_like(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("params must be passed to the update of quadratic_penalty "
                       "(optimizer.update(grads, opt_state, params)), got None")
    def add_penalty(slow, g, omega, anchor, theta):
      if not slow:
        return g
      return g + (2 * strength * omega * (theta - anchor)).astype(g.dtype)

    updates = jax.tree.map(add_penalty, mask(params), updates,
                           state.importance, state.anchor, params)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def _field_of(tuple_name: str):
  """tree_get/tree_set filter: only the fields of our own NamedTuple state."""
  def keep(path, value):
    del value
    return bool(path) and isinstance(path[-1], optax.tree_utils.NamedTupleKey) and (
        path[-1].tuple_name == tuple_name)
  return keep


def _find_state(opt_state, cls, builder: str):
  try:
    found = optax.tree_utils.tree_get(opt_state, cls.__name__)
  except KeyError as error:
    raise ValueError(f"opt_state holds more than one {cls.__name__}") from error
  if not isinstance(found, cls):
    raise ValueError(f"opt_state holds no {cls.__name__}: build the optimizer with "
                     f"{builder}")
  return found


def get_penalty(opt_state) -> QuadraticPenaltyState:
  """The ``QuadraticPenaltyState`` inside a (chained, wrapped, nested) optimizer state."""
  return _find_state(opt_state, QuadraticPenaltyState, "quadratic_penalty(...)")


def set_penalty(opt_state, *, importance: Optional[PyTree] = None,
                anchor: Optional[PyTree] = None):
  """Returns ``opt_state`` with the penalty's Ω and/or θ* replaced (others unchanged).

  Built on ``optax.tree_utils.tree_set``, restricted to the fields of
  ``QuadraticPenaltyState`` so a params entry that happens to be named ``anchor`` is safe.
  Jit-able; works inside ``optax.chain``, ``track_path_integral`` and other wrappers.
  """
  current = get_penalty(opt_state)
  values = {}
  for name, value in (("importance", importance), ("anchor", anchor)):
    if value is not None:
      check_like(name, value, getattr(current, name), "the penalty state (the params)")
      values[name] = value
  if not values:
    return opt_state
  return optax.tree_utils.tree_set(opt_state, _field_of(QuadraticPenaltyState.__name__),
                                   **values)


def largest_importance(opt_state, params: PyTree) -> dict:
  """{slow-weight path: largest Ω} of the penalty in ``opt_state`` (one seed).

  Plain SGD on λΩ(θ − θ*)² multiplies the offset by (1 − 2·lr·λ·Ω) per step, so
  lr·λ·(largest Ω) > 1 on a layer means the penalty alone diverges there.
  """
  importance = get_penalty(opt_state).importance
  leaves = jax.tree_util.tree_leaves_with_path(importance)
  return {jax.tree_util.keystr(path): leaf.max()
          for (path, leaf), slow in zip(leaves, jax.tree.leaves(slow_weights_mask(params)))
          if slow}
