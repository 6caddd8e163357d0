"""tensorflow-datasets glue: read prepared TFDS data, download it, or build it offline.

TFDS is what users with internet get (``load(..., source='tfds')`` downloads and prepares
into TFDS's own data dir). A data dir on our search path may also be a TFDS data dir: TFDS
keeps ``<dir>/<name>/<version>/`` beside our raw ``<dir>/<name>/*-ubyte`` files without
clashing, so ``fetch cifar10 --dest D`` prepares into D and ``load`` finds it there.

Offline, ``prepare_from_files`` builds TFDS's own ``mnist`` / ``fashion_mnist`` from the
registry-shipped IDX files: a subclass of TFDS's builder whose download manager hands
back local files instead of fetching URLs. TFDS's split generators, features and record
format are used unchanged, so the result is the very dataset ``tfds.load('mnist')``
reads. (Pre-seeding TFDS's download dir instead would need byte-identical upstream .gz
files, which no registry ships: the npm files are uncompressed and Debian recompressed
its gzips.)
"""
from __future__ import annotations

import importlib.util
import os
import posixpath
import socket
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from dhp_jax.data import local
from dhp_jax.data.dataset import Dataset, check_split
from dhp_jax.data.registry import SPECS

INSTALL_HINT = "pip install 'dhp_jax[tfds]' (tensorflow-datasets and tensorflow-cpu)"


def installed() -> bool:
  """Whether tensorflow-datasets and tensorflow can be imported (without importing them)."""
  return all(importlib.util.find_spec(m) is not None
             for m in ("tensorflow_datasets", "tensorflow"))


def import_tfds():
  """Imports tensorflow_datasets, or ImportError naming the install command."""
  # TensorFlow's C++ start-up chatter (CUDA probing on CPU machines) is noise here.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    import tensorflow  # noqa: F401  tfds.load needs it, and fails obscurely without it
    import tensorflow_datasets as tfds
  except ImportError as e:
    raise ImportError(f"source='tfds' needs tensorflow-datasets and tensorflow: "
                      f"{INSTALL_HINT} ({e})") from e
  return tfds


def default_data_dir() -> Path:
  """TFDS's own default data dir (``$TFDS_DATA_DIR`` or ~/tensorflow_datasets)."""
  return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def candidate_dirs(name: str, dirs: Sequence[Path]) -> list[Path]:
  """Dirs among `dirs` and TFDS's default that hold some prepared version of `name`.

  A cheap file check, so deciding whether TFDS has the data needs no TensorFlow import.
  """
  tfds_name = SPECS[name].tfds_name
  found = []
  for data_dir in (*dirs, default_data_dir()):
    if tfds_name and any((data_dir / tfds_name).glob("*/dataset_info.json")):
      found.append(data_dir)
  return found


def host_reachable(host: str, timeout: float = 5.0) -> bool:
  """Whether `host` resolves. TFDS retries a failing download for minutes; on a machine
  without internet this check lets ``source='auto'`` give up at once."""
  result = []

  def resolve():
    try:
      socket.getaddrinfo(host, 443)
      result.append(True)
    except OSError:
      pass

  thread = threading.Thread(target=resolve, daemon=True)
  thread.start()
  thread.join(timeout)
  return bool(result)


def load(name: str, dirs: Sequence[Path], *, download: bool = True) -> Dataset:
  """`name` through TFDS: the first prepared copy along `dirs` (then TFDS's default data
  dir); else, if `download`, downloads and prepares it into TFDS's default data dir."""
  tfds_name = SPECS[name].tfds_name
  if tfds_name is None:
    raise ValueError(f"name={name!r} has no tensorflow-datasets builder; use "
                     "source='files'")
  tfds = import_tfds()
  for data_dir in candidate_dirs(name, dirs):
    builder = tfds.builder(tfds_name, data_dir=os.fspath(data_dir))
    if builder.is_prepared():
      break
  else:
    if not download:
      raise FileNotFoundError(f"{name}: no prepared TFDS copy in {[str(d) for d in dirs]}")
    builder = tfds.builder(tfds_name)
    builder.download_and_prepare()
  return _as_dataset(tfds, builder, name)


def _as_dataset(tfds, builder, name: str) -> Dataset:
  where = f"TFDS {builder.info.full_name} in {builder.data_dir}"
  fix = f"delete {builder.data_dir} and prepare it again"
  splits = tfds.as_numpy(builder.as_dataset(split=["train", "test"], batch_size=-1,
                                            as_supervised=True))
  arrays = []
  for split, (images, labels) in zip(("train", "test"), splits):
    images = np.asarray(images, np.uint8)
    labels = np.asarray(labels).astype(np.int32)
    check_split(name, split, images, labels, where, fix)
    arrays += [images, labels]
  return Dataset(*arrays, name=name, source=f"tfds:{builder.data_dir}")


def prepare_from_files(name: str, tfds_data_dir, data_dir=None) -> Path:
  """Builds TFDS's own `name` ('mnist' or 'fashion_mnist') into `tfds_data_dir` from the
  local IDX files found along `data_dir`, with no network. Returns the prepared dir.

  The files are first read and checked (checksums, sizes) by the file loader.
  """
  if name not in ("mnist", "fashion_mnist"):
    raise ValueError(f"name must be 'mnist' or 'fashion_mnist', got {name!r}")
  dirs = local.search_path(data_dir)
  copy = local.find(name, dirs)
  if copy is None:
    raise FileNotFoundError(f"{name}: no local files along {[str(d) for d in dirs]}")
  local.read(copy)  # refuse to build TFDS data from files that fail our checks
  tfds = import_tfds()
  files = {stem: os.fspath(path) for stem, path in copy.paths.items()}
  builder_cls = _offline_builder_class(tfds.builder_cls(SPECS[name].tfds_name))
  builder = builder_cls(files=files, data_dir=os.fspath(tfds_data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return Path(builder.data_dir)


class _LocalFiles:
  """Stands in for TFDS's download manager: each URL's file name maps to a local file,
  which TFDS's own extractor un-gzips when needed."""

  def __init__(self, download_manager, files: dict[str, str]):
    self._download_manager = download_manager
    self._files = files

  def _local(self, url: str) -> str:
    return self._files[posixpath.basename(url).removesuffix(".gz")]

  def download_and_extract(self, urls):
    return self._download_manager.extract(
        {key: self._local(url) for key, url in urls.items()})

  def __getattr__(self, attribute):
    return getattr(self._download_manager, attribute)


def _offline_builder_class(base):
  """A subclass of TFDS builder `base` with the same name and version, reading local files.

  Not registered, so TFDS's own builder keeps its name; the data it writes is found by
  the plain ``tfds.load(base.name, data_dir=...)``.
  """

  class OfflineBuilder(base, skip_registration=True):
    name = base.name

    def __init__(self, *, files: dict[str, str], **kwargs):
      self._local_files = files
      super().__init__(**kwargs)

    def _split_generators(self, dl_manager, *args, **kwargs):
      return super()._split_generators(_LocalFiles(dl_manager, self._local_files),
                                       *args, **kwargs)

  return OfflineBuilder
