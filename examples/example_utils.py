"""What the examples share: their flags, Permuted MNIST batches and the printed matrix.

Copy this file with the example you take (the examples import it as ``example_utils``).
"""
from __future__ import annotations

import argparse

import jax
import numpy as np

from dhp_jax import metrics, streams


def flags(description: str, *, lr: float) -> argparse.ArgumentParser:
  """The flags every example takes; an example adds its own to the returned parser."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--num_tasks", type=int, default=2)
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--train_subset", type=int, default=None,
                      help="training images per task (default: all 60000)")
  parser.add_argument("--test_subset", type=int, default=None,
                      help="test images per task (default: all 10000)")
  parser.add_argument("--lr", type=float, default=lr, help="SGD learning rate")
  return parser


def batch_rows(task: streams.Task, size, key: jax.Array, batch_size: int) -> jax.Array:
  """int32 [steps, batch_size]: the task's first ``size`` training rows (None: all),
  shuffled with ``key``; the last partial batch is dropped."""
  rows = jax.random.permutation(key, task.train.index[:size])
  steps = rows.shape[0] // batch_size
  return rows[:steps * batch_size].reshape(steps, batch_size)


def train_batch(task: streams.Task, idx: jax.Array):
  """(x float [B, 28, 28, 1] in [0, 1], permuted for ``task``; y int32 [B]) for rows idx."""
  return streams.make_batch(task.train.images, task.train.labels, idx, task.permutation)


def test_batch(task: streams.Task, size):
  """The task's first ``size`` test images (None: all), as ``train_batch``."""
  return streams.make_batch(task.test.images, task.test.labels, task.test.index[:size],
                               task.permutation)


def print_accuracy_matrix(accuracy_matrix, note: str = "") -> None:
  """Prints R[T, i] (test accuracy on task i after training task T) and its average."""
  print(f"accuracy matrix R[T, i]{note} (row: after training task T; column: test task i)")
  for t, row in enumerate(np.asarray(accuracy_matrix)):
    print(f"after task {t}: " + " ".join(f"{a:.4f}" for a in row))
  print(f"average accuracy: {metrics.average_accuracy(accuracy_matrix):.4f}")
