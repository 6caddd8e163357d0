"""Data sets for the continual-learning benchmarks: loading, validation, fetching.

``load(name)`` returns a validated ``Dataset`` from local files or tensorflow-datasets;
``python -m dhp_jax.data.fetch NAME... [--dest DIR]`` fetches registry-shipped copies.
"""
from dhp_jax.data.dataset import Dataset
from dhp_jax.data.loading import SOURCES, DataNotFoundError, load
from dhp_jax.data.local import ENV_VAR, search_path
from dhp_jax.data.registry import (DATASET_NAMES, SPECS, DatasetSpec, fetch_advice,
                                   fetch_command)

__all__ = ["DATASET_NAMES", "DataNotFoundError", "Dataset", "DatasetSpec", "ENV_VAR", "SOURCES",
           "SPECS",
           "fetch_advice", "fetch_command", "load", "search_path"]
