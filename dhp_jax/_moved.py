"""Old module paths kept working: each public name forwards to its new home, with a
``DeprecationWarning`` naming it. Private: the shims ``layers`` and ``models`` use it."""
from __future__ import annotations

import importlib
import warnings
from typing import Callable, Mapping


def forwarder(old: str, homes: Mapping[str, str]) -> Callable[[str], object]:
  """A module ``__getattr__`` for the module ``old`` whose names moved.

  homes: public name → the module that now defines (or exports) it. Any other name
    raises ``AttributeError``, as a missing module attribute does.
  """

  def __getattr__(name: str):
    if name not in homes:
      raise AttributeError(f"module {old!r} has no attribute {name!r}")
    # stacklevel=2: the warning points at the line that used the old path.
    warnings.warn(f"{old}.{name} is now {homes[name]}.{name}", DeprecationWarning,
                  stacklevel=2)
    return getattr(importlib.import_module(homes[name]), name)

  return __getattr__
