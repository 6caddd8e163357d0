"""Real ``results.RunRecord``s for tests, built from a few numbers."""
import dataclasses

import numpy as np

from dhp_jax import config as config_lib
from dhp_jax.results import Divergence, RunRecord, Stability, trace_arrays


def curve_matrix(curve) -> np.ndarray:
  """[n, n] accuracy rows whose running average accuracy is ``curve``: row t holds
  ``curve[t]`` on tasks 1..t+1 (0.1 on the tasks not seen yet)."""
  n = len(curve)
  return np.asarray([[curve[t] if i <= t else 0.1 for i in range(n)] for t in range(n)])


def two_tasks(acc: float) -> np.ndarray:
  """Two tasks with ACC ``acc``, running average [0.99, acc] and BWT −0.1."""
  return np.asarray([[0.99, 0.5], [0.89, 2 * acc - 0.89]])


def record(matrices, *, config=None, num_tasks=None, completed_tasks=None,
           divergence=None, trace=None, stability=(), notes=(), wall_time_s=None,
           init_accuracy=0.1) -> RunRecord:
  """Seed index s (seed ``config.seed + s``) finished the tasks of ``matrices[s]`` ([n, n]
  rows after each task; any n ≤ ``num_tasks``). ``divergence``: index -> (task, epoch,
  quantities); ``trace``: the JSON layout (lists per epoch, None where not finite);
  ``stability``: JSON records ({task, max_lr_strength_importance, largest_layer})."""
  config = config or config_lib.make_config("split_mnist", "quick", num_seeds=len(matrices))
  config = dataclasses.replace(config, num_seeds=len(matrices))
  longest = max(len(m) for m in matrices)
  num_tasks = num_tasks or longest
  accuracy = np.full((len(matrices), num_tasks, num_tasks), np.nan)
  for s, m in enumerate(matrices):
    m = np.asarray(m, float)
    accuracy[s, :len(m), :m.shape[1]] = m
    accuracy[s, :len(m), m.shape[1]:] = 0.1
  divergence = divergence or {}
  trace = trace or {"task": [], "eta": [], "hebb_norm": [], "alpha_norm": [],
                    "epoch_loss": []}
  return RunRecord(
      config=config.to_json(), seeds=tuple(config.seed + s for s in range(len(matrices))),
      num_tasks=num_tasks,
      completed_tasks=longest if completed_tasks is None else completed_tasks,
      accuracy=accuracy, init_accuracy=np.full((len(matrices), num_tasks), init_accuracy),
      divergence=tuple(Divergence(*divergence[s][:2], tuple(divergence[s][2]))
                       if s in divergence else None for s in range(len(matrices))),
      trace=trace_arrays(trace, len(matrices)),
      stability=tuple(Stability(r["task"], tuple(r["max_lr_strength_importance"]),
                                tuple(r["largest_layer"])) for r in stability),
      notes=tuple(notes), wall_time_s=wall_time_s)


def from_curves(curves, **kwargs) -> RunRecord:
  """``record`` whose seed s has running average accuracy ``curves[s]``."""
  return record([curve_matrix(c) for c in curves], **kwargs)
