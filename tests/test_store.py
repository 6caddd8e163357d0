"""The run store loses nothing: kills at every write, real kill -9s, locks, bad files."""
import dataclasses
import errno
import glob
import json
import logging
import os
import random
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from dhp_jax import config as config_lib
from dhp_jax import consolidation, engine, results as results_lib, seeds, store

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Three tasks of 256 real samples, two seeds, SI (so the optimizer state matters).
TINY = config_lib.make_config("permuted_mnist", "quick", "si", num_tasks=3, num_seeds=2,
                              train_subset=256, lr=0.1)
_PRIMITIVES = ("_save_state", "_write_file", "_rename", "_remove_tree")


class Killed(BaseException):
  """A kill: nothing in the engine catches it."""


def _numbers(results):
  return {k: results[k] for k in ("completed_tasks", "per_seed", "trace", "mean", "sem",
                                  "penalty_stability") if k in results}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mnist):
  return engine.train_and_evaluate(TINY, str(tmp_path_factory.mktemp("full")),
                                   progress=False)


def _kill_at(monkeypatch, step: int):
  """Makes the store's ``step``-th write (1-based, counted over all its primitives)
  die before it happens."""
  count = [0]
  for name in _PRIMITIVES:
    real = getattr(store, name)

    def dying(*args, _real=real, **kwargs):
      count[0] += 1
      if count[0] == step:
        raise Killed(step)
      return _real(*args, **kwargs)
    monkeypatch.setattr(store, name, dying)
  return count


def _writes(tmp_path, monkeypatch, tasks: int) -> int:
  count = _kill_at(monkeypatch, step=-1)
  engine.train_and_evaluate(TINY, str(tmp_path / f"count_{tasks}"), progress=False,
                            stop_after_task=tasks)
  monkeypatch.undo()
  return count[0]


def test_a_kill_before_any_write_of_a_commit_costs_at_most_the_task(
    tmp_path, monkeypatch, uninterrupted):
  # The last commit has every kind of write (state, results, the commit rename, the
  # older commit's removal, the results copy); killing before each of them in turn.
  first, total = _writes(tmp_path, monkeypatch, 2), _writes(tmp_path, monkeypatch, 3)
  assert total - first >= 6
  for step in range(first + 1, total + 1):
    out = str(tmp_path / f"kill_{step}")
    _kill_at(monkeypatch, step)
    with pytest.raises(Killed):
      engine.train_and_evaluate(TINY, out, progress=False)
    monkeypatch.undo()
    before = store.read_results(out) if os.path.isdir(out) else None
    resumed = engine.train_and_evaluate(TINY, out, progress=False, resume=True)
    assert _numbers(resumed) == _numbers(uninterrupted), f"killed before write {step}"
    assert store.read_results(out)["completed_tasks"] == 3
    if before is not None:   # what the kill left is a whole commit of the same run
      k = before["completed_tasks"]
      for left, full in zip(before["per_seed"], uninterrupted["per_seed"]):
        assert left["accuracy_matrix"] == [row[:k] for row in full["accuracy_matrix"][:k]]


def test_real_kill_9_at_random_instants_then_resume(tmp_path, uninterrupted):
  out = str(tmp_path / "killed")
  args = [sys.executable, "experiments/run.py", "--method=si", "--num_tasks=3",
          "--num_seeds=2", "--train_subset=256", "--lr=0.1", "--noprogress",
          f"--out_dir={out}", "--resume", f"--jax_cache_dir={os.environ.get('DHP_TEST_JAX_CACHE', '/tmp/dhp_jax_test_xla_cache')}"]
  instants = random.Random(0)
  for _ in range(3):
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(instants.uniform(2.0, 12.0))
    process.send_signal(signal.SIGKILL)
    process.wait()
  subprocess.run(args, cwd=REPO, check=True, capture_output=True)
  assert _numbers(store.read_results(out)) == _numbers(uninterrupted)


