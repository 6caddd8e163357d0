"""Table I generation, its resume-skip logic, and the η sweep."""
import dataclasses
import json
import os

import pytest

from dhp_jax import config as config_lib
from dhp_jax import data, engine, plotting, results as results_lib, store
from dhp_jax.results import Divergence
from experiments import cli, eta_sweep, table1
from experiments import rows as rows_lib
from tests import records

_LOSS = ("loss",)


def _fake_record(config, accs, **kwargs):
  """A finished two-task record whose seeds have final average accuracies ``accs``
  (running average [0.99, acc], BWT −0.1)."""
  return records.record([records.two_tasks(a) for a in accs], config=config,
                        notes=["a data note"], wall_time_s=60.0, **kwargs)


def _fake_results(config, accs):
  """``_fake_record``'s results.json payload."""
  return _fake_record(config, accs).to_json()


def _write(row_dir, record):
  os.makedirs(row_dir, exist_ok=True)
  store.write_json_atomic(os.path.join(row_dir, "results.json"), record.to_json())


def _must_not_train(*args, **kwargs):
  raise AssertionError("a finished row was trained again")


def _write_tree(root, rows_accs, **overrides):
  bench_dir = os.path.join(root, "split_mnist_quick")
  for row, accs in rows_accs.items():
    config = table1.row_config("split_mnist", "quick", row, num_seeds=len(accs), **overrides)
    os.makedirs(os.path.join(bench_dir, row))
    with open(os.path.join(bench_dir, row, "results.json"), "w") as f:
      json.dump(_fake_results(config, accs), f)
  return bench_dir


def test_table_from_fake_results_tree(tmp_path):
  rows = {"finetune": [0.90, 0.92], "dhp": [0.95, 0.97], "si": [0.98, 0.98],
          "dhp+si": [0.97, 0.97], "mas": [0.98, 0.99], "dhp+mas": [0.984, 0.984]}
  bench_dir = _write_tree(str(tmp_path), rows)
  entry = table1.write_tables(bench_dir, "split_mnist", "quick", list(rows))
  assert entry["rows"]["dhp"]["avg_accuracy"]["mean"] == pytest.approx(96.0)
  assert entry["rows"]["dhp"]["avg_accuracy"]["sem"] == pytest.approx(1.0)
  assert entry["rows"]["dhp"]["paper"] == {"avg_accuracy": 98.23, "bwt": -0.02}
  with open(os.path.join(bench_dir, "table1.json")) as f:
    assert json.load(f)["split_mnist"]["rows"]["si"]["num_seeds"] == 2
  with open(os.path.join(bench_dir, "table1.md")) as f:
    md = f.read()
  assert "| DHP Softmax | 96.00 ± 1.00 | 98.23 | -2.23 | -0.100 ± 0.000 | -0.02 | yes |" in md
  assert "| DHP Softmax + SI | 97.00 ± 0.00 | 99.15 | -2.15 |" in md and "| no |" in md
  assert "| DHP Softmax + MAS | 98.40 ± 0.00 | 98.43 | -0.03 |" in md
  assert "| undecided |" in md  # DHP+MAS − MAS per seed: +0.4, −0.6
  assert "Data: a data note" in md
  assert "**reduced scale** (the paper: 10 epochs/task)" in md   # quick: 2 epochs/task
  assert os.path.getsize(os.path.join(bench_dir, "accuracy.png")) > 1000


def _diverge_seed(bench_dir, row, seed):
  """Marks ``seed`` of a fake row as diverged in task 2 (its numbers stop after task 1)."""
  record = results_lib.load(os.path.join(bench_dir, row))
  divergence = [Divergence(2, 1, _LOSS) if s == seed else d
                for s, d in zip(record.seeds, record.divergence)]
  _write(os.path.join(bench_dir, row), dataclasses.replace(record,
                                                           divergence=tuple(divergence)))


def _verdict(md, label):
  """The "DHP+X ≥ X?" cell of the row labelled ``label`` (notes after the label allowed)."""
  line = next(line for line in md.splitlines()
              if line.startswith((f"| {label} |", f"| {label} (")))
  return line.split("|")[-2].strip()


