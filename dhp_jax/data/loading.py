"""``load``: one data set from local files or tensorflow-datasets, validated."""
from __future__ import annotations

from dhp_jax.data import local, tfds_source
from dhp_jax.data.dataset import Dataset
from dhp_jax.data.registry import DATASET_NAMES, IDX_FILES, SPECS, fetch_advice

SOURCES = ("auto", "files", "tfds")


class DataNotFoundError(FileNotFoundError):
  """A data set is in none of the data dirs searched (and TFDS cannot supply it).
  ``advice = 'data'``: a binary adds how to point it at the data (its flag)."""
  advice = "data"


def load(name: str, data_dir: local.DataDir = None, source: str = "auto") -> Dataset:
  """Loads data set `name` with both splits: uint8 [N, H, W, C] images, int32 [N] labels.

  name: 'mnist', 'fashion_mnist', 'not_mnist', 'svhn_cropped' or 'cifar10'.
  data_dir: a dir, an os.pathsep-separated string or a list of dirs to search; default
    ``$DHP_DATA_DIR``, else ~/.cache/dhp_jax.
  source: 'files' — raw files in the data dirs (IDX, CIFAR batches/JPEG tree, SVHN .mat);
    'tfds' — tensorflow-datasets: a prepared copy in the data dirs or TFDS's default dir,
    else downloaded; 'auto' — files if present, else TFDS if it has the data or can reach
    the download host, else FileNotFoundError naming the fetch command.

  Sizes and class counts are checked against the known ones, and raw files against
  known sha256 sums: a wrong, truncated or corrupt copy raises ValueError naming the file
  and the fix.
  """
  if name not in SPECS:
    raise ValueError(f"name must be one of {DATASET_NAMES}, got {name!r}")
  if source not in SOURCES:
    raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
  dirs = local.search_path(data_dir)
  if source == "tfds":
    return tfds_source.load(name, dirs)
  copy = local.find(name, dirs)
  if copy is not None:
    return local.read(copy, cache_dirs=dirs)
  if source == "files":
    raise _missing(name, dirs)
  spec = SPECS[name]
  if spec.tfds_name is None:
    raise _missing(name, dirs, "it has no tensorflow-datasets builder")
  if not tfds_source.installed():
    raise _missing(name, dirs, f"tensorflow-datasets is not installed ({tfds_source.INSTALL_HINT})")
  if not (tfds_source.candidate_dirs(name, dirs)
          or tfds_source.host_reachable(spec.tfds_host)):
    raise _missing(name, dirs, f"TFDS has no prepared copy and cannot reach "
                   f"{spec.tfds_host} to download one")
  try:
    return tfds_source.load(name, dirs)
  except (OSError, ImportError) as e:  # network failures are OSErrors (requests too)
    raise _missing(name, dirs, f"TFDS failed: {e}") from e


def _missing(name: str, dirs, reason: str = "") -> DataNotFoundError:
  folder = SPECS[name].folders[0]
  expected = {
      "svhn_cropped": f"{folder}/train_32x32.mat and test_32x32.mat",
      "cifar10": f"{folder}/ (python batches, train|test/<class>/*.jpg, or an archive of "
                 "either)",
  }.get(name, f"{folder}/{IDX_FILES['test'][0]}[.gz] and the other IDX files")
  looked = ", ".join(str(d) for d in dirs)
  why = f"; {reason}" if reason else ""
  return DataNotFoundError(
      f"{name}: not found: looked for {expected} in {looked}{why}. "
      f"Fix: {fetch_advice(name, dirs[0])}")
