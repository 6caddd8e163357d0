"""The output heads both front ends offer (``dhp_jax.linen``, ``dhp_jax.nnx``), by name.

Each front end's ``heads`` module defines a class of the same name for every head, so the
vocabulary is spelled out once, here: ``config`` validates ``Config.head`` against
``HEADS`` and each front end's ``make_head`` reads its class through ``head_modules``.
What hyperparameters a head takes is its class's own signature.
"""
from __future__ import annotations

from types import ModuleType

# Head name → class name in each front end's heads module ('matched' = the paper's
# capacity-matched baseline, §V).
HEAD_CLASSES = {"dhp": "DHPSoftmax", "softmax": "Softmax", "matched": "MatchedSoftmax"}
HEADS = tuple(HEAD_CLASSES)


def head_modules(heads: ModuleType) -> dict[str, type]:
  """``{head name: class}`` of one front end, read from its ``heads`` module."""
  return {head: getattr(heads, name) for head, name in HEAD_CLASSES.items()}


def check_head(head: str) -> None:
  """Raises ``ValueError`` unless ``head`` is one of ``HEADS``."""
  if head not in HEAD_CLASSES:
    raise ValueError(f"head must be one of {HEADS}, got {head!r}")
