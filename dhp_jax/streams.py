"""Task streams for the four benchmarks (paper §V, SPEC §3); old name ``dhp_jax.benchmarks``.

A ``Stream`` is a tuple of ``Task``s; each task views shared data through ``Split``s:
uint8 images and int32 labels placed on the device once per process (cached per data
set, data dir and source), plus the rows the task uses. Many seeds' streams therefore
share the same device arrays, and per-task pixel permutations are int32 index arrays
applied inside jitted code by ``make_batch``; nothing is copied per task or per seed.

Seeding: task t's permutation under trial seed s is drawn from
``np.random.default_rng((PERMUTATION_STREAM, s, t))`` and the imbalanced benchmark's
removal probabilities and drops from ``default_rng((IMBALANCE_STREAM, imbalance_seed, t))``,
so a task's draws do not depend on `num_tasks` and the two kinds of draws never share a
random stream. Every task is permuted, the first included (as in Zenke et al. 2017), unless
``permute_first=False``.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dhp_jax import data

VISION_DATASETS = ("mnist", "not_mnist", "fashion_mnist", "svhn_cropped", "cifar10")
SCENARIOS = ("task", "class")
NUM_DIGITS = 10
PERMUTATION_STREAM = 0x7045524D   # random-stream tags: see the module docstring
IMBALANCE_STREAM = 0x494D4241
_MIXTURE_SHAPE = (32, 32, 3)


class Split(NamedTuple):
  """One split of one task, as views into shared device arrays.

  images: uint8 [N, H, W, C] on device, the same object for every task and seed using it.
  labels: int32 [N] global labels (vision mixture: data set t's class k is 10·t + k).
  index:  int32 [n] rows of images/labels that belong to this task.
  """
  images: jax.Array
  labels: jax.Array
  index: jax.Array


@dataclasses.dataclass(frozen=True)
class Task:
  """name; train/test Splits; classes: global labels present; output_slice: (start, stop)
  of this task's logits, None = all outputs; permutation: int32 [H·W·C] applied to the
  flattened image (host numpy, stackable over seeds), or None."""
  name: str
  train: Split
  test: Split
  classes: tuple[int, ...]
  output_slice: Optional[tuple[int, int]]
  permutation: Optional[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Stream:
  """A benchmark: tasks in training order, model output count, input shape (H, W, C)
  after padding, and notes on data deviations to report with the results."""
  name: str
  tasks: tuple[Task, ...]
  num_classes: int
  input_shape: tuple[int, int, int]
  notes: tuple[str, ...]


def make_batch(images, labels, idx, permutation=None):
  """Gathers rows `idx` (int32 [B]) of uint8 `images` [N, H, W, C] and `labels` [N].

  Returns (x float32 [B, H, W, C] in [0, 1], y int32 [B]). With `permutation` (int32
  [H·W·C]), x.reshape(B, -1)[:, permutation] is reshaped back to [B, H, W, C]. Pure jnp:
  jit- and vmap-friendly (vmap over seeds with stacked permutations and indices).
  """
  x = jnp.take(images, idx, axis=0)
  if permutation is not None:
    x = jnp.take(x.reshape(x.shape[0], -1), permutation, axis=1).reshape(x.shape)
  # Scaling at batch time keeps the stored data uint8 (4x smaller than float copies).
  return x.astype(jnp.float32) / 255.0, jnp.take(labels, idx, axis=0)


def class_counts(split: Split, num_classes: int) -> np.ndarray:
  """int64 [num_classes]: how many of the split's rows carry each global label."""
  return np.bincount(np.asarray(split.labels)[np.asarray(split.index)],
                     minlength=num_classes)


# ---- constructors -------------------------------------------------------------------

def permuted_mnist(num_tasks: int = 10, seed: int = 0, *, permute_first: bool = True,
                   data_dir=None, source: str = "auto") -> Stream:
  """Permuted MNIST: every task is all of MNIST under its own fixed pixel permutation
  (the same for train and test). Input (28, 28, 1), 10 shared outputs."""
  _check_int("num_tasks", num_tasks, 1)
  _check_int("seed", seed, 0)
  mnist = _device_data("mnist", data_dir, source)
  tasks = tuple(
      Task(name=f"permuted_mnist[{t}]",
           train=mnist.split("train", _all_rows(mnist.key, "train")),
           test=mnist.split("test", _all_rows(mnist.key, "test")),
           classes=tuple(range(NUM_DIGITS)), output_slice=None,
           permutation=_permutation(seed, t, permute_first))
      for t in range(num_tasks))
  return Stream("permuted_mnist", tasks, NUM_DIGITS, (28, 28, 1),
                notes=mnist.notes + (_permutation_note(permute_first),))


def imbalanced_permuted_mnist(num_tasks: int = 10, seed: int = 0, *,
                              imbalance_seed: int = 0, permute_first: bool = True,
                              data_dir=None, source: str = "auto") -> Stream:
  """Imbalanced Permuted MNIST: Permuted MNIST whose task t keeps each training sample of
  class c with probability 1 − p[t, c], p[t, c] ~ U(0, 1).

  The probabilities and the drops come from `imbalance_seed` alone, so every trial seed
  sees the same class counts (paper §V); permutations come from `seed`. Test sets are
  untouched. The per-task class counts are in `notes` (and `class_counts(task.train, 10)`).
  """
  _check_int("imbalance_seed", imbalance_seed, 0)
  base = permuted_mnist(num_tasks, seed, permute_first=permute_first, data_dir=data_dir,
                        source=source)
  key = _device_data("mnist", data_dir, source).key
  tasks, notes = [], []
  for t, task in enumerate(base.tasks):
    index, removal, counts = _imbalanced_rows(key, imbalance_seed, t)
    tasks.append(dataclasses.replace(
        task, name=f"imbalanced_permuted_mnist[{t}]",
        train=task.train._replace(index=index)))
    notes.append(f"task {t}: removal probabilities {np.round(removal, 3).tolist()} -> "
                 f"train class counts {counts.tolist()} ({counts.sum()} images; "
                 f"imbalance_seed {imbalance_seed})")
  return Stream("imbalanced_permuted_mnist", tuple(tasks), NUM_DIGITS, (28, 28, 1),
                notes=base.notes + tuple(notes))


def split_mnist(*, scenario: str = "task", data_dir=None, source: str = "auto") -> Stream:
  """Split MNIST: tasks {0,1}, {2,3}, {4,5}, {6,7}, {8,9}.

  scenario 'task': task-incremental, task t uses outputs (2t, 2t+2);
  'class': class-incremental, every task is scored on all 10 outputs.
  """
  if scenario not in SCENARIOS:
    raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
  mnist = _device_data("mnist", data_dir, source)
  tasks = []
  for t in range(NUM_DIGITS // 2):
    classes = (2 * t, 2 * t + 1)
    tasks.append(Task(
        name=f"split_mnist[{classes[0]},{classes[1]}]",
        train=mnist.split("train", _class_rows(mnist.key, "train", classes)),
        test=mnist.split("test", _class_rows(mnist.key, "test", classes)),
        classes=classes,
        output_slice=(2 * t, 2 * t + 2) if scenario == "task" else None,
        permutation=None))
  return Stream("split_mnist" if scenario == "task" else "split_mnist_class",
                tuple(tasks), NUM_DIGITS, (28, 28, 1), notes=mnist.notes)


def vision_mixture(datasets: Sequence[str] = VISION_DATASETS, *, skip_missing: bool = False,
                   data_dir=None, source: str = "auto", seed: int = 0) -> Stream:
  """5-Vision mixture: one task per data set, in the given order, task-incremental.

  28×28 sets are zero-padded to 32×32 and replicated to 3 channels (stored uint8), so
  every input is (32, 32, 3). Task t (t-th data set kept) has global labels 10t..10t+9
  and output_slice (10t, 10t+10); num_classes = 10 · number of tasks.
  skip_missing: drop data sets with no local copy or reachable TFDS source, and say so
    in `notes` (and a warning); otherwise a missing set raises FileNotFoundError.
  seed: accepted for a uniform constructor signature; the mixture has no random parts
    (notMNIST's 80/20 split, when needed, is fixed by the loader).
  """
  _check_int("seed", seed, 0)
  datasets = (datasets,) if isinstance(datasets, str) else tuple(datasets)
  unknown = [name for name in datasets if name not in data.DATASET_NAMES]
  if not datasets or unknown or len(set(datasets)) != len(datasets):
    raise ValueError(f"datasets must be distinct names from {data.DATASET_NAMES}, got "
                     f"{datasets!r}")
  tasks, notes = [], []
  for name in datasets:
    try:
      loaded = _device_data(name, data_dir, source, pad_to_mixture=True)
    except FileNotFoundError as e:
      if not skip_missing:
        raise
      note = f"{name}: SKIPPED, not available: {e}"
      warnings.warn(f"vision_mixture: {note}", stacklevel=2)
      notes.append(note)
      continue
    t = len(tasks)
    offset = NUM_DIGITS * t
    tasks.append(Task(
        name=name,
        train=loaded.split("train", _all_rows(loaded.key, "train"), offset),
        test=loaded.split("test", _all_rows(loaded.key, "test"), offset),
        classes=tuple(range(offset, offset + NUM_DIGITS)),
        output_slice=(offset, offset + NUM_DIGITS), permutation=None))
    notes.extend(loaded.notes)
  if not tasks:
    raise FileNotFoundError(f"vision_mixture: none of {datasets} is available: {notes}")
  if len(tasks) < len(datasets):
    notes.insert(0, f"vision_mixture: {len(tasks)} of {len(datasets)} data sets "
                    f"({', '.join(t.name for t in tasks)}); outputs and label offsets "
                    "are assigned to the remaining tasks in order")
  return Stream("vision_mixture", tuple(tasks), NUM_DIGITS * len(tasks), _MIXTURE_SHAPE,
                notes=tuple(notes))


def _permuted_stream(options, seed, data_dir):
  return permuted_mnist(options.num_tasks, seed, data_dir=data_dir)


def _imbalanced_stream(options, seed, data_dir):
  return imbalanced_permuted_mnist(options.num_tasks, seed, data_dir=data_dir)


def _split_stream(options, seed, data_dir):
  del seed   # no random parts
  return split_mnist(scenario=options.scenario, data_dir=data_dir)


def _mixture_stream(options, seed, data_dir):
  return vision_mixture(options.vision_datasets, skip_missing=True, data_dir=data_dir,
                        seed=seed)


# The benchmarks by name: ``builder(options, seed, data_dir) -> Stream``, ``options``
# holding ``num_tasks``, ``scenario`` and ``vision_datasets`` (a ``Config``).
STREAM_BUILDERS = {"permuted_mnist": _permuted_stream,
                   "imbalanced_permuted_mnist": _imbalanced_stream,
                   "split_mnist": _split_stream, "vision_mixture": _mixture_stream}
BENCHMARKS = tuple(STREAM_BUILDERS)


def clear_cache() -> None:
  """Drops the cached device arrays (they are otherwise kept for the process lifetime)."""
  for cached in (_device_data_cached, _all_rows, _class_rows, _offset_labels,
                 _imbalanced_rows):
    cached.cache_clear()


# ---- shared device data -------------------------------------------------------------
# Everything below is cached per (data set, search path, source, padding) key, so equal
# requests return the very same device arrays: many seeds' streams share their images,
# labels and row indices, and nothing is loaded or copied twice.

class _Key(NamedTuple):
  name: str
  dirs: tuple[Path, ...]
  source: str
  pad_to_mixture: bool


class _DeviceData(NamedTuple):
  key: _Key
  train_images: jax.Array
  train_labels: jax.Array
  test_images: jax.Array
  test_labels: jax.Array
  notes: tuple[str, ...]

  def split(self, split: str, index: jax.Array, label_offset: int = 0) -> Split:
    images, labels = ((self.train_images, self.train_labels) if split == "train"
                      else (self.test_images, self.test_labels))
    if label_offset:
      labels = _offset_labels(self.key, split, label_offset)
    return Split(images, labels, index)


def _device_data(name, data_dir, source, pad_to_mixture=False) -> _DeviceData:
  return _device_data_cached(_Key(name, data.search_path(data_dir), source, pad_to_mixture))


@functools.lru_cache(maxsize=None)
def _device_data_cached(key: _Key) -> _DeviceData:
  loaded = data.load(key.name, data_dir=list(key.dirs), source=key.source)
  prepare = _to_mixture_shape if key.pad_to_mixture else (lambda images: images)
  return _DeviceData(key, jax.device_put(prepare(loaded.train_images)),
                     jax.device_put(loaded.train_labels),
                     jax.device_put(prepare(loaded.test_images)),
                     jax.device_put(loaded.test_labels), loaded.notes)


def _host_labels(key: _Key, split: str) -> np.ndarray:
  loaded = _device_data_cached(key)
  return np.asarray(loaded.train_labels if split == "train" else loaded.test_labels)


@functools.lru_cache(maxsize=None)
def _all_rows(key: _Key, split: str) -> jax.Array:
  return jnp.arange(len(_host_labels(key, split)), dtype=jnp.int32)


@functools.lru_cache(maxsize=None)
def _class_rows(key: _Key, split: str, classes: tuple[int, ...]) -> jax.Array:
  return jnp.asarray(np.flatnonzero(np.isin(_host_labels(key, split), classes)), jnp.int32)


@functools.lru_cache(maxsize=None)
def _offset_labels(key: _Key, split: str, offset: int) -> jax.Array:
  return jnp.asarray(_host_labels(key, split) + offset, jnp.int32)


@functools.lru_cache(maxsize=None)
def _imbalanced_rows(key: _Key, imbalance_seed: int, t: int):
  """Task t's kept training rows (int32 [n] device), removal p [10], class counts [10]."""
  labels = _host_labels(key, "train")
  rng = np.random.default_rng((IMBALANCE_STREAM, imbalance_seed, t))
  removal = rng.uniform(size=NUM_DIGITS)
  keep = rng.random(labels.shape[0]) >= removal[labels]
  counts = np.bincount(labels[keep], minlength=NUM_DIGITS)
  return jnp.asarray(np.flatnonzero(keep), jnp.int32), removal, counts


def _to_mixture_shape(images: np.ndarray) -> np.ndarray:
  """uint8 [N, 28, 28, 1] -> [N, 32, 32, 3]: zero border of 2, gray copied to RGB."""
  if images.shape[1:] == _MIXTURE_SHAPE:
    return images
  pad_h = (_MIXTURE_SHAPE[0] - images.shape[1]) // 2
  pad_w = (_MIXTURE_SHAPE[1] - images.shape[2]) // 2
  padded = np.pad(images, ((0, 0), (pad_h, pad_h), (pad_w, pad_w), (0, 0)))
  return np.repeat(padded, _MIXTURE_SHAPE[2] // images.shape[3], axis=3)


def _permutation(seed: int, t: int, permute_first: bool) -> Optional[np.ndarray]:
  if t == 0 and not permute_first:
    return None
  rng = np.random.default_rng((PERMUTATION_STREAM, seed, t))
  return rng.permutation(28 * 28).astype(np.int32)


def _permutation_note(permute_first: bool) -> str:
  which = ("every task, the first included" if permute_first
           else "tasks 1.. (task 0 unpermuted)")
  return f"pixel permutations: {which}; drawn from (seed, task)"


def _check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
