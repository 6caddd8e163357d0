"""Per-seed evidence for Table I's two instabilities (issue 14), from the rows on disk.

1. DHP + MAS: the learned η going below 0, after which the Hebb update
   (1 − η)·Hebb + η·h̄ amplifies instead of averaging and ‖Hebb‖_F blows up; what that
   costs in accuracy against MAS on the same seed, and whether the η-projected control
   (η kept in [0, 1]) is free of it on every seed.
2. Every penalised row (Online EWC, SI, MAS, with and without DHP; the methods with a
   ``stability`` hook): the largest lr·λ·Ω after each task (``penalty_stability``) beside
   the task where that seed diverged: plain SGD on λΩ(θ − θ*)² is unstable once
   lr·λ·Ω > 1.

``write_instability(bench_dir, runs)`` writes ``instability.json`` and ``instability.md``
next to ``table1.md``. Tasks are 1-based throughout (the trace's 0-based ``task`` is shifted);
accuracies are in percent, differences in points.
"""
from __future__ import annotations

import math
import os
from typing import Mapping, Optional

from dhp_jax import config as config_lib, consolidation, engine, store
from experiments.rows import BASELINE_OF, DEFAULT_ROWS, ROWS
from dhp_jax.results import RunRecord

# ‖Hebb‖_F above which a trace has "blown up": with η kept in [0, 1] the trace is an
# average of activations and peaks at 26.5 on both permuted benchmarks (paper preset),
# while the unconstrained η < 0 runs reach 1,000-2,840. Suits those MLP benchmarks only:
# on the vision mixture the trace is ~103 even with η projected.
HEBB_BLOWUP_NORM = 100.0
PENALTY_STABILITY_BOUND = engine.STABILITY_BOUND   # lr·λ·Ω above which SGD diverges
NOT_RECORDED = "not recorded (run before the stability record)"

# DHP + MAS and its control: the rows compared with MAS (``BASELINE_OF``).
DHP_MAS_ROWS = tuple(row for row in ROWS if BASELINE_OF.get(row) == "mas")
_DHP_MAS_BASELINES = tuple(dict.fromkeys(BASELINE_OF[row] for row in DHP_MAS_ROWS))


def _records_stability(record: RunRecord) -> bool:
  """Whether the row's method records lr·λ·Ω (its ``stability`` hook)."""
  method = config_lib.with_defaults(record.config)["method"]
  return consolidation.METHODS[method].stability is not None


def _penalised_rows(runs: Mapping[str, RunRecord]) -> tuple:
  return tuple(row for row in ROWS if row in runs and _records_stability(runs[row]))


# ------------------------------------------------------------------------ per seed

def _finite(value) -> Optional[float]:
  """JSON keeps a diverged seed's values as null (or NaN): both read as None."""
  return None if value is None or not math.isfinite(value) else float(value)


def _seed_trace(trace: Mapping, key: str, column: int) -> list:
  """[(task, value)] of one seed's column of ``trace[key]``, epochs without a value left
  out (a diverged seed's, or those a merged run had not trained)."""
  pairs = [(int(task) + 1, _finite(values[column]))
           for task, values in zip(trace["task"], trace.get(key, ()))]
  return [(task, value) for task, value in pairs if value is not None]


def _plasticity(trace: Mapping, column: int) -> dict:
  """Epochs ending with η < 0, the first task with one, and the peak ‖Hebb‖_F."""
  eta = _seed_trace(trace, "eta", column)
  negative_tasks = [task for task, value in eta if value < 0]
  peak_task, peak = max(_seed_trace(trace, "hebb_norm", column), key=lambda p: p[1],
                        default=(None, None))
  return {"eta_negative_epochs": len(negative_tasks), "epochs": len(eta),
          "first_eta_negative_task": negative_tasks[0] if negative_tasks else None,
          "max_hebb_norm": peak, "max_hebb_task": peak_task}


