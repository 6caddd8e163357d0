"""experiments/instability.py: its bookkeeping over seeds, on small synthetic records."""
import json
import os

import pytest

from dhp_jax import config as config_lib
from experiments import instability
from tests import records

_ONLINE_EWC = config_lib.make_config("split_mnist", "quick", "online_ewc", strength=100.0,
                                     lr=0.01)


def _results(curves, trace=None, stability=(), diverged=None, run_diverged=None,
             num_tasks=None):
  """A record: seed s has running average accuracies ``curves[s]`` (fractions) over the
  tasks it finished; ``diverged`` seed -> {task, epoch, quantities} (its curve stops);
  ``run_diverged``: every seed listed diverged there (the run stopped)."""
  divergence = {s: (d["task"], d["epoch"], d["quantities"])
                for s, d in (diverged or {}).items()}
  if run_diverged is not None:
    divergence.update({s: (run_diverged["task"], run_diverged["epoch"],
                           run_diverged["quantities"]) for s in run_diverged["seeds"]})
  return records.from_curves(curves, config=_ONLINE_EWC, trace=trace, stability=stability,
                             divergence=divergence, num_tasks=num_tasks)


def _evidence(runs):
  """What ``write_instability`` writes for ``runs`` (no files)."""
  return {"benchmark": "b", "dhp_mas": instability.dhp_mas_evidence(runs),
          "penalised": instability.penalised_evidence(runs)}


# Two tasks of two epochs; per epoch one value per seed. Seed 0 crosses zero in task 1 and
# its trace blows up in task 2; seed 1 stays positive.
TRACE = {"task": [0, 0, 1, 1],
         "eta": [[0.01, 0.01], [-0.002, 0.005], [-0.01, 0.003], [0.2, 0.004]],
         "hebb_norm": [[20.0, 20.0], [30.0, 21.0], [500.0, 22.0], [15.0, 22.5]]}
PROJECTED_TRACE = {"task": [0, 0, 1, 1],
                   "eta": [[0.01, 0.01], [0.0, 0.005], [0.0, 0.003], [None, 0.004]],
                   "hebb_norm": [[20.0, 20.0], [26.5, 21.0], [25.0, 22.0], [None, 22.5]]}


def test_eta_crossing_zero_on_one_of_two_seeds_is_counted():
  row = instability.dhp_mas_evidence(
      {"dhp+mas": _results([[0.9, 0.5], [0.9, 0.8]], TRACE)})["rows"]["dhp+mas"]
  first, second = row["per_seed"]
  assert (first["eta_negative_epochs"], first["epochs"]) == (2, 4)
  assert first["first_eta_negative_task"] == 1
  assert (first["max_hebb_norm"], first["max_hebb_task"]) == (500.0, 2)
  assert second["eta_negative_epochs"] == 0 and second["first_eta_negative_task"] is None
  assert (row["eta_negative_seeds"], row["hebb_blowup_seeds"]) == (1, 1)
  assert row["summary"] == "η < 0 on 1 of 2 seeds; ‖Hebb‖_F > 100 on 1 of 2 seeds"


def test_the_projected_controls_seeds_count_zero():
  # η held at the bound 0 is not below it; a diverged seed's null epoch is left out.
  row = instability.dhp_mas_evidence(
      {"dhp+mas_eta_projected": _results([[0.9, 0.88], [0.9, 0.87]], PROJECTED_TRACE)}
  )["rows"]["dhp+mas_eta_projected"]
  assert row["summary"] == "η < 0 on 0 of 2 seeds; ‖Hebb‖_F > 100 on 0 of 2 seeds"
  assert row["per_seed"][0]["epochs"] == 3 and row["per_seed"][0]["max_hebb_norm"] == 26.5


