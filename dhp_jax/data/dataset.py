"""The ``Dataset`` record every source yields, and its validation."""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from dhp_jax.data.registry import SPECS

# notMNIST's training split is not always available (the offline mirror holds the test
# split only); then the test split is divided per class with this fixed seed and share.
TEST_ONLY_TRAIN_FRACTION = 0.8
TEST_ONLY_SPLIT_SEED = 0


class Dataset(NamedTuple):
  """One data set, both splits, on the host.

  train_images: uint8 [N, H, W, C] (C = 1 for the MNIST-likes, 3 for SVHN / CIFAR-10).
  train_labels: int32 [N] in 0..9.
  test_images:  uint8 [M, H, W, C].
  test_labels:  int32 [M].
  name:   registry name ('mnist', …).
  source: where it was read from ('files:<path>' or 'tfds:<data dir>').
  notes:  deviations from the canonical data set, to be reported with results.
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  name: str = ""
  source: str = ""
  notes: tuple[str, ...] = ()


def check_split(name: str, split: str, images: np.ndarray, labels: np.ndarray,
                where: str, fix: str) -> None:
  """Raises ValueError naming `where` and `fix` unless (images, labels) is a correct
  `split` of data set `name` (shape, dtype, size and per-class counts)."""
  spec = SPECS[name]
  expected_counts = spec.train_counts if split == "train" else spec.test_counts

  def fail(problem):
    raise ValueError(f"{where}: {name} {split} split {problem}; the data is truncated, "
                     f"corrupt or another data set. Fix: {fix}")

  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != spec.image_shape:
    fail(f"has images {images.dtype} {images.shape}, expected uint8 [N, "
         f"{', '.join(map(str, spec.image_shape))}]")
  if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
    fail(f"has labels {labels.dtype} {labels.shape} for {len(images)} images")
  if len(labels) and (labels.min() < 0 or labels.max() >= spec.num_classes):
    fail(f"has labels outside 0..{spec.num_classes - 1}")
  counts = np.bincount(labels, minlength=spec.num_classes)
  if expected_counts is not None and tuple(counts) != expected_counts:
    fail(f"has {len(labels)} images with class counts {counts.tolist()}, expected "
         f"{sum(expected_counts)} with {list(expected_counts)}")
  if expected_counts is None and (counts == 0).any():
    fail(f"lacks classes {np.flatnonzero(counts == 0).tolist()}")


def split_test_only(name: str, images: np.ndarray, labels: np.ndarray,
                    where: str) -> Dataset:
  """A Dataset from a test split alone: per class, a fixed-seed 80 % train / 20 % test.

  Deterministic (seeded), stratified so both halves keep the class balance, and noted.
  """
  rng = np.random.default_rng(TEST_ONLY_SPLIT_SEED)
  train_rows, test_rows = [], []
  for c in range(SPECS[name].num_classes):
    rows = rng.permutation(np.flatnonzero(labels == c))
    cut = int(round(TEST_ONLY_TRAIN_FRACTION * len(rows)))
    train_rows.append(rows[:cut])
    test_rows.append(rows[cut:])
  train_rows = np.sort(np.concatenate(train_rows))
  test_rows = np.sort(np.concatenate(test_rows))
  note = (f"{name}: only the test split ({len(labels)} images) is available ({where}); "
          f"split it deterministically per class {TEST_ONLY_TRAIN_FRACTION:.0%}/"
          f"{1 - TEST_ONLY_TRAIN_FRACTION:.0%} into train {len(train_rows)} / test "
          f"{len(test_rows)} (seed {TEST_ONLY_SPLIT_SEED})")
  return Dataset(images[train_rows], labels[train_rows], images[test_rows],
                 labels[test_rows], name=name, source=f"files:{where}", notes=(note,))
