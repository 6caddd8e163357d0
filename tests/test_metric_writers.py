"""Metrics read back (TensorBoard's own reader, csv) equal what results.json holds."""
import csv
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from dhp_jax import metric_writers
from experiments import run as run_binary

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
