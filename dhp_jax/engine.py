"""The continual-learning run: every seed of a config trained on the task stream at once.

``train_and_evaluate(config, out_dir)`` is one short loop over named steps — init or
restore, train one task, consolidate, evaluate, commit — built from the per-seed pieces
of ``dhp_jax.training`` (vmapped by ``dhp_jax.seeds``) and the run directory of
``dhp_jax.store``. ``extend_seeds`` adds seeds to a finished run.

Shapes: every array of the state carries a leading seed axis [S, ...]; ``acc`` is the
accuracy matrix [S, T, T] (row t: after task t, on every task), ``init_acc`` [S, T] the
untrained model's accuracies (FWT).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dhp_jax import config as config_lib
from dhp_jax import consolidation, distributed, results as results_lib, seeds as seeds_lib
from dhp_jax import store
from dhp_jax import training
from dhp_jax.config import Config


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite loss, trace or parameter in every seed."""


class Interrupted(Exception):
  """The run was stopped (Ctrl-C); the message says what its directory keeps.
  ``advice``: what the binary should add (how to resume)."""
  advice = "resume"


class Run(NamedTuple):
  """What stays fixed during a run: the config, the seeds' data and compiled programs."""
  config: Config
  seeds: list
  keys: jax.Array            # [slots] base keys (``layout.pad``-ed)
  layout: seeds_lib.SeedLayout   # seeds on the devices (slots, sharding)
  tasks: tuple               # the first seed's tasks (names, test splits, output slices)
  notes: tuple
  train_splits: list
  perms: list                # per task: [slots, D] int32 permutations or None
  test_splits: list
  programs: Any              # ``_Programs``


class Progress(NamedTuple):
  """What a run has done so far (what a commit saves): the training state and the run
  record (accuracies, divergence, trace, stability; ``record.completed_tasks`` tasks)."""
  state: training.TrainState
  record: results_lib.RunRecord

  @property
  def next_task(self) -> int:   # 0-based
    return self.record.completed_tasks


def train_and_evaluate(config: Config, out_dir: Optional[str] = None, *, data_dir=None,
                       resume: bool = False, restart: bool = False,
                       stop_after_task: Optional[int] = None, progress: bool = True,
                       log: Callable[[str], None] = functools.partial(print, flush=True),
                       observers: Sequence = (), num_devices: Optional[int] = None) -> dict:
  """Trains ``config.num_seeds`` seeds (vmapped) on the task stream; returns the results.

  Every finished task is committed to ``out_dir`` (``dhp_jax.store``); ``resume=True``
  continues from the last commit, ``restart=True`` starts the directory over.
  ``stop_after_task`` (1-based count) ends the run early, as a kill would (for tests).
  ``observers``: objects with ``epoch(task, epoch, values)`` and ``task(task, accuracy)``
  methods (e.g. ``dhp_jax.metric_writers.MetricsWriter``), called with host values, and
  optionally ``start(record)``, called once before training with the committed
  ``results.RunRecord`` the run goes on from (None: none). Without a progress bar, one
  line per finished task goes to ``log``. Ctrl-C raises ``Interrupted`` saying which tasks are kept.
  ``num_devices``: use at most the first that many devices (default: all; the seeds
  are split over them as ``seeds.devices_for`` says).

  In a run of several processes (``dhp_jax.distributed``) every process calls this
  with the same arguments; process 0 alone locks and writes ``out_dir`` and calls the
  observers and the progress bar or log, and every process returns the results.
  """
  config = config.validate()
  try:
    with _lock(out_dir):   # first: a busy directory is refused before any work
      run = prepare(config, data_dir, num_devices)
      done = _init_or_restore(run, out_dir, resume=resume, restart=restart, log=log)
      reports = distributed.is_writer()   # one report of a run, however many processes
      observers = observers if reports else ()
      if done.next_task >= config.num_tasks:   # finished: its results, as committed
        committed = store.read_results(out_dir)
        _start(observers, results_lib.read(committed))
        return committed
      _start(observers, done.record if done.next_task else None)
      watchers = [*observers, _ProgressBar(run, done.next_task) if progress
                  else _TaskLog(run, done.next_task, log)] if reports else []
      try:
        return _train_tasks(run, done, out_dir, watchers, stop_after_task, log)
      finally:
        for watcher in watchers:
          getattr(watcher, "close", lambda: None)()
  except KeyboardInterrupt:
    raise Interrupted(_kept(out_dir, config)) from None


