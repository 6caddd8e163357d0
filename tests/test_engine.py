"""The engine (dhp_jax.engine) and the run binary on small real-MNIST runs."""
import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from absl import flags

from dhp_jax import config as config_lib
from dhp_jax import training
from dhp_jax import engine, metrics, results as results_lib, seeds, store
from experiments import run as run_binary

# Two permuted tasks, one epoch of 2,048 real samples each (lr 0.1 so 32 steps learn).
SMALL = ["--benchmark=permuted_mnist", "--num_tasks=2", "--epochs=1", "--train_subset=2048",
         "--lr=0.1", "--noprogress", "--jax_cache_dir="]   # conftest's cache stays


def _run(tmp_path, name, *extra):
  out = str(tmp_path / name)
  return run_binary.main(["run.py", *SMALL, f"--out_dir={out}", *extra]), out


def test_binary_writes_valid_results(tmp_path, mnist):
  results, out = _run(tmp_path, "dhp", "--num_seeds=2")
  with open(os.path.join(out, "results.json")) as f:
    saved = json.load(f)
  assert saved == json.loads(json.dumps(results))
  assert saved["config"]["benchmark"] == "permuted_mnist" and saved["completed_tasks"] == 2
  for entry in saved["per_seed"]:
    r = entry["accuracy_matrix"]
    assert r[0][1] is None and all(0 <= v <= 1 for row in r for v in row if v is not None)
    full = np.array(entry["accuracy_matrix_all_tasks"])
    assert entry["bwt"] == pytest.approx(full[1, 0] - full[0, 0])
    assert entry["avg_accuracy"] == pytest.approx(full[1].mean())
    assert full[0, 0] > 0.7  # 32 steps on real data already teach task 1
  mean, _ = metrics.mean_and_sem([e["avg_accuracy"] for e in saved["per_seed"]])
  assert saved["mean"]["avg_accuracy"] == pytest.approx(mean)
  assert {"eta", "hebb_norm", "alpha_norm"} <= set(saved["trace"])
  assert len(saved["trace"]["eta"]) == 2 and len(saved["trace"]["eta"][0]) == 2
  for png in ("accuracy.png", "plasticity.png"):
    assert os.path.getsize(os.path.join(out, png)) > 1000


def test_vmapped_seeds_equal_separate_runs(tmp_path, mnist):
  both, _ = _run(tmp_path, "both", "--num_seeds=2", "--seed=5")
  # Equal up to float reassociation: a seed-batched dot may round differently from a single
  # one, and lr 0.1 amplifies that over 64 steps (measured: η 1e-3 relative, 29 of 10,000
  # predictions on the forgotten task). Swapped or shared seeds differ by ~3 % in η.
  for s, seed in enumerate((5, 6)):
    alone, _ = _run(tmp_path, f"alone{seed}", "--num_seeds=1", f"--seed={seed}")
    np.testing.assert_allclose(both["per_seed"][s]["accuracy_matrix_all_tasks"],
                               alone["per_seed"][0]["accuracy_matrix_all_tasks"], atol=5e-3)
    np.testing.assert_allclose(np.array(both["trace"]["eta"])[:, s],
                               np.array(alone["trace"]["eta"])[:, 0], rtol=2e-3)


def test_resume_after_kill_equals_uninterrupted(tmp_path, mnist):
  flags_ = ["--method=si", "--num_seeds=2"]
  full, _ = _run(tmp_path, "full", *flags_)
  partial, out = _run(tmp_path, "killed", *flags_, "--stop_after_task=1")
  assert partial["completed_tasks"] == 1
  # The wall time before the kill is kept (in the commit's progress) and added to;
  # results.json is output only, never read back to resume.
  commit = store.latest_commit(out)
  np.savez(commit.progress_path, **{**store.restore_progress(commit),
                                    "wall_time_s": np.asarray(1e6)})
  store.record_stop(out, {**partial, "wall_time_s": 5e6})
  resumed, _ = _run(tmp_path, "killed", *flags_, "--resume")
  assert resumed["completed_tasks"] == 2 and 1e6 < resumed["wall_time_s"] < 5e6
  for a, b in zip(full["per_seed"], resumed["per_seed"]):
    np.testing.assert_array_equal(a["accuracy_matrix_all_tasks"],
                                  b["accuracy_matrix_all_tasks"])
  np.testing.assert_array_equal(full["trace"]["eta"], resumed["trace"]["eta"])
  with pytest.raises(SystemExit, match="config"):
    _run(tmp_path, "killed", "--method=mas", "--num_seeds=2", "--resume")


