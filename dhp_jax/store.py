"""The run directory: one atomic commit per finished task, resume, completeness, a lock.

Layout of a run directory ``out_dir``:
  ``commits/<k>/state/``         orbax checkpoint of the (seed-stacked) state after task k
  ``commits/<k>/progress.npz``   the run's progress after task k (``results.RunRecord``'s
                                 arrays: what a resume goes on from)
  ``commits/<k>/results.json``   the results payload after task k
  ``results.json``               a copy of the latest commit's results (what tables read)
  ``.lock``                      flock-ed by the process using the directory (its pid inside)

A commit is written whole into ``commits/<k>.tmp/`` and renamed to ``commits/<k>/``: that
one rename is the commit point. Then commits older than the one before it are removed and
``results.json`` refreshed. The highest-numbered ``commits/<k>/`` is the truth, so a kill
at any instant (between any two writes included) loses at most the task in progress, and
the state and the results of a commit can never disagree. A commit damaged later (a
truncated copy, a bad disk) costs one task, not the run: its results are recovered from
the intact ``results.json`` beside it, else the run goes on from the commit before it. A
run recorded before this layout (``checkpoint/{TASK,state}`` beside ``results.json``, or
``results.json`` alone, as ``results/`` holds after a fresh clone) still reads, resumes
and extends.

Every expected failure (a file where the directory should be, no permission, a full
disk, a corrupt file, a directory in use) is a ``StoreError`` whose message names the
path and says what to do.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import sys
import zipfile
from typing import Any, Mapping, NamedTuple, Optional

import numpy as np

COMMITS = "commits"
RESULTS = "results.json"
PROGRESS = "progress.npz"
LOCK = ".lock"
_LEGACY_CHECKPOINTS = ("checkpoint", "checkpoint.tmp", "checkpoint.old")
# The latest commit and the one before it: the run can go on from the earlier one when
# the latest is damaged.
KEPT_COMMITS = 2


class StoreError(Exception):
  """A run directory that cannot be used as asked; the message says why and what to do.
  ``advice``: 'resume' when the run can go on from its last commit, 'restart' when it can
  only start over (the binary says how: its flags), else None."""

  def __init__(self, message: str, advice: Optional[str] = None):
    super().__init__(message)
    self.advice = advice


class Commit(NamedTuple):
  """The latest finished task of a run: its results and where its state and progress are
  (None: a results-only record, e.g. a fresh clone's ``results/`` or merged seeds; a
  progress file only in commits written since engine v3). ``note``: how it was
  recovered from a damaged later commit ('' when nothing was damaged)."""
  task: int
  results: dict
  state_path: Optional[str]
  note: str = ""
  progress_path: Optional[str] = None


# ------------------------------------------------------------------ file primitives
# Small named steps, so tests can make any one of them fail (fault injection).

def _write_file(path: str, text: str) -> None:
  with open(path, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())


def _rename(src: str, dst: str) -> None:
  os.replace(src, dst)
  # The rename is the commit point: make it survive a power cut too, not just a kill.
  folder = os.open(os.path.dirname(os.path.abspath(dst)), os.O_RDONLY)
  try:
    os.fsync(folder)
  finally:
    os.close(folder)


def _remove_tree(path: str) -> None:
  shutil.rmtree(path, ignore_errors=True)


def _checkpointer():
  """Orbax's checkpointer for this process alone. A commit's state is host arrays that
  one process writes (the writer, ``dhp_jax.distributed``) and each process reads by
  itself; orbax's default would have every process of a multi-process run meet at
  barriers in each save and restore. With one process this is orbax's default."""
  import jax
  import orbax.checkpoint as ocp  # heavy import, only when checkpointing

  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))


def _save_state(path: str, state: Any) -> None:
  import jax

  checkpointer = _checkpointer()
  checkpointer.save(os.path.abspath(path), jax.device_get(state))   # orbax: absolute only
  checkpointer.wait_until_finished()


def _save_progress(path: str, progress: Mapping[str, np.ndarray]) -> None:
  # npz, not orbax: orbax restores through jax arrays, which are float32 without x64,
  # and the record's float64 values (e.g. lr·λ·Ω) must come back bit for bit.
  with open(path, "wb") as f:
    np.savez(f, **progress)
    f.flush()
    os.fsync(f.fileno())