def _start(observers, record) -> None:
  """Tells the observers the record the run goes on from (None: none), e.g. so metrics
  are rewound to the commit."""
  for observer in observers:
    getattr(observer, "start", lambda record: None)(record)


def _train_tasks(run: Run, done: Progress, out_dir, watchers, stop_after_task, log) -> dict:
  """The loop: each task trained, consolidated, evaluated and committed; the results."""
  wall_start, wall_before, results = time.time(), done.record.wall_time_s or 0.0, None
  for t in range(done.next_task, run.config.num_tasks):
    done, task_start_params = _train_task(run, done, t, out_dir, watchers, log)
    done = _consolidate_task(run, done, t, task_start_params)
    done = _evaluate_task(run, done, t, watchers)
    done, results = _commit_task(run, done, out_dir,
                                 wall_before + time.time() - wall_start)
    _warn_if_unstable(run, done.record.stability[-1:], log)
    if stop_after_task is not None and t + 1 >= stop_after_task:
      break
  return results


def _kept(out_dir, config: Config) -> str:
  """What an interrupted run keeps: its last committed task."""
  if out_dir is None:
    return "interrupted; nothing is kept (no run directory)"
  try:
    results = store.read_results(out_dir)
  except store.StoreError:
    results = None
  if results is None:
    return f"interrupted before the first task was committed: {out_dir} holds nothing yet"
  task = results.get("completed_tasks")
  return (f"interrupted: {out_dir} keeps tasks 1-{task} of {config.num_tasks} (the last "
          f"committed task); the task in progress is lost")


def _lock(out_dir):
  """``out_dir``'s lock, held by process 0 (the writer); the other processes wait for
  it and stop when it is refused."""
  if out_dir is None:
    return contextlib.nullcontext()
  return distributed.writer_context(f"to lock {out_dir}", lambda: store.locked(out_dir))


# ------------------------------------------------------------------------- set-up

def prepare(config: Config, data_dir=None, num_devices: Optional[int] = None) -> Run:
  """The seeds' streams on the devices and the run's programs (compiled on first use)."""
  seeds = [config.seed + s for s in range(config.num_seeds)]
  streams = seeds_lib.build_streams(config, seeds, data_dir)
  layout = seeds_lib.seed_layout(config.num_seeds, seeds_lib.run_devices(num_devices))
  sharding, replicated = layout.sharding, seeds_lib.replicated(layout.sharding)
  tasks = streams[0].tasks[:config.num_tasks]
  inputs = [seeds_lib.task_training_inputs(config, streams, t)
            for t in range(config.num_tasks)]
  model = training.make_model(config, streams[0].num_classes)
  programs = _Programs(config, model, training.make_optimizer(config),
                       streams[0].input_shape, sharding)
  return Run(config, seeds, layout.pad(seeds_lib.base_keys(seeds)), layout, tasks,
             tuple(streams[0].notes),
             [seeds_lib.put(split, replicated) for split, _ in inputs],
             [seeds_lib.put(layout.pad(perm), sharding) for _, perm in inputs],
             [seeds_lib.put(task.test, replicated) for task in tasks], programs)


def create_function(config: Config, model, input_shape, optimizer) -> Callable:
  """``training.create_state`` as the engine runs it: one seed's key -> its TrainState."""
  return functools.partial(training.create_state, model=model, input_shape=input_shape,
                           optimizer=optimizer, freeze_alpha=config.freeze_alpha)


def epoch_function(config: Config, model, optimizer, output_slice,
                   unroll: Optional[bool] = None) -> Callable:
  """``training.train_epoch`` as the engine runs it for a task with ``output_slice``:
  (states, keys [S], split, permutations [S, ...]) -> (states, stats [S]). ``unroll``
  (default: ``training.is_convolutional(config)``) picks ``seeds.seed_map``."""
  unroll = training.is_convolutional(config) if unroll is None else unroll
  return functools.partial(training.train_epoch, batch_size=config.batch_size,
                           output_slice=output_slice, model=model, optimizer=optimizer,
                           project_eta=config.eta_constraint == "project",
                           seed_map=seeds_lib.seed_map(unroll))


