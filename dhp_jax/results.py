"""The run record: what a run has done, typed, and the ``results.json`` layout it owns.

``RunRecord`` holds a run's numbers as arrays — the accuracy matrices, the untrained
accuracies, each seed's divergence, the per-epoch trace, the per-task stability record —
and answers the questions tables, figures and the store ask (``finished``,
``diverged_seeds``, ``accuracy_by_seed``, ``holds``/``seeds_to_extend``). The engine keeps
one in its progress and writes ``results.json`` from it (``to_json``); readers parse a
``results.json`` once (``from_json``) and never index the payload themselves.

Divergence has one encoding here: a seed's ``Divergence`` (task, epoch, quantities) or
None. A run whose every seed diverged has *stopped*; the seeds that diverged last report
their numbers (after the last task they finished) and the others are left out.

``results.json`` (written by ``to_json``, the layout of every run recorded so far):
``per_seed`` entries hold ``accuracy_matrix`` (lower triangle, fractions),
``accuracy_matrix_all_tasks`` (full rows, for FWT), ``init_accuracy``, ``avg_accuracy``,
``bwt``, ``fwt``, ``avg_accuracy_curve`` and, for a seed that diverged while others went
on, ``diverged`` {task, epoch, quantities}; a stopped run's last seeds are listed in the
run-wide ``diverged`` {task, epoch, quantities, seeds} instead. ``trace``: per epoch, one
value per seed (``TRACE_QUANTITIES``, null where non-finite) and the epoch's 0-based
``task``. ``penalty_stability``: per task, the largest lr·λ·Ω over the slow weights per seed
and its layer. ``mean``/``sem``: over the seeds that report numbers.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple, Optional

import numpy as np

from dhp_jax import config as config_lib
from dhp_jax import metrics, store

# The per-epoch quantities of ``trace`` (one value per seed each): the DHP head's η,
# ‖Hebb‖_F and ‖α‖_F (``training.plasticity_stats``) and the epoch's training loss.
TRACE_QUANTITIES = ("eta", "hebb_norm", "alpha_norm", "epoch_loss")
# What the engine checks for non-finite values after every epoch, in this order.
NONFINITE_QUANTITIES = ("loss", "Hebb trace", "parameters")


class Divergence(NamedTuple):
  """Where a seed went non-finite: 1-based task and epoch, and what was non-finite."""
  task: int
  epoch: int
  quantities: tuple

  def to_json(self) -> dict:
    return {"task": self.task, "epoch": self.epoch, "quantities": list(self.quantities)}


class Stability(NamedTuple):
  """After task ``task`` (1-based): per seed the largest lr·λ·Ω over the slow weights and
  the layer holding it (None for a seed without a record: merged from a run before it)."""
  task: int
  value: tuple
  layer: tuple


@dataclasses.dataclass(frozen=True)
class RunRecord:
  """A run's numbers after ``completed_tasks`` of ``num_tasks`` tasks.

  Shapes (S seeds, T tasks, E epochs trained): ``accuracy`` [S, T, T] (row t: after task
  t, on every task; NaN where not evaluated), ``init_accuracy`` [S, T], ``trace`` name ->
  [E, S] float (NaN: not finite or not trained) and ``"task"`` -> [E] int (0-based).
  """
  config: Mapping
  seeds: tuple
  num_tasks: int
  completed_tasks: int
  accuracy: np.ndarray
  init_accuracy: np.ndarray
  divergence: tuple            # [S] Divergence or None
  trace: Mapping
  stability: tuple = ()        # Stability per task (penalised methods)
  notes: tuple = ()
  task_names: tuple = ()
  devices: tuple = ()
  wall_time_s: Optional[float] = None

  # ---------------------------------------------------------------- what it answers

  def diverged_seeds(self) -> dict:
    """{seed: Divergence} of every seed that went non-finite."""
    return {seed: d for seed, d in zip(self.seeds, self.divergence) if d is not None}

  def stopped(self) -> bool:
    """Every seed diverged: the run ended early, and rerunning it diverges again."""
    return bool(self.seeds) and all(d is not None for d in self.divergence)

  def last_stopped(self) -> tuple:
    """The seeds that diverged last in a stopped run (those reporting its numbers)."""
    if not self.stopped():
      return ()
    last = max((d.task, d.epoch) for d in self.divergence)
    return tuple(s for s, d in zip(self.seeds, self.divergence) if (d.task, d.epoch) == last)

  def reporting(self, s: int) -> bool:
    """Whether seed index ``s`` counts in the mean: it never diverged, or the run stopped
    and it diverged last."""
    return self.divergence[s] is None or self.seeds[s] in self.last_stopped()

  def finished(self) -> bool:
    """All tasks done, or stopped (every seed diverged)."""
    return self.completed_tasks == self.num_tasks or self.stopped()

  def tasks_done(self, s: int) -> int:
    """Tasks seed index ``s`` finished (a diverged seed: those before its divergence)."""
    d = self.divergence[s]
    return self.completed_tasks if d is None else min(self.completed_tasks, d.task - 1)

  def matrix(self, s: int) -> np.ndarray:
    """[n, n] seed ``s``'s accuracy matrix over the n tasks it finished."""
    n = self.tasks_done(s)
    return self.accuracy[s, :n, :n]

  def final_accuracy(self, s: int) -> Optional[float]:
    """Seed index ``s``'s ACC (fraction) after the last task it finished (None: none)."""
    return metrics.average_accuracy(self.matrix(s)) if self.tasks_done(s) else None

  def accuracy_by_seed(self) -> tuple[dict, set]:
    """{seed: final ACC %} of the seeds that never diverged, and the seeds that did."""
    diverged = set(self.diverged_seeds())
    return ({seed: 100 * self.final_accuracy(s) for s, seed in enumerate(self.seeds)
             if seed not in diverged and self.tasks_done(s)}, diverged)

  def curve(self, s: int) -> list:
    """Seed index ``s``'s running average accuracy after each task it finished."""
    return [float(v) for v in metrics.average_accuracy_curve(self.matrix(s))] \
        if self.tasks_done(s) else []

  def summary(self) -> tuple[dict, dict]:
    """Mean and SEM of ACC, BWT, FWT over the reporting seeds (fractions)."""
    return self._summarize([self._seed_metrics(s) for s in range(len(self.seeds))])

  def _summarize(self, per_seed: list) -> tuple[dict, dict]:
    """``summary`` from ``_seed_metrics`` per seed index (those of seeds not reporting
    are left out)."""
    mean, sem = {}, {}
    reported = [m for s, m in enumerate(per_seed) if m and self.reporting(s)]
    for key in ("avg_accuracy", "bwt", "fwt"):
      values = [m[key] for m in reported]
      if values:
        mean[key], sem[key] = metrics.mean_and_sem(values)
    return mean, sem

  def num_seeds_held(self) -> int:
    return int(self.config.get("num_seeds", len(self.seeds)))

  def holds(self, config) -> bool:
    """A finished run of ``config``, or of ``config`` with more seeds (added later):
    it holds every seed ``config`` asks for."""
    held = self.num_seeds_held()
    return (held >= config.num_seeds and self.finished()
            and config_lib.config_matches(self.config,
                                          dataclasses.replace(config, num_seeds=held)))

  def seeds_to_extend(self, config) -> int:
    """How many seeds this finished run holds when it is ``config`` with fewer seeds
    (same first seed); 0 otherwise. Those need not be trained again for ``config``."""
    held = self.num_seeds_held()
    if held >= config.num_seeds:
      return 0
    return held if self.holds(dataclasses.replace(config, num_seeds=held)) else 0

  # ------------------------------------------------------------------- the JSON

  def _seed_metrics(self, s: int) -> dict:
    full = self.matrix(s)
    if not len(full):
      return {}
    return {"avg_accuracy": metrics.average_accuracy(full),
            "bwt": metrics.backward_transfer(full),
            "fwt": metrics.forward_transfer(full, self.init_accuracy[s, :len(full)]),
            "avg_accuracy_curve": self.curve(s)}

  def _seed_json(self, s: int, seed_metrics: dict) -> dict:
    n, full = self.tasks_done(s), self.matrix(s)
    entry = {"seed": int(self.seeds[s]),
             "accuracy_matrix": [[float(full[t, i]) if i <= t else None for i in range(n)]
                                 for t in range(n)],
             "accuracy_matrix_all_tasks": [[float(v) for v in row]
                                           for row in self.accuracy[s, :n]],
             "init_accuracy": [float(v) for v in self.init_accuracy[s]]}
    if not self.reporting(s):
      entry["diverged"] = self.divergence[s].to_json()
    return {**entry, **seed_metrics}

  def left_out(self) -> dict:
    """{seed: Divergence} of the seeds left out of the mean: those that diverged while
    others went on (or, in a stopped run, before the last ones)."""
    return {seed: d for s, (seed, d) in enumerate(zip(self.seeds, self.divergence))
            if not self.reporting(s)}

  def stop(self) -> Optional[dict]:
    """Where a stopped run ended: {task, epoch, quantities, seeds} of the seeds that
    diverged last (None: not stopped)."""
    if not self.stopped():
      return None
    last = self.last_stopped()
    ds = [d for seed, d in zip(self.seeds, self.divergence) if seed in last]
    return {"task": ds[0].task, "epoch": ds[0].epoch,
            "quantities": sorted({q for d in ds for q in d.quantities}),
            "seeds": [int(s) for s in last]}

  def to_json(self) -> dict:
    """The ``results.json`` payload."""
    trace = {name: [finite_or_none(row.tolist()) for row in np.asarray(values, float)]
             for name, values in self.trace.items() if name != "task"}
    trace["task"] = [int(t) for t in self.trace["task"]]
    per_seed = [self._seed_metrics(s) for s in range(len(self.seeds))]   # once, for both
    payload = {"config": dict(self.config), "completed_tasks": self.completed_tasks,
               "num_tasks": self.num_tasks, "notes": list(self.notes),
               "task_names": list(self.task_names),
               "per_seed": [self._seed_json(s, m) for s, m in enumerate(per_seed)],
               "trace": trace, "devices": list(self.devices),
               "wall_time_s": self.wall_time_s}
    if self.stability:
      payload["penalty_stability"] = [
          {"task": r.task, "max_lr_strength_importance": list(r.value),
           "largest_layer": list(r.layer)} for r in self.stability]
    if self.stopped():
      payload["diverged"] = self.stop()
    payload["mean"], payload["sem"] = self._summarize(per_seed)
    return payload

  # ------------------------------------------------------ the arrays a commit saves

  def progress_arrays(self) -> dict:
    """{name: array}: the record's numbers, what a commit saves to resume from
    (``with_progress`` reads them back; the run's fixed fields come from its config)."""
    num_seeds = len(self.seeds)
    records = self.stability
    return {
        "completed_tasks": np.asarray(self.completed_tasks),
        "wall_time_s": np.asarray(np.nan if self.wall_time_s is None else self.wall_time_s),
        "accuracy": np.asarray(self.accuracy, float),
        "init_accuracy": np.asarray(self.init_accuracy, float),
        "divergence_task": np.asarray([d.task if d else 0 for d in self.divergence]),
        "divergence_epoch": np.asarray([d.epoch if d else 0 for d in self.divergence]),
        # joined, not a mask: the order they were recorded in is kept
        "divergence_quantities": np.asarray(["|".join(d.quantities) if d else ""
                                             for d in self.divergence], str),
        "stability_task": np.asarray([r.task for r in records], int),
        "stability_value": np.asarray([r.value for r in records], float).reshape(
            len(records), num_seeds),
        # "" for a seed without a record (merged from a run before the record)
        "stability_layer": np.asarray([[layer or "" for layer in r.layer] for r in records],
                                      str).reshape(len(records), num_seeds),
        **{f"trace/{name}": np.asarray(values) for name, values in self.trace.items()}}

  def with_progress(self, arrays: Mapping[str, np.ndarray]) -> "RunRecord":
    """This record (the run's fixed fields) with the numbers of ``progress_arrays``."""
    wall = float(arrays["wall_time_s"])
    divergence = tuple(
        Divergence(int(task), int(epoch), tuple(what.split("|"))) if task else None
        for task, epoch, what in zip(arrays["divergence_task"], arrays["divergence_epoch"],
                                     arrays["divergence_quantities"]))
    stability = tuple(
        Stability(int(task), tuple(float(v) if n else None for v, n in zip(values, layers)),
                  tuple(str(n) or None for n in layers))
        for task, values, layers in zip(arrays["stability_task"],
                                        arrays["stability_value"], arrays["stability_layer"]))
    trace = {name.split("/", 1)[1]: values for name, values in arrays.items()
             if name.startswith("trace/")}
    return dataclasses.replace(
        self, completed_tasks=int(arrays["completed_tasks"]), accuracy=arrays["accuracy"],
        init_accuracy=arrays["init_accuracy"], divergence=divergence, trace=trace,
        stability=stability, wall_time_s=None if np.isnan(wall) else wall)

  @classmethod
  def from_json(cls, payload: Mapping) -> "RunRecord":
    """The record a ``results.json`` payload holds."""
    entries, num_tasks = payload["per_seed"], payload["num_tasks"]
    accuracy = np.full((len(entries), num_tasks, num_tasks), np.nan)
    for s, entry in enumerate(entries):
      rows = entry["accuracy_matrix_all_tasks"]
      accuracy[s, :len(rows)] = np.asarray(rows, float).reshape(len(rows), num_tasks)
    stop = payload.get("diverged")
    divergence = tuple(_divergence(e.get("diverged")) or
                       (_divergence(stop) if stop and e["seed"] in stop["seeds"] else None)
                       for e in entries)
    return cls(
        config=payload["config"], seeds=tuple(e["seed"] for e in entries),
        num_tasks=num_tasks, completed_tasks=payload["completed_tasks"], accuracy=accuracy,
        init_accuracy=np.asarray([e["init_accuracy"] for e in entries], float),
        divergence=divergence, trace=trace_arrays(payload["trace"], len(entries)),
        stability=tuple(Stability(r["task"], tuple(r["max_lr_strength_importance"]),
                                  tuple(r["largest_layer"]))
                        for r in payload.get("penalty_stability", ())),
        notes=tuple(payload.get("notes", ())), task_names=tuple(payload.get("task_names", ())),
        devices=tuple(payload.get("devices", ())), wall_time_s=payload.get("wall_time_s"))


