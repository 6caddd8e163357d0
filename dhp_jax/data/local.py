"""Local raw files: the data search path, finding a data set's files, reading and checking them.

Layout inside a data dir (any of the folder aliases in ``registry.SPECS`` works):
  mnist/, fashion_mnist/, not_mnist/ (or notmnist/): the four IDX files, plain or .gz
    (not_mnist may hold the test pair alone);
  cifar10/: python batches (``cifar-10-batches-py/`` or loose), a ``{train,test}/<class>/``
    image tree, or an archive of either; cifar10-jpeg/cifar10-jpeg.tar.gz likewise;
  svhn_cropped/: train_32x32.mat and test_32x32.mat.
Decoded JPEG trees are cached as .npz under ``_cache/`` of the first writable data dir
(never beside read-only sources).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from dhp_jax.data import readers
from dhp_jax.data.dataset import Dataset, check_split, split_test_only
from dhp_jax.data.registry import IDX_FILES, SPECS, fetch_advice

ENV_VAR = "DHP_DATA_DIR"
DEFAULT_DIR = Path("~/.cache/dhp_jax")
CACHE_FOLDER = "_cache"

DataDir = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], None]


def search_path(data_dir: DataDir = None) -> tuple[Path, ...]:
  """The data dirs to search, in order.

  `data_dir` (a path, an ``os.pathsep``-separated string, or a list) overrides
  ``$DHP_DATA_DIR``; with neither, ``~/.cache/dhp_jax``.
  """
  if data_dir is None:
    entries = os.environ.get(ENV_VAR, "").split(os.pathsep)
  elif isinstance(data_dir, (str, os.PathLike)):
    entries = os.fspath(data_dir).split(os.pathsep)
  else:
    entries = [os.fspath(d) for d in data_dir]
  dirs = tuple(Path(e).expanduser().absolute() for e in entries if e)
  return dirs or (DEFAULT_DIR.expanduser().absolute(),)


@dataclasses.dataclass(frozen=True)
class LocalCopy:
  """A data set's raw files found in one data dir.

  kind: 'idx', 'svhn_mat', 'cifar_batches', 'cifar_tree' or 'cifar_archive'.
  paths: the files (or folder) to read, keyed by role.
  """
  name: str
  kind: str
  data_dir: Path
  paths: dict[str, Path]

  @property
  def fix(self) -> str:
    return f"replace the data with {fetch_advice(self.name, self.data_dir)}"


def find(name: str, dirs: Sequence[Path]) -> Optional[LocalCopy]:
  """The first local copy of `name` along `dirs`, or None.

  Raises FileNotFoundError naming the missing file when a copy is incomplete.
  """
  finder = {"svhn_cropped": _find_svhn, "cifar10": _find_cifar10}.get(name, _find_idx)
  for data_dir in dirs:
    for folder in SPECS[name].folders:
      if (data_dir / folder).is_dir():
        copy = finder(name, data_dir, data_dir / folder)
        if copy is not None:
          return copy
  return None


def _find_idx(name, data_dir, folder):
  paths = {}
  for stem in (*IDX_FILES["train"], *IDX_FILES["test"]):
    for candidate in (folder / stem, folder / f"{stem}.gz"):
      if candidate.is_file():
        paths[stem] = candidate
        break
  if not paths:
    return None
  # notMNIST is often available as its test split only; every other set needs both.
  required = [*IDX_FILES["test"]]
  if name != "not_mnist" or any(stem in paths for stem in IDX_FILES["train"]):
    required += IDX_FILES["train"]
  _require(name, data_dir, folder, required, paths)
  return LocalCopy(name, "idx", data_dir, paths)


def _find_svhn(name, data_dir, folder):
  paths = {f: folder / f for f in ("train_32x32.mat", "test_32x32.mat")
           if (folder / f).is_file()}
  if not paths:
    return None
  _require(name, data_dir, folder, ["train_32x32.mat", "test_32x32.mat"], paths)
  return LocalCopy(name, "svhn_mat", data_dir, paths)


def _find_cifar10(name, data_dir, folder):
  for batches in (folder / "cifar-10-batches-py", folder):
    if (batches / "data_batch_1").is_file():
      return LocalCopy(name, "cifar_batches", data_dir, {"batches": batches})
  if (folder / "train").is_dir() and (folder / "test").is_dir():
    return LocalCopy(name, "cifar_tree", data_dir, {"tree": folder})
  archives = sorted(p for p in folder.iterdir()
                    if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar")))
  if archives:
    return LocalCopy(name, "cifar_archive", data_dir, {"archive": archives[0]})
  return None


def _require(name, data_dir, folder, required, paths):
  missing = [stem for stem in required if stem not in paths]
  if missing:
    raise FileNotFoundError(
        f"{folder / missing[0]}: missing (the {name} copy in {folder} lacks "
        f"{', '.join(missing)}). Fix: {fetch_advice(name, data_dir)}")


def read(copy: LocalCopy, cache_dirs: Sequence[Path] = ()) -> Dataset:
  """Reads and validates a local copy; ValueError naming the file and the fix if wrong.

  cache_dirs: where decoded image trees may be cached (the first writable one is used).
  """
  if copy.kind in ("cifar_tree", "cifar_archive"):
    return _read_cifar_decoded(copy, tuple(cache_dirs) or (copy.data_dir,))
  reader = {"idx": _read_idx, "svhn_mat": _read_svhn, "cifar_batches": _read_cifar_batches}
  return reader[copy.kind](copy)


@contextlib.contextmanager
def _with_fix(copy: LocalCopy):
  """Appends the fix to a reader's ValueError (readers know formats, not remedies)."""
  try:
    yield
  except ValueError as e:
    raise ValueError(f"{e}. Fix: {copy.fix}") from e