def _largest_drop(curve: list) -> Optional[dict]:
  """The largest fall (points) of the running average accuracy from one task to the next
  and the task after which it is seen; None when it never falls."""
  drops = [(100 * (before - after), t + 2) for t, (before, after)
           in enumerate(zip(curve, curve[1:]))]
  points, task = max(drops, default=(0.0, None))
  return {"points": points, "task": task} if points > 0 else None


def _finished_accuracy(record: RunRecord) -> dict:
  """{seed: final ACC %} of the seeds that trained every task without diverging."""
  finished, _ = record.accuracy_by_seed()
  trained_all = {seed for s, seed in enumerate(record.seeds)
                 if record.tasks_done(s) == record.num_tasks}
  return {seed: acc for seed, acc in finished.items() if seed in trained_all}


def _diverged(record: RunRecord, column: int) -> Optional[dict]:
  d = record.divergence[column]
  return None if d is None else d.to_json()


def _dhp_mas_row(record: RunRecord, baseline: str, baseline_record) -> dict:
  """One DHP + MAS row: per seed η, ‖Hebb‖_F, accuracy and the paired difference."""
  finished = _finished_accuracy(record)
  baseline_acc = {} if baseline_record is None else _finished_accuracy(baseline_record)
  seeds = []
  for column, seed in enumerate(record.seeds):
    curve, final = record.curve(column), record.final_accuracy(column)
    paired = seed in finished and seed in baseline_acc
    seeds.append({
        "seed": seed, **_plasticity(record.trace, column),
        "largest_drop": _largest_drop(curve), "tasks": len(curve),
        "final_accuracy": None if final is None else 100 * final,
        "diverged": _diverged(record, column),
        "minus_baseline": finished[seed] - baseline_acc[seed] if paired else None})
  eta_negative = sum(s["eta_negative_epochs"] > 0 for s in seeds)
  blown_up = sum((s["max_hebb_norm"] or 0) > HEBB_BLOWUP_NORM for s in seeds)
  return {"baseline": baseline, "num_seeds": len(seeds), "eta_negative_seeds": eta_negative,
          "hebb_blowup_seeds": blown_up,
          "summary": f"η < 0 on {eta_negative} of {len(seeds)} seeds; ‖Hebb‖_F > "
                     f"{HEBB_BLOWUP_NORM:g} on {blown_up} of {len(seeds)} seeds"
                     + _partial(record),
          "per_seed": seeds}


def _partial(record: RunRecord) -> str:
  """"; partial: k/n tasks" for a row still training (its seeds stop early without having
  diverged), else ""."""
  done, total = record.completed_tasks, record.num_tasks
  return "" if record.finished() else f"; partial: {done}/{total} tasks"


def _stability(records: tuple, column: int) -> Optional[list]:
  """One seed's largest lr·λ·Ω (and its layer) after each task; None without a record: a
  run before the record, or a seed merged from such a run into one with it (its values
  there are null on every task)."""
  if all(r.value[column] is None for r in records):
    return None
  return [{"task": r.task, "value": _finite(r.value[column]),
           "largest_layer": r.layer[column]} for r in records]


def _penalised_seed(record: RunRecord, column: int) -> dict:
  """Whether a seed's lr·λ·Ω passed the bound before the task where it diverged."""
  stability = _stability(record.stability, column)
  diverged = _diverged(record, column)
  over = None if stability is None else next(
      (r["task"] for r in stability if (r["value"] or 0) > PENALTY_STABILITY_BOUND), None)
  before = None if stability is None or diverged is None else \
      over is not None and over < diverged["task"]
  return {"seed": record.seeds[column], "stability": stability,
          "first_task_over_bound": over, "diverged": diverged,
          "over_bound_before_divergence": before}