T_975_2DOF = 4.302652729749462   # Student t table: 97.5 % quantile, 2 degrees of freedom
PAIRED_ROWS = {"finetune": [0.90, 0.92, 0.94], "dhp": [0.91, 0.94, 0.93],
               "si": [0.90, 0.91, 0.92], "dhp+si": [0.92, 0.925, 0.94],
               "mas": [0.95, 0.96, 0.97], "dhp+mas": [0.94, 0.95, 0.99],
               "dhp_frozen_alpha": [0.91, 0.94, 0.93],
               "dhp+mas_eta_projected": [0.96, 0.97, 0.98],
               "finetune_dense": [0.88, 0.90, 0.95]}


def test_paired_differences_in_json_exclude_diverged_seeds(tmp_path):
  bench_dir = _write_tree(str(tmp_path), PAIRED_ROWS)
  _diverge_seed(bench_dir, "dhp+mas", 2)
  table1.write_tables(bench_dir, "split_mnist", "quick", list(PAIRED_ROWS))
  with open(os.path.join(bench_dir, "table1.json")) as f:
    paired = json.load(f)["split_mnist"]["paired"]
  assert set(paired) == {"dhp - finetune", "dhp+si - si", "dhp+mas - mas",
                         "dhp+mas_eta_projected - mas", "dhp - dhp_frozen_alpha",
                         "dhp_frozen_alpha - finetune",
                         "dhp+mas_eta_projected - dhp+mas", "finetune - finetune_dense",
                         "dhp - finetune_dense"}
  # DHP − Finetune per seed: +1, +2, −1 points; sample variance 7/3, so SEM √(7/9).
  sem = (7 / 9) ** 0.5
  dhp = paired["dhp - finetune"]
  assert {k: dhp[k] for k in ("wins", "n", "seeds", "excluded_diverged")} == \
      {"wins": 2, "n": 3, "seeds": [0, 1, 2], "excluded_diverged": []}
  assert dhp["differences"] == pytest.approx([1.0, 2.0, -1.0])
  assert (dhp["mean"], dhp["sem"]) == pytest.approx((2 / 3, sem))
  assert dhp["ci95"] == pytest.approx([2 / 3 - T_975_2DOF * sem, 2 / 3 + T_975_2DOF * sem])
  mas = paired["dhp+mas - mas"]   # seed 2 of DHP+MAS diverged: −1, −1 on seeds 0 and 1
  assert (mas["n"], mas["seeds"], mas["wins"], mas["excluded_diverged"]) == (2, [0, 1], 0, [2])
  assert mas["mean"] == pytest.approx(-1.0) and mas["ci95"] == pytest.approx([-1.0, -1.0])
  assert paired["dhp+mas_eta_projected - dhp+mas"]["excluded_diverged"] == [2]
  assert paired["dhp - dhp_frozen_alpha"]["wins"] == 0
  init = paired["dhp - finetune_dense"]   # +3, +4, −2 points: the θ-init pair is read too
  assert init["differences"] == pytest.approx([3.0, 4.0, -2.0]) and init["wins"] == 2
  with open(os.path.join(bench_dir, "instability.json")) as f:   # from the same runs
    assert json.load(f)["dhp_mas"]["rows"]["dhp+mas"]["num_seeds"] == 3


def test_dhp_x_verdict_reads_the_paired_interval(tmp_path):
  bench_dir = _write_tree(str(tmp_path), PAIRED_ROWS)
  _diverge_seed(bench_dir, "dhp+mas", 2)
  table1.write_tables(bench_dir, "split_mnist", "quick", list(PAIRED_ROWS))
  with open(os.path.join(bench_dir, "table1.md")) as f:
    md = f.read()
  assert _verdict(md, "DHP Softmax") == "undecided"      # +1, +2, −1
  assert _verdict(md, "DHP Softmax + SI") == "yes"       # +2, +1.5, +2
  assert _verdict(md, "DHP Softmax + MAS") == "no"       # −1, −1 (seed 2 diverged)
  assert _verdict(md, "MAS") == "" and _verdict(md, "DHP Softmax, α frozen at 0 (control)") == ""
  assert _verdict(md, "DHP Softmax + MAS, η projected into [0, 1] (control)") == "yes"
  assert "| `dhp+mas - mas` | 2 | -1.000 ± 0.000 | [-1.000, -1.000] | 0/2 | 2 |" in md
  assert "| `dhp - finetune` | 3 | +0.667 ± 0.882 | [-3.128, +4.461] | 2/3 | — |" in md
  assert "Seeds are paired: seed s gives every row the same hidden-layer init" in md


