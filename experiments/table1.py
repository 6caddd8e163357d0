r"""Reproduce Table I of the paper (plus two control rows), side by side with its numbers.

  python experiments/table1.py --benchmarks=split_mnist --preset=paper --num_seeds=10

For every benchmark and row, trains the row's seeds (vmapped) into
``<out_root>/<benchmark>_<preset>/<row>/`` (resumable; complete rows are skipped; a
finished row with fewer seeds than ``--num_seeds`` trains only the missing seeds and
merges them in, so seeds can be added to a long run later), then
writes ``table1.md``, ``table1.json``, ``accuracy.png`` (Fig. 2) and ``plasticity.png``
(Fig. 3, the DHP row) next to them.
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Optional

from absl import app, flags, logging

FLAGS = flags.FLAGS

from dhp_jax import plotting, training

# The paper's rows, then the two controls that separate plasticity from the θ init.
ROWS = {
    "finetune": dict(method="finetune", head="matched"),
    "dhp": dict(method="finetune", head="dhp"),
    "si": dict(method="si", head="matched"),
    "dhp+si": dict(method="si", head="dhp"),
    "online_ewc": dict(method="online_ewc", head="matched"),
    "dhp+online_ewc": dict(method="online_ewc", head="dhp"),
    "mas": dict(method="mas", head="matched"),
    "dhp+mas": dict(method="mas", head="dhp"),
    "dhp_frozen_alpha": dict(method="finetune", head="dhp", freeze_alpha=True),
    "finetune_dense": dict(method="finetune", head="matched", theta_init="dense"),
    # Opt-in (not in the default --rows): SGD may drive the learned η past 1, where the
    # trace update over-relaxes; this row keeps the stored η in [0, 1] (SPEC §1 option).
    "dhp_eta_projected": dict(method="finetune", head="dhp", eta_constraint="project"),
    # Opt-in Online EWC variants beside the faithful rows (SPEC §2: exact Fisher, γ = 1),
    # to see whether its divergence at the paper's λ depends on those choices.
    "online_ewc_gamma0.9": dict(method="online_ewc", head="matched", ewc_gamma=0.9),
    "dhp+online_ewc_gamma0.9": dict(method="online_ewc", head="dhp", ewc_gamma=0.9),
    "online_ewc_empirical": dict(method="online_ewc", head="matched", fisher_mode="empirical"),
    "dhp+online_ewc_empirical": dict(method="online_ewc", head="dhp",
                                     fisher_mode="empirical"),
    "online_ewc_lambda100": dict(method="online_ewc", head="matched", strength=100.0),
    "dhp+online_ewc_lambda100": dict(method="online_ewc", head="dhp", strength=100.0),
    # Opt-in: DHP+MAS with η kept in [0, 1], where the trace is an average and cannot grow
    # (the penalty leaves α, η and the trace free, SPEC §2).
    "dhp+mas_eta_projected": dict(method="mas", head="dhp", eta_constraint="project"),
}
DEFAULT_ROWS = tuple(ROWS)[:10]   # Table I's eight rows and the two controls
ROW_LABELS = {
    "finetune": "Finetune", "dhp": "DHP Softmax", "si": "SI", "dhp+si": "DHP Softmax + SI",
    "online_ewc": "Online EWC", "dhp+online_ewc": "DHP Softmax + Online EWC", "mas": "MAS",
    "dhp+mas": "DHP Softmax + MAS", "dhp_frozen_alpha": "DHP Softmax, α frozen at 0 (control)",
    "finetune_dense": "Finetune, dense θ init (control)",
    "dhp_eta_projected": "DHP Softmax, η projected into [0, 1] (control)",
    "online_ewc_gamma0.9": "Online EWC, γ = 0.9 (variant)",
    "dhp+online_ewc_gamma0.9": "DHP Softmax + Online EWC, γ = 0.9 (variant)",
    "online_ewc_empirical": "Online EWC, empirical Fisher (variant)",
    "dhp+online_ewc_empirical": "DHP Softmax + Online EWC, empirical Fisher (variant)",
    "online_ewc_lambda100": "Online EWC, λ = 100 (variant)",
    "dhp+online_ewc_lambda100": "DHP Softmax + Online EWC, λ = 100 (variant)",
    "dhp+mas_eta_projected": "DHP Softmax + MAS, η projected into [0, 1] (control)",
}
# Table I of the paper: average test accuracy (%) / BWT after all tasks, 10 trials.
PAPER = {
    "permuted_mnist": {"finetune": (76.73, -0.19), "dhp": (78.49, -0.16), "si": (84.72, -0.13),
                       "dhp+si": (85.20, -0.09), "online_ewc": (86.24, -0.11),
                       "dhp+online_ewc": (87.30, -0.09), "mas": (88.52, -0.08),
                       "dhp+mas": (89.53, -0.06)},
    "imbalanced_permuted_mnist": {"finetune": (76.44, -0.20), "dhp": (80.85, -0.14),
                                  "si": (85.92, -0.06), "dhp+si": (85.39, -0.06),
                                  "online_ewc": (87.18, -0.09), "dhp+online_ewc": (87.43, -0.08),
                                  "mas": (87.32, -0.09), "dhp+mas": (88.80, -0.05)},
    "split_mnist": {"finetune": (90.43, -0.13), "dhp": (98.23, -0.02), "si": (97.77, -0.04),
                    "dhp+si": (99.15, 0.00), "online_ewc": (97.65, -0.03),
                    "dhp+online_ewc": (98.96, -0.01), "mas": (98.24, -0.02),
                    "dhp+mas": (98.43, -0.01)},
    "vision_mixture": {"finetune": (60.02, -0.33), "dhp": (62.94, -0.26), "si": (81.26, -0.06),
                       "dhp+si": (81.75, -0.04), "online_ewc": (78.61, -0.07),
                       "dhp+online_ewc": (79.10, -0.04), "mas": (78.51, -0.05),
                       "dhp+mas": (80.66, -0.01)},
}
# DHP+X is compared with X; the controls with the row they perturb.
_BASELINE_OF = {"dhp": "finetune", **{row: row[len("dhp+"):].removesuffix("_eta_projected")
                                       for row in ROWS if row.startswith("dhp+")}}


# Tables beyond the paper's four benchmarks: name -> (benchmark, config overrides). The
# paper's Split MNIST is task-incremental (a head per task); class-incremental shares one
# 10-way head, where a memory in the output layer has the most to do.
VARIANTS = {"split_mnist_class": ("split_mnist", {"scenario": "class"})}
TABLES = training.BENCHMARKS + tuple(VARIANTS)


def _benchmark(name: str) -> tuple:
  return VARIANTS.get(name, (name, {}))


def row_config(name: str, preset: str, row: str, **overrides) -> training.Config:
  """The config of one row of table ``name`` (a benchmark or a ``VARIANTS`` key)."""
  benchmark, extra = _benchmark(name)
  return training.make_config(benchmark, preset, **ROWS[row], **{**extra, **overrides})


def table_entry(benchmark: str, preset: str, runs: Mapping[str, dict]) -> dict:
  """The ``table1.json`` entry of one benchmark from its rows' results payloads."""
  rows = {}
  for row, results in runs.items():
    paper = PAPER.get(benchmark, {}).get(row)
    diverged_seeds = [e for e in results["per_seed"] if "diverged" in e]
    rows[row] = {
        # The seeds in the mean; seeds that diverged while others went on are listed.
        "num_seeds": len(results["per_seed"]) - len(diverged_seeds),
        "avg_accuracy": {"mean": 100 * results["mean"]["avg_accuracy"],
                         "sem": 100 * results["sem"]["avg_accuracy"]},
        "bwt": {"mean": results["mean"]["bwt"], "sem": results["sem"]["bwt"]},
        "completed_tasks": results["completed_tasks"], "num_tasks": results["num_tasks"],
        "wall_time_s": results.get("wall_time_s"),
        "paper": None if paper is None else {"avg_accuracy": paper[0], "bwt": paper[1]},
    }
    if "diverged" in results:
      rows[row]["diverged"] = results["diverged"]
    if diverged_seeds:
      rows[row]["diverged_seeds"] = [{"seed": e["seed"], **e["diverged"]}
                                     for e in diverged_seeds]
  any_run = next(iter(runs.values()))
  notes = sorted({n for r in runs.values() for n in r.get("notes", [])})
  return {"preset": preset, "epochs": any_run["config"]["epochs"],
          "num_tasks": any_run["num_tasks"], "data_notes": "; ".join(notes),
          "wall_time_s": sum(r.get("wall_time_s") or 0 for r in runs.values()),
          "rows": rows}


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