def test_paired_difference_to_mas_per_seed_and_largest_drop():
  trace = {key: values if key == "task" else [row + [None] for row in values]
           for key, values in TRACE.items()}   # the third seed without a trace
  runs = {"dhp+mas": _results([[0.9, 0.5], [0.9, 0.8], [0.9, 0.7]], trace),
          "mas": _results([[0.9, 0.85], [0.9, 0.86]])}   # mas lacks seed 2
  first, second, third = instability.dhp_mas_evidence(runs)["rows"]["dhp+mas"]["per_seed"]
  assert first["minus_baseline"] == pytest.approx(-35.0)
  assert second["minus_baseline"] == pytest.approx(-6.0)
  assert third["minus_baseline"] is None
  assert first["largest_drop"] == {"points": pytest.approx(40.0), "task": 2}
  assert first["final_accuracy"] == pytest.approx(50.0)


def test_a_diverged_seed_has_no_paired_difference():
  runs = {"dhp+mas": _results([[0.9], [0.9, 0.8]], TRACE,
                              diverged={0: {"task": 2, "epoch": 1, "quantities": ["loss"]}}),
          "mas": _results([[0.9, 0.85], [0.9, 0.86]])}
  first, second = instability.dhp_mas_evidence(runs)["rows"]["dhp+mas"]["per_seed"]
  assert first["minus_baseline"] is None and first["diverged"]["task"] == 2
  assert first["largest_drop"] is None and first["tasks"] == 1
  assert second["minus_baseline"] == pytest.approx(-6.0)


def test_penalty_stability_over_one_before_divergence_is_reported():
  stability = [{"task": 1, "max_lr_strength_importance": [0.5, 0.4],
                "largest_layer": ["b0", "b0"]},
               {"task": 2, "max_lr_strength_importance": [1.2, 0.6],
                "largest_layer": ["b0", "k1"]}]
  run = _results([[0.9, 0.8], [0.9, 0.85, 0.8]], stability=stability,
                 diverged={0: {"task": 3, "epoch": 1, "quantities": ["loss"]}})
  evidence = _evidence({"online_ewc": run})
  row = evidence["penalised"]["rows"]["online_ewc"]
  first, second = row["per_seed"]
  assert [r["value"] for r in first["stability"]] == [0.5, 1.2]
  assert first["first_task_over_bound"] == 2 and first["diverged"]["task"] == 3
  assert first["over_bound_before_divergence"] is True
  assert second["first_task_over_bound"] is None
  assert second["over_bound_before_divergence"] is None   # it did not diverge
  assert row["summary"] == ("diverged on 1 of 2 seeds; lr·λ·Ω > 1 before the divergence "
                            "on 1 of 1 diverged seeds with the record")
  assert "| 0 | 0.5, **1.2** | 2 | task 3, epoch 1 | yes |" in instability.markdown(evidence)


def test_a_run_wide_divergence_under_the_bound_is_not_preceded():
  run = _results([[0.9]], stability=[{"task": 1, "max_lr_strength_importance": [0.7],
                                      "largest_layer": ["b0"]}],
                 run_diverged={"task": 2, "epoch": 1, "quantities": ["loss"], "seeds": [0]})
  seed = instability.penalised_evidence(
      {"dhp+online_ewc_batch": run})["rows"]["dhp+online_ewc_batch"]["per_seed"][0]
  assert seed["diverged"]["task"] == 2 and seed["over_bound_before_divergence"] is False


def test_a_run_without_the_record_is_reported_as_not_recorded():
  run = _results([[0.9, 0.8]], run_diverged={"task": 3, "epoch": 1, "quantities": ["loss"],
                                             "seeds": [0]})
  evidence = _evidence({"online_ewc": run})
  seed = evidence["penalised"]["rows"]["online_ewc"]["per_seed"][0]
  assert seed["stability"] is None and seed["over_bound_before_divergence"] is None
  md = instability.markdown(evidence)
  assert "| 0 | not recorded (run before the stability record) | — | task 3, epoch 1 | — |" in md


def test_seeds_a_merged_run_added_without_their_record_are_not_recorded():
  run = _results([[0.9, 0.8], [0.9, 0.8]], stability=[
      {"task": 1, "max_lr_strength_importance": [0.5, None],
       "largest_layer": ["b0", None]}])   # as merging pads the added seed's
  first, second = instability.penalised_evidence(
      {"online_ewc": run})["rows"]["online_ewc"]["per_seed"]
  assert first["stability"][0]["value"] == 0.5 and second["stability"] is None