def _give_trace(bench_dir, row, diverged_seed=None):
  """A DHP row's per-epoch trace (2 tasks × 2 epochs), None after ``diverged_seed`` diverged."""
  path = os.path.join(bench_dir, row, "results.json")
  with open(path) as f:
    results = json.load(f)
  num_seeds = len(results["per_seed"])
  per_epoch = [[None if s == diverged_seed and epoch >= 2 else 0.01 * (epoch + s + 1)
                for s in range(num_seeds)] for epoch in range(4)]
  results["trace"] = {"task": [0, 0, 1, 1], "eta": per_epoch, "hebb_norm": per_epoch,
                      "alpha_norm": per_epoch, "epoch_loss": per_epoch}
  with open(path, "w") as f:
    json.dump(results, f)


def test_plasticity_figures_one_line_per_seed(tmp_path):
  rows = {"dhp": [0.9, 0.91], "dhp+mas": [0.9, 0.91, 0.92], "dhp+mas_eta_projected": [0.9]}
  bench_dir = _write_tree(str(tmp_path), rows)
  for row in rows:
    _give_trace(bench_dir, row, diverged_seed=2 if row == "dhp+mas" else None)
  table1.write_tables(bench_dir, "split_mnist", "quick", ["dhp", "dhp+mas"])
  assert os.path.getsize(os.path.join(bench_dir, "plasticity.png")) > 1000
  assert not os.path.exists(os.path.join(bench_dir, "plasticity_dhp+mas.png"))  # no control
  table1.write_tables(bench_dir, "split_mnist", "quick", list(rows))
  assert os.path.getsize(os.path.join(bench_dir, "plasticity_dhp+mas.png")) > 1000
  finetune = _fake_record(table1.row_config("split_mnist", "quick", "finetune"), [0.9])
  assert not plotting.plot_plasticity_per_seed({"Finetune": finetune}, str(tmp_path / "x.png"))


def test_complete_rows_are_skipped(tmp_path):
  rows = {"finetune": [0.9], "dhp": [0.95]}
  _write_tree(str(tmp_path), rows, epochs=1)
  tables = table1.run_table(["split_mnist"], list(rows), "quick", 1, str(tmp_path),
                            train=_must_not_train, epochs=1)
  assert set(tables["split_mnist"]["rows"]) == set(rows)


def test_opt_in_eta_projection_row():
  assert len(table1.DEFAULT_ROWS) == 10 and "dhp_eta_projected" not in table1.DEFAULT_ROWS
  config = table1.row_config("vision_mixture", "quick", "dhp_eta_projected")
  assert (config.head, config.eta_constraint, config.eta_init) == ("dhp", "project", 1e-4)
  assert rows_lib.row_label(config) == "DHP Softmax, η projected into [0, 1] (control)"


def test_opt_in_online_ewc_variant_rows():
  config = table1.row_config("imbalanced_permuted_mnist", "quick", "dhp+online_ewc_gamma0.9")
  assert (config.head, config.ewc_gamma, config.fisher_mode, config.strength) == \
      ("dhp", 0.9, "exact", 400.0)
  assert rows_lib.row_label(config) == "DHP Softmax + Online EWC, γ = 0.9 (variant)"
  config = table1.row_config("imbalanced_permuted_mnist", "quick", "online_ewc_empirical")
  assert (config.head, config.ewc_gamma, config.fisher_mode) == ("matched", 1.0, "empirical")
  assert rows_lib.row_label(config) == "Online EWC, empirical Fisher (variant)"
  assert not set(table1.DEFAULT_ROWS) & {"online_ewc_gamma0.9", "online_ewc_empirical"}
  config = table1.row_config("imbalanced_permuted_mnist", "quick", "dhp+online_ewc_lambda100")
  assert rows_lib.row_label(config) == "DHP Softmax + Online EWC, λ = 100 (variant)"
  assert rows_lib.BASELINE_OF["dhp+online_ewc_lambda100"] == "online_ewc_lambda100"
  assert rows_lib.BASELINE_OF["dhp+mas_eta_projected"] == "mas"
  config = table1.row_config("vision_mixture", "medium", "dhp+mas_lambda0.1")
  assert (config.method, config.head, config.strength) == ("mas", "dhp", 0.1)
  assert rows_lib.row_label(config) == "DHP Softmax + MAS, λ = 0.1 (variant)"
  assert rows_lib.BASELINE_OF["dhp+mas_lambda0.1"] == "mas_lambda0.1"
  config = table1.row_config("permuted_mnist", "paper", "dhp+mas_eta_projected")
  assert rows_lib.row_label(config) == "DHP Softmax + MAS, η projected into [0, 1] (control)"


