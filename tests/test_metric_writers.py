"""Metrics read back (TensorBoard's own reader, csv) equal what results.json holds."""
import contextlib
import csv
import os
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from dhp_jax import metric_writers
from experiments import cli, run as run_binary

ARGS = ["run.py", "--benchmark=permuted_mnist", "--num_tasks=2", "--epochs=2",
        "--train_subset=256", "--lr=0.1", "--num_seeds=2", "--seed=3", "--noprogress",
        "--jax_cache_dir="]


@pytest.fixture(scope="module")
def logged(tmp_path_factory, mnist):
  root = tmp_path_factory.mktemp("metrics")
  out, logdir = str(root / "dhp_run"), str(root / "logs")
  results = run_binary.main([*ARGS, f"--out_dir={out}", f"--logdir={logdir}"])
  return results, logdir


def _scalars(logdir, seed):
  events = event_accumulator.EventAccumulator(os.path.join(logdir, "dhp_run", f"seed_{seed}"))
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
          for tag in events.Tags()["scalars"]}


def test_tensorboard_events_hold_the_trace_and_the_accuracies(logged):
  results, logdir = logged
  trace = results["trace"]
  for s, entry in enumerate(results["per_seed"]):
    scalars = _scalars(logdir, entry["seed"])
    for name, tag in metric_writers.EPOCH_METRICS.items():
      steps, values = zip(*scalars[tag])
      assert steps == (1, 2, 3, 4)
      np.testing.assert_allclose(values, [epoch[s] for epoch in trace[name]], rtol=1e-6)
    full = entry["accuracy_matrix_all_tasks"]
    assert [v for _, v in scalars[metric_writers.accuracy_tag(1)]] == pytest.approx(
        [full[0][0], full[1][0]])
    assert scalars[metric_writers.accuracy_tag(2)] == [(4, pytest.approx(full[1][1]))]
    assert [v for _, v in scalars[metric_writers.AVERAGE_ACCURACY]] == pytest.approx(
        entry["avg_accuracy_curve"])


def test_the_csv_is_tidy_and_holds_the_same_values(logged):
  results, logdir = logged
  with open(os.path.join(logdir, metric_writers.CSV_NAME)) as f:
    rows = list(csv.DictReader(f))
  assert tuple(rows[0]) == metric_writers.CSV_COLUMNS
  seeds = [e["seed"] for e in results["per_seed"]]
  assert {r["run"] for r in rows} == {"dhp_run"} and {int(r["seed"]) for r in rows} == set(seeds)
  eta = [(int(r["task"]), int(r["epoch"]), float(r["value"])) for r in rows
         if r["metric"] == "eta" and int(r["seed"]) == seeds[1]]
  assert [(t, e) for t, e, _ in eta] == [(1, 1), (1, 2), (2, 1), (2, 2)]
  np.testing.assert_allclose([v for *_, v in eta],
                             [epoch[1] for epoch in results["trace"]["eta"]], rtol=1e-6)
  average = [float(r["value"]) for r in rows if r["metric"] == metric_writers.AVERAGE_ACCURACY
             and int(r["seed"]) == seeds[0]]
  assert average == pytest.approx(results["per_seed"][0]["avg_accuracy_curve"])
  assert all(r["epoch"] == "" for r in rows if r["metric"].startswith("test/"))


class _CtrlC:
  """An observer after the metrics writer: Ctrl-C once epoch ``epoch`` of ``task`` is logged."""

  def __init__(self, task, epoch):
    self.at = (task, epoch)

  def epoch(self, task, epoch, values):
    if (task, epoch) == self.at:
      raise KeyboardInterrupt

  def task(self, task, accuracy):
    del task, accuracy


def _csv_rows(logdir):
  with open(os.path.join(logdir, metric_writers.CSV_NAME)) as f:
    return list(csv.reader(f))


def test_metrics_after_a_kill_and_a_ctrl_c_equal_an_uninterrupted_runs(
    logged, tmp_path, monkeypatch, capsys):
  _, full_logdir = logged
  out, logdir = str(tmp_path / "dhp_run"), str(tmp_path / "logs")
  args = [*ARGS, f"--out_dir={out}", f"--logdir={logdir}"]
  run_binary.main([*args, "--stop_after_task=1"])
  # A kill -9 before the events of task 1 reached the disk, and after task 2's CSV rows
  # were written but before its commit.
  for seed in (3, 4):
    shutil.rmtree(os.path.join(logdir, "dhp_run", f"seed_{seed}"))
  with open(os.path.join(logdir, metric_writers.CSV_NAME), "a", newline="") as f:
    csv.writer(f).writerow(["dhp_run", 3, 2, "", metric_writers.AVERAGE_ACCURACY, 0.5])
  # Then Ctrl-C in task 2 once its first epoch is logged (the writer's close flushes it).
  real = cli.metric_writers

  @contextlib.contextmanager
  def with_ctrl_c(*a, **k):
    with real(*a, **k) as writers:
      yield [*writers, _CtrlC(1, 0)]
  monkeypatch.setattr(cli, "metric_writers", with_ctrl_c)
  capsys.readouterr()
  with pytest.raises(SystemExit) as exit_:
    run_binary.main([*args, "--resume"])
  err = capsys.readouterr().err
  assert exit_.value.code == 130 and "Traceback" not in err
  assert err.strip().splitlines()[-1] == (
      f"interrupted: {out} keeps tasks 1-1 of 2 (the last committed task); the task in "
      f"progress is lost; to go on, rerun the same command with --resume")
  monkeypatch.undo()
  run_binary.main([*args, "--resume"])
  for seed in (3, 4):
    assert _scalars(logdir, seed) == _scalars(full_logdir, seed)
  assert _csv_rows(logdir) == _csv_rows(full_logdir)