def _verified_bytes(copy: LocalCopy, key: str, data: bytes) -> None:
  """Raises ValueError if `key` has a registered sha256 that `data` does not match."""
  expected = SPECS[copy.name].sha256.get(key)
  if expected is not None and (actual := readers.sha256_hex(data)) != expected:
    raise ValueError(f"{copy.paths.get(key, key)}: sha256 {actual} does not match the "
                     f"known {copy.name} checksum {expected} (uncompressed contents). "
                     f"Fix: {copy.fix}")


def _read_idx(copy: LocalCopy) -> Dataset:
  splits = {}
  for split, stems in IDX_FILES.items():
    if not all(stem in copy.paths for stem in stems):
      continue
    arrays = []
    for stem in stems:
      path = copy.paths[stem]
      with _with_fix(copy):
        data = readers.read_maybe_gzip(path)
        array = readers.parse_idx(data, path)
      _verified_bytes(copy, stem, data)
      arrays.append(array)
    images, labels = arrays
    images = images.reshape(*images.shape[:3], 1) if images.ndim == 3 else images
    where = ", ".join(str(copy.paths[s]) for s in stems)
    labels = labels.astype(np.int32)
    check_split(copy.name, split, images, labels, where, copy.fix)
    splits[split] = (images, labels)
  folder = copy.paths[IDX_FILES["test"][0]].parent
  if "train" not in splits:
    return split_test_only(copy.name, *splits["test"], where=str(folder))
  return Dataset(*splits["train"], *splits["test"], name=copy.name,
                 source=f"files:{folder}")


def _read_svhn(copy: LocalCopy) -> Dataset:
  splits = {}
  for split in ("train", "test"):
    key = f"{split}_32x32.mat"
    path = copy.paths[key]
    _verified_bytes(copy, key, path.read_bytes())
    with _with_fix(copy):
      images, labels = readers.read_svhn_mat(str(path))
    check_split(copy.name, split, images, labels, str(path), copy.fix)
    splits[split] = (images, labels)
  return Dataset(*splits["train"], *splits["test"], name=copy.name,
                 source=f"files:{path.parent}")


