"""experiments/replay_divergence.py: a diverged run's task replayed step by step."""
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from dhp_jax import config as config_lib, engine, results as results_lib
from experiments import cli, replay_divergence


def test_layer_norms_group_modules_and_keep_the_heads_leaves_apart():
  params = {"Dense_0": {"kernel": jnp.full((2, 2), 1.0), "bias": jnp.full((2,), 2.0)},
            "head": {"theta": jnp.full((3,), 1.0), "alpha": jnp.full((4,), 2.0),
                     "eta": jnp.asarray(-0.5)}}
  norms = {k: float(v) for k, v in replay_divergence.layer_norms(params).items()}
  assert norms == pytest.approx({"Dense_0": np.sqrt(4 + 8), "theta": np.sqrt(3),
                                 "alpha": 4.0, "eta": 0.5})


def test_a_diverged_task_is_replayed_exactly_up_to_its_first_nonfinite_loss(tmp_path, mnist):
  # Online EWC's penalty starts at task 2, where lr·2λΩ ≫ 2 blows SGD up (test_engine).
  config = config_lib.make_config("permuted_mnist", "quick", "online_ewc", head="dhp",
                                  num_tasks=2, train_subset=2048, lr=0.1, num_seeds=2,
                                  strength=1e9, importance_samples=256)
  out = str(tmp_path / "stiff")
  with pytest.raises(Exception, match="task 2, epoch 1"):
    engine.train_and_evaluate(config, out, progress=False)
  (replay,) = replay_divergence.row_replay(out, steps_before=3)
  # The stopped run keeps no trace of its last epoch, so nothing is checked against it.
  assert replay["task"] == 2 and replay["checked_epochs"] == 0
  assert sorted(replay["seeds"]) == [0, 1]
  for steps in replay["seeds"].values():
    first = steps["first_nonfinite_step"]
    assert steps["steps"] == list(range(max(0, first - 3), first + 1))
    assert not np.isfinite(steps["loss"][-1]) and np.all(np.isfinite(steps["loss"][:-1]))
    assert set(steps["update"]) >= {"theta", "alpha", "eta"}
    assert set(steps["after"]) == {"alpha", "eta", "hebb"}
  text = replay_divergence.markdown(str(tmp_path), {"dhp+online_ewc": [replay]}, 3)
  assert "replay not checkable" in text and "| step | loss |" in text


def test_a_replayed_epoch_equals_the_recorded_one(tmp_path, mnist):
  config = config_lib.make_config("permuted_mnist", "quick", "si", head="dhp", num_tasks=2,
                                  train_subset=2048, lr=0.1, num_seeds=2)
  out = str(tmp_path / "fine")
  results = engine.train_and_evaluate(config, out, progress=False)
  record = results_lib.RunRecord.from_json(results)
  replay = replay_divergence.replay_task(engine.prepare(config), record, out, 2, {1: 1}, 2)
  assert (replay["checked_epochs"], replay["exact"]) == (1, True)
  steps = replay["seeds"][1]
  assert steps["first_nonfinite_step"] is None and len(steps["steps"]) == 3
  assert steps["steps"][-1] == steps["steps_per_epoch"] - 1
  assert np.all(np.isfinite(steps["loss"]))


def test_a_row_without_the_state_before_the_task_is_refused(tmp_path, mnist):
  config = config_lib.make_config("permuted_mnist", "quick", "online_ewc", num_tasks=2,
                                  train_subset=2048, lr=0.1, strength=1e9,
                                  importance_samples=256)
  out = tmp_path / "stiff"
  with pytest.raises(Exception, match="task 2, epoch 1"):
    engine.train_and_evaluate(config, str(out), progress=False)
  for state in out.glob("commits/*/state"):
    shutil.rmtree(state)
  with pytest.raises(ValueError, match="kept no state after task 1"):
    replay_divergence.row_replay(str(out), steps_before=3, data_dir=str(tmp_path / "none"))


def test_bad_folders_are_named(tmp_path):
  args = ["replay_divergence.py", "--noprogress", "--jax_cache_dir="]
  main = lambda *more: cli.main(replay_divergence.run, replay_divergence.define_flags,
                                [*args, *more])
  with pytest.raises(SystemExit) as exit_:
    main(f"--table_dir={tmp_path / 'none'}")
  assert str(exit_.value.code).startswith(f"error: --table_dir={tmp_path / 'none'} is not")
  (tmp_path / "dhp").mkdir()
  with pytest.raises(SystemExit) as exit_:
    main(f"--table_dir={tmp_path}", "--rows=dhp,si")
  assert "--rows: no folder ['si']" in str(exit_.value.code)
  with pytest.raises(SystemExit) as exit_:
    main(f"--table_dir={tmp_path}", "--rows=dhp")
  assert f"--rows: {tmp_path / 'dhp'} holds no run" in str(exit_.value.code)
