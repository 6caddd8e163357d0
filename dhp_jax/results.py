"""The ``results.json`` payload of a run: per-seed accuracy matrices and metrics, the
mean/SEM over seeds, and merging the seeds of two runs of one config.

Per seed (``per_seed`` entries): ``accuracy_matrix`` (lower triangle, fractions),
``accuracy_matrix_all_tasks`` (full rows, for FWT), ``init_accuracy``, ``avg_accuracy``,
``bwt``, ``fwt``, ``avg_accuracy_curve``, and ``diverged`` {task, epoch, quantities} for a
seed that went non-finite. ``trace``: per epoch, one value per seed (``eta``,
``hebb_norm``, ``alpha_norm``, ``epoch_loss``) and the epoch's ``task``.
``penalty_stability``: per task, the largest lr·λ·Ω over the slow weights per seed.
"""
from __future__ import annotations

import numpy as np

from dhp_jax import config as config_lib
from dhp_jax import metrics

# The per-epoch quantities of ``trace`` (one value per seed each): the DHP head's η,
# ‖Hebb‖_F and ‖α‖_F (``training.plasticity_stats``) and the epoch's training loss.
TRACE_QUANTITIES = ("eta", "hebb_norm", "alpha_norm", "epoch_loss")


def summarize(per_seed: list) -> tuple[dict, dict]:
  """Mean and SEM over the seeds that did not diverge (their numbers would stop earlier)."""
  mean, sem = {}, {}
  for key in ("avg_accuracy", "bwt", "fwt"):
    values = [s[key] for s in per_seed if s.get(key) is not None and "diverged" not in s]
    if values:
      mean[key], sem[key] = metrics.mean_and_sem(values)
  return mean, sem


def per_seed_results(seeds, acc, init_acc, done, diverged_seeds=None):
  """acc: [S, T, T] full matrix (rows > done unfilled); returns the JSON per-seed list.

  ``diverged_seeds`` maps a seed to its {task, epoch, quantities}: that seed's numbers
  stop after the last task it finished, and its entry says where it diverged.
  """
  out = []
  for s, seed in enumerate(seeds):
    diverged = (diverged_seeds or {}).get(seed)
    n = done if diverged is None else min(done, diverged["task"] - 1)
    full = acc[s, :n, :n]
    lower = [[float(full[t, i]) if i <= t else None for i in range(n)] for t in range(n)]
    entry = {"seed": int(seed), "accuracy_matrix": lower,
             "accuracy_matrix_all_tasks": [[float(v) for v in row] for row in acc[s, :n]],
             "init_accuracy": [float(v) for v in init_acc[s]]}
    if diverged is not None:
      entry["diverged"] = diverged
    if n:
      entry["avg_accuracy"] = metrics.average_accuracy(full)
      entry["bwt"] = metrics.backward_transfer(full)
      entry["fwt"] = metrics.forward_transfer(full, init_acc[s, :n])
      entry["avg_accuracy_curve"] = [float(v) for v in metrics.average_accuracy_curve(full)]
    out.append(entry)
  return out


def finite_or_none(values: list) -> list:
  """JSON has no NaN: a diverged seed's trace entries are written as null."""
  return [v if np.isfinite(v) else None for v in values]


def accuracy_by_seed(results: dict) -> tuple[dict, set]:
  """{seed: final ACC %} of the seeds that finished, and the seeds that diverged."""
  diverged = {e["seed"] for e in results["per_seed"] if "diverged" in e}
  diverged |= set(results.get("diverged", {}).get("seeds", ()))
  finished = {e["seed"]: 100 * e["avg_accuracy"] for e in results["per_seed"]
              if e["seed"] not in diverged}
  return finished, diverged


def divergence_note(diverged_tasks: list) -> str:
  """Where a row whose every seed diverged stopped, from the task each seed diverged in:
  "diverged in task 6" (one seed, or all in one task), else "5 of 5 seeds diverged,
  tasks 6–7"."""
  first, last = min(diverged_tasks), max(diverged_tasks)
  if first == last:
    return f"diverged in task {first}"
  n = len(diverged_tasks)
  return f"{n} of {n} seeds diverged, tasks {first}–{last}"


def mark_stopped_seeds(run: dict) -> list:
  """Per-seed entries of a finished run, the seeds a run-wide divergence stopped marked
  as diverged in their own entry (as the engine marks a seed that diverged alone)."""
  stop = run.get("diverged")
  return [{**e, "diverged": {k: stop[k] for k in ("task", "epoch", "quantities")}}
          if stop and e["seed"] in stop["seeds"] and "diverged" not in e else e
          for e in run["per_seed"]]


