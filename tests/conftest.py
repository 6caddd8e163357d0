"""Shared fixtures. Data fixtures load real data once per session (see dhp_jax.data)."""
import os
import tempfile

import jax
import pytest

from dhp_jax import data

# Many tests build the same programs (same model, new closures); XLA's persistent cache
# compiles each once per session instead of once per test.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("DHP_TEST_JAX_CACHE",
                                 os.path.join(tempfile.gettempdir(), "dhp_jax_test_xla_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(scope="session")
def mnist():
  """dhp_jax.data.load('mnist'): fetched by `make` into $DHP_DATA_DIR before tests run."""
  return data.load("mnist")


def pytest_collection_modifyitems(config, items):
  """Skips the ``gpu``-marked tests when JAX sees no GPU."""
  del config
  if jax.default_backend() == "gpu":
    return
  skip = pytest.mark.skip(reason="needs a GPU (make gpu-check on a GPU machine)")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)