def test_class_incremental_split_mnist_is_its_own_table_without_paper_numbers(tmp_path):
  config = table1.row_config("split_mnist_class", "paper", "dhp", num_seeds=2)
  assert (config.benchmark, config.scenario, config.epochs) == ("split_mnist", "class", 10)
  bench_dir = os.path.join(str(tmp_path), "split_mnist_class_paper")
  os.makedirs(os.path.join(bench_dir, "dhp"))
  with open(os.path.join(bench_dir, "dhp", "results.json"), "w") as f:
    json.dump(_fake_results(config, [0.5, 0.6]), f)
  tables = table1.run_table(["split_mnist_class"], ["dhp"], "paper", 2, str(tmp_path),
                            train=_must_not_train)
  assert tables["split_mnist_class"]["rows"]["dhp"]["paper"] is None
  with open(os.path.join(str(tmp_path), "table1.md")) as f:
    assert "| DHP Softmax | 55.00 ± 5.00 |" in f.read()


def test_unknown_rows_and_benchmarks_are_refused(tmp_path):
  with pytest.raises(ValueError, match="--rows"):
    table1.run_table(["split_mnist"], ["ewc++"], "quick", 1, str(tmp_path))
  with pytest.raises(ValueError, match="--benchmarks"):
    table1.run_table(["mnist"], ["dhp"], "quick", 1, str(tmp_path))


def test_eta_sweep_one_point_per_eta(tmp_path, mnist):
  etas = (0.1, 0.001)
  summary = eta_sweep.run_sweep(["permuted_mnist"], etas, "quick", 1, str(tmp_path),
                                progress=False, num_tasks=1, train_subset=2048, lr=0.1)
  assert summary["permuted_mnist"]["eta"] == list(etas)
  assert len(summary["permuted_mnist"]["mean"]) == len(etas)
  assert all(0.5 < m <= 1 for m in summary["permuted_mnist"]["mean"])
  assert os.path.exists(tmp_path / "eta_sweep_quick" / "eta_sweep.png")


def test_a_diverged_row_is_shown_and_not_retrained(tmp_path):
  rows = {"online_ewc": [0.9], "dhp+online_ewc": [0.95]}
  bench_dir = _write_tree(str(tmp_path), rows)
  row_dir = os.path.join(bench_dir, "online_ewc")
  _write(row_dir, dataclasses.replace(results_lib.load(row_dir), completed_tasks=1,
                                      divergence=(Divergence(2, 1, _LOSS),)))
  tables = table1.run_table(["split_mnist"], list(rows), "quick", 1, str(tmp_path),
                            train=_must_not_train)
  assert tables["split_mnist"]["rows"]["online_ewc"]["diverged"]["task"] == 2
  with open(os.path.join(bench_dir, "table1.md")) as f:
    md = f.read()
  assert ("| Online EWC (**diverged**: non-finite loss in task 2, epoch 1, seeds [0]; "
          "numbers after task 1) | 99.00 | 97.65 | — |") in md   # one seed: no ± SEM
  assert "| DHP Softmax + Online EWC | 95.00 | 98.96 | -3.96 |" in md
  assert "n/a (unfinished row) |" in md


def test_a_row_with_one_diverged_seed_shows_the_mean_of_the_others(tmp_path):
  config = table1.row_config("split_mnist", "quick", "online_ewc", num_seeds=3)
  record = _fake_record(config, [0.90, 0.94, 0.5], divergence={2: (2, 1, _LOSS)})
  bench_dir = os.path.join(str(tmp_path), "split_mnist_quick")
  _write(os.path.join(bench_dir, "online_ewc"), record)
  entry = table1.write_tables(bench_dir, "split_mnist", "quick", ["online_ewc"])
  assert entry["rows"]["online_ewc"]["num_seeds"] == 2
  with open(os.path.join(bench_dir, "table1.md")) as f:
    md = f.read()
  assert ("| Online EWC (**diverged**: seed 2 in task 2, epoch 1; mean over the other 2 "
          "seeds) | 92.00 ± 2.00 | 97.65 | -5.65 |") in md
  assert "2 tasks, 3 seeds per row" in md   # the diverged seed was trained too
  table1.write_side_by_side(str(tmp_path))
  with open(os.path.join(str(tmp_path), "table1.md")) as f:
    side = f.read()
  assert "| 92.00 ± 2.00 [1 seed(s) diverged] (97.65) |" in side
  assert "2 tasks, 3 seeds |" in side
  # Seeds 0 and 1 stop later in the same task: the row's every seed diverged.
  later = Divergence(2, 3, _LOSS)
  _write(os.path.join(bench_dir, "online_ewc"), dataclasses.replace(
      record, divergence=(later, later, record.divergence[2])))
  table1.write_tables(bench_dir, "split_mnist", "quick", ["online_ewc"])
  assert "| Online EWC | diverged in task 2 (97.65) |" in table1.side_by_side(str(tmp_path))