def test_a_full_disk_is_a_clear_error_and_earlier_tasks_stay(tmp_path, monkeypatch, mnist):
  out = str(tmp_path / "full_disk")
  real, calls = store._write_file, []

  def no_space(path, text):
    calls.append(path)
    if len(calls) > 2:   # task 1 commits (results + its copy); then the disk is full
      raise OSError(errno.ENOSPC, "No space left on device", path)
    real(path, text)
  monkeypatch.setattr(store, "_write_file", no_space)
  with pytest.raises(store.StoreError, match=r"disk is full.*tasks 1-1 are committed"):
    engine.train_and_evaluate(TINY, out, progress=False)
  monkeypatch.undo()
  assert store.read_results(out)["completed_tasks"] == 1
  assert engine.train_and_evaluate(TINY, out, progress=False, resume=True)[
      "completed_tasks"] == 3


def test_a_directory_in_use_is_refused_and_a_killed_holder_does_not_block(tmp_path, mnist):
  out = str(tmp_path / "busy")
  with store.locked(out):
    with pytest.raises(store.StoreError, match=rf"{out} is in use by another run "
                                               rf"\(process {os.getpid()}"):
      engine.train_and_evaluate(TINY, out, progress=False)
  holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dhp_jax import "
                             "store\nwith store.locked(sys.argv[1]):\n  print(flush=True); "
                             "time.sleep(60)", out], cwd=REPO, stdout=subprocess.PIPE)
  holder.stdout.readline()   # the lock is held
  with pytest.raises(store.StoreError, match=f"process {holder.pid}"):
    engine.train_and_evaluate(TINY, out, progress=False)
  holder.kill()
  holder.wait()
  assert engine.train_and_evaluate(TINY, out, progress=False)["completed_tasks"] == 3


