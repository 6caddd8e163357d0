"""Constraints on the DHP plastic parameters α and η as optax transformations.

``freeze(field)``                the field's updates are zero, so it keeps its value (the
                                 α-frozen control: α held at 0, SPEC §1).
``project(field, low, high)``    the update is cut so that ``θ + u`` is
                                 ``clip(θ + u, low, high)``: the stored value is projected
                                 after each step (η into [0, 1], SPEC §1 option), in the
                                 style of ``optax.keep_params_nonnegative``.

Both act only on the ``field`` leaves of DHP heads (``plastic_mask``) and belong at the end
of a method's chain, after SGD, so they constrain the update actually applied. For
[low, high] = [0, 1] the cut update lands exactly on the bound (``p + (1 − p) == 1`` and
``p + (−p) == 0`` in floating point for p in [0, 1]), as a clip after the step does.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from dhp_jax.consolidation._checks import PyTree
from dhp_jax.consolidation.penalty import PLASTIC_FIELDS, dhp_field_mask


def _check_field(field: str) -> None:
  if field not in PLASTIC_FIELDS:
    raise ValueError(f"field must be one of {PLASTIC_FIELDS}, got {field!r}")


def plastic_mask(params: PyTree, field: str) -> PyTree:
  """A pytree of bools like ``params``: True exactly on the DHP heads' ``field`` leaves
  (``'alpha'`` or ``'eta'``), wherever a head sits."""
  _check_field(field)
  return dhp_field_mask(params, lambda name: name == field, False)


def freeze(field: str) -> optax.GradientTransformation:
  """Zero updates for the DHP heads' ``field`` leaves (``optax.masked(set_to_zero)``)."""
  _check_field(field)   # now, not at the first update
  return optax.masked(optax.set_to_zero(), lambda tree: plastic_mask(tree, field))


def project(field: str, low: float, high: float) -> optax.GradientTransformation:
  """Cuts the updates of the DHP heads' ``field`` leaves so the stored value stays in
  ``[low, high]`` after ``optax.apply_updates``. Needs ``params`` in ``update``."""
  _check_field(field)
  if not low < high:
    raise ValueError(f"low must be < high, got low={low!r}, high={high!r}")

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError(f"params must be passed to the update of project({field!r}, ...) "
                       "(optimizer.update(grads, opt_state, params)), got None")

    def cut(inside, u, p):
      if not inside:
        return u
      moved = p + u
      return jnp.where(moved < low, low - p, jnp.where(moved > high, high - p, u))

    return jax.tree.map(cut, plastic_mask(params, field), updates, params), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)
