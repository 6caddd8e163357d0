"""Input checks shared by the consolidation modules (run at public boundaries only)."""
from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def check_nonnegative(name: str, value) -> None:
  if is_tracer(value):
    return
  if not (math.isfinite(float(value)) and float(value) >= 0):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_positive(name: str, value) -> None:
  if not is_tracer(value) and not (math.isfinite(float(value)) and float(value) > 0):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_like(name: str, tree: PyTree, reference: PyTree, reference_name: str = "params"):
  """Raises ValueError unless ``tree`` has the structure and leaf shapes of ``reference``."""
  structure, expected = jax.tree.structure(tree), jax.tree.structure(reference)
  if structure != expected:
    raise ValueError(f"{name} must have the same pytree structure as {reference_name}; "
                     f"expected {expected}, got {structure}")
  for (path, leaf), ref in zip(jax.tree_util.tree_leaves_with_path(tree),
                               jax.tree.leaves(reference)):
    if jnp.shape(leaf) != jnp.shape(ref):
      raise ValueError(f"{name}{jax.tree_util.keystr(path)} must have shape "
                       f"{jnp.shape(ref)} like {reference_name}, got {jnp.shape(leaf)}")