def _read_cifar_batches(copy: LocalCopy) -> Dataset:
  folder = copy.paths["batches"]
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  batches = {n: (folder / n).read_bytes() for n in names if (folder / n).is_file()}
  with _with_fix(copy):
    splits = readers.cifar_batches_to_splits(batches, str(folder))
  return _cifar_dataset(copy, splits, str(folder), notes=())


def _read_cifar_decoded(copy: LocalCopy, cache_dirs: tuple[Path, ...]) -> Dataset:
  """An archive or image tree; decoding 60k JPEGs takes ~20 s, so decoded arrays are
  cached, keyed by the source's content hash (archive) or file listing (tree)."""
  source = copy.paths.get("archive") or copy.paths["tree"]
  if copy.kind == "cifar_archive":
    data = source.read_bytes()
    _verified_bytes(copy, source.name, data)
    key = readers.sha256_hex(data)
  else:
    key = _tree_signature(source)
  cached = _read_cache(cache_dirs, key)
  if cached is not None:
    return _cifar_dataset(copy, cached, str(source), _image_note(source))
  with _with_fix(copy):
    if copy.kind == "cifar_archive":
      splits, kind = readers.read_cifar_tar(str(source))
    else:
      splits = readers.stack_class_images(readers.iter_tree_members(str(source)))
      kind = "images"
  if kind == "batches":  # an archive of the python batches: fast to read, not cached
    return _cifar_dataset(copy, splits, str(source), notes=())
  dataset = _cifar_dataset(copy, splits, str(source), _image_note(source))
  _write_cache(cache_dirs, key, splits)
  return dataset


def _image_note(source) -> tuple[str, ...]:
  return (f"cifar10: decoded from an image-file copy ({source}); if those are JPEGs, "
          "pixel values differ slightly from the original lossless CIFAR-10",)


def _cifar_dataset(copy, splits, where, notes) -> Dataset:
  for split, (images, labels) in splits.items():
    if images is None:
      raise ValueError(f"{where}: no {split} images. Fix: {copy.fix}")
    check_split(copy.name, split, images, labels, where, copy.fix)
  return Dataset(*splits["train"], *splits["test"], name=copy.name,
                 source=f"files:{where}", notes=notes)


def _tree_signature(root: Path) -> str:
  digest = hashlib.sha256()
  for split in ("train", "test"):
    for path in sorted((root / split).rglob("*")):
      if path.is_file():
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n"
                      .encode())
  return digest.hexdigest()


def _cache_name(key: str) -> str:
  return f"cifar10-{key[:16]}.npz"


def _read_cache(dirs, key):
  for data_dir in dirs:
    path = data_dir / CACHE_FOLDER / _cache_name(key)
    if path.is_file():
      try:
        with np.load(path) as z:
          return {s: (z[f"{s}_images"], z[f"{s}_labels"]) for s in ("train", "test")}
      except (OSError, ValueError, KeyError):
        continue  # a broken cache is rebuilt, never trusted
  return None


def _writable(data_dir: Path) -> bool:
  """An existing dir we may write to. Mode bits are checked too, since root passes
  access(2) everywhere and must still leave read-only mirrors alone."""
  try:
    return (os.access(data_dir, os.W_OK) and data_dir.is_dir()
            and bool(data_dir.stat().st_mode & 0o222))
  except OSError:
    return False


def _write_cache(dirs, key, splits) -> None:
  """Best effort: writes into the first writable data dir, atomically; else skips."""
  arrays = {f"{s}_{k}": a for s, (images, labels) in splits.items()
            for k, a in (("images", images), ("labels", labels))}
  for data_dir in dirs:
    if not _writable(data_dir):
      continue
    folder = data_dir / CACHE_FOLDER
    tmp = None
    try:
      folder.mkdir(parents=True, exist_ok=True)
      with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as f:
        tmp = f.name
        np.savez(f, **arrays)
      os.chmod(tmp, 0o644)  # readable like the data dir's other files
      os.replace(tmp, folder / _cache_name(key))
      return
    except OSError:
      if tmp is not None and os.path.exists(tmp):
        os.remove(tmp)