def test_a_row_still_training_is_marked_partial():
  stability = [{"task": t, "max_lr_strength_importance": [0.1, 0.1],
                "largest_layer": ["b0", "b0"]} for t in (1, 2)]
  run = _results([[0.9, 0.8], [0.9, 0.85]], stability=stability, num_tasks=10)
  evidence = _evidence({"online_ewc_batch": run, "dhp+mas": _results(
      [[0.9, 0.8], [0.9, 0.85]], TRACE, stability=stability, num_tasks=10)})
  assert evidence["penalised"]["rows"]["online_ewc_batch"]["summary"] == \
      "diverged on 0 of 2 seeds; partial: 2/10 tasks"
  assert evidence["dhp_mas"]["rows"]["dhp+mas"]["summary"].endswith("; partial: 2/10 tasks")


def test_a_seed_from_a_run_before_the_record_merged_into_one_with_it_is_not_recorded():
  # Seed 0 predates the record (null on every task) and diverged; seed 1 was added later.
  stability = [{"task": t, "max_lr_strength_importance": [None, v],
                "largest_layer": [None, "b0"]} for t, v in ((1, 0.5), (2, 1.1))]
  run = _results([[0.9], [0.9, 0.8]], stability=stability,
                 diverged={0: {"task": 2, "epoch": 1, "quantities": ["loss"]}})
  row = instability.penalised_evidence({"online_ewc": run})["rows"]["online_ewc"]
  first, second = row["per_seed"]
  assert first["stability"] is None and first["over_bound_before_divergence"] is None
  assert [r["value"] for r in second["stability"]] == [0.5, 1.1]
  assert row["summary"] == ("diverged on 1 of 2 seeds; lr·λ·Ω not recorded (run before "
                            "the stability record) on 1 of 2 seeds")


def test_missing_rows():
  first_seed = {key: values if key == "task" else [row[:1] for row in values]
                for key, values in TRACE.items()}
  evidence = _evidence({"dhp+mas": _results([[0.9, 0.5]], first_seed)})
  assert list(evidence["dhp_mas"]["rows"]) == ["dhp+mas"]
  assert evidence["dhp_mas"]["missing"] == ["dhp+mas_eta_projected", "mas"]
  assert evidence["dhp_mas"]["rows"]["dhp+mas"]["per_seed"][0]["minus_baseline"] is None
  # DHP + MAS is penalised too: its lr·λ·Ω is reported beside the Online EWC rows.
  assert list(evidence["penalised"]["rows"]) == ["dhp+mas"]
  assert "online_ewc" in evidence["penalised"]["missing"]
  assert "online_ewc_batch" not in evidence["penalised"]["missing"]   # not a Table I row
  md = instability.markdown(evidence)
  assert "Not on disk: `dhp+mas_eta_projected`, `mas`" in md


def test_write_instability_writes_both_files_or_nothing(tmp_path):
  bench_dir = str(tmp_path)
  finetune = records.from_curves([[0.9, 0.85]])   # no penalty, no DHP + MAS: no evidence
  assert instability.write_instability(bench_dir, {"finetune": finetune}) is None
  assert not os.path.exists(os.path.join(bench_dir, "instability.json"))
  mas = _results([[0.9, 0.85]])
  dhp_mas = _results([[0.9, 0.5], [0.9, 0.8]], TRACE)
  evidence = instability.write_instability(bench_dir, {"mas": mas, "dhp+mas": dhp_mas})
  with open(os.path.join(bench_dir, "instability.json")) as f:
    assert json.load(f) == evidence
  with open(os.path.join(bench_dir, "instability.md")) as f:
    assert "η < 0 on 1 of 2 seeds" in f.read()
  # Only the rows given (those a table shows): a row left out is "not on disk" there too.
  assert instability.write_instability(bench_dir, {"dhp+mas": dhp_mas})["dhp_mas"][
      "missing"] == ["dhp+mas_eta_projected", "mas"]