def test_added_seeds_merge_into_what_one_run_of_all_the_seeds_gives(tmp_path, mnist):
  both = config_lib.make_config("permuted_mnist", "quick", "si", num_tasks=2,
                              train_subset=2048, lr=0.1, num_seeds=2)
  once = engine.train_and_evaluate(both, str(tmp_path / "once"), progress=False)
  row = str(tmp_path / "row")
  engine.train_and_evaluate(dataclasses.replace(both, num_seeds=1), row, progress=False)
  assert results_lib.load(row).seeds_to_extend(both) == 1
  merged = engine.extend_seeds(both, row, progress=False)
  assert merged["config"] == once["config"] and results_lib.load(row).holds(both)
  assert results_lib.load(row).seeds_to_extend(both) == 0
  assert [e["seed"] for e in merged["per_seed"]] == [0, 1]
  for a, b in zip(once["per_seed"], merged["per_seed"]):
    # Float reassociation between a 2-seed and two 1-seed vmapped programs, as in
    # test_vmapped_seeds_equal_separate_runs.
    np.testing.assert_allclose(a["accuracy_matrix_all_tasks"],
                               b["accuracy_matrix_all_tasks"], atol=5e-3)
  np.testing.assert_allclose(once["trace"]["eta"], merged["trace"]["eta"], rtol=1e-2)
  np.testing.assert_allclose(once["mean"]["avg_accuracy"], merged["mean"]["avg_accuracy"],
                             atol=5e-3)


@pytest.mark.parametrize("method", ["ewc", "mas", "mas_local"])
def test_consolidation_methods_run_and_penalise_after_task_one(tmp_path, mnist, method):
  args = ["--method=mas", "--mas_variant=local"] if method == "mas_local" else [
      f"--method={method}"]
  results, _ = _run(tmp_path, method, *args, "--importance_samples=256")
  assert results["completed_tasks"] == 2


def test_non_finite_training_stops_with_task_and_epoch(tmp_path, mnist):
  with pytest.raises(SystemExit, match=r"task 1, epoch 1"):
    _run(tmp_path, "diverge", "--lr=1e12")


def test_divergence_after_task_one_is_recorded(tmp_path, mnist):
  # Online EWC's penalty starts at task 2; lr·2λΩ ≫ 2 makes SGD on it blow up there.
  args = ["--method=online_ewc", "--strength=1e9", "--importance_samples=256",
          "--num_seeds=2"]
  with pytest.raises(SystemExit, match=r"task 2, epoch 1 \(seeds \[0, 1\]\)"):
    _run(tmp_path, "stiff", *args)
  with open(tmp_path / "stiff" / "results.json") as f:
    saved = json.load(f)
  assert saved["completed_tasks"] == 1 and saved["diverged"]["task"] == 2
  assert saved["diverged"]["seeds"] == [0, 1] and "loss" in saved["diverged"]["quantities"]
  config = config_lib.make_config("permuted_mnist", "quick", "online_ewc", **{
      k: v for k, v in saved["config"].items() if k not in ("benchmark", "preset", "method")})
  assert results_lib.load(str(tmp_path / "stiff")).holds(config)
  # A run stopped when only seed 1 had diverged (the engine before per-seed handling).
  saved["diverged"]["seeds"] = [1]
  store.record_stop(str(tmp_path / "stiff"), saved)
  assert not results_lib.load(str(tmp_path / "stiff")).holds(config)