def _divergence(entry: Optional[Mapping]) -> Optional[Divergence]:
  return None if entry is None else Divergence(entry["task"], entry["epoch"],
                                               tuple(entry["quantities"]))


def trace_arrays(trace: Mapping, num_seeds: int) -> dict:
  """The JSON trace (lists per epoch, null where non-finite) as [E, S] float arrays."""
  arrays = {name: np.asarray([[np.nan if v is None else v for v in row] for row in values],
                             float).reshape(len(values), num_seeds)
            for name, values in trace.items() if name != "task"}
  arrays["task"] = np.asarray(trace["task"], int)
  return arrays


def empty_trace(num_seeds: int) -> dict:
  return {**{name: np.zeros((0, num_seeds)) for name in TRACE_QUANTITIES},
          "task": np.zeros((0,), int)}


def finite_or_none(values: list) -> list:
  """JSON has no NaN: a diverged seed's trace entries are written as null."""
  return [v if np.isfinite(v) else None for v in values]


def read(payload: Optional[Mapping]) -> Optional[RunRecord]:
  """``RunRecord.from_json`` of a payload, None for None (no run)."""
  return None if payload is None else RunRecord.from_json(payload)


def load(out_dir: str) -> Optional[RunRecord]:
  """The record of the latest commit of the run in ``out_dir`` (None: no run there)."""
  return read(store.read_results(out_dir))