def _penalised_row(record: RunRecord) -> dict:
  seeds = [_penalised_seed(record, column) for column in range(len(record.seeds))]
  diverged = [s for s in seeds if s["diverged"] is not None]
  recorded = [s for s in diverged if s["stability"] is not None]
  before = sum(bool(s["over_bound_before_divergence"]) for s in recorded)
  summary = f"diverged on {len(diverged)} of {len(seeds)} seeds"
  if recorded:
    summary += (f"; lr·λ·Ω > {PENALTY_STABILITY_BOUND:g} before the divergence on {before} "
                f"of {len(recorded)} diverged seeds with the record")
  if any(s["stability"] is None for s in seeds):
    summary += f"; lr·λ·Ω {NOT_RECORDED} on " \
               f"{sum(s['stability'] is None for s in seeds)} of {len(seeds)} seeds"
  summary += _partial(record)
  config = config_lib.with_defaults(record.config)
  return {"strength": config.get("strength"), "lr": config.get("lr"),
          "num_seeds": len(seeds), "diverged_seeds": len(diverged), "summary": summary,
          "per_seed": seeds}


# ------------------------------------------------------------------------ per row set

def dhp_mas_evidence(runs: Mapping[str, RunRecord]) -> dict:
  """η < 0 and ‖Hebb‖_F blow-ups per seed of the DHP + MAS rows in ``runs``.

  Args:
    runs: row name (``ROWS``) -> its run record; rows not run are absent.
  Returns:
    ``{"hebb_blowup_norm", "rows": {row: {"baseline", "num_seeds", "eta_negative_seeds",
    "hebb_blowup_seeds", "summary", "per_seed": [{"seed", "eta_negative_epochs",
    "epochs", "first_eta_negative_task", "max_hebb_norm", "max_hebb_task",
    "largest_drop": {"points", "task"} | None, "tasks", "final_accuracy", "diverged",
    "minus_baseline"}]}}, "missing": rows (and baselines) not in runs}``.
    ``minus_baseline``: final ACC − the baseline's (MAS) on the same seed, points; None
    unless both trained every task without diverging.
  """
  return {"hebb_blowup_norm": HEBB_BLOWUP_NORM,
          "rows": {row: _dhp_mas_row(runs[row], BASELINE_OF[row], runs.get(BASELINE_OF[row]))
                   for row in DHP_MAS_ROWS if row in runs},
          "missing": [row for row in DHP_MAS_ROWS + _DHP_MAS_BASELINES if row not in runs]}


def penalised_evidence(runs: Mapping[str, RunRecord]) -> dict:
  """Per seed of every penalised row in ``runs``: the largest lr·λ·Ω after each task
  beside the task it diverged in. ``missing``: Table I's penalised rows not in ``runs``.

  Returns:
    ``{"bound", "rows": {row: {"strength", "lr", "num_seeds", "diverged_seeds",
    "summary", "per_seed": [{"seed", "stability": [{"task", "value", "largest_layer"}] |
    None (not recorded), "first_task_over_bound", "diverged": {task, epoch, quantities} |
    None, "over_bound_before_divergence": bool | None}]}}, "missing"}``.
  """
  table_rows = [row for row in DEFAULT_ROWS if consolidation.METHODS[
      ROWS[row].overrides["method"]].stability is not None]
  return {"bound": PENALTY_STABILITY_BOUND,
          "rows": {row: _penalised_row(runs[row]) for row in _penalised_rows(runs)},
          "missing": [row for row in table_rows if row not in runs]}


# ------------------------------------------------------------------------ markdown

def _number(value, spec: str = ".2f", none: str = "—") -> str:
  return none if value is None else format(value, spec)


def _at_task(value, task, spec: str) -> str:
  return "—" if value is None else f"{value:{spec}} (task {task})"


def _row_heading(row: str, summary: str) -> str:
  return f"**{ROWS[row].label}** (`{row}`): {summary}"