def markdown(benchmark: str, entry: Mapping) -> str:
  """One benchmark's table: ours (mean ± SEM) beside the paper's, and DHP+X ≥ X?"""
  rows = entry["rows"]
  paper_epochs = training.make_config(_benchmark(benchmark)[0], "paper").epochs
  scale = ("" if entry["epochs"] == paper_epochs else
           f" — **reduced scale** (the paper: {paper_epochs} epochs/task)")
  lines = [f"### {benchmark} — preset `{entry['preset']}`, {entry['epochs']} epoch(s)/task, "
           f"{entry['num_tasks']} tasks, {_seeds_trained(rows)} per row{scale}",
           ""]
  if entry.get("data_notes"):
    lines += [f"Data: {entry['data_notes']}", ""]
  lines += ["| row | ACC % (ours) | ACC % (paper) | Δ ACC | BWT (ours) | BWT (paper) | "
            "DHP+X ≥ X? |", "|---|---|---|---|---|---|---|"]
  for row in ROWS:
    if row not in rows:
      continue
    r = rows[row]
    paper = r["paper"]
    done = "" if _complete(r) else \
        f" (partial: {r['completed_tasks']}/{r['num_tasks']} tasks)"
    if "diverged" in r:
      d = r["diverged"]
      done = (f" (**diverged**: non-finite {', '.join(d['quantities'])} in task {d['task']}, "
              f"epoch {d['epoch']}, seeds {d['seeds']}; numbers after task "
              f"{r['completed_tasks']})")
    if r.get("diverged_seeds"):
      where = "; ".join(f"seed {d['seed']} in task {d['task']}, epoch {d['epoch']}"
                        for d in r["diverged_seeds"])
      before = "before that: " if "diverged" in r else "**diverged**: "
      done += f" ({before}{where}; mean over the other {r['num_seeds']} seeds)"
    p_acc = f"{paper['avg_accuracy']:.2f}" if paper else "—"
    p_bwt = f"{paper['bwt']:+.2f}" if paper else "—"
    delta = f"{r['avg_accuracy']['mean'] - paper['avg_accuracy']:+.2f}" \
        if paper and _complete(r) else "—"
    verdict = ""
    base = _BASELINE_OF.get(row)
    if base in rows and not (_complete(r) and _complete(rows[base])):
      verdict = "n/a (unfinished row)"
    elif base in rows:
      ours, theirs = r["avg_accuracy"], rows[base]["avg_accuracy"]
      verdict = "yes" if ours["mean"] >= theirs["mean"] else "no"
      # A difference inside the combined SEM is not evidence either way.
      if min(r["num_seeds"], rows[base]["num_seeds"]) < 2:
        verdict += " (1 seed: no SEM)"
      elif abs(ours["mean"] - theirs["mean"]) <= (ours["sem"] ** 2 + theirs["sem"] ** 2) ** 0.5:
        verdict += " (within SEM)"
    n = r["num_seeds"]
    lines.append(f"| {ROW_LABELS[row]}{done} | {_cell(r['avg_accuracy'], 'pct', n)} | "
                 f"{p_acc} | {delta} | {_cell(r['bwt'], 'bwt', n)} | {p_bwt} | {verdict} |")
  wall = entry.get("wall_time_s")
  if wall:
    lines += ["", f"Wall time (sum over rows, this machine): {wall / 60:.1f} min"]
  return "\n".join(lines) + "\n"