def divergence_note(diverged_tasks: list) -> str:
  """Where a row whose every seed diverged stopped, from the task each seed diverged in:
  "diverged in task 6" (one seed, or all in one task), else "5 of 5 seeds diverged,
  tasks 6–7"."""
  first, last = min(diverged_tasks), max(diverged_tasks)
  if first == last:
    return f"diverged in task {first}"
  n = len(diverged_tasks)
  return f"{n} of {n} seeds diverged, tasks {first}–{last}"


# ------------------------------------------------------------------- merging seeds

def merge_seed_runs(first: RunRecord, second: RunRecord) -> RunRecord:
  """One record holding the seeds of two finished runs of one config.

  Args:
    first, second: records of the same config whose seeds follow on (``second``'s first
      seed = ``first``'s first seed + its ``num_seeds``), each finished (every task done,
      or stopped because all its seeds diverged).
  Returns:
    The record ``train_and_evaluate`` would have written for all the seeds at once (up
    to float reassociation in the vmapped matmuls): seeds, trace values (NaN where a run
    had stopped) and stability records side by side, wall times summed.
  """
  a = config_lib.with_defaults(first.config)
  b = config_lib.with_defaults(second.config)
  if {**b, "seed": a["seed"], "num_seeds": a["num_seeds"]} != a or \
      b["seed"] != a["seed"] + a["num_seeds"]:
    raise ValueError(f"merge_seed_runs: second run (seed {b['seed']}, {b['num_seeds']} "
                     f"seeds) does not continue the first (seed {a['seed']}, "
                     f"{a['num_seeds']} seeds) with the same config")
  for name, run in (("first", first), ("second", second)):
    if not run.finished():
      raise ValueError(f"merge_seed_runs: {name} run is unfinished "
                       f"({run.completed_tasks}/{run.num_tasks} tasks)")
  return dataclasses.replace(
      first, config={**a, "num_seeds": a["num_seeds"] + b["num_seeds"]},
      seeds=first.seeds + second.seeds,
      completed_tasks=max(first.completed_tasks, second.completed_tasks),
      accuracy=np.concatenate([first.accuracy, second.accuracy]),
      init_accuracy=np.concatenate([first.init_accuracy, second.init_accuracy]),
      divergence=first.divergence + second.divergence,
      trace=_merge_traces(first.trace, second.trace),
      stability=_merge_stability(first, second),
      wall_time_s=round((first.wall_time_s or 0) + (second.wall_time_s or 0), 1))


