"""Refactors keep the numbers: small fixed configs give the results.json numbers the
engine wrote before the v2 refactor (``tests/golden/``, written by make_golden.py)."""
import json
import os

import numpy as np
import pytest

from dhp_jax import engine
from tests.golden.make_golden import GOLDEN_CONFIGS, HERE, golden_config, machine

# What a refactor must not change: every number of the payload. Wall time, devices and
# the keys added since (e.g. penalty_stability) are not numbers of the old engine.
_COMPARED = ("config", "completed_tasks", "num_tasks", "task_names", "per_seed", "mean",
             "sem", "trace")


with open(os.path.join(HERE, "MACHINE.json")) as f:
  _SAME_MACHINE = json.load(f) == machine()


def _numbers(tree, path=""):
  """(path, value) of every number in a JSON tree."""
  if isinstance(tree, dict):
    return [x for k in sorted(tree) for x in _numbers(tree[k], f"{path}/{k}")]
  if isinstance(tree, list):
    return [x for i, v in enumerate(tree) for x in _numbers(v, f"{path}[{i}]")]
  return [(path, tree)]


@pytest.mark.parametrize("name", sorted(GOLDEN_CONFIGS))
def test_same_config_gives_the_recorded_numbers(name, tmp_path, mnist):
  with open(os.path.join(HERE, f"{name}.json")) as f:
    golden = json.load(f)
  results = json.loads(json.dumps(engine.train_and_evaluate(
      golden_config(name), str(tmp_path), progress=False)))
  for key in _COMPARED:
    if _SAME_MACHINE:   # the machine that wrote the files: exactly the same numbers
      assert results[key] == golden[key], key
      continue
    # Elsewhere XLA may round differently (other kernels); a refactor that changes the
    # computation moves these by far more (a key, an order, a formula).
    got, want = _numbers(results[key]), _numbers(golden[key])
    assert [p for p, _ in got] == [p for p, _ in want], key
    for (path, a), (_, b) in zip(got, want):
      if isinstance(b, (int, float)) and not isinstance(b, bool):
        # Accuracies (and what is made of them) move by whole predictions: a few in 1e3.
        counted = key in ("per_seed", "mean", "sem") and "trace" not in path
        assert a == pytest.approx(b, rel=2e-2, abs=5e-3 if counted else 1e-7), \
            f"{key}{path}"
      else:
        assert a == b, f"{key}{path}"