class _Programs:
  """The run's jitted, seed-vmapped programs: one per distinct task output slice."""

  def __init__(self, config: Config, model, optimizer, input_shape, sharding=None):
    self.config, self.model, self.optimizer = config, model, optimizer
    self.seed_jit = functools.partial(seeds_lib.seed_jit, sharding=sharding)
    self.jit_seeds = functools.partial(seeds_lib.jit_seeds, sharding=sharding)
    self.create = self.seed_jit(create_function(config, model, input_shape, optimizer), 0)

  @functools.lru_cache(maxsize=None)
  def epoch(self, output_slice):
    return self.jit_seeds(epoch_function(self.config, self.model, self.optimizer,
                                         output_slice), donate_argnums=0)

  @functools.lru_cache(maxsize=None)
  def evaluate(self, output_slice):
    fn = functools.partial(training.evaluate, model=self.model, output_slice=output_slice)
    return self.seed_jit(fn, (0, 0, None, 0))

  @functools.lru_cache(maxsize=None)
  def consolidate(self, output_slice):
    fn = functools.partial(training.consolidate, config=self.config, model=self.model,
                           output_slice=output_slice)
    return self.seed_jit(fn, (0, 0, None, 0, 0))


@jax.jit
def _copy(tree):
  # A copy: the epoch program donates (and so deletes) the state's buffers.
  return jax.tree.map(jnp.copy, tree)


def _evaluate_all(run: Run, state) -> np.ndarray:
  """[S, T] accuracy of every seed on every task's test split."""
  return np.stack([np.asarray(run.layout.gather(run.programs.evaluate(task.output_slice)(
      state.params, state.hebb, run.test_splits[i], run.perms[i])))
      for i, task in enumerate(run.tasks)], 1)


def _init_or_restore(run: Run, out_dir, *, resume: bool, restart: bool, log) -> Progress:
  """A fresh start, or the progress of the last commit in ``out_dir`` (``resume``)."""
  config = run.config
  state = run.programs.create(seeds_lib.put(seeds_lib.init_keys(run.keys),
                                             run.layout.sharding))
  commit = None
  if out_dir is not None:
    if restart:
      distributed.on_writer(store.clear, out_dir)
    commit = distributed.writer_first(f"to read {out_dir}", store.sync, out_dir,
                                      read=store.latest_commit)
    if commit is not None and not resume:
      raise store.StoreError(
          f"{out_dir} already holds a run (task {commit.task}/"
          f"{commit.results.get('num_tasks')}): pass --resume to continue it or "
          f"--restart to start it over")
    if commit is not None and resume and _without_state(commit, config):
      log(f"{out_dir} holds tasks 1-{commit.task} of this run but no checkpoint to resume "
          f"from (checkpoints are not kept in git): starting it over")
      distributed.on_writer(store.clear, out_dir)
      commit = None
    elif commit is None and resume:
      log(f"nothing to resume in {out_dir} yet; starting from task 1")
  if commit is None:
    return Progress(state, _new_record(run, _evaluate_all(run, state)))
  return _restored(run, out_dir, commit, state, log)


def _new_record(run: Run, init_accuracy: np.ndarray) -> results_lib.RunRecord:
  """The record of a run before its first task; ``init_accuracy`` [S, T]."""
  config, num_seeds = run.config, len(run.seeds)
  return results_lib.RunRecord(
      config=config.to_json(), seeds=tuple(run.seeds), num_tasks=config.num_tasks,
      completed_tasks=0,
      accuracy=np.full((num_seeds, config.num_tasks, config.num_tasks), np.nan),
      init_accuracy=init_accuracy, divergence=(None,) * num_seeds,
      trace=results_lib.empty_trace(num_seeds), notes=run.notes,
      task_names=tuple(t.name for t in run.tasks),
      devices=tuple(str(d) for d in run.layout.devices))


def _without_state(commit: store.Commit, config: Config) -> bool:
  """An unfinished run of ``config`` whose state is gone (e.g. a fresh clone)."""
  return (commit.state_path is None
          and config_lib.config_matches(commit.results.get("config", {}), config)
          and not results_lib.RunRecord.from_json(commit.results).finished())