def load_runs(bench_dir: str, rows) -> dict:
  runs = {}
  for row in rows:
    path = os.path.join(bench_dir, row, "results.json")
    if os.path.exists(path):
      with open(path) as f:
        runs[row] = json.load(f)
  return runs


def write_tables(bench_dir: str, benchmark: str, preset: str, rows) -> Optional[dict]:
  """(Re)writes table1.md/json and the figures of one benchmark from what is on disk."""
  runs = load_runs(bench_dir, rows)
  if not runs:
    return None
  entry = table_entry(benchmark, preset, runs)
  training.write_json_atomic(os.path.join(bench_dir, "table1.json"), {benchmark: entry})
  training.write_text_atomic(os.path.join(bench_dir, "table1.md"), markdown(benchmark, entry))
  plotting.plot_accuracy({ROW_LABELS[r]: runs[r] for r in ROWS if r in runs},
                         os.path.join(bench_dir, "accuracy.png"), f"{benchmark} ({preset})")
  if "dhp" in runs:
    plotting.plot_plasticity(runs["dhp"], os.path.join(bench_dir, "plasticity.png"),
                             f"{benchmark} ({preset}), DHP Softmax")
  return entry


def side_by_side(out_root: str) -> Optional[str]:
  """Table I's layout over every ``<out_root>/<benchmark>_<preset>/table1.json``: one
  column per recorded benchmark and preset, cells "ours (paper)"; None when none exist."""
  columns = []
  for benchmark in TABLES:
    for preset in training.PRESETS:
      path = os.path.join(out_root, f"{benchmark}_{preset}", "table1.json")
      if os.path.exists(path):
        with open(path) as f:
          columns.append((benchmark, preset, json.load(f)[benchmark]))
  if not columns:
    return None

  def cell(entry, row):
    r = entry["rows"].get(row)
    if r is None:
      return "not run"
    ours = _cell(r["avg_accuracy"], "pct", r["num_seeds"])
    if "diverged" in r:
      ours = f"diverged in task {r['diverged']['task']}"
    elif not _complete(r):
      ours = f"{r['completed_tasks']}/{r['num_tasks']} tasks"
    elif r.get("diverged_seeds"):
      ours += f" [{len(r['diverged_seeds'])} seed(s) diverged]"
    return ours + (f" ({r['paper']['avg_accuracy']:.2f})" if r["paper"] else "")

  def scale(benchmark, entry):
    paper_epochs = training.make_config(_benchmark(benchmark)[0], "paper").epochs
    epochs = str(entry["epochs"]) if entry["epochs"] == paper_epochs else \
        f"**{entry['epochs']}** (paper: {paper_epochs})"
    return f"{epochs} epochs/task, {entry['num_tasks']} tasks, {_seeds_trained(entry['rows'])}"

  lines = ["| row | " + " | ".join(f"{b} ({p})" for b, p, _ in columns) + " |",
           "|---" * (len(columns) + 1) + "|",
           "| scale | " + " | ".join(scale(b, e) for b, _, e in columns) + " |"]
  shown = [row for row in ROWS
           if row in DEFAULT_ROWS or any(row in e["rows"] for *_, e in columns)]
  lines += [f"| {ROW_LABELS[row]} | " + " | ".join(cell(e, row) for _, _, e in columns) + " |"
            for row in shown]
  return ("Average test accuracy % after the last task, mean ± SEM over seeds; the "
          "paper's value in parentheses.\n\n" + "\n".join(lines) + "\n")


