r"""Reproduce Table I of the paper (plus two control rows), side by side with its numbers.

  python experiments/table1.py --benchmarks=split_mnist --preset=paper --num_seeds=10

For every benchmark and row, trains the row's seeds (vmapped) into
``<out_root>/<benchmark>_<preset>/<row>/`` (resumable; complete rows are skipped; a
finished row with fewer seeds than ``--num_seeds`` trains only the missing seeds and
merges them in, so seeds can be added to a long run later), then
writes ``table1.md``, ``table1.json`` (with paired-seed differences between rows),
``accuracy.png`` (Fig. 2), ``plasticity.png`` (Fig. 3, the DHP row, one line per seed) and,
when both rows exist, ``plasticity_dhp+mas.png`` (DHP+MAS beside its η-projected control)
next to them.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Mapping, Optional

from absl import flags

if __package__ in (None, ""):   # run as a script: make `experiments` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dhp_jax import distributed, engine, metrics, plotting, results as results_lib, store
from dhp_jax.results import RunRecord
from experiments import cli, instability
from dhp_jax.config import PRESET_NAMES, RUN_SIZE_FIELDS, make_config
from experiments.rows import (BASELINE_OF, DEFAULT_ROWS, PAPER, ROWS, TABLES, row_config,
                              row_label, table_benchmark)

# Paired comparisons beyond DHP+X − X (``BASELINE_OF``): what learning α adds, what the
# matched baseline head's doubled step size does (α frozen: one θ at the plain step), what
# the output layer's θ init does (the author's U(±1/√d) against the dense default, with
# and without plasticity), and what keeping η in [0, 1] changes. (first row, second row);
# an entry is first − second.
_CONTROL_PAIRS = (("dhp", "dhp_frozen_alpha"), ("dhp_frozen_alpha", "finetune"),
                  ("finetune", "finetune_dense"),
                  ("dhp", "finetune_dense"), ("dhp_eta_projected", "dhp"),
                  ("dhp+mas_eta_projected", "dhp+mas"))
# Fig. 3 files -> the rows overlaid in them (one line per seed); drawn when all are on disk.
_PLASTICITY_FIGURES = {"plasticity.png": ("dhp",),
                       "plasticity_dhp+mas.png": ("dhp+mas", "dhp+mas_eta_projected")}
_SEEDS_ARE_PAIRED = (
    "Seeds are paired: seed s gives every row the same hidden-layer init, θ draw, batch "
    "order and (where the benchmark draws them) permutations and class removals, so "
    "per-seed differences between rows cancel most seed noise. \"DHP+X ≥ X?\" reads the "
    "95 % Student-t interval of the per-seed DHP+X − X over the seeds both rows finished "
    "(diverged seeds excluded): yes (above 0), no (below 0), undecided (contains 0).")


def _pair_key(first: str, second: str) -> str:
  return f"{first} - {second}"


def paired_entry(first: RunRecord, second: RunRecord) -> Optional[dict]:
  """ACC (points) of ``first`` − ``second`` over the seeds both finished.

  None when a row stopped early (its accuracies are after fewer tasks) or fewer than two
  seeds are shared: no interval exists (``metrics.paired_difference`` needs two).
  """
  if any(r.completed_tasks != r.num_tasks for r in (first, second)):
    return None
  (a, a_diverged), (b, b_diverged) = first.accuracy_by_seed(), second.accuracy_by_seed()
  if len(a.keys() & b.keys()) < 2:
    return None
  paired = metrics.paired_difference(a, b)
  trained_by_both = set(first.seeds) & set(second.seeds)
  return {**{k: paired[k] for k in ("mean", "sem", "wins", "n", "seeds", "differences")},
          "ci95": list(paired["ci95"]),
          "excluded_diverged": sorted((a_diverged | b_diverged) & trained_by_both)}


def paired_entries(runs: Mapping[str, RunRecord]) -> dict:
  """``"first - second"`` -> ``paired_entry`` for every DHP+X − X and control pair on disk."""
  entries = {}
  for first, second in (*BASELINE_OF.items(), *_CONTROL_PAIRS):
    if first in runs and second in runs:
      entry = paired_entry(runs[first], runs[second])
      if entry is not None:
        entries[_pair_key(first, second)] = entry
  return entries


def table_entry(benchmark: str, preset: str, runs: Mapping[str, RunRecord]) -> dict:
  """The ``table1.json`` entry of one benchmark from its rows' records."""
  rows = {}
  for row, record in runs.items():
    paper = PAPER.get(benchmark, {}).get(row)
    mean, sem = record.summary()
    left_out = record.left_out()
    rows[row] = {
        # The seeds in the mean; seeds that diverged while others went on are listed.
        "num_seeds": len(record.seeds) - len(left_out),
        "avg_accuracy": {"mean": 100 * mean["avg_accuracy"],
                         "sem": 100 * sem["avg_accuracy"]},
        "bwt": {"mean": mean["bwt"], "sem": sem["bwt"]},
        "completed_tasks": record.completed_tasks, "num_tasks": record.num_tasks,
        "wall_time_s": record.wall_time_s,
        "paper": None if paper is None else {"avg_accuracy": paper[0], "bwt": paper[1]},
    }
    if record.stopped():
      rows[row]["diverged"] = record.stop()
    if left_out:
      rows[row]["diverged_seeds"] = [{"seed": seed, **d.to_json()}
                                     for seed, d in left_out.items()]
  any_run = next(iter(runs.values()))
  notes = sorted({n for r in runs.values() for n in r.notes})
  return {"preset": preset, "epochs": any_run.config["epochs"],
          "num_tasks": any_run.num_tasks, "data_notes": "; ".join(notes),
          "wall_time_s": sum(r.wall_time_s or 0 for r in runs.values()),
          "rows": rows, "paired": paired_entries(runs)}