def test_divergence_note_names_the_tasks_of_a_row_whose_every_seed_diverged():
  assert results_lib.divergence_note([6]) == "diverged in task 6"
  assert results_lib.divergence_note([7, 7]) == "diverged in task 7"
  assert results_lib.divergence_note([7, 6, 6, 6, 6]) == "5 of 5 seeds diverged, tasks 6–7"


def test_a_row_that_diverges_does_not_stop_the_table(tmp_path):
  trained = []

  def train(config, row_dir, **kwargs):
    trained.append(config.method)
    if config.method == "si":
      raise engine.NonFiniteError("non-finite loss in task 2, epoch 1")
    os.makedirs(row_dir)
    results = _fake_results(config, [0.9])
    with open(os.path.join(row_dir, "results.json"), "w") as f:
      json.dump(results, f)
    return results

  tables = table1.run_table(["split_mnist"], ["si", "mas"], "quick", 1, str(tmp_path),
                            train=train)
  assert trained == ["si", "mas"] and set(tables["split_mnist"]["rows"]) == {"mas"}


def _side_by_side_of(tmp_path, rows_accs) -> str:
  """results/table1.md after tabling the fake Split MNIST rows ``rows_accs``."""
  _write_tree(str(tmp_path), rows_accs)
  seeds = len(next(iter(rows_accs.values())))
  table1.run_table(["split_mnist"], list(rows_accs), "quick", seeds, str(tmp_path),
                   train=_must_not_train)
  with open(tmp_path / "table1.md") as f:
    return f.read()


def test_side_by_side_table_over_recorded_benchmarks(tmp_path):
  assert table1.side_by_side(str(tmp_path)) is None
  md = _side_by_side_of(tmp_path, {"finetune": [0.9], "dhp": [0.95]})
  assert "| row | split_mnist (quick) |" in md
  assert "| scale | **2** (paper: 10) epochs/task, 2 tasks, 1 seed |" in md
  assert "| Finetune | 90.00 (90.43) |" in md and "| SI | not run |" in md
  assert "η projected" not in md   # opt-in rows appear only where they were run
  with open(tmp_path / "split_mnist_quick" / "table1.md") as f:
    md = f.read()
  assert "| 1 seed |" in md and "No paired interval" in md


def test_fig2_legend_shows_the_surviving_seeds_mean_or_where_the_row_diverged():
  curves = [[0.9, 0.8], [0.9, 0.6], [0.1]]
  record = records.from_curves(curves, divergence={2: (2, 1, _LOSS)})
  assert plotting.curve_label("SI", record) == "SI (70.00%, 1 of 3 seeds diverged)"
  assert plotting.curve_label("SI", records.from_curves(curves[:2])) == "SI (70.00%)"
  stopped = records.from_curves(curves, divergence={0: (6, 2, _LOSS), 1: (6, 2, _LOSS),
                                                    2: (2, 1, _LOSS)})
  assert plotting.curve_label("SI", stopped) == "SI (3 of 3 seeds diverged, tasks 2–6)"
  one = records.from_curves(curves[:1], divergence={0: (6, 2, _LOSS)})
  assert plotting.curve_label("SI", one) == "SI (diverged in task 6)"