def _merge_traces(first: Mapping, second: Mapping) -> dict:
  """Per-epoch values side by side, NaN for the epochs a run had not trained."""
  longer = max(first, second, key=lambda t: len(t["task"]))
  epochs = len(longer["task"])

  def padded(values):
    values = np.asarray(values, float)
    return np.concatenate([values, np.full((epochs - len(values),) + values.shape[1:],
                                           np.nan)])

  merged = {name: np.concatenate([padded(first[name]), padded(second[name])], 1)
            for name in first if name != "task"}
  return {**merged, "task": np.asarray(longer["task"])}


def _merge_stability(first: RunRecord, second: RunRecord) -> tuple:
  """The two runs' per-task records side by side (None for the seeds of a run that has no
  record of that task: it stopped, or predates the record)."""
  by_task = [{r.task: r for r in run.stability} for run in (first, second)]
  sizes = (len(first.seeds), len(second.seeds))
  merged = []
  for task in sorted(set(by_task[0]) | set(by_task[1])):
    parts = [records.get(task, Stability(task, (None,) * n, (None,) * n))
             for records, n in zip(by_task, sizes)]
    merged.append(Stability(task, parts[0].value + parts[1].value,
                            parts[0].layer + parts[1].layer))
  return tuple(merged)


def summary_line(config, record: RunRecord, label: Optional[str] = None) -> str:
  """One line: label (default: ``config.describe``), benchmark, seeds, tasks done,
  mean ± SEM accuracy and BWT."""
  mean, sem = record.summary()
  kept = sum(record.reporting(s) for s in range(len(record.seeds)))
  seeds = str(config.num_seeds) if kept == config.num_seeds else f"{kept}/{config.num_seeds}"
  label = config_lib.describe(config) if label is None else label
  return (f"{label:<28} {config.benchmark:<26} seeds={seeds:<3} "
          f"tasks={record.completed_tasks}/{record.num_tasks}  "
          f"ACC={100 * mean['avg_accuracy']:6.2f} ± {100 * sem['avg_accuracy']:.2f}%  "
          f"BWT={mean['bwt']:+.3f} ± {sem['bwt']:.3f}")