def _cell(stat: Mapping, scale: str, num_seeds: int = 2) -> str:
  """"mean ± SEM"; one seed has no SEM, so it shows the value alone."""
  mean = f"{stat['mean']:.2f}" if scale == "pct" else f"{stat['mean']:+.3f}"
  if num_seeds < 2:
    return mean
  return mean + (f" ± {stat['sem']:.2f}" if scale == "pct" else f" ± {stat['sem']:.3f}")


def _complete(row: Mapping) -> bool:
  return row["completed_tasks"] == row["num_tasks"]


def _seeds_trained(rows: Mapping) -> str:
  """"3 seeds" / "1/3 seeds": seeds each row trained, diverged ones included."""
  counts = sorted({r["num_seeds"] + len(r.get("diverged_seeds", ())) for r in rows.values()})
  return "/".join(map(str, counts)) + (" seed" if counts == [1] else " seeds")


def _row_notes(r: Mapping) -> str:
  """Why a row's numbers are not the full run: unfinished, diverged, or seeds left out."""
  notes = "" if _complete(r) else \
      f" (partial: {r['completed_tasks']}/{r['num_tasks']} tasks)"
  if "diverged" in r:
    d = r["diverged"]
    notes = (f" (**diverged**: non-finite {', '.join(d['quantities'])} in task {d['task']}, "
             f"epoch {d['epoch']}, seeds {d['seeds']}; numbers after task "
             f"{r['completed_tasks']})")
  if r.get("diverged_seeds"):
    where = "; ".join(f"seed {d['seed']} in task {d['task']}, epoch {d['epoch']}"
                      for d in r["diverged_seeds"])
    before = "before that: " if "diverged" in r else "**diverged**: "
    others = "seed" if r["num_seeds"] == 1 else f"{r['num_seeds']} seeds"
    notes += f" ({before}{where}; mean over the other {others})"
  return notes


def _verdict(row: str, entry: Mapping) -> str:
  """"DHP+X ≥ X?" from the paired 95 % interval of DHP+X − X ("" for rows without X)."""
  rows, base = entry["rows"], BASELINE_OF.get(row)
  if base not in rows:
    return ""
  if not (_complete(rows[row]) and _complete(rows[base])):
    return "n/a (unfinished row)"
  pair = entry["paired"].get(_pair_key(row, base))
  if pair is None:   # fewer than two shared finished seeds: no interval
    return "1 seed" if min(rows[row]["num_seeds"], rows[base]["num_seeds"]) == 1 else \
        "n/a (< 2 shared seeds)"
  low, high = pair["ci95"]
  return "yes" if low > 0 else "no" if high < 0 else "undecided"


