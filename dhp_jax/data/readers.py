"""Raw-format readers: MNIST IDX, CIFAR-10 python batches and image trees, SVHN .mat.

Each reader turns bytes or a path into numpy arrays and raises ``ValueError`` naming the
file when the bytes are not what the format promises. Validation against the known sizes
and checksums is the caller's (``local.py``); these functions know formats only.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zlib
from typing import Iterable, Iterator

import numpy as np

from dhp_jax.data.registry import CIFAR10_CLASSES

_IDX_DTYPE_UINT8 = 0x08
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_maybe_gzip(path: str | os.PathLike) -> bytes:
  """The file's contents, decompressed when its name ends in ``.gz``."""
  path = os.fspath(path)
  try:
    if path.endswith(".gz"):
      with gzip.open(path, "rb") as f:
        return f.read()
    with open(path, "rb") as f:
      return f.read()
  except (EOFError, gzip.BadGzipFile, zlib.error) as e:
    raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e


def sha256_hex(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def parse_idx(data: bytes, path: str | os.PathLike) -> np.ndarray:
  """Parses an IDX file of unsigned bytes: uint8 array of the shape its header gives.

  Header: two zero bytes, type code 0x08 (uint8), rank r, then r big-endian uint32 sizes.
  """
  if len(data) < 4 or data[:2] != b"\0\0" or data[2] != _IDX_DTYPE_UINT8:
    raise ValueError(f"{os.fspath(path)}: not an IDX file of unsigned bytes "
                     f"(magic {data[:4].hex() or 'missing'})")
  rank = data[3]
  header = 4 + 4 * rank
  if len(data) < header:
    raise ValueError(f"{os.fspath(path)}: truncated IDX header")
  shape = tuple(int(n) for n in np.frombuffer(data[4:header], ">u4"))
  expected = header + int(np.prod(shape))
  if len(data) != expected:
    problem = "truncated" if len(data) < expected else "has trailing bytes"
    raise ValueError(f"{os.fspath(path)}: {problem}: its header promises shape {shape} "
                     f"= {expected} bytes, the file holds {len(data)}")
  return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def read_cifar_batch(data: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
  """One pickled CIFAR-10 python batch -> (uint8 [N, 32, 32, 3], int32 [N])."""
  try:
    batch = pickle.loads(data, encoding="bytes")
    pixels = np.asarray(batch[b"data"], np.uint8)
    labels = np.asarray(batch[b"labels"], np.int32)
  except Exception as e:  # pickle raises many types on garbage
    raise ValueError(f"{where}: not a CIFAR-10 python batch ({e})") from e
  if pixels.ndim != 2 or pixels.shape != (len(labels), 3 * 32 * 32):
    raise ValueError(f"{where}: CIFAR-10 batch data has shape {pixels.shape}, expected "
                     f"({len(labels)}, 3072)")
  # Stored channel-major (N, 3, 32, 32); we keep channels last.
  return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def decode_image(data: bytes, where: str) -> np.ndarray:
  """A JPEG/PNG -> uint8 [H, W, 3]."""
  from PIL import Image  # pillow is a core dependency; imported here to keep import light
  try:
    with Image.open(io.BytesIO(data)) as image:
      return np.asarray(image.convert("RGB"))
  except Exception as e:  # PIL raises many types on corrupt files
    raise ValueError(f"{where}: cannot decode image ({e})") from e


def split_class_member(name: str) -> tuple[str, str] | None:
  """'…/train/cat/0001.jpg' -> ('train', 'cat'); None for anything else."""
  parts = name.replace("\\", "/").split("/")
  if len(parts) < 3 or not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
    return None
  split, label = parts[-3], parts[-2]
  if split not in ("train", "test") or label not in CIFAR10_CLASSES:
    return None
  return split, label


def stack_class_images(members: Iterable[tuple[str, str, str, bytes]]
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """(split, class name, member name, bytes) items -> {split: (uint8 [N,H,W,3], int32 [N])}.

  Rows are ordered by member name so the result does not depend on directory order.
  """
  rows: dict[str, list[tuple[str, int, np.ndarray]]] = {"train": [], "test": []}
  for split, label, where, data in members:
    rows[split].append((where, CIFAR10_CLASSES.index(label), decode_image(data, where)))
  out = {}
  for split, items in rows.items():
    items.sort(key=lambda item: item[0])
    images = np.stack([image for _, _, image in items]) if items else None
    labels = np.array([label for _, label, _ in items], np.int32)
    out[split] = (images, labels)
  return out


def iter_tree_members(root: str) -> Iterator[tuple[str, str, str, bytes]]:
  """Image files under ``root/{train,test}/<class>/`` as (split, class, path, bytes)."""
  for split in ("train", "test"):
    for label in CIFAR10_CLASSES:
      folder = os.path.join(root, split, label)
      if not os.path.isdir(folder):
        continue
      for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.lower().endswith(_IMAGE_SUFFIXES):
          with open(path, "rb") as f:
            yield split, label, path, f.read()


def read_cifar_tar(path: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], str]:
  """A CIFAR-10 archive: the python batches or a ``{train,test}/<class>/`` image tree.

  Returns ({split: (images, labels)}, kind) with kind 'batches' or 'images'.
  """
  batches: dict[str, bytes] = {}
  images: list[tuple[str, str, str, bytes]] = []
  try:
    with tarfile.open(path) as tar:
      for member in tar:
        if not member.isfile():
          continue
        base = os.path.basename(member.name)
        if base.startswith("data_batch_") or base == "test_batch":
          batches[base] = tar.extractfile(member).read()
        elif (key := split_class_member(member.name)) is not None:
          images.append((*key, f"{path}:{member.name}", tar.extractfile(member).read()))
  except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
    raise ValueError(f"{path}: corrupt or truncated archive ({e})") from e
  if batches:
    return cifar_batches_to_splits(batches, path), "batches"
  if images:
    return stack_class_images(images), "images"
  raise ValueError(f"{path}: holds neither CIFAR-10 python batches nor a "
                   "train|test/<class>/ image tree")


def cifar_batches_to_splits(batches: dict[str, bytes], where: str
                            ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{'data_batch_1'..'data_batch_5', 'test_batch': bytes} -> {split: (images, labels)}."""
  names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
  out = {}
  for split, wanted in names.items():
    missing = [n for n in wanted if n not in batches]
    if missing:
      raise ValueError(f"{where}: CIFAR-10 python batches incomplete, missing {missing}")
    parts = [read_cifar_batch(batches[n], f"{where}/{n}") for n in wanted]
    out[split] = (np.concatenate([p[0] for p in parts]),
                  np.concatenate([p[1] for p in parts]))
  return out


def read_svhn_mat(path: str) -> tuple[np.ndarray, np.ndarray]:
  """An SVHN cropped-digits ``.mat`` -> (uint8 [N, 32, 32, 3], int32 [N] in 0..9).

  The file stores X as [32, 32, 3, N] and digit 0 as label 10; TFDS maps 10 to 0 and so
  do we, so both sources give the same labels.
  """
  from scipy import io as scipy_io  # scipy ships with jax
  try:
    mat = scipy_io.loadmat(path)
    images = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2)), np.uint8)
    labels = np.asarray(mat["y"], np.int32).reshape(-1)
  except Exception as e:  # loadmat raises many types on truncated files
    raise ValueError(f"{path}: not a readable SVHN .mat file ({e})") from e
  return images, np.where(labels == 10, 0, labels).astype(np.int32)