def write_side_by_side(out_root: str) -> None:
  text = side_by_side(out_root)
  if text is not None:
    training.write_text_atomic(os.path.join(out_root, "table1.md"), text)


def check_names(benchmarks, rows) -> None:
  """ValueError naming the flag when a benchmark or row name is unknown."""
  for flag, values, known in (("benchmarks", benchmarks, TABLES),
                              ("rows", rows, tuple(ROWS))):
    unknown = [v for v in values if v not in known]
    if unknown:
      raise ValueError(f"--{flag}: unknown {unknown}; expected some of {list(known)}")


def run_table(benchmarks, rows, preset, num_seeds, out_root, *, seed=0, data_dir=None,
              progress=True, train=training.train_and_evaluate, **overrides) -> dict:
  """Runs the missing rows of every benchmark and writes its tables; returns them."""
  check_names(benchmarks, rows)
  tables = {}
  for benchmark in benchmarks:
    bench_dir = os.path.join(out_root, f"{benchmark}_{preset}")
    for row in rows:
      config = row_config(benchmark, preset, row, num_seeds=num_seeds, seed=seed, **overrides)
      row_dir = os.path.join(bench_dir, row)
      results_path = os.path.join(row_dir, "results.json")
      if training.is_complete(results_path, config):
        continue
      try:
        if training.seeds_to_extend(results_path, config):   # more seeds: train only those
          results = training.extend_seeds(config, row_dir, train=train, data_dir=data_dir,
                                          progress=progress)
        else:
          results = train(config, row_dir, data_dir=data_dir, resume=True, progress=progress)
      except training.NonFiniteError as e:   # recorded in the row's results.json; go on
        print(f"{training.row_label(config)}: {e}", flush=True)
        continue
      print(training.summary_line(config, results), flush=True)
      write_tables(bench_dir, benchmark, preset, rows)
    entry = write_tables(bench_dir, benchmark, preset, rows)
    if entry is not None:
      tables[benchmark] = entry
      print(markdown(benchmark, entry))
  write_side_by_side(out_root)
  return tables