def write_text_atomic(path: str, text: str) -> None:
  """Write-then-rename, so a kill never leaves a half-written file."""
  tmp = f"{path}.tmp"
  _write_file(tmp, text)
  _rename(tmp, path)


def write_json_atomic(path: str, payload: dict) -> None:
  write_text_atomic(path, json.dumps(payload, indent=1))


def read_json(path: str) -> dict:
  """The JSON object in ``path``; StoreError naming the file when it is corrupt."""
  try:
    with open(path) as f:
      payload = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise StoreError(f"{path} is corrupt or truncated ({e})", advice="restart") from None
  except OSError as e:
    raise StoreError(f"cannot read {path}: {e.strerror}") from None
  if not isinstance(payload, dict):
    raise StoreError(f"{path} holds no results object", advice="restart")
  return payload


# ------------------------------------------------------------------------- the lock

def directory_problem(path: str) -> Optional[str]:
  """Creates the directory ``path`` if needed; None when it is usable, else what is wrong
  with it and what to do (for the caller's message, which names the path its own way)."""
  if os.path.exists(path) and not os.path.isdir(path):
    return "is a file: use another path or move the file away"
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    return f"cannot be created ({e.strerror}): use a directory you can write to"
  if not os.access(path, os.W_OK | os.X_OK):
    return "is not writable: use a directory you can write to"
  return None


def check_out_dir(out_dir: str) -> None:
  """Creates ``out_dir`` if needed; StoreError when it is a file or not writable."""
  problem = directory_problem(out_dir)
  if problem:
    raise StoreError(f"the run directory {out_dir} {problem}")


@contextlib.contextmanager
def locked(out_dir: str):
  """Holds ``out_dir``'s lock for the block. flock, so a killed holder never leaves a
  stale lock: the kernel drops it with the process."""
  check_out_dir(out_dir)
  path = os.path.join(out_dir, LOCK)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise StoreError(f"cannot create the lock {path}: {e.strerror}") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.read(fd, 4096).decode(errors="replace").strip() or "unknown"
    os.close(fd)
    raise StoreError(f"{out_dir} is in use by another run (process {holder}); wait for "
                     f"it to finish or stop it, or use another directory") from None
  try:
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)}".encode())
    yield
  finally:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


# ------------------------------------------------------------------------ reading

def _commit_dirs(out_dir: str) -> list[tuple[int, str]]:
  root = os.path.join(out_dir, COMMITS)
  if not os.path.isdir(root):
    return []
  found = [(int(name), os.path.join(root, name)) for name in os.listdir(root)
           if name.isdigit()]
  return sorted(found)


def _legacy_commit(out_dir: str) -> Optional[Commit]:
  """A run written before commits/: results.json, maybe a checkpoint/ of the same task."""
  results_path = os.path.join(out_dir, RESULTS)
  if not os.path.exists(results_path):
    return None
  results = read_json(results_path)
  task = results.get("completed_tasks")
  if not isinstance(task, int):
    raise StoreError(f"{results_path} has no completed_tasks count", advice="restart")
  for name in _LEGACY_CHECKPOINTS:   # the old writer's order left one of these whole
    folder = os.path.join(out_dir, name)
    try:
      with open(os.path.join(folder, "TASK")) as f:
        if int(f.read()) == task:
          return Commit(task, results, os.path.join(folder, "state"))
    except (OSError, ValueError):
      continue
  return Commit(task, results, None)


def _read_commit(task: int, folder: str, results: Optional[dict] = None) -> Commit:
  if results is None:
    results = read_json(os.path.join(folder, RESULTS))
  state, progress = os.path.join(folder, "state"), os.path.join(folder, PROGRESS)
  return Commit(task, results, state if os.path.isdir(state) else None,
                progress_path=progress if os.path.isfile(progress) else None)


def _intact_copy(out_dir: str, task: int) -> Optional[dict]:
  """``results.json`` beside the commits when it reads and is the copy of task ``task``."""
  path = os.path.join(out_dir, RESULTS)
  try:
    copy = read_json(path) if os.path.exists(path) else None
  except StoreError:
    return None
  return copy if copy is not None and copy.get("completed_tasks") == task else None