def _paired_markdown(paired: Mapping) -> list:
  """The paired-differences table (ACC points), or a line saying there is none."""
  if not paired:
    return ["No paired interval: no pair of rows shares two finished seeds."]
  lines = ["Paired differences, first − second row, ACC points over the seeds both finished:",
           "", "| pair | n | mean ± SEM | 95 % CI | wins | diverged seeds excluded |",
           "|---|---|---|---|---|---|"]
  for key, p in paired.items():
    low, high = p["ci95"]
    excluded = ", ".join(map(str, p["excluded_diverged"])) or "—"
    lines.append(f"| `{key}` | {p['n']} | {p['mean']:+.3f} ± {p['sem']:.3f} | "
                 f"[{low:+.3f}, {high:+.3f}] | {p['wins']}/{p['n']} | {excluded} |")
  return lines


def markdown(benchmark: str, entry: Mapping) -> str:
  """One benchmark's table: ours (mean ± SEM) beside the paper's, DHP+X ≥ X? from paired
  seeds, then the paired differences."""
  rows = entry["rows"]
  paper_epochs = make_config(table_benchmark(benchmark)[0], "paper").epochs
  scale = ("" if entry["epochs"] == paper_epochs else
           f" — **reduced scale** (the paper: {paper_epochs} epochs/task)")
  lines = [f"### {benchmark} — preset `{entry['preset']}`, {entry['epochs']} epoch(s)/task, "
           f"{entry['num_tasks']} tasks, {_seeds_trained(rows)} per row{scale}",
           ""]
  if entry.get("data_notes"):
    lines += [f"Data: {entry['data_notes']}", ""]
  lines += ["| row | ACC % (ours) | ACC % (paper) | Δ ACC | BWT (ours) | BWT (paper) | "
            "DHP+X ≥ X? |", "|---|---|---|---|---|---|---|"]
  for row in (row for row in ROWS if row in rows):
    r, paper, n = rows[row], rows[row]["paper"], rows[row]["num_seeds"]
    p_acc = f"{paper['avg_accuracy']:.2f}" if paper else "—"
    p_bwt = f"{paper['bwt']:+.2f}" if paper else "—"
    delta = f"{r['avg_accuracy']['mean'] - paper['avg_accuracy']:+.2f}" \
        if paper and _complete(r) else "—"
    lines.append(f"| {ROWS[row].label}{_row_notes(r)} | {_cell(r['avg_accuracy'], 'pct', n)} | "
                 f"{p_acc} | {delta} | {_cell(r['bwt'], 'bwt', n)} | {p_bwt} | "
                 f"{_verdict(row, entry)} |")
  lines += ["", _SEEDS_ARE_PAIRED, "", *_paired_markdown(entry["paired"])]
  wall = entry.get("wall_time_s")
  if wall:
    lines += ["", f"Wall time (sum over rows, this machine): {wall / 60:.1f} min"]
  return "\n".join(lines) + "\n"


def load_runs(bench_dir: str, rows) -> dict:
  """{row: its latest committed record} for the rows recorded under ``bench_dir``."""
  runs = {row: results_lib.load(os.path.join(bench_dir, row)) for row in rows}
  return {row: record for row, record in runs.items() if record is not None}


def write_tables(bench_dir: str, benchmark: str, preset: str, rows) -> Optional[dict]:
  """(Re)writes table1.md/json, the figures and instability.md/json (the DHP + MAS and
  Online EWC rows' per-seed evidence) of one benchmark from what is on disk; returns the
  table's entry (None: no row on disk, or not the writer of a several-process run)."""
  runs = load_runs(bench_dir, rows) if distributed.is_writer() else None
  if not runs:
    return None
  entry = table_entry(benchmark, preset, runs)
  store.write_json_atomic(os.path.join(bench_dir, "table1.json"), {benchmark: entry})
  store.write_text_atomic(os.path.join(bench_dir, "table1.md"), markdown(benchmark, entry))
  plotting.plot_accuracy({ROWS[r].label: runs[r] for r in ROWS if r in runs},
                         os.path.join(bench_dir, "accuracy.png"), f"{benchmark} ({preset})")
  for name, figure_rows in _PLASTICITY_FIGURES.items():
    if all(row in runs for row in figure_rows):
      plotting.plot_plasticity_per_seed(
          {ROWS[row].label: runs[row] for row in figure_rows}, os.path.join(bench_dir, name),
          f"{benchmark} ({preset}), one line per seed")
  instability.write_instability(bench_dir, runs)
  return entry


def _recorded_tables(out_root: str) -> list:
  """(benchmark, preset, table1.json entry) of every table under ``out_root``."""
  columns = []
  for benchmark in TABLES:
    for preset in PRESET_NAMES:
      path = os.path.join(out_root, f"{benchmark}_{preset}", "table1.json")
      if os.path.exists(path):
        with open(path) as f:
          columns.append((benchmark, preset, json.load(f)[benchmark]))
  return columns


