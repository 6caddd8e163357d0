"""The run record (dhp_jax.results): the results.json layout, divergence, completeness,
the arrays a commit saves, and merging seeds."""
import dataclasses
import glob
import json
import os

import numpy as np
import pytest

from dhp_jax import config as config_lib
from dhp_jax import results as results_lib
from dhp_jax.results import Divergence, RunRecord
from tests import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDED = sorted(glob.glob(os.path.join(REPO, "results", "**", "results.json"),
                            recursive=True))
_LOSS = ("loss",)


def _text(payload) -> str:
  return json.dumps(payload, sort_keys=True)


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_every_recorded_results_file_reads_and_writes_back_unchanged():
  assert len(RECORDED) > 50
  for path in RECORDED:
    payload = _read(path)
    assert RunRecord.from_json(payload).to_json() == payload, path


def test_the_arrays_a_commit_saves_give_back_the_same_record():
  for path in RECORDED:
    record = RunRecord.from_json(_read(path))
    arrays = {k: np.asarray(v) for k, v in record.progress_arrays().items()}
    assert all(a.dtype != object for a in arrays.values()), path   # npz without pickle
    back = dataclasses.replace(record, completed_tasks=0).with_progress(arrays)
    # As text: a diverged seed's lr·λ·Ω is NaN, which equals nothing, itself included.
    assert _text(back.to_json()) == _text(record.to_json()), path


def test_a_seed_that_diverged_alone_is_left_out_and_the_others_go_on():
  record = records.from_curves([[0.9, 0.8], [0.9, 0.6], [0.7]],
                               divergence={2: (2, 1, _LOSS)})
  assert record.diverged_seeds() == {2: Divergence(2, 1, _LOSS)}
  assert not record.stopped() and record.finished() and record.stop() is None
  assert record.left_out() == {2: Divergence(2, 1, _LOSS)}
  assert record.accuracy_by_seed() == ({0: pytest.approx(80.0), 1: pytest.approx(60.0)}, {2})
  assert record.summary()[0]["avg_accuracy"] == pytest.approx(0.7)
  payload = record.to_json()
  assert payload["per_seed"][2]["diverged"] == {"task": 2, "epoch": 1, "quantities": ["loss"]}
  assert len(payload["per_seed"][2]["accuracy_matrix"]) == 1 and "diverged" not in payload


def test_a_run_whose_every_seed_diverged_stopped_and_reports_the_last_ones():
  record = records.from_curves([[0.9], [0.8], [0.7]], num_tasks=4,
                               divergence={0: (2, 3, ("Hebb trace", "loss")),
                                           1: (2, 1, _LOSS), 2: (2, 3, _LOSS)})
  assert record.stopped() and record.finished() and record.last_stopped() == (0, 2)
  assert record.stop() == {"task": 2, "epoch": 3, "quantities": ["Hebb trace", "loss"],
                           "seeds": [0, 2]}
  assert record.left_out() == {1: Divergence(2, 1, _LOSS)}
  assert record.summary()[0]["avg_accuracy"] == pytest.approx(0.8)   # seeds 0 and 2
  assert record.accuracy_by_seed() == ({}, {0, 1, 2})
  payload = record.to_json()
  assert ["diverged" in e for e in payload["per_seed"]] == [False, True, False]
  assert RunRecord.from_json(payload).divergence[2] == Divergence(2, 3, ("Hebb trace", "loss"))


def test_holds_a_finished_run_of_the_config_or_of_it_with_more_seeds():
  config = config_lib.make_config("split_mnist", "quick", num_seeds=2)
  record = records.record([records.two_tasks(0.9)] * 2, config=config)
  assert record.holds(config) and record.holds(dataclasses.replace(config, num_seeds=1))
  assert not record.holds(dataclasses.replace(config, seed=5))
  assert not record.holds(dataclasses.replace(config, lr=0.5))
  more = dataclasses.replace(config, num_seeds=5)
  assert not record.holds(more) and record.seeds_to_extend(more) == 2
  unfinished = dataclasses.replace(record, num_tasks=5)
  assert not unfinished.finished() and unfinished.seeds_to_extend(more) == 0


