"""Glue between NNX modules and the pure consolidation code (``dhp_jax.consolidation``).

  ``split_apply(model)``        ``(params, apply_fn)`` for the importance estimators.
  ``update_opt_state(optimizer, fn, ...)``  applies e.g. ``consolidation.set_penalty``
                                to the optax state inside an ``nnx.Optimizer``, in place.
  ``ensemble(make_model, keys)`` N independently initialised models stacked by
                                ``nnx.vmap`` (one leading axis on every Variable).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def split_apply(model: nnx.Module) -> tuple[nnx.State, Callable]:
  """``(params, apply_fn)`` for ``consolidation.fisher_diagonal`` / ``mas_importance``.

  params: ``nnx.State`` of plain arrays, the model's ``nnx.Param``s (the structure that
    ``nnx.Optimizer`` hands to optax, so the estimates go straight into ``set_penalty``).
  apply_fn: ``(params, x [B, ...]) -> logits [B, C]``, an evaluation forward pass (no
    labels: the trace is read, never written) of a fresh copy, so ``model`` is untouched.
    Restrict it to a task's outputs with ``dhp_jax.ops.restrict_logits`` if needed.
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