def paired_side_by_side(columns: list) -> str:
  """The paired differences of every recorded table side by side: one column per table,
  one line per pair, cells "mean [95 % CI] wins/n" (points); "—" where no interval."""
  pairs = list(dict.fromkeys(key for *_, e in columns for key in e.get("paired", {})))
  if not pairs:
    return ""

  def cell(entry, key):
    d = entry.get("paired", {}).get(key)
    if d is None:
      return "—"
    return f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}] {d['wins']}/{d['n']}"

  lines = ["| pair (points) | " + " | ".join(f"{b} ({p})" for b, p, _ in columns) + " |",
           "|---" * (len(columns) + 1) + "|"]
  lines += [f"| {key} | " + " | ".join(cell(e, key) for *_, e in columns) + " |"
            for key in pairs]
  return ("\nPaired differences of the final average accuracy, first − second row, over "
          "the seeds both finished (diverged seeds excluded): mean [95 % Student-t "
          "interval], seeds where the first row is higher / seeds.\n\n"
          + "\n".join(lines) + "\n")


def side_by_side(out_root: str) -> Optional[str]:
  """Table I's layout over every ``<out_root>/<benchmark>_<preset>/table1.json``: one
  column per recorded benchmark and preset, cells "ours (paper)", then the paired
  differences (``paired_side_by_side``); None when no table exists."""
  columns = _recorded_tables(out_root)
  if not columns:
    return None

  def cell(entry, row):
    r = entry["rows"].get(row)
    if r is None:
      return "not run"
    ours = _cell(r["avg_accuracy"], "pct", r["num_seeds"])
    if "diverged" in r:
      ours = results_lib.divergence_note(
          [d["task"] for d in r.get("diverged_seeds", ())]
          + [r["diverged"]["task"]] * len(r["diverged"]["seeds"]))
    elif not _complete(r):
      ours = f"{r['completed_tasks']}/{r['num_tasks']} tasks"
    elif r.get("diverged_seeds"):
      ours += f" [{len(r['diverged_seeds'])} seed(s) diverged]"
    return ours + (f" ({r['paper']['avg_accuracy']:.2f})" if r["paper"] else "")

  def scale(benchmark, entry):
    paper_epochs = make_config(table_benchmark(benchmark)[0], "paper").epochs
    epochs = str(entry["epochs"]) if entry["epochs"] == paper_epochs else \
        f"**{entry['epochs']}** (paper: {paper_epochs})"
    return f"{epochs} epochs/task, {entry['num_tasks']} tasks, {_seeds_trained(entry['rows'])}"

  lines = ["| row | " + " | ".join(f"{b} ({p})" for b, p, _ in columns) + " |",
           "|---" * (len(columns) + 1) + "|",
           "| scale | " + " | ".join(scale(b, e) for b, _, e in columns) + " |"]
  shown = [row for row in ROWS
           if row in DEFAULT_ROWS or any(row in e["rows"] for *_, e in columns)]
  lines += [f"| {ROWS[row].label} | " + " | ".join(cell(e, row) for _, _, e in columns) + " |"
            for row in shown]
  return ("Average test accuracy % after the last task, mean ± SEM over seeds; the "
          "paper's value in parentheses.\n\n" + "\n".join(lines) + "\n"
          + paired_side_by_side(columns))


def write_side_by_side(out_root: str) -> None:
  text = side_by_side(out_root) if distributed.is_writer() else None
  if text is not None:
    store.write_text_atomic(os.path.join(out_root, "table1.md"), text)


def rows_on_disk(bench_dir: str) -> list:
  """The rows recorded under ``bench_dir``, in table order: a table shows every row run,
  not only those of the latest command."""
  return [row for row in ROWS if os.path.isdir(os.path.join(bench_dir, row))]


def refresh_tables(out_root: str) -> list:
  """Rewrites every recorded table under ``out_root`` from its rows' results (no
  training); returns the benchmark directories rewritten."""
  written = []
  for table in TABLES:
    for preset in PRESET_NAMES:
      bench_dir = os.path.join(out_root, f"{table}_{preset}")
      rows = rows_on_disk(bench_dir)
      if rows and write_tables(bench_dir, table, preset, rows) is not None:
        written.append(bench_dir)
  write_side_by_side(out_root)
  return written


