"""The paper's figures from run records (``results.RunRecord``; Agg backend, PNG files)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from dhp_jax import results as results_lib
from dhp_jax.results import RunRecord


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _mean_sem(rows) -> tuple[np.ndarray, np.ndarray]:
  a = np.asarray(rows, dtype=float)
  sem = a.std(0, ddof=1) / np.sqrt(a.shape[0]) if a.shape[0] > 1 else np.zeros(a.shape[1:])
  return a.mean(0), sem


def accuracy_curve(record: RunRecord):
  """[T] mean and SEM (over seeds) of the average accuracy after each task (Fig. 2)."""
  return _mean_sem([record.curve(s) for s in range(len(record.seeds))
                    if record.reporting(s)])   # a diverged seed's curve stops early


def curve_label(label: str, record: RunRecord) -> str:
  """Legend entry of one Fig. 2 curve: the final average accuracy of the seeds that
  finished (and how many did not), or, when none did, where the seeds diverged (the curve
  stops early, so its last point is not a final accuracy)."""
  if record.stopped():
    tasks = [d.task for d in record.divergence]
    return f"{label} ({results_lib.divergence_note(tasks)})"
  diverged = len(record.diverged_seeds())
  lost = f", {diverged} of {len(record.seeds)} seeds diverged" if diverged else ""
  return f"{label} ({100 * accuracy_curve(record)[0][-1]:.2f}%{lost})"


def plot_accuracy(runs: Mapping[str, RunRecord], path: str, title: str = "") -> None:
  """Fig. 2: average test accuracy over the tasks seen vs number of tasks, mean ± SEM.

  ``runs`` maps a legend label to a run record.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(9, 4))
  # tab10 repeats after ten curves; Table I with controls has up to a dozen.
  ax.set_prop_cycle(color=(plt.cm.tab10 if len(runs) <= 10 else plt.cm.tab20).colors)
  for label, results in runs.items():
    mean, sem = accuracy_curve(results)
    x = np.arange(1, len(mean) + 1)
    ax.errorbar(x, 100 * mean, yerr=100 * sem, marker="o", ms=3, capsize=2,
                label=curve_label(label, results))
  ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
  ax.set_xlabel("number of tasks learned")
  ax.set_ylabel("average test accuracy (%)")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))   # beside, not over
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


_PLASTICITY = (("eta", "η"), ("hebb_norm", "‖Hebb‖$_F$"), ("alpha_norm", "‖α‖$_F$"))


def _plasticity_axes(plt, trace: Mapping):
  """Fig. 3's three panels (η, ‖Hebb‖_F, ‖α‖_F vs epoch), task boundaries of ``trace``
  marked; returns the figure and the axes in ``_PLASTICITY`` order."""
  fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
  tasks = np.asarray(trace["task"][-len(trace["eta"]):])
  for ax, (_, name) in zip(axes, _PLASTICITY):
    for b in np.flatnonzero(np.diff(tasks)) + 1.5:
      ax.axvline(b, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("epoch")
    ax.set_title(name)
  return fig, axes


def _save(plt, fig, path: str, title: str, legend_space: float = 0.0) -> None:
  """Titles, lays out (keeping ``legend_space`` of the height free at the bottom), writes."""
  fig.suptitle(title)
  fig.tight_layout(rect=(0, legend_space, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _has_plasticity(record: RunRecord) -> bool:
  """Whether the run has a DHP head: its trace holds η values."""
  return bool(np.isfinite(np.asarray(record.trace.get("eta", ()), float)).any())


def plot_plasticity(record: RunRecord, path: str, title: str = "") -> bool:
  """Fig. 3: η, ‖Hebb‖_F and ‖α‖_F per epoch (mean over seeds), task boundaries marked.

  Returns False (and writes nothing) when the run has no DHP head.
  """
  trace = record.trace
  if not _has_plasticity(record):
    return False
  plt = _pyplot()
  fig, axes = _plasticity_axes(plt, trace)
  x = np.arange(1, len(trace["eta"]) + 1)
  for ax, (key, _) in zip(axes, _PLASTICITY):
    mean, sem = _mean_sem(np.asarray(trace[key], dtype=float).T)
    ax.plot(x, mean)
    ax.fill_between(x, mean - sem, mean + sem, alpha=0.3)
  _save(plt, fig, path, title)
  return True


def plot_plasticity_per_seed(runs: Mapping[str, RunRecord], path: str,
                             title: str = "") -> bool:
  """Fig. 3 with one line per seed: η, ‖Hebb‖_F and ‖α‖_F per epoch, rows overlaid.

  ``runs`` maps a legend label to a run record (``trace[key]`` [E, S], NaN where a seed
  had diverged). Each row gets its own colour map, its seeds shades of it (light → dark
  in seed order), so rows stay apart and seeds stay visible.
  Returns False (and writes nothing) when no run has a DHP head.
  """
  colour_maps = ("Blues", "Oranges", "Greens", "Purples")
  if len(runs) > len(colour_maps):
    raise ValueError(f"runs: at most {len(colour_maps)} rows per figure, got {len(runs)}")
  runs = {label: record for label, record in runs.items() if _has_plasticity(record)}
  if not runs:
    return False
  plt = _pyplot()
  longest = max(runs.values(), key=lambda r: len(r.trace["eta"]))
  fig, axes = _plasticity_axes(plt, longest.trace)
  for (label, record), colour_map in zip(runs.items(), colour_maps):
    trace, seeds = record.trace, record.seeds
    colours = plt.get_cmap(colour_map)(np.linspace(0.45, 0.95, len(seeds)))
    span = f"seed {seeds[0]}" if len(seeds) == 1 else \
        f"seeds {seeds[0]}–{seeds[-1]}, light → dark"
    x = np.arange(1, len(trace["eta"]) + 1)
    for ax, (key, _) in zip(axes, _PLASTICITY):
      values = np.asarray(trace[key], dtype=float)   # None (diverged) -> NaN: a gap
      for s, colour in enumerate(colours):
        ax.plot(x, values[:, s], color=colour, lw=1,
                label=f"{label}, {span}" if s == len(seeds) - 1 else None)
  # Below the panels: inside one it would hide the lines it names.
  fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(runs),
             fontsize=7, frameon=False)
  _save(plt, fig, path, title, legend_space=0.08)
  return True


def plot_eta_sweep(etas: Sequence[float], curves: Mapping[str, tuple], path: str) -> None:
  """Fig. 4: final average accuracy vs initial η, mean ± SEM, one line per benchmark.

  ``curves[name] = (mean [len(etas)], sem [len(etas)])`` as fractions.
  """
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for name, (mean, sem) in curves.items():
    mean, sem = 100 * np.asarray(mean), 100 * np.asarray(sem)
    ax.plot(etas, mean, marker="o", label=name)
    ax.fill_between(etas, mean - sem, mean + sem, alpha=0.25)
  ax.set_xscale("log")
  ax.set_xlabel("initial η")
  ax.set_ylabel("average test accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