def _restored(run: Run, out_dir: str, commit: store.Commit, target, log) -> Progress:
  """The progress saved in ``commit`` (or, when its checkpoint is damaged, the commit
  before it) of the run of ``run.config`` in ``out_dir``."""
  _check_same_config(out_dir, commit.results, run.config)
  num_tasks = run.config.num_tasks
  if commit.note:
    log(commit.note)
  if commit.task >= num_tasks or results_lib.RunRecord.from_json(commit.results).finished():
    log(f"resuming {out_dir} after task {commit.task}/{num_tasks}")
    return Progress(target, dataclasses.replace(_new_record(run, None),
                                                completed_tasks=num_tasks))
  commit, restored, arrays = store.restore_or_earlier(out_dir, commit,
                                                      run.layout.gather(target), log)
  log(f"resuming {out_dir} after task {commit.task}/{num_tasks}")
  state = seeds_lib.put(run.layout.pad(restored), run.layout.sharding)
  if arrays is None:   # a commit written before engine v3: its progress is its results
    arrays = results_lib.RunRecord.from_json(commit.results).progress_arrays()
  return Progress(state, _new_record(run, None).with_progress(arrays))


def _check_same_config(out_dir: str, saved: dict, config: Config) -> None:
  """ValueError listing the fields whose saved value differs from ``config``'s."""
  if config_lib.config_matches(saved.get("config", {}), config):
    return
  theirs = config_lib.with_defaults(saved.get("config", {}))
  diff = {k: (theirs.get(k), v) for k, v in config.to_json().items() if theirs.get(k) != v}
  raise ValueError(f"the run in {out_dir} has another config than this one (field: saved, "
                   f"now): {diff}; run its config to resume it, or use another directory")


# ------------------------------------------------------------------ one task's steps

def _train_task(run: Run, done: Progress, t: int, out_dir, watchers, log):
  """``config.epochs`` epochs of task ``t``; non-finite seeds recorded (all: raise).
  Returns the progress and the parameters at the task's start (for consolidation)."""
  task_keys = seeds_lib.task_keys(run.keys, t)
  epoch_fn = run.programs.epoch(run.tasks[t].output_slice)
  state, record = done.state, done.record
  start_params = _copy(state.params)
  for epoch in range(run.config.epochs):
    keys = seeds_lib.put(seeds_lib.epoch_keys(task_keys, epoch), run.layout.sharding)
    state, stats = epoch_fn(state, keys, run.train_splits[t], run.perms[t])
    # On one device, as one device computes them: the norms' sums round differently
    # when XLA splits a reduction over the seed axis.
    loss, seen = run.layout.gather((stats["loss"], state._replace(opt_state=None)))
    finite, plastic = jax.device_get(_epoch_summary(loss, seen))
    record = _record_nonfinite(run, done.record, record, finite, t, epoch, out_dir, log)
    values = {**{k: np.asarray(v).tolist() for k, v in plastic.items()},
              "epoch_loss": np.asarray(loss).tolist()}
    record = dataclasses.replace(record, trace=_appended(record.trace, values, t))
    for watcher in watchers:
      watcher.epoch(t, epoch, values)
  return Progress(state, record), start_params


def _appended(trace: dict, values: dict, task: int) -> dict:
  """``trace`` with one more epoch: ``values`` (name -> [S]) of task ``task``."""
  grown = {name: np.concatenate([trace[name], np.asarray([values[name]], float)])
           for name in results_lib.TRACE_QUANTITIES if name in values}
  return {**trace, **grown, "task": np.append(trace["task"], task)}


@jax.jit
def _epoch_summary(loss, state):
  """[S] finite flags per quantity and the DHP head's per-seed η, ‖Hebb‖, ‖α‖."""
  def per_seed(tree):
    ok = [jnp.isfinite(x).reshape(x.shape[0], -1).all(1) for x in jax.tree.leaves(tree)]
    return jnp.stack(ok).all(0) if ok else jnp.ones(loss.shape, bool)
  finite = dict(zip(results_lib.NONFINITE_QUANTITIES,
                    (jnp.isfinite(loss), per_seed(state.hebb), per_seed(state.params))))
  return finite, jax.vmap(training.plasticity_stats)(state)


