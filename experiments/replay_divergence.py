r"""How did a row's seeds diverge? Replays the task they diverged in, step by step.

  python experiments/replay_divergence.py --table_dir=results/vision_mixture_medium \
      --rows=dhp+online_ewc

For each row and each task in which seeds went non-finite (``results.json``), this
restores the state committed after the task before (the row's ``commits/``; checkpoints
are not in git, so a fresh clone must train the row again), replays the task's epochs with
the engine's epoch program, and checks every replayed epoch's loss against the recorded
trace: equal losses mean the replay is the recorded run, bit for bit. For each diverged
seed it keeps the ``--steps_before`` steps before its first non-finite loss, and that
step: the loss, the norm of each layer's update (a DHP head's θ, α and η apart), ‖α‖_F,
η and ‖Hebb‖_F after the step. Writes ``divergence.json`` and ``divergence.md`` into
``--table_dir``.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

if __package__ in (None, ""):   # run as a script: make `experiments` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dhp_jax import config as config_lib, engine, results as results_lib, seeds, store
from experiments import cli
from experiments.rows import ROWS

HEAD_LEAVES = ("theta", "alpha", "eta")   # a DHP head's parameters, reported apart
_SHOWN = {"theta": "θ", "alpha": "α", "eta": "η"}
_AFTER = {"alpha": "‖α‖_F", "eta": "η", "hebb": "‖Hebb‖_F"}


def _layer(path) -> str:
  """A parameter's group: a head leaf by its own name, anything else by its module."""
  names = [getattr(key, "key", getattr(key, "name", str(key))) for key in path]
  return names[-1] if names[-1] in HEAD_LEAVES else names[0]


def layer_norms(params) -> dict:
  """{group: Frobenius norm} of a params tree (groups as ``_layer``)."""
  squares = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    group = _layer(path)
    squares[group] = squares.get(group, 0.0) + jnp.sum(jnp.square(leaf))
  return {group: jnp.sqrt(total) for group, total in squares.items()}


def step_diagnostics(before, after, stats) -> dict:
  """One seed's step: its loss, each layer's update norm and the head's state after it."""
  update = layer_norms(jax.tree.map(jnp.subtract, after.params, before.params))
  now = layer_norms(after.params)
  head = {name: now[name] for name in ("alpha",) if name in now}
  head.update({"eta": leaf for path, leaf in jax.tree_util.tree_leaves_with_path(after.params)
               if _layer(path) == "eta"})
  hebb = jax.tree.leaves(after.hebb)
  if hebb:
    head["hebb"] = jnp.sqrt(sum(jnp.sum(jnp.square(h)) for h in hebb))
  return {"loss": stats["loss"], "update": update, "after": head}


def _start_commit(out_dir: str, task: int):
  """The commit whose state 1-based ``task`` starts from (None: the fresh state of task
  1); ValueError, before any data is loaded, when that state was not kept."""
  if task == 1:
    return None
  commit = store.earlier_commit(out_dir, task)
  if commit is None or commit.task != task - 1 or commit.state_path is None:
    raise ValueError(f"--rows: {out_dir} kept no state after task {task - 1} (checkpoints "
                     "are not in git): train the row again (experiments/table1.py, same "
                     "flags) to replay it")
  return commit


def _start_state(run: engine.Run, out_dir: str, commit):
  fresh = run.programs.create(seeds.put(seeds.init_keys(run.keys), run.layout.sharding))
  return fresh if commit is None else store.restore_state(out_dir, commit, fresh)


def _epoch_program(run: engine.Run, task: int):
  """The engine's epoch of 0-based ``task`` with ``step_diagnostics`` per step."""
  epoch = engine.epoch_function(run.config, run.programs.model, run.programs.optimizer,
                                run.tasks[task].output_slice)
  return seeds.jit_seeds(functools.partial(epoch, per_step=step_diagnostics))


def _seed_steps(per_step, s: int, steps_before: int) -> dict:
  """Seed index ``s``'s first non-finite step and the ``steps_before`` before it (when
  the replayed epoch stayed finite: its last steps, and no first non-finite step)."""
  loss = np.asarray(per_step["loss"][:, s])
  bad = ~np.isfinite(loss)
  first = int(np.argmax(bad)) if bad.any() else None
  end = len(loss) if first is None else first + 1
  keep = slice(max(0, end - 1 - steps_before), end)
  column = lambda v: [float(x) for x in np.asarray(v)[keep, s]]
  return {"first_nonfinite_step": first, "steps_per_epoch": len(loss),
          "steps": list(range(keep.start, keep.stop)), "loss": column(per_step["loss"]),
          "update": {k: column(v) for k, v in per_step["update"].items()},
          "after": {k: column(v) for k, v in per_step["after"].items()}}


