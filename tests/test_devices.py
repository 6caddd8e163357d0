"""Seeds on several devices give the numbers of the same seeds on one device.

XLA's host-platform device count must be set before jax starts, hence a subprocess with
``--xla_force_host_platform_device_count=4``. Its one-device reference runs in that same
process (``num_devices=1``): XLA:CPU's results depend on the threads a device gets,
which the device count changes (BUILD_NOTES, "Several devices").
"""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from dhp_jax import seeds

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# MAS: training, a consolidation over task data and the penalty, on 2 small tasks.
_RUNS = r"""
import json, sys
import jax
from dhp_jax import config as config_lib, engine
assert jax.device_count() == 4
root = sys.argv[1]

def run(name, num_seeds, num_devices=None, **kwargs):
  config = config_lib.make_config("permuted_mnist", "quick", "mas", num_tasks=2,
                                  train_subset=256, lr=0.1, importance_samples=128,
                                  num_seeds=num_seeds)
  return engine.train_and_evaluate(config, f"{root}/{name}", progress=False,
                                   num_devices=num_devices, log=lambda _: None, **kwargs)

out = {"one4": run("one4", 4, 1), "one3": run("one3", 3, 1)}
run("four4", 4, stop_after_task=1)        # killed after task 1 on 4 devices ...
out["four4"] = run("four4", 4, resume=True)   # ... resumed on 4
run("pad3", 3, 2, stop_after_task=1)      # 2 devices x 2 slots, one padded: killed ...
out["pad3"] = run("pad3", 3, 1, resume=True)  # ... resumed on one device
print(json.dumps(out))
"""
# What one device and several must agree on: every number of the payload.
_COMPARED = ("per_seed", "mean", "sem", "trace", "completed_tasks")


@pytest.fixture(scope="module")
def runs(mnist):
  del mnist   # the data must be there; the subprocess loads it itself
  cache = os.environ.get("DHP_TEST_JAX_CACHE",
                         os.path.join(tempfile.gettempdir(), "dhp_jax_test_xla_cache"))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=REPO, JAX_COMPILATION_CACHE_DIR=cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  with tempfile.TemporaryDirectory() as root:
    done = subprocess.run([sys.executable, "-c", _RUNS, root], env=env, cwd=REPO,
                          check=True, capture_output=True, text=True)
  return json.loads(done.stdout.strip().splitlines()[-1])


def test_four_seeds_on_four_devices_killed_and_resumed_equal_one_device(runs):
  one, four = runs["one4"], runs["four4"]
  assert len(one["devices"]) == 1 and len(four["devices"]) == 4
  for key in _COMPARED:
    assert four[key] == one[key], key


def test_padded_seeds_resumed_on_one_device_equal_one_device(runs):
  one, padded = runs["one3"], runs["pad3"]
  assert [e["seed"] for e in padded["per_seed"]] == [0, 1, 2]
  for key in _COMPARED:
    assert padded[key] == one[key], key


@pytest.mark.parametrize("num_seeds, num_devices, expected", [
    (4, 4, (4, 1)), (8, 4, (4, 2)), (6, 4, (3, 2)), (5, 4, (3, 2)), (7, 4, (4, 2)),
    (10, 4, (4, 3)), (9, 4, (3, 3)), (1, 4, (1, 1)), (2, 4, (2, 1)), (3, 1, (1, 3)),
])
def test_devices_for_uses_the_fewest_seeds_per_device(num_seeds, num_devices, expected):
  used, per_device = seeds.devices_for(num_seeds, num_devices)
  assert (used, per_device) == expected
  # As few per device as N devices allow, no device holding only padding.
  assert per_device == -(-num_seeds // num_devices) and used <= num_devices
  assert used * per_device - num_seeds < per_device


def test_layout_pads_with_the_last_seed_and_unpads():
  layout = seeds.SeedLayout(num_seeds=3, slots=4, sharding=None, devices=())
  padded = layout.pad({"x": np.arange(6).reshape(3, 2)})
  np.testing.assert_array_equal(padded["x"], [[0, 1], [2, 3], [4, 5], [4, 5]])
  np.testing.assert_array_equal(layout.unpad(padded)["x"], np.arange(6).reshape(3, 2))
  with pytest.raises(ValueError, match="num_devices"):
    seeds.run_devices(0)


def test_binaries_ask_xla_for_deterministic_gpu_ops(monkeypatch):
  from experiments import cli

  monkeypatch.delenv("XLA_FLAGS", raising=False)
  cli.set_gpu_determinism(False)
  assert "XLA_FLAGS" not in os.environ
  monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=x")
  cli.set_gpu_determinism(True)
  assert os.environ["XLA_FLAGS"] == "--xla_dump_to=x " + cli.GPU_DETERMINISM
  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")   # the user's choice
  cli.set_gpu_determinism(True)
  assert os.environ["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=false"


@pytest.mark.gpu
def test_same_seed_gives_the_same_numbers_on_gpu(tmp_path, mnist):
  # Needs XLA_FLAGS=--xla_gpu_deterministic_ops=true before jax starts (make gpu-check).
  from dhp_jax import config as config_lib, engine

  config = config_lib.make_config("permuted_mnist", "quick", "mas", num_tasks=2,
                                  train_subset=2048, importance_samples=256, num_seeds=4)
  first, second = (engine.train_and_evaluate(config, str(tmp_path / name), progress=False,
                                             num_devices=1) for name in ("a", "b"))
  for key in ("per_seed", "trace"):
    assert first[key] == second[key], key