def test_more_seeds_train_only_the_missing_ones_and_merge(tmp_path):
  bench_dir = _write_tree(str(tmp_path), {"finetune": [0.90]})
  trained = []

  def train(config, row_dir, **kwargs):
    trained.append((config.seed, config.num_seeds))
    results = _fake_results(config, [0.94] * config.num_seeds)
    os.makedirs(row_dir)
    with open(os.path.join(row_dir, "results.json"), "w") as f:
      json.dump(results, f)
    return results

  tables = table1.run_table(["split_mnist"], ["finetune"], "quick", 3, str(tmp_path),
                            train=train)
  assert trained == [(1, 2)]   # seed 0 is on disk already
  row = tables["split_mnist"]["rows"]["finetune"]
  assert row["num_seeds"] == 3 and row["avg_accuracy"]["mean"] == pytest.approx(92.667, abs=1e-3)
  with open(os.path.join(bench_dir, "finetune", "results.json")) as f:
    merged = json.load(f)
  assert [e["seed"] for e in merged["per_seed"]] == [0, 1, 2]
  assert merged["config"]["num_seeds"] == 3 and merged["wall_time_s"] == 120.0
  table1.run_table(["split_mnist"], ["finetune"], "quick", 3, str(tmp_path),
                   train=_must_not_train)   # now complete
  # ... and complete for the original one-seed command too: it holds seed 0.
  table1.run_table(["split_mnist"], ["finetune"], "quick", 1, str(tmp_path),
                   train=_must_not_train)
  asked = table1.row_config("split_mnist", "quick", "finetune", num_seeds=2)
  assert results_lib.load(os.path.join(bench_dir, "finetune")).holds(asked)
  other_seeds = table1.row_config("split_mnist", "quick", "finetune", num_seeds=2, seed=5)
  assert not results_lib.load(os.path.join(bench_dir, "finetune")).holds(other_seeds)


def test_side_by_side_shows_the_paired_intervals_of_every_table(tmp_path):
  md = _side_by_side_of(tmp_path, {"finetune": [0.90, 0.92, 0.91], "dhp": [0.95, 0.96, 0.97]})
  # DHP − Finetune per seed: +5, +4, +6 points -> mean +5, SEM 0.577, t(0.975, 2) = 4.303.
  assert "| pair (points) | split_mnist (quick) |" in md
  assert "| dhp - finetune | +5.00 [+2.52, +7.48] 3/3 |" in md


def test_table1_errors_name_its_own_flags(tmp_path):
  (tmp_path / "a_file").write_text("")
  args = ["table1.py", "--rows=dhp", "--noprogress", "--jax_cache_dir="]
  with pytest.raises(SystemExit) as exit_:
    table1.main([*args, f"--out_root={tmp_path / 'a_file'}"])
  assert str(exit_.value.code).startswith(f"error: --out_root={tmp_path / 'a_file'} is a file")
  row_dir = tmp_path / "root" / "split_mnist_quick" / "dhp"
  row_dir.parent.mkdir(parents=True)
  row_dir.write_text("")   # where the row's run directory should be
  with pytest.raises(SystemExit) as exit_:
    table1.main([*args, f"--out_root={tmp_path / 'root'}"])
  assert str(row_dir) in str(exit_.value.code) and "--out_dir" not in str(exit_.value.code)
  # Its advice names no run.py flag: table1 always resumes and has no --restart.
  for kind, advice in cli.TABLE_ADVICE.items():
    said = cli.with_advice(store.StoreError("x", advice=kind), cli.TABLE_ADVICE)
    assert said == f"x; {advice}" and "--" not in said


def test_missing_data_names_the_flag_the_variable_and_where_make_fetch_puts_it(
    tmp_path, monkeypatch):
  monkeypatch.delenv(data.ENV_VAR, raising=False)
  fetched = str(tmp_path / "checkout" / ".data")
  monkeypatch.setattr(cli, "FETCHED_DATA", fetched)
  assert cli.data_dirs(None) is None   # no `make fetch` yet: the library's default
  os.makedirs(fetched)
  assert cli.data_dirs(None) == [fetched, *map(str, data.search_path())]
  assert cli.data_dirs("/elsewhere") == "/elsewhere"
  monkeypatch.setenv(data.ENV_VAR, "/from/env")
  assert cli.data_dirs(None) is None   # the library reads $DHP_DATA_DIR itself

  def load(fv):
    return data.load("mnist", cli.data_dirs(fv.data_dir), source="files")
  with pytest.raises(SystemExit) as exit_:
    cli.main(load, lambda fv: None, ["run.py", f"--data_dir={tmp_path / 'empty'}"])
  message = str(exit_.value.code)
  assert message.startswith("error: mnist: not found") and "\n" not in message
  assert f"--data_dir=DIR or set ${data.ENV_VAR}" in message and fetched in message