def check_names(benchmarks, rows) -> None:
  """ValueError naming the flag when a benchmark or row name is unknown."""
  for flag, values, known in (("benchmarks", benchmarks, TABLES),
                              ("rows", rows, tuple(ROWS))):
    unknown = [v for v in values if v not in known]
    if unknown:
      raise ValueError(f"--{flag}: unknown {unknown}; expected some of {list(known)}")


def _train_row(config, row_dir: str, held, name: str, train, *, logdir,
               **train_kwargs) -> dict:
  """Trains a row's missing seeds: all of them, or those beyond a finished run's
  (``held``: the record in ``row_dir``, None for none)."""
  extend = 0 if held is None else held.seeds_to_extend(config)
  new = dataclasses.replace(config, seed=config.seed + extend,
                            num_seeds=config.num_seeds - extend)
  with cli.metric_writers(logdir, name, new) as writers:
    if extend:
      return engine.extend_seeds(config, row_dir, train=train, observers=writers,
                                 **train_kwargs)
    return train(config, row_dir, resume=True, observers=writers, **train_kwargs)


def run_table(benchmarks, rows, preset, num_seeds, out_root, *, seed=0, data_dir=None,
              progress=True, logdir=None, train=engine.train_and_evaluate,
              **overrides) -> dict:
  """Runs the missing rows of every benchmark and writes its tables; returns them."""
  check_names(benchmarks, rows)
  tables = {}
  for benchmark in benchmarks:
    bench_dir = os.path.join(out_root, f"{benchmark}_{preset}")
    for row in rows:
      config = row_config(benchmark, preset, row, num_seeds=num_seeds, seed=seed, **overrides)
      row_dir = os.path.join(bench_dir, row)
      held = results_lib.load(row_dir)
      if held is not None and held.holds(config):
        continue
      try:
        results = _train_row(config, row_dir, held, f"{benchmark}_{preset}/{row}", train,
                             data_dir=data_dir, progress=progress, logdir=logdir)
      except engine.NonFiniteError as e:   # recorded in the row's results.json; go on
        print(f"{row_label(config)}: {e}", flush=True)
        continue
      print(results_lib.summary_line(config, results_lib.read(results), row_label(config)),
            flush=True)
      write_tables(bench_dir, benchmark, preset, rows_on_disk(bench_dir))
    entry = write_tables(bench_dir, benchmark, preset, rows_on_disk(bench_dir))
    if entry is not None:
      tables[benchmark] = entry
      print(markdown(benchmark, entry))
  write_side_by_side(out_root)
  return tables


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_list("benchmarks", ["split_mnist"], f"Benchmarks to run: some of {list(TABLES)} "
                    "(split_mnist_class: Split MNIST, class-incremental, one shared head).",
                    flag_values=fv)
  flags.DEFINE_list("rows", list(DEFAULT_ROWS), "Rows to run (default: Table I's eight "
                    f"and two controls; also available: {list(ROWS)[10:]}).", flag_values=fv)
  flags.DEFINE_enum("preset", "quick", list(PRESET_NAMES), "Preset.", flag_values=fv)
  cli.define_config_flags(fv, RUN_SIZE_FIELDS, defaults=dict(num_seeds=3, seed=0))
  flags.DEFINE_string("out_root", "results", "Root folder of the result tables.",
                      flag_values=fv)
  flags.DEFINE_bool("tables_only", False, "Only rewrite every table under --out_root "
                    "from the results on disk (no training).", flag_values=fv)


def run(fv: flags.FlagValues) -> dict:
  if fv.tables_only:
    return {"rewritten": refresh_tables(fv.out_root)}
  check_names(fv.benchmarks, fv.rows)
  cli.check_directory_flag("out_root", fv.out_root)
  overrides = cli.config_overrides(fv, RUN_SIZE_FIELDS)
  return run_table(fv.benchmarks, fv.rows, fv.preset, overrides.pop("num_seeds"),
                   fv.out_root, seed=overrides.pop("seed"),
                   data_dir=cli.data_dirs(fv.data_dir),
                   progress=fv.progress, logdir=fv.logdir, **overrides)


def main(argv=None) -> dict:
  return cli.main(run, define_flags, argv, advice=cli.TABLE_ADVICE)


if __name__ == "__main__":
  cli.entry_point(run, define_flags, advice=cli.TABLE_ADVICE)