def _dhp_mas_markdown(evidence: Mapping) -> list:
  lines = ["## DHP + MAS: η below 0 and the Hebb trace", "",
           f"Per seed: epoch ends with η < 0, the first task with one, the peak ‖Hebb‖_F "
           f"(blow-up: > {evidence['hebb_blowup_norm']:g}), the largest fall of the "
           f"running average accuracy between consecutive tasks, the final ACC and ACC − "
           f"the baseline's on the same seed (both finished)."]
  for row, r in evidence["rows"].items():
    lines += ["", _row_heading(row, r["summary"]), "",
              f"| seed | epochs η < 0 | first task η < 0 | max ‖Hebb‖_F | largest ACC drop, "
              f"points | final ACC % | − {ROWS[r['baseline']].label}, points |",
              "|---|---|---|---|---|---|---|"]
    for s in r["per_seed"]:
      drop = s["largest_drop"] or {}
      final = _number(s["final_accuracy"])
      if s["diverged"]:
        final += f" (after {s['tasks']} tasks; diverged in task {s['diverged']['task']})"
      lines.append(
          f"| {s['seed']} | {s['eta_negative_epochs']}/{s['epochs']} | "
          f"{_number(s['first_eta_negative_task'], 'd')} | "
          f"{_at_task(s['max_hebb_norm'], s['max_hebb_task'], ',.1f')} | "
          f"{_at_task(drop.get('points'), drop.get('task'), '.2f')} | {final} | "
          f"{_number(s['minus_baseline'], '+.2f')} |")
  return lines


def _stability_cell(stability: Optional[list], bound: float) -> str:
  if stability is None:
    return NOT_RECORDED
  return ", ".join(f"**{r['value']:.3g}**" if (r["value"] or 0) > bound
                   else _number(r["value"], ".3g") for r in stability)


def _penalised_markdown(evidence: Mapping) -> list:
  bound = evidence["bound"]
  lines = ["## Penalised rows: lr·λ·Ω against divergence", "",
           f"Per seed: the largest lr·λ·Ω over the slow weights after tasks 1, 2, … (bold: "
           f"> {bound:g}, where plain SGD on the penalty is unstable), the first task over "
           f"that bound, and the task where the seed went non-finite."]
  for row, r in evidence["rows"].items():
    lines += ["", _row_heading(row, f"λ = {r['strength']:g}, lr = {r['lr']:g}; "
                                    f"{r['summary']}"), "",
              f"| seed | largest lr·λ·Ω after each task | first task > {bound:g} | "
              f"diverged in | > {bound:g} before? |", "|---|---|---|---|---|"]
    for s in r["per_seed"]:
      where = "—" if s["diverged"] is None else \
          f"task {s['diverged']['task']}, epoch {s['diverged']['epoch']}"
      before = {None: "—", True: "yes", False: "no"}[s["over_bound_before_divergence"]]
      lines.append(f"| {s['seed']} | {_stability_cell(s['stability'], bound)} | "
                   f"{_number(s['first_task_over_bound'], 'd')} | {where} | {before} |")
  return lines


def markdown(evidence: Mapping) -> str:
  """``instability.md``: both sections, a line per row not on disk."""
  lines = [f"# Instabilities over seeds — {evidence['benchmark']}", ""]
  for section, lines_of in (("dhp_mas", _dhp_mas_markdown),
                            ("penalised", _penalised_markdown)):
    lines += lines_of(evidence[section])
    if evidence[section]["missing"]:
      lines += ["", "Not on disk: " + ", ".join(f"`{row}`"
                                                for row in evidence[section]["missing"])]
    lines.append("")
  return "\n".join(lines)


def write_instability(bench_dir: str, runs: Mapping[str, RunRecord]) -> Optional[dict]:
  """Writes ``instability.json`` and ``instability.md`` into ``bench_dir`` from the rows'
  records ``runs`` (row -> record, as ``table1.md`` shows them); returns the evidence
  (None, writing nothing, when no DHP + MAS or penalised row is among them)."""
  if not any(row in runs for row in DHP_MAS_ROWS) and not _penalised_rows(runs):
    return None
  evidence = {"benchmark": os.path.basename(os.path.normpath(bench_dir)),
              "dhp_mas": dhp_mas_evidence(runs), "penalised": penalised_evidence(runs)}
  store.write_json_atomic(os.path.join(bench_dir, "instability.json"), evidence)
  store.write_text_atomic(os.path.join(bench_dir, "instability.md"), markdown(evidence))
  return evidence