def _record_nonfinite(run: Run, committed: results_lib.RunRecord,
                      record: results_lib.RunRecord, finite: dict, t: int, epoch: int,
                      out_dir, log) -> results_lib.RunRecord:
  """``record`` with newly non-finite seeds' divergence; the others go on (each seed's
  slot in the vmapped program is independent). When none is left: the ``committed``
  record marked stopped, NonFiniteError."""
  divergence = list(record.divergence)
  for s, was in enumerate(record.divergence):
    names = tuple(name for name, ok in finite.items() if not ok[s])
    if was is None and names:
      divergence[s] = results_lib.Divergence(t + 1, epoch + 1, names)
  bad = sorted(seed for seed, was, now in zip(run.seeds, record.divergence, divergence)
               if was is None and now is not None)
  record = dataclasses.replace(record, divergence=tuple(divergence))
  if not bad:
    return record
  if not record.stopped():
    log(f"seeds {bad}: non-finite in task {t + 1}, epoch {epoch + 1}; recorded, "
        f"the other seeds go on")
    return record
  stopped = dataclasses.replace(committed, divergence=record.divergence)
  if out_dir is not None and t > 0:
    # Recorded, so a table can show the row as diverged instead of re-running it.
    distributed.writer_first(f"to record the stop in {out_dir}", store.record_stop,
                             out_dir, stopped.to_json())
  names = stopped.stop()["quantities"]
  raise NonFiniteError(f"non-finite {', '.join(names)} in task {t + 1}, epoch {epoch + 1} "
                       f"(seeds {bad}); results up to task {t} are in {out_dir}")


def _consolidate_task(run: Run, done: Progress, t: int, task_start_params) -> Progress:
  """The method's task-end bookkeeping, and the stability of SGD on its new penalty."""
  method = consolidation.METHODS[run.config.method]
  if method.end_task is None:
    return done   # nothing to do at a task's end (and no program to compile)
  keys = seeds_lib.put(seeds_lib.consolidation_keys(seeds_lib.task_keys(run.keys, t)),
                       run.layout.sharding)
  state = run.programs.consolidate(run.tasks[t].output_slice)(
      done.state, task_start_params, run.train_splits[t], run.perms[t], keys)
  record = done.record
  if method.stability is not None:
    record = dataclasses.replace(record, stability=record.stability + (
        _stability(run, t, _per_seed(method.stability)(state.opt_state, state.params)),))
  return Progress(state, record)


@functools.lru_cache(maxsize=None)
def _per_seed(hook):
  return jax.jit(jax.vmap(hook))


def _stability(run: Run, t: int, per_leaf) -> results_lib.Stability:
  """lr·λ·(largest Ω) per seed after task ``t`` and its layer; ``per_leaf`` {layer: [slots]}."""
  per_leaf = jax.device_get(run.layout.gather(per_leaf))
  strength_lr, seeds = run.config.strength * run.config.lr, range(len(run.seeds))
  return results_lib.Stability(
      t + 1, tuple(float(strength_lr * max(v[s] for v in per_leaf.values())) for s in seeds),
      tuple(max(per_leaf, key=lambda k: per_leaf[k][s]) for s in seeds))


# Plain SGD on λΩ(θ−θ*)² multiplies the offset by (1 − 2·lr·λ·Ω) per step: it diverges
# once lr·λ·Ω > 1 on any coordinate (BUILD_NOTES, "Online EWC can diverge").
STABILITY_BOUND = 1.0


def _warn_if_unstable(run: Run, records: list, log) -> None:
  """Plain SGD on λΩ(θ−θ*)² is unstable once lr·λ·Ω > 1 (BUILD_NOTES, "Online EWC can
  diverge"): said before the next task starts. No clamping: the method stays faithful."""
  for record in records:
    for s, value in enumerate(record.value):
      if value > STABILITY_BOUND:
        log(f"WARNING: after task {record.task}, seed {run.seeds[s]}: lr·λ·Ω = "
            f"{value:.3g} > 1 in {record.layer[s]}: plain SGD on the penalty is "
            f"unstable there and the next task may diverge")


def _evaluate_task(run: Run, done: Progress, t: int, watchers) -> Progress:
  accuracy = done.record.accuracy.copy()
  accuracy[:, t] = _evaluate_all(run, done.state)
  for watcher in watchers:
    watcher.task(t, accuracy[:, t])
  return done._replace(record=dataclasses.replace(done.record, accuracy=accuracy,
                                                  completed_tasks=t + 1))


def _commit_task(run: Run, done: Progress, out_dir, wall_time_s: float):
  """(progress, results payload) after task ``done.next_task``, committed with the state
  and the record's arrays."""
  record = dataclasses.replace(done.record, wall_time_s=round(wall_time_s, 1))
  results = record.to_json()
  if out_dir is not None:
    distributed.writer_first(f"to commit task {record.completed_tasks} to {out_dir}",
                             store.commit, out_dir, record.completed_tasks, results,
                             run.layout.gather(done.state), record.progress_arrays())
  return done._replace(record=record), results