def test_one_diverged_seed_is_recorded_and_the_others_go_on(tmp_path, mnist, monkeypatch):
  # Seed 0's parameters are made NaN after every epoch of task 2 (0-based call 1).
  real_jit_seeds, calls = seeds.jit_seeds, []

  def poisoning_jit_seeds(fn, *args, **kwargs):
    compiled = real_jit_seeds(fn, *args, **kwargs)
    if getattr(fn, "func", None) is not training.train_epoch:
      return compiled

    def run(state, *rest):
      state, stats = compiled(state, *rest)
      calls.append(None)
      if len(calls) == 2:
        state = state._replace(params=jax.tree.map(lambda x: x.at[0].set(np.nan), state.params))
      return state, stats
    return run

  monkeypatch.setattr(seeds, "jit_seeds", poisoning_jit_seeds)
  config = config_lib.make_config("permuted_mnist", "quick", num_tasks=3, train_subset=2048,
                                lr=0.1, num_seeds=2)
  out = str(tmp_path / "one_bad_seed")
  engine.train_and_evaluate(config, out, progress=False, stop_after_task=2)
  results = engine.train_and_evaluate(config, out, progress=False, resume=True)
  bad, good = results["per_seed"]
  assert bad["diverged"] == {"task": 2, "epoch": 1, "quantities": ["parameters"]}
  assert len(bad["accuracy_matrix"]) == 1 and "diverged" not in good
  assert results["completed_tasks"] == 3 and "diverged" not in results
  assert results["mean"]["avg_accuracy"] == good["avg_accuracy"] > 0.7
  assert results["sem"]["avg_accuracy"] == 0.0
  assert [eta[0] for eta in results["trace"]["eta"]][1:] == [None, None]
  assert all(eta[1] is not None for eta in results["trace"]["eta"])
  assert "seeds=1/2 " in results_lib.summary_line(config, results_lib.read(results))


@pytest.mark.parametrize("bad", [
    "--benchmark=cifar100", "--method=lwf", "--epochs=0", "--num_seeds=0",
    "--strength=-1", "--no_such_flag=1", "--theta_init=xavier",
])
def test_bad_flags_error_before_training(bad, capsys):
  with pytest.raises(SystemExit) as exit_:
    run_binary.main(["run.py", bad])
  assert exit_.value.code != 0 and "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("args, named", [
    (["--method=finetune", "--strength=5"], ["strength", "method 'finetune'"]),
    (["--head=matched", "--eta_constraint=project"], ["eta_constraint", "head 'matched'"]),
    (["--scenario=class"], ["scenario", "benchmark 'permuted_mnist'"]),
    (["--method=mas", "--si_xi=0.5"], ["--si_xi", "--method=mas", "drop --si_xi"]),
    (["--head=matched", "--eta_init=0.1"], ["--eta_init", "--head=matched"]),
    (["--restart", "--resume"], ["--resume", "--restart"]),
    (["--hidden=0"], ["hidden", ">= 1"]),
    (["--hidden=400,x"], ["--hidden", "integers"]),
    (["--logdir={tmp}/a_file"], ["--logdir", "is a file"]),
])
def test_flags_that_do_not_apply_or_cannot_work_are_refused_by_name(args, named, tmp_path):
  (tmp_path / "a_file").write_text("")
  args = [a.format(tmp=tmp_path) for a in args]
  with pytest.raises(SystemExit) as exit_:
    run_binary.main(["run.py", *args, f"--out_dir={tmp_path / 'run'}"])
  message = str(exit_.value.code)
  assert message.startswith("error: ") and "\n" not in message
  assert all(name in message for name in named), message
  assert not os.path.exists(tmp_path / "run" / "results.json")


def test_freeze_alpha_needs_dhp_and_keeps_alpha_zero(tmp_path, mnist):
  with pytest.raises(SystemExit, match="freeze_alpha"):
    run_binary.main(["run.py", "--freeze_alpha", "--head=matched"])
  results, _ = _run(tmp_path, "frozen", "--freeze_alpha")
  assert np.all(np.array(results["trace"]["alpha_norm"]) == 0.0)