def _damage_checkpoint(commit: str, how: str) -> str:
  """Overwrites (``garbage``) or halves (``truncated``) every file of a commit's state."""
  path = os.path.join(commit, "state")
  for name in glob.glob(os.path.join(path, "**", "*"), recursive=True):
    if how == "garbage" and os.path.isfile(name):
      with open(name, "wb") as f:
        f.write(b"\0garbage")
    elif how == "truncated" and os.path.isfile(name) and os.sep + "d" + os.sep in name:
      os.truncate(name, os.path.getsize(name) // 2)   # the array data, not the metadata
  return path


def _damage_results(path: str) -> None:
  with open(path, "w") as f:
    f.write('{"config": {"benchm')


@pytest.mark.parametrize("how", ["garbage", "truncated"])
def test_a_damaged_only_commit_is_named_by_the_binary_in_one_line(tmp_path, how, mnist):
  out = str(tmp_path / "corrupt")
  engine.train_and_evaluate(TINY, out, progress=False, stop_after_task=1)
  path = _damage_checkpoint(os.path.join(out, store.COMMITS, "1"), how)
  run = subprocess.run([sys.executable, "experiments/run.py", "--method=si", "--num_tasks=3",
                        "--num_seeds=2", "--train_subset=256", "--lr=0.1", "--noprogress",
                        f"--out_dir={out}", "--resume", "--jax_cache_dir="],
                       cwd=REPO, capture_output=True, text=True)
  # Only the message: no traceback, not even tensorstore's reads in flight.
  assert run.returncode == 1 and run.stderr.count("\n") == 1, run.stderr
  assert path in run.stderr and "no earlier commit" in run.stderr
  assert run.stderr.rstrip().endswith("rerun with --restart to start that run over")


@pytest.mark.parametrize("damage", ["results", "results_and_copy", "checkpoint", "progress"])
def test_a_damaged_latest_commit_costs_at_most_one_task(tmp_path, damage, uninterrupted):
  out = str(tmp_path / "damaged")
  engine.train_and_evaluate(TINY, out, progress=False, stop_after_task=2)
  latest = os.path.join(out, store.COMMITS, "2")
  assert os.path.isdir(os.path.join(out, store.COMMITS, "1"))   # the one before is kept
  if damage == "checkpoint":
    _damage_checkpoint(latest, "truncated")
  elif damage == "progress":
    progress = os.path.join(latest, store.PROGRESS)
    os.truncate(progress, os.path.getsize(progress) // 2)
  else:
    _damage_results(os.path.join(latest, store.RESULTS))
  if damage == "results_and_copy":
    _damage_results(os.path.join(out, store.RESULTS))
  said = []
  resumed = engine.train_and_evaluate(TINY, out, progress=False, resume=True,
                                      log=said.append)
  assert _numbers(resumed) == _numbers(uninterrupted)
  recovery = "intact copy" if damage == "results" else "going on from the commit before it"
  assert any(latest in line and recovery in line for line in said), said
  assert any(f"resuming {out} after task {1 if damage != 'results' else 2}/3" == line
             for line in said)


@pytest.mark.parametrize("where", ["a_file", "under_a_file"])
def test_an_out_dir_that_cannot_be_a_directory_is_a_clear_error(tmp_path, where):
  (tmp_path / "a_file").write_text("")
  out = str(tmp_path / "a_file") if where == "a_file" else str(tmp_path / "a_file" / "run")
  with pytest.raises(store.StoreError, match="is a file|cannot be created"):
    store.check_out_dir(out)


def test_a_run_written_before_commits_resumes(tmp_path, uninterrupted):
  """The pre-v2 layout: checkpoint/{TASK,state} beside results.json."""
  out = str(tmp_path / "legacy")
  engine.train_and_evaluate(TINY, out, progress=False, stop_after_task=1)
  commit = os.path.join(out, store.COMMITS, "1")
  os.makedirs(os.path.join(out, "checkpoint"))
  os.rename(os.path.join(commit, "state"), os.path.join(out, "checkpoint", "state"))
  with open(os.path.join(out, "checkpoint", "TASK"), "w") as f:
    f.write("1")
  os.rename(os.path.join(out, store.COMMITS), os.path.join(out, "gone"))
  assert store.latest_commit(out).task == 1
  resumed = engine.train_and_evaluate(TINY, out, progress=False, resume=True)
  assert _numbers(resumed) == _numbers(uninterrupted)
  assert not os.path.exists(os.path.join(out, "checkpoint"))


def test_a_run_given_a_relative_directory_resumes(tmp_path, monkeypatch, uninterrupted):
  # As the binaries are called (--out_root=results): orbax needs absolute paths.
  if os.environ.get("DHP_DATA_DIR"):
    monkeypatch.setenv("DHP_DATA_DIR", os.pathsep.join(
        map(os.path.abspath, os.environ["DHP_DATA_DIR"].split(os.pathsep))))
  monkeypatch.chdir(tmp_path)
  engine.train_and_evaluate(TINY, "relative/run", progress=False, stop_after_task=1)
  resumed = engine.train_and_evaluate(TINY, "relative/run", progress=False, resume=True)
  assert _numbers(resumed) == _numbers(uninterrupted)


def _recorded_runs():
  for path in sorted(glob.glob(os.path.join(REPO, "results", "**", "results.json"),
                               recursive=True)):
    if "seeds_" not in path:
      yield os.path.dirname(path)


def test_every_recorded_run_is_read_as_finished_and_can_take_more_seeds():
  dirs = list(_recorded_runs())
  assert len(dirs) > 50
  for run_dir in dirs:
    record = results_lib.load(run_dir)
    config = config_lib.Config(**{
        k: tuple(v) if isinstance(v, list) else v
        for k, v in config_lib.with_defaults(record.config).items()})
    if not record.finished():
      continue   # in progress (the campaign); resumable, not finished
    assert record.holds(config), run_dir
    more = dataclasses.replace(config, num_seeds=config.num_seeds + 1)
    assert record.seeds_to_extend(more) == config.num_seeds, run_dir


def test_penalty_stability_is_recorded_and_warned_before_the_next_task(tmp_path, mnist):
  stiff = config_lib.make_config("permuted_mnist", "quick", "online_ewc", num_tasks=2,
                                 num_seeds=2, train_subset=256, importance_samples=128,
                                 strength=1e4)
  said = []
  results = engine.train_and_evaluate(stiff, str(tmp_path / "stiff"), progress=False,
                                      log=said.append)
  first = results["penalty_stability"][0]
  assert first["task"] == 1 and len(first["max_lr_strength_importance"]) == 2
  commit = store.latest_commit(str(tmp_path / "stiff"))
  # Recomputed from the checkpoint: lr·λ·max Ω over the slow weights, per seed.
  run = engine.prepare(stiff)
  target = run.programs.create(seeds.init_keys(run.keys))
  state = store.restore_state(str(tmp_path / "stiff"), commit, target)
  importance = consolidation.get_penalty(state.opt_state).importance
  slow = [np.asarray(leaf).reshape(2, -1).max(1)
          for path, leaf in jax.tree_util.tree_leaves_with_path(importance)
          if not {getattr(k, "key", None) for k in path} & {"alpha", "eta"}]
  want = [stiff.lr * stiff.strength * max(float(v[s]) for v in slow) for s in range(2)]
  np.testing.assert_allclose(results["penalty_stability"][-1]["max_lr_strength_importance"],
                             want, rtol=1e-6)
  warned = [line for line in said if line.startswith("WARNING: after task 1")]
  assert warned and all("> 1 in " in line for line in warned)
  assert first["max_lr_strength_importance"][0] > 1


def test_a_commit_from_before_engine_v3_resumes_from_its_results(tmp_path, uninterrupted):
  """A commit without a progress file (written before engine v3, e.g. by a campaign's
  run in progress when the engine changed) goes on from its results.json, as then."""
  out = str(tmp_path / "old")
  engine.train_and_evaluate(TINY, out, progress=False, stop_after_task=1)
  os.remove(store.latest_commit(out).progress_path)
  resumed = engine.train_and_evaluate(TINY, out, progress=False, resume=True)
  assert _numbers(resumed) == _numbers(uninterrupted)
  assert store.latest_commit(out).progress_path is not None   # v3 from here on


def test_an_unfinished_run_without_its_checkpoint_starts_over(tmp_path, uninterrupted):
  """A fresh clone holds results.json files but no checkpoints (not kept in git)."""
  out = str(tmp_path / "cloned")
  engine.train_and_evaluate(TINY, out, progress=False, stop_after_task=1)
  os.rename(os.path.join(out, store.COMMITS), os.path.join(out, "not_in_git"))
  said = []
  resumed = engine.train_and_evaluate(TINY, out, progress=False, resume=True,
                                      log=said.append)
  assert any("no checkpoint to resume from" in line for line in said)
  assert _numbers(resumed) == _numbers(uninterrupted)
  # Without a progress bar, one line per finished task says where the run is.
  lines = [line for line in said if " done (average accuracy " in line]
  assert len(lines) == 3 and all(re.fullmatch(
      rf"permuted_mnist \(quick\) DHP Softmax \+ SI \(lr = 0.1\), seeds 0-1: task {t}/3 "
      rf"done \(average accuracy \d+\.\d\d %\), elapsed (\d+m)?\d+s, ETA (\d+m)?\d+s", line)
      for t, line in enumerate(lines, 1)), lines


def test_after_a_failed_restore_only_the_reads_in_flight_are_silenced(caplog):
  store._ignore_closed_loop_callbacks()   # what a failed restore calls
  asyncio_log = logging.getLogger("asyncio")
  with caplog.at_level(logging.ERROR, logger="asyncio"):
    asyncio_log.error("Task exception was never retrieved\nfuture: <Task finished ...>")
    asyncio_log.error("Unclosed client session")
  assert [r.getMessage() for r in caplog.records] == ["Unclosed client session"]
