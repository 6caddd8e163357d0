r"""How much of a vision task the importance estimate takes (issue 18: does the CNN's
per-sample-gradient path dominate a task's wall time?).

  python benchmarks/consolidation_share.py --out=results/consolidation_share.json

For each penalised method, the engine's programs for the vision mixture's CIFAR-10 task
(the largest, 50,000 images; medium preset, 1 seed, the SPEC's 1,000 importance samples):
one training epoch and the task-end consolidation, compiled first, then the best of
``--rounds`` alternating runs each. The share is consolidation / (epochs × epoch +
consolidation), the fraction of a task's wall time. Run it on an otherwise idle machine.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from dhp_jax import config as config_lib, consolidation, engine, seeds as seeds_lib

_OUT = flags.DEFINE_string("out", "results/consolidation_share.json", "Where to write.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Timed runs of each program (best kept).")
_PRESET = flags.DEFINE_string("preset", "medium", "Preset (its epochs per task).")


def _seconds(fn, *args) -> float:
  tic = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - tic


def task_share(method: str, preset: str, rounds: int) -> dict:
  """Seconds of one epoch and of the consolidation on the CIFAR-10 task, and the share."""
  config = config_lib.make_config("vision_mixture", preset, method, num_seeds=1,
                                  num_tasks=1, vision_datasets=("cifar10",))
  run = engine.prepare(config)
  task, split, perms = run.tasks[0], run.train_splits[0], run.perms[0]
  state = run.programs.create(seeds_lib.init_keys(run.keys))
  epoch, consolidate = (run.programs.epoch(task.output_slice),
                        run.programs.consolidate(task.output_slice))
  epoch_keys = seeds_lib.epoch_keys(seeds_lib.task_keys(run.keys, 0), 0)
  end_keys = seeds_lib.consolidation_keys(seeds_lib.task_keys(run.keys, 0))
  start = jax.tree.map(jnp.copy, state.params)
  state, _ = epoch(jax.tree.map(jnp.copy, state), epoch_keys, split, perms)   # compiles
  jax.block_until_ready(consolidate(state, start, split, perms, end_keys))    # compiles
  times = {"epoch": [], "consolidation": []}
  for _ in range(rounds):   # alternating, so a slower spell hits both
    times["epoch"].append(_seconds(epoch, jax.tree.map(jnp.copy, state), epoch_keys, split,
                                   perms))
    times["consolidation"].append(_seconds(consolidate, state, start, split, perms,
                                           end_keys))
  best = {k: min(v) for k, v in times.items()}
  task_s = config.epochs * best["epoch"] + best["consolidation"]
  return {"samples": int(split.index.shape[0]), "epochs": config.epochs,
          "importance_samples": config.importance_samples,
          "fisher_mode": config.fisher_mode if method in ("ewc", "online_ewc") else None,
          "epoch_s": best["epoch"], "consolidation_s": best["consolidation"],
          "share": best["consolidation"] / task_s}


def main(argv):
  del argv
  methods = [m for m, spec in consolidation.METHODS.items() if spec.penalised]
  payload = {"jax": jax.__version__, "backend": jax.default_backend(),
             "cpu_count": os.cpu_count(), "preset": _PRESET.value, "methods": {}}
  for method in methods:
    row = payload["methods"][method] = task_share(method, _PRESET.value, _ROUNDS.value)
    print(f"{method}: epoch {row['epoch_s']:.1f} s, consolidation "
          f"{row['consolidation_s']:.1f} s = {100 * row['share']:.1f} % of a "
          f"{row['epochs']}-epoch task", flush=True)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(payload, f, indent=1)


if __name__ == "__main__":
  app.run(main)