def earlier_commit(out_dir: str, task: int) -> Optional[Commit]:
  """The newest commit before task ``task`` whose results read, or None."""
  for earlier, folder in reversed(_commit_dirs(out_dir)):
    if earlier < task:
      try:
        return _read_commit(earlier, folder)
      except StoreError:
        continue
  return None


def latest_commit(out_dir: str) -> Optional[Commit]:
  """The run's latest commit, or None when ``out_dir`` holds no run. When the latest
  commit's results are damaged: recovered from the intact copy beside it, else the
  commit before it (``Commit.note`` says which); StoreError when neither exists."""
  dirs = _commit_dirs(out_dir)
  if not dirs:
    return _legacy_commit(out_dir)
  task, folder = dirs[-1]
  try:
    return _read_commit(task, folder)
  except StoreError as damaged:
    copy = _intact_copy(out_dir, task)
    if copy is not None:
      return _read_commit(task, folder, copy)._replace(
          note=f"{damaged}; its intact copy {os.path.join(out_dir, RESULTS)} is used instead")
    earlier = earlier_commit(out_dir, task)
    if earlier is None:
      raise StoreError(f"{damaged}; there is no intact copy or earlier commit to recover "
                       f"from", advice="restart") from None
    return earlier._replace(note=f"{damaged}; going on from the commit before it (tasks "
                                 f"1-{earlier.task}): task {task} is trained again")


def read_results(out_dir: str) -> Optional[dict]:
  """The latest committed results of the run in ``out_dir`` (None: no run there)."""
  commit = latest_commit(out_dir) if os.path.isdir(out_dir) else None
  return None if commit is None else commit.results


def restore_state(out_dir: str, commit: Commit, target):
  """The state saved with ``commit`` of the run in ``out_dir``, shaped like ``target``."""
  import jax
  import jax.numpy as jnp

  if commit.state_path is None:
    raise StoreError(f"the run in {out_dir} (task {commit.task}/"
                     f"{commit.results.get('num_tasks')}) has no saved state to resume "
                     f"from", advice="restart")
  try:
    # orbax refuses relative paths, as _save_state; binaries get --out_root=results.
    state = _checkpointer().restore(os.path.abspath(commit.state_path),
                                    jax.device_get(target))
  except Exception as e:   # orbax raises many types for a damaged checkpoint
    _ignore_closed_loop_callbacks()
    raise StoreError(f"the checkpoint {commit.state_path} cannot be restored "
                     f"({type(e).__name__}: {str(e)[:200]})", advice="restart") from None
  return jax.tree.map(jnp.asarray, state)


def restore_progress(commit: Commit) -> Optional[dict]:
  """{name: array} saved with ``commit``; None for a commit written before engine v3
  (its progress is in its results); StoreError when the file is damaged."""
  if commit.progress_path is None:
    return None
  try:
    with np.load(commit.progress_path, allow_pickle=False) as saved:
      return {name: saved[name] for name in saved.files}
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
    raise StoreError(f"{commit.progress_path} is corrupt or truncated ({e})",
                     advice="restart") from None


def restore_or_earlier(out_dir: str, commit: Commit, target, log) -> tuple:
  """(commit, state, progress): ``commit``'s state and progress (``restore_progress``)
  or, when either is damaged, the commit before it and its own (the tasks after it are
  trained again; said in ``log``)."""
  try:
    return commit, restore_state(out_dir, commit, target), restore_progress(commit)
  except StoreError as damaged:
    earlier = earlier_commit(out_dir, commit.task)
    if earlier is None or earlier.state_path is None:
      raise StoreError(f"{damaged}; there is no earlier commit to go on from",
                       advice="restart") from None
    log(f"{damaged}; going on from the commit before it (tasks 1-{earlier.task}): task "
        f"{commit.task} is trained again")
    return earlier, restore_state(out_dir, earlier, target), restore_progress(earlier)


def _ignore_closed_loop_callbacks() -> None:
  """After a failed restore, tensorstore's reads still in flight complete into orbax's
  closed event loop: Python prints each 'Event loop is closed' as an unraisable
  traceback, and asyncio logs each failed read's task, garbage-collected unawaited, as
  'Task exception was never retrieved' with its traceback — both after the error, which
  already names the checkpoint. Both are dropped; anything else still goes through."""
  previous = sys.unraisablehook
  if getattr(previous, "ignores_closed_loop", False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)
  hook.ignores_closed_loop = True
  sys.unraisablehook = hook
  logging.getLogger("asyncio").addFilter(
      lambda record: not record.getMessage().startswith("Task exception was never retrieved"))