def _run(seed, acc, tasks_done, divergence=None, num_seeds=1, stability=()):
  config = config_lib.make_config("permuted_mnist", "quick", "online_ewc", num_tasks=2,
                                  seed=seed, num_seeds=num_seeds)
  trace = {"task": list(range(tasks_done)), "eta": [[0.1] * num_seeds] * tasks_done}
  return records.from_curves([[acc] * tasks_done] * num_seeds, config=config, num_tasks=2,
                             divergence=divergence, trace=trace, stability=stability,
                             wall_time_s=1.0)


def test_merging_a_run_whose_seeds_all_diverged_keeps_them_out_of_the_mean():
  merged = results_lib.merge_seed_runs(_run(0, 0.5, 1, {0: (2, 1, _LOSS)}), _run(1, 0.9, 2))
  payload = merged.to_json()
  assert payload["per_seed"][0]["diverged"] == {"task": 2, "epoch": 1, "quantities": ["loss"]}
  assert "diverged" not in payload and merged.completed_tasks == 2
  assert payload["mean"]["avg_accuracy"] == pytest.approx(0.9)
  assert payload["trace"]["eta"] == [[0.1, 0.1], [None, 0.1]]
  assert payload["wall_time_s"] == 2.0 and payload["config"]["num_seeds"] == 2
  # Every seed diverged: as one run of both seeds would record it, the later stop is the
  # run-wide one and its seed's numbers (after its last task) are the row's.
  early, late = (2, 1, _LOSS), (2, 3, ("Hebb trace",))
  for first, second, last_seed in ((_run(0, 0.5, 1, {0: late}), _run(1, 0.9, 1, {0: early}), 0),
                                   (_run(0, 0.9, 1, {0: early}), _run(1, 0.5, 1, {0: late}), 1)):
    payload = results_lib.merge_seed_runs(first, second).to_json()
    assert payload["diverged"] == {"task": 2, "epoch": 3, "quantities": ["Hebb trace"],
                                   "seeds": [last_seed]}
    assert payload["completed_tasks"] == 1
    assert payload["mean"]["avg_accuracy"] == pytest.approx(0.5)
    assert [("diverged" in e) for e in payload["per_seed"]] == \
        [last_seed != 0, last_seed != 1]
  tie = results_lib.merge_seed_runs(_run(0, 0.5, 1, {0: early}), _run(1, 0.7, 1, {0: early}))
  assert tie.stop()["seeds"] == [0, 1] and tie.summary()[0]["avg_accuracy"] == 0.6
  with pytest.raises(ValueError, match="does not continue"):
    results_lib.merge_seed_runs(_run(0, 0.5, 2), _run(2, 0.9, 2))
  with pytest.raises(ValueError, match="unfinished"):
    results_lib.merge_seed_runs(_run(0, 0.5, 1), _run(1, 0.9, 2))


def test_merging_keeps_every_seeds_stability_record():
  def stability(values):
    return [{"task": t + 1, "max_lr_strength_importance": v, "largest_layer": ["k"] * len(v)}
            for t, v in enumerate(values)]

  merged = results_lib.merge_seed_runs(
      _run(0, 0.5, 2, stability=stability([[0.5], [1.5]])),
      _run(1, 0.5, 2, num_seeds=2, stability=stability([[0.2, 0.3]]))).to_json()
  assert merged["penalty_stability"] == [
      {"task": 1, "max_lr_strength_importance": [0.5, 0.2, 0.3], "largest_layer": ["k"] * 3},
      {"task": 2, "max_lr_strength_importance": [1.5, None, None],
       "largest_layer": ["k", None, None]}]
  older = results_lib.merge_seed_runs(_run(0, 0.5, 2),
                                      _run(1, 0.5, 2, stability=stability([[0.2], [0.4]])))
  assert older.to_json()["penalty_stability"][1]["max_lr_strength_importance"] == [None, 0.4]
