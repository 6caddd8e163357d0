"""Continual-learning metrics from an accuracy matrix (SPEC §3; Lopez-Paz & Ranzato 2017),
and paired statistics over seeds.

``accuracy_matrix[T, i]`` is the test accuracy on task i after training task T (0-based),
as a fraction. Entries above the diagonal (tasks not yet trained) are used only by FWT.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np


def _check_matrix(accuracy_matrix) -> np.ndarray:
  r = np.asarray(accuracy_matrix, dtype=np.float64)
  if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] < 1:
    raise ValueError(f"accuracy_matrix must be square [T, T] with T >= 1, got shape {r.shape}")
  return r


def average_accuracy(accuracy_matrix, after_task: Optional[int] = None) -> float:
  """Mean of ``R[T, :T+1]``: accuracy over the tasks seen after task T (default: last)."""
  r = _check_matrix(accuracy_matrix)
  t = r.shape[0] - 1 if after_task is None else after_task
  return float(np.mean(r[t, :t + 1]))


def average_accuracy_curve(accuracy_matrix) -> np.ndarray:
  """[T] average accuracy over the tasks seen after each task (paper Fig. 2)."""
  r = _check_matrix(accuracy_matrix)
  return np.array([average_accuracy(r, t) for t in range(r.shape[0])])


def backward_transfer(accuracy_matrix) -> float:
  """BWT = 1/(T−1) Σ_{i<T} (R[T, i] − R[i, i]); 0 for a single task."""
  r = _check_matrix(accuracy_matrix)
  t = r.shape[0]
  if t == 1:
    return 0.0
  return float(np.mean([r[-1, i] - r[i, i] for i in range(t - 1)]))


def forward_transfer(accuracy_matrix, init_accuracy) -> float:
  """FWT = 1/(T−1) Σ_{i>0} (R[i−1, i] − b_i), b_i the accuracy of the untrained model."""
  r = _check_matrix(accuracy_matrix)
  b = np.asarray(init_accuracy, dtype=np.float64)
  if b.shape != (r.shape[0],):
    raise ValueError(f"init_accuracy must have shape ({r.shape[0]},), got {b.shape}")
  if r.shape[0] == 1:
    return 0.0
  return float(np.mean([r[i - 1, i] - b[i] for i in range(1, r.shape[0])]))


def mean_and_sem(values) -> tuple[float, float]:
  """Mean and standard error of the mean (ddof=1; 0 for a single value)."""
  v = np.asarray(values, dtype=np.float64)
  if v.size == 0:
    raise ValueError("values must be non-empty")
  sem = float(np.std(v, ddof=1) / np.sqrt(v.size)) if v.size > 1 else 0.0
  return float(np.mean(v)), sem


def paired_difference(first: Mapping[int, float], second: Mapping[int, float]) -> dict:
  """Paired statistics of ``first − second`` over the seeds both hold.

  Args:
    first, second: seed -> value (e.g. two rows' final average accuracy per seed); a seed
      only one of them holds is left out.
  Returns:
    ``{"seeds": shared seeds (sorted), "differences": first − second per seed, "mean",
    "sem" (ddof=1), "ci95": (lo, hi) the 95 % Student-t interval of the mean difference
    (n − 1 degrees of freedom), "wins": seeds where first is higher, "n"}``.
  Raises:
    ValueError when fewer than two seeds are shared: there is no SEM and no interval
    (callers skip the pair).
  """
  from scipy import stats   # a dependency of jax; slow to import, needed only here
  seeds = sorted(set(first) & set(second))
  if len(seeds) < 2:
    raise ValueError(f"first and second must share at least 2 seeds, got {len(seeds)} "
                     f"(first: {sorted(first)}, second: {sorted(second)})")
  differences = np.array([first[s] - second[s] for s in seeds], dtype=np.float64)
  mean, sem = mean_and_sem(differences)
  half_width = float(stats.t.ppf(0.975, len(seeds) - 1)) * sem
  return {"seeds": seeds, "differences": differences.tolist(), "mean": mean, "sem": sem,
          "ci95": (mean - half_width, mean + half_width),
          "wins": int(np.sum(differences > 0)), "n": len(seeds)}