# ------------------------------------------------------------------------ writing

def _disk_error(e: OSError, path: str, out_dir: str, done: int) -> StoreError:
  what = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
  kept = f"tasks 1-{done} are committed" if done else "no task was committed yet"
  return StoreError(f"could not write {path}: {what}. In {out_dir} {kept}; fix that first",
                    advice="resume")


def commit(out_dir: str, task: int, results: dict, state=None,
           progress: Optional[Mapping[str, np.ndarray]] = None) -> None:
  """Commits task ``task`` (1-based): its results and, if given, its state and progress
  (named arrays), atomically."""
  root = os.path.join(out_dir, COMMITS)
  tmp = os.path.join(root, f"{task}.tmp")
  step = tmp
  try:
    os.makedirs(root, exist_ok=True)
    _remove_tree(tmp)
    os.makedirs(tmp)
    if state is not None:
      _save_state(os.path.join(tmp, "state"), state)
    if progress is not None:
      step = os.path.join(tmp, PROGRESS)
      _save_progress(step, progress)
    step = os.path.join(tmp, RESULTS)
    _write_file(step, json.dumps(results, indent=1))
    step = os.path.join(root, str(task))
    _remove_tree(step)   # a results-only rewrite of the same task
    _rename(tmp, step)   # the commit point
  except OSError as e:
    raise _disk_error(e, step, out_dir, task - 1) from None
  _tidy(out_dir, task, results)


def _tidy(out_dir: str, task: int, results: dict) -> None:
  """After a commit: commits before the ``KEPT_COMMITS`` latest and pre-v2 checkpoints go,
  results.json follows."""
  for older, folder in _commit_dirs(out_dir):
    if older <= task - KEPT_COMMITS:
      _remove_tree(folder)
  for name in _LEGACY_CHECKPOINTS:
    _remove_tree(os.path.join(out_dir, name))
  path = os.path.join(out_dir, RESULTS)
  try:
    write_json_atomic(path, results)
  except OSError as e:   # the commit holds the results; the copy follows on the next open
    raise _disk_error(e, path, out_dir, task) from None


def sync(out_dir: str) -> Optional[Commit]:
  """The latest commit, unfinished ``.tmp`` commits removed, damaged results recovered
  from the copy rewritten, and ``results.json`` brought up to it (a kill may have come
  between the commit and the copy)."""
  root = os.path.join(out_dir, COMMITS)
  for name in os.listdir(root) if os.path.isdir(root) else ():
    if name.endswith(".tmp"):
      _remove_tree(os.path.join(root, name))
  found = latest_commit(out_dir)
  dirs = _commit_dirs(out_dir)
  if found is not None and found.note and dirs and dirs[-1][0] == found.task:
    # Its results were damaged and recovered from the copy: repaired, so the commit can
    # be gone back to later.
    write_json_atomic(os.path.join(dirs[-1][1], RESULTS), found.results)
  if found is not None and dirs:
    path = os.path.join(out_dir, RESULTS)
    try:
      current = read_json(path) if os.path.exists(path) else None
    except StoreError:   # the copy is disposable: the commit holds the results
      current = None
    if current != found.results:
      write_json_atomic(path, found.results)
  return found


def record_stop(out_dir: str, results: dict) -> None:
  """Rewrites the latest commit's results (e.g. to mark a run stopped by divergence),
  its state kept."""
  dirs = _commit_dirs(out_dir)
  if dirs:
    write_json_atomic(os.path.join(dirs[-1][1], RESULTS), results)
  write_json_atomic(os.path.join(out_dir, RESULTS), results)


def clear(out_dir: str) -> None:
  """Removes a run's commits, checkpoints and results (``--restart``); keeps the lock."""
  for name in (COMMITS, *_LEGACY_CHECKPOINTS):
    _remove_tree(os.path.join(out_dir, name))
  for name in (RESULTS, RESULTS + ".tmp"):
    with contextlib.suppress(FileNotFoundError):
      os.remove(os.path.join(out_dir, name))