def define_flags() -> None:
  """Defined only when run as a binary, so modules can be imported side by side."""
  flags.DEFINE_list("benchmarks", ["split_mnist"], f"Benchmarks to run: some of {list(TABLES)} "
                    "(split_mnist_class: Split MNIST, class-incremental, one shared head).")
  flags.DEFINE_list("rows", list(DEFAULT_ROWS), "Rows to run (default: Table I's eight "
                    f"and two controls; also available: {list(ROWS)[10:]}).")
  flags.DEFINE_enum("preset", "quick", list(training.PRESETS), "Preset.")
  flags.DEFINE_integer("num_seeds", 3, "Seeds per row (vmapped).", lower_bound=1)
  flags.DEFINE_integer("seed", 0, "First seed.")
  flags.DEFINE_integer("epochs", None, "Override epochs per task.", lower_bound=1)
  flags.DEFINE_integer("num_tasks", None, "Override number of tasks.",
                       lower_bound=1)
  flags.DEFINE_integer("train_subset", 0, "First n training samples per task "
                       "(0 = all).", lower_bound=0)
  flags.DEFINE_integer("importance_samples", None,
                       "Samples for Fisher/MAS (0 = all).", lower_bound=0)
  flags.DEFINE_string("out_root", "results", "Root folder of the result tables.")
  flags.DEFINE_string("data_dir", None, "Data search path.")
  flags.DEFINE_bool("progress", True, "Progress bars.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  overrides = dict(epochs=FLAGS.epochs, num_tasks=FLAGS.num_tasks,
                   train_subset=FLAGS.train_subset, importance_samples=FLAGS.importance_samples)
  try:
    check_names(FLAGS.benchmarks, FLAGS.rows)
  except ValueError as e:  # a usage error, before any training
    raise app.UsageError(str(e)) from e
  run_table(FLAGS.benchmarks, FLAGS.rows, FLAGS.preset, FLAGS.num_seeds, FLAGS.out_root,
            seed=FLAGS.seed, data_dir=FLAGS.data_dir, progress=FLAGS.progress, **overrides)


if __name__ == "__main__":
  define_flags()
  app.run(main)
