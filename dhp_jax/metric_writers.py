"""Metrics a researcher can watch while a run goes and load afterwards.

``MetricsWriter`` is an observer of ``engine.train_and_evaluate``: per epoch and seed the
training loss, η, ‖Hebb‖_F and ‖α‖_F; after each task the test accuracy on every task so
far and the running average accuracy. It writes TensorBoard event files (tensorboardX:
no TensorFlow needed; one writer per seed, ``<logdir>/<run>/seed_<s>/``, step = the epoch
count since the run began) and appends to one tidy CSV, ``<logdir>/metrics.csv``, with the
columns ``run, seed, task, epoch, metric, value`` (task and epoch 1-based; epoch empty for
the per-task accuracies). Everything it gets is already on the host.

Resume: before the first task trains, the engine calls ``start(results)`` with the
committed results the run goes on from. The writer then rewrites its seeds' events and
CSV rows from that commit alone, so whatever was logged after it (epochs of a task a kill
or Ctrl-C cut short, a task whose commit never happened) goes, and what a kill kept from
reaching the disk comes back: the metrics equal an uninterrupted run's.
"""
from __future__ import annotations

import csv
import os
import shutil
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
    os.makedirs(logdir, exist_ok=True)
    self.logdir, self.run, self.seeds, self.epochs = logdir, run, list(seeds), epochs_per_task
    self.csv_path = os.path.join(logdir, CSV_NAME)
    self.writers = None   # opened on first use: ``start`` may first clear their folders
    # Rows of the task in progress: written when it ends (``start`` drops those of a task
    # that was never committed).
    self.pending = []

  def _seed_dir(self, seed: int) -> str:
    return os.path.join(self.logdir, self.run, f"seed_{seed}")

  def _open(self) -> list:
    if self.writers is None:
      from tensorboardX import SummaryWriter   # only when metrics are asked for
      self.writers = [SummaryWriter(self._seed_dir(s)) for s in self.seeds]
    return self.writers

  def _step(self, task: int, epoch: int) -> int:
    return task * self.epochs + epoch + 1

  def start(self, record) -> None:
    """This run's metrics become exactly those of ``record`` (the committed
    ``results.RunRecord`` the run resumes from; None: a fresh start), replayed task by
    task."""
    self.close()
    for seed in self.seeds:   # only this run's seeds: added seeds share the run's name
      shutil.rmtree(self._seed_dir(seed), ignore_errors=True)
    self._drop_csv_rows()
    self.pending = []
    self._open()
    if record is None:
      return
    trace = record.trace
    for task in range(record.completed_tasks):
      rows = np.flatnonzero(np.asarray(trace["task"]) == task)
      for epoch, i in enumerate(rows):
        self.epoch(task, epoch, {name: trace[name][i] for name in EPOCH_METRICS
                                 if len(trace.get(name, ())) > i})
      self.task(task, _accuracy_after(record, task))

  def _drop_csv_rows(self) -> None:
    """Removes this run's seeds' rows from the CSV (write-then-rename)."""
    if not os.path.exists(self.csv_path):
      return
    with open(self.csv_path, newline="") as f:
      rows = list(csv.reader(f))
    mine = {str(seed) for seed in self.seeds}
    kept = [row for row in rows[1:] if not (row[0] == self.run and row[1] in mine)]
    if len(kept) == len(rows) - 1:
      return
    with open(self.csv_path + ".tmp", "w", newline="") as f:
      csv.writer(f).writerows([CSV_COLUMNS, *kept])
    os.replace(self.csv_path + ".tmp", self.csv_path)

  def epoch(self, task: int, epoch: int, values: dict) -> None:
    """``values``: {name: [S] per-seed values} (names of ``EPOCH_METRICS``; None = NaN)."""
    writers = self._open()
    for name, tag in EPOCH_METRICS.items():
      for s, value in enumerate(values.get(name, ())):
        value = np.nan if value is None else float(value)
        writers[s].add_scalar(tag, value, self._step(task, epoch))
        self.pending.append((self.run, self.seeds[s], task + 1, epoch + 1, name, value))

  def task(self, task: int, accuracy) -> None:
    """``accuracy`` [S, T]: every seed's test accuracy on every task after task ``task``."""
    accuracy = np.asarray(accuracy, float)
    step = self._step(task, self.epochs - 1)
    for s, writer in enumerate(self._open()):
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
    for writer in self.writers or ():
      writer.close()
    self.writers = None


def _accuracy_after(record, task: int) -> np.ndarray:
  """[S, T] every seed's accuracies after ``task`` (0-based) from a run record; NaN for a
  seed that diverged before it."""
  done = np.asarray([record.tasks_done(s) for s in range(len(record.seeds))])
  return np.where((task < done)[:, None], record.accuracy[:, task], np.nan)
