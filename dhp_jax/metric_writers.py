"""Metrics a researcher can watch while a run goes and load afterwards.

``MetricsWriter`` is an observer of ``engine.train_and_evaluate``: per epoch and seed the
training loss, η, ‖Hebb‖_F and ‖α‖_F; after each task the test accuracy on every task so
far and the running average accuracy. It writes TensorBoard event files (tensorboardX:
no TensorFlow needed; one writer per seed, ``<logdir>/<run>/seed_<s>/``, step = the epoch
count since the run began) and appends to one tidy CSV, ``<logdir>/metrics.csv``, with the
columns ``run, seed, task, epoch, metric, value`` (task and epoch 1-based; epoch empty for
the per-task accuracies). Everything it gets is already on the host.
"""
from __future__ import annotations

import csv
import os
from typing import Sequence

import numpy as np

from dhp_jax import results

CSV_NAME = "metrics.csv"
CSV_COLUMNS = ("run", "seed", "task", "epoch", "metric", "value")
# The trace's per-epoch quantities (``results.TRACE_QUANTITIES``) → TensorBoard tags.
EPOCH_METRICS = {name: "train/loss" if name == "epoch_loss" else f"plasticity/{name}"
                 for name in results.TRACE_QUANTITIES}
AVERAGE_ACCURACY = "test/average_accuracy"


def accuracy_tag(task: int) -> str:
  """TensorBoard tag (and CSV metric) of the test accuracy on task ``task`` (1-based)."""
  return f"test/accuracy_task_{task}"


class MetricsWriter:
  """Writes one run's metrics; ``seeds`` [S] in the order of the engine's seed axis."""

  def __init__(self, logdir: str, run: str, seeds: Sequence[int], epochs_per_task: int):
    from tensorboardX import SummaryWriter   # only when metrics are asked for

    os.makedirs(logdir, exist_ok=True)
    self.run, self.seeds, self.epochs = run, list(seeds), epochs_per_task
    self.writers = [SummaryWriter(os.path.join(logdir, run, f"seed_{s}")) for s in seeds]
    self.csv_path = os.path.join(logdir, CSV_NAME)
    # Rows of the task in progress: written when it ends, so a resumed run (which
    # replays the unfinished task) leaves no duplicates in the CSV.
    self.pending = []

  def _step(self, task: int, epoch: int) -> int:
    return task * self.epochs + epoch + 1

  def epoch(self, task: int, epoch: int, values: dict) -> None:
    """``values``: {name: [S] per-seed values} (names of ``EPOCH_METRICS``; None = NaN)."""
    for name, tag in EPOCH_METRICS.items():
      for s, value in enumerate(values.get(name, ())):
        value = np.nan if value is None else float(value)
        self.writers[s].add_scalar(tag, value, self._step(task, epoch))
        self.pending.append((self.run, self.seeds[s], task + 1, epoch + 1, name, value))

  def task(self, task: int, accuracy) -> None:
    """``accuracy`` [S, T]: every seed's test accuracy on every task after task ``task``."""
    accuracy = np.asarray(accuracy, float)
    step = self._step(task, self.epochs - 1)
    for s, writer in enumerate(self.writers):
      seen = accuracy[s, :task + 1]
      for i, value in enumerate(seen):
        writer.add_scalar(accuracy_tag(i + 1), value, step)
        self.pending.append((self.run, self.seeds[s], task + 1, "", accuracy_tag(i + 1),
                             float(value)))
      writer.add_scalar(AVERAGE_ACCURACY, float(seen.mean()), step)
      self.pending.append((self.run, self.seeds[s], task + 1, "", AVERAGE_ACCURACY,
                           float(seen.mean())))
      writer.flush()
    self._append_csv()

  def _append_csv(self) -> None:
    new = not os.path.exists(self.csv_path)
    with open(self.csv_path, "a", newline="") as f:
      out = csv.writer(f)
      if new:
        out.writerow(CSV_COLUMNS)
      out.writerows(self.pending)
    self.pending = []

  def close(self) -> None:
    for writer in self.writers:
      writer.close()