def _duration(seconds: float) -> str:
  """'2h05m', '3m07s', '12s'."""
  minutes, secs = divmod(int(round(seconds)), 60)
  hours, minutes = divmod(minutes, 60)
  return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else \
      f"{secs}s"


class _TaskLog:
  """One line per finished task when there is no progress bar, so a long run with
  --noprogress (e.g. a campaign writing to a log file) says where it is."""

  def __init__(self, run: Run, first_task: int, log):
    c = run.config
    self.log, self.first, self.total, self.tic = log, first_task, c.num_tasks, time.time()
    seeds = f"seed {run.seeds[0]}" if len(run.seeds) == 1 else \
        f"seeds {run.seeds[0]}-{run.seeds[-1]}"
    self.name = f"{c.benchmark} ({c.preset}) {config_lib.describe(c)}, {seeds}"

  def epoch(self, task: int, epoch: int, values: dict) -> None:
    del task, epoch, values

  def task(self, task: int, accuracy) -> None:
    elapsed = time.time() - self.tic
    left = (self.total - task - 1) * elapsed / (task + 1 - self.first)
    average = np.nanmean(np.asarray(accuracy, float)[:, :task + 1])
    self.log(f"{self.name}: task {task + 1}/{self.total} done (average accuracy "
             f"{100 * average:.2f} %), elapsed {_duration(elapsed)}, ETA {_duration(left)}")


class _ProgressBar:
  """tqdm over the run's epochs, with the latest task, loss and samples/s."""

  def __init__(self, run: Run, first_task: int):
    from tqdm.auto import tqdm   # only when a bar is wanted
    c = run.config
    self.run, self.tic = run, time.time()
    self.bar = tqdm(total=c.num_tasks * c.epochs, initial=first_task * c.epochs,
                    desc=f"{c.benchmark}/{c.method}/{c.head}", unit="epoch",
                    dynamic_ncols=True)

  def epoch(self, task: int, epoch: int, values: dict) -> None:
    del epoch
    n = int(self.run.train_splits[task].index.shape[0]) * len(self.run.seeds)
    now = time.time()
    self.bar.set_postfix(task=f"{task + 1}/{self.run.config.num_tasks}",
                         loss=f"{np.nanmean(np.asarray(values['epoch_loss'], float)):.3f}",
                         samples_s=f"{n / max(now - self.tic, 1e-9):,.0f}")
    self.tic = now
    self.bar.update(1)

  def task(self, task: int, accuracy) -> None:
    del task, accuracy

  def close(self) -> None:
    self.bar.close()


# ------------------------------------------------------------------- more seeds later

def extend_seeds(config: Config, out_dir: str, *, train=None, **train_kwargs) -> dict:
  """Adds seeds to the finished run in ``out_dir`` until it holds ``config.num_seeds``.

  Trains only the missing seeds (in ``out_dir/seeds_<first>-<last>``, resumable like any
  run) and merges them into ``out_dir``'s results (one commit). ``train`` defaults to
  ``train_and_evaluate``; ``train_kwargs`` go to it. A ``NonFiniteError`` of the new
  seeds is not raised: they are merged as diverged seeds.
  """
  with _lock(out_dir):
    held = results_lib.load(out_dir)
    held = 0 if held is None else held.seeds_to_extend(config)
    if not held:
      raise ValueError(f"extend_seeds: {out_dir} holds no finished run of this config "
                       f"with fewer than {config.num_seeds} seeds")
    extra = dataclasses.replace(config, seed=config.seed + held,
                                num_seeds=config.num_seeds - held)
    extra_dir = os.path.join(out_dir,
                             f"seeds_{extra.seed}-{config.seed + config.num_seeds - 1}")
    try:
      (train or train_and_evaluate)(extra, extra_dir, resume=True, **train_kwargs)
    except NonFiniteError:
      if store.read_results(extra_dir) is None:
        raise   # diverged in the first task: nothing recorded to merge
      # otherwise recorded in extra_dir's results as a run-wide divergence
    merged = results_lib.merge_seed_runs(results_lib.load(out_dir),
                                         results_lib.load(extra_dir)).to_json()
    distributed.writer_first(f"to commit the merged seeds to {out_dir}", store.commit,
                             out_dir, merged["completed_tasks"], merged)
  return merged
