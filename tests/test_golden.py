"""Refactors keep the numbers: small fixed configs give the results.json numbers the
engine wrote before the v2 refactor (``tests/golden/``, written by make_golden.py)."""
import json
import os

import numpy as np
import pytest

from dhp_jax import engine
from tests.golden.make_golden import GOLDEN_CONFIGS, HERE, golden_config

# What a refactor must not change: every number of the payload. Wall time, devices and
# the keys added since (e.g. penalty_stability) are not numbers of the old engine.
_COMPARED = ("config", "completed_tasks", "num_tasks", "task_names", "per_seed", "mean",
             "sem", "trace")


@pytest.mark.parametrize("name", sorted(GOLDEN_CONFIGS))
def test_same_config_gives_the_recorded_numbers(name, tmp_path, mnist):
  with open(os.path.join(HERE, f"{name}.json")) as f:
    golden = json.load(f)
  results = json.loads(json.dumps(engine.train_and_evaluate(
      golden_config(name), str(tmp_path), progress=False)))
  for key in _COMPARED:
    assert results[key] == golden[key], key