def merge_seed_runs(first: dict, second: dict) -> dict:
  """One results payload holding the seeds of two finished runs of one config.

  Args:
    first, second: ``results.json`` payloads of the same config whose seeds follow on
      (``second``'s first seed = ``first``'s first seed + its ``num_seeds``), each with
      every task done or stopped because all its seeds diverged.
  Returns:
    The payload ``train_and_evaluate`` would have written for all the seeds at once (up
    to float reassociation in the vmapped matmuls): per-seed entries and per-epoch trace
    values concatenated (None where a run had stopped), mean/SEM over the surviving
    seeds, wall times summed; run-wide ``"diverged"`` only if no seed finished.
  """
  a, b = config_lib.with_defaults(first["config"]), config_lib.with_defaults(second["config"])
  if {**b, "seed": a["seed"], "num_seeds": a["num_seeds"]} != a or \
      b["seed"] != a["seed"] + a["num_seeds"]:
    raise ValueError(f"merge_seed_runs: second run (seed {b['seed']}, {b['num_seeds']} "
                     f"seeds) does not continue the first (seed {a['seed']}, "
                     f"{a['num_seeds']} seeds) with the same config")
  for name, run in (("first", first), ("second", second)):
    if run["completed_tasks"] != run["num_tasks"] and "diverged" not in run:
      raise ValueError(f"merge_seed_runs: {name} run is unfinished "
                       f"({run['completed_tasks']}/{run['num_tasks']} tasks)")
  last_stop = _last_stop(first, second)
  # The seeds of the last run-wide stop stay unmarked, as in the run that holds them:
  # a row whose every seed diverged reports their numbers, after the last task done.
  ended_last = [last_stop is not None and _when(run.get("diverged")) == _when(last_stop)
                for run in (first, second)]
  per_seed = [e for run, last in zip((first, second), ended_last)
              for e in (run["per_seed"] if last else mark_stopped_seeds(run))]
  longer = max(first, second, key=lambda r: len(r["trace"]["task"]))
  trace = {"task": list(longer["trace"]["task"])}
  for key in first["trace"]:
    if key != "task":
      trace[key] = [
          [v for run, n in ((first, a["num_seeds"]), (second, b["num_seeds"]))
           for v in (run["trace"][key][i] if i < len(run["trace"][key]) else [None] * n)]
          for i in range(len(trace["task"]))]
  merged = {**first, "config": {**a, "num_seeds": a["num_seeds"] + b["num_seeds"]},
            "completed_tasks": longer["completed_tasks"], "per_seed": per_seed,
            "trace": trace, "wall_time_s": round((first.get("wall_time_s") or 0)
                                                 + (second.get("wall_time_s") or 0), 1)}
  stability = _merge_stability(first, a["num_seeds"], second, b["num_seeds"])
  if stability:
    merged["penalty_stability"] = stability
  merged.pop("diverged", None)
  if last_stop:
    merged["diverged"] = {**last_stop, "seeds": [e["seed"] for e in per_seed
                                                 if "diverged" not in e]}
  merged["mean"], merged["sem"] = summarize(per_seed)
  return merged


def _last_stop(first: dict, second: dict):
  """The run-wide divergence that ended both runs' last seeds, or None while a seed of
  either run finished. When both stopped, the later one (by task, then epoch) is the
  merged run's: the earlier run's seeds count as seeds that diverged before it."""
  stops = [run.get("diverged") for run in (first, second)]
  if not all(stops):
    return None
  return max(stops, key=_when)


def _when(stop) -> tuple:
  """(task, epoch) of a run-wide divergence record; () for none."""
  return (stop["task"], stop["epoch"]) if stop else ()


def _merge_stability(first: dict, first_seeds: int, second: dict, second_seeds: int) -> list:
  """The two runs' per-task ``penalty_stability`` records side by side (None for the
  seeds of a run that has no record of that task: it stopped, or predates the record)."""
  by_task = [{r["task"]: r for r in run.get("penalty_stability", [])}
             for run in (first, second)]
  merged = []
  for task in sorted(set(by_task[0]) | set(by_task[1])):
    record = {"task": task}
    for field in ("max_lr_strength_importance", "largest_layer"):
      record[field] = [v for records, n in zip(by_task, (first_seeds, second_seeds))
                       for v in records.get(task, {}).get(field, [None] * n)]
    merged.append(record)
  return merged


def summary_line(config, results: dict) -> str:
  """One line: row, benchmark, seeds, tasks done, mean ± SEM accuracy and BWT."""
  mean, sem = results["mean"], results["sem"]
  kept = sum("diverged" not in e for e in results["per_seed"])
  seeds = str(config.num_seeds) if kept == config.num_seeds else f"{kept}/{config.num_seeds}"
  return (f"{config_lib.row_label(config):<28} {config.benchmark:<26} seeds={seeds:<3} "
          f"tasks={results['completed_tasks']}/{results['num_tasks']}  "
          f"ACC={100 * mean['avg_accuracy']:6.2f} ± {100 * sem['avg_accuracy']:.2f}%  "
          f"BWT={mean['bwt']:+.3f} ± {sem['bwt']:.3f}")