def replay_task(run: engine.Run, record: results_lib.RunRecord, out_dir: str, task: int,
                diverged: Mapping[int, int], steps_before: int) -> dict:
  """Replays 1-based ``task`` up to the last epoch of ``diverged`` {seed index: 1-based
  epoch}: {"task", "checked_epochs": replayed epochs the trace records (a stopped run
  keeps none of its last), "exact": their losses all equal the trace's, "seeds": {seed:
  ``_seed_steps`` of its epoch}}."""
  state = _start_state(run, out_dir, _start_commit(out_dir, task))
  program, task_keys = _epoch_program(run, task - 1), seeds.task_keys(run.keys, task - 1)
  trace = {k: np.asarray(v) for k, v in record.trace.items()}
  recorded = trace["epoch_loss"][trace["task"] == task - 1]
  exact, found = True, {}
  for epoch in range(max(diverged.values())):
    keys = seeds.put(seeds.epoch_keys(task_keys, epoch), run.layout.sharding)
    state, stats, per_step = program(state, keys, run.train_splits[task - 1],
                                     run.perms[task - 1])
    loss, per_step = jax.device_get(run.layout.gather((stats["loss"], per_step)))
    if epoch < len(recorded):
      finite = np.isfinite(recorded[epoch])
      exact &= bool(np.array_equal(np.asarray(loss)[finite], recorded[epoch][finite]))
    found.update({record.seeds[s]: _seed_steps(per_step, s, steps_before)
                  for s, at in diverged.items() if at == epoch + 1})
  return {"task": task, "checked_epochs": min(len(recorded), max(diverged.values())),
          "exact": exact, "seeds": found}


def row_replay(out_dir: str, steps_before: int, data_dir=None) -> list:
  """[replay_task(...)] for every task of the run in ``out_dir`` in which seeds diverged."""
  commit = store.latest_commit(out_dir)
  if commit is None:
    raise ValueError(f"--rows: {out_dir} holds no run")
  record = results_lib.RunRecord.from_json(commit.results)
  by_task = {}
  for s, d in enumerate(record.divergence):
    if d is not None:
      by_task.setdefault(d.task, {})[s] = d.epoch
  if not by_task:
    return []
  for task in by_task:
    _start_commit(out_dir, task)
  run = engine.prepare(config_lib.Config.from_json(commit.results["config"]), data_dir)
  return [replay_task(run, record, out_dir, task, diverged, steps_before)
          for task, diverged in sorted(by_task.items())]


def _number(v: float) -> str:
  return f"{v:.4g}" if np.isfinite(v) else ("NaN" if np.isnan(v) else f"{v}")


def _first(steps: dict) -> str:
  if steps["first_nonfinite_step"] is None:
    return (f"the replayed epoch stayed finite ({steps['steps_per_epoch']} steps, its last "
            "shown)")
  return (f"first non-finite loss at step {steps['first_nonfinite_step']} of "
          f"{steps['steps_per_epoch']}")


def _exactness(replay: dict) -> str:
  if not replay["checked_epochs"]:
    return "replay not checkable: the trace keeps none of the replayed epochs"
  return (f"replay exact: {'yes' if replay['exact'] else 'no'}, "
          f"{replay['checked_epochs']} epoch(s) checked against the trace")


def markdown(table_dir: str, replays: Mapping[str, list], steps_before: int) -> str:
  lines = [f"# How the seeds diverged — {os.path.basename(table_dir)}", "",
           f"Each diverged seed's last {steps_before} steps before its first non-finite "
           "loss, and that step, replayed from the state committed before the task "
           "(`experiments/replay_divergence.py`). ‖Δ·‖: the norm of the step's update of a "
           "layer (a DHP head's θ, α and η apart); ‖α‖_F, η and ‖Hebb‖_F after the step. "
           "The replay is exact when every replayed epoch's loss equals the trace's."]
  for row, replays_of_row in replays.items():
    for replay in replays_of_row:
      for seed, steps in replay["seeds"].items():
        updates, after = list(steps["update"]), list(steps["after"])
        lines += ["", f"**{ROWS[row].label if row in ROWS else row}**, task {replay['task']}, "
                  f"seed {seed}: {_first(steps)} ({_exactness(replay)})", "",
                  "| step | loss | " + " | ".join(f"‖Δ {_SHOWN.get(k, k)}‖" for k in updates)
                  + " | " + " | ".join(_AFTER[k] for k in after) + " |",
                  "|---" * (2 + len(updates) + len(after)) + "|"]
        for i, step in enumerate(steps["steps"]):
          cells = [steps["loss"][i]] + [steps["update"][k][i] for k in updates] \
              + [steps["after"][k][i] for k in after]
          lines.append(f"| {step} | " + " | ".join(_number(v) for v in cells) + " |")
  return "\n".join(lines) + "\n"


def define_flags(fv: flags.FlagValues) -> None:
  cli.define_table_flags(fv, ["dhp+online_ewc"], "Rows to replay.")
  flags.DEFINE_integer("steps_before", 8, "Steps shown before the first non-finite one.",
                       lower_bound=0, flag_values=fv)


def run(fv: flags.FlagValues) -> dict:
  replays = {row: row_replay(folder, fv.steps_before, cli.data_dirs(fv.data_dir))
             for row, folder in cli.table_row_dirs(fv).items()}
  cli.write_table_report(fv.table_dir, "divergence",
                         {"steps_before": fv.steps_before, "rows": replays},
                         markdown(fv.table_dir, replays, fv.steps_before))
  return replays


if __name__ == "__main__":
  cli.main(run, define_flags)
