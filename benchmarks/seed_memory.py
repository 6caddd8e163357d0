r"""Device memory per vmapped seed, from XLA's own accounting of the compiled programs.

  python benchmarks/seed_memory.py --out=results/seed_memory.json

For the MLP (Permuted MNIST, paper preset) and the vision CNN (vision mixture), DHP
head, Online EWC (the largest optimizer state of the methods: θ* and Ω beside θ), the
engine's epoch program is compiled for 1, 4 and 16 seeds and ``memory_analysis()`` gives
its argument, output and temporary bytes. The bytes per seed are the slope between the
seed counts; the data (uint8 images placed on the device once, shared by every seed) is
reported apart, and the fixed part counts every task's data (what the engine places on
the device for a run: the paper's number of tasks, 4 vision data sets here). Nothing is
run, so the numbers do not depend on what else the CPU does; on a GPU the compiler
differs, so take them as an estimate (BUILD_NOTES.md).
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
from absl import app, flags

import programs   # a sibling script (benchmarks/ is on the path when run as a script)
from dhp_jax import config as config_lib

_OUT = flags.DEFINE_string("out", "results/seed_memory.json", "Where to write the JSON.")
_SEEDS = flags.DEFINE_list("seeds", ["1", "4", "16"], "Seed counts to compile.")
GPU_GIB = (16, 24, 40, 80)
WORKLOADS = {"mlp": ("permuted_mnist", {}), "cnn": ("vision_mixture", {})}


def epoch_memory(benchmark: str, num_seeds: int) -> dict:
  """XLA's memory accounting of one compiled epoch program for ``num_seeds`` seeds."""
  config = config_lib.make_config(benchmark, "paper", "online_ewc", head="dhp",
                                  num_seeds=num_seeds, num_tasks=1)
  program, state, (keys, split, perms), streams = programs.epoch_program(config, num_seeds)
  compiled = program.lower(state, keys, split, perms).compile()
  stats = compiled.memory_analysis()
  data = int(sum(np.asarray(x).nbytes for x in (split.images, split.labels)))
  arrays = {id(a): a for t in streams[0].tasks for sp in (t.train, t.test)
            for a in (sp.images, sp.labels)}   # every task's data, each array once
  all_data = int(sum(np.asarray(a).nbytes for a in arrays.values()))
  return {"argument_bytes": stats.argument_size_in_bytes,
          "output_bytes": stats.output_size_in_bytes,
          "temp_bytes": stats.temp_size_in_bytes,
          "alias_bytes": stats.alias_size_in_bytes, "data_bytes": data,
          "all_tasks_data_bytes": all_data,
          "state_bytes": int(sum(np.prod(x.shape) * x.dtype.itemsize
                                 for x in jax.tree.leaves(state)))}


def per_seed(rows: dict, counts: list) -> dict:
  """Bytes per added seed (slope from the fewest to the most seeds) of the program's
  memory without the shared data, and the largest seed count per GPU size."""
  low, high = counts[0], counts[-1]
  total = lambda r: r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"] - r["data_bytes"]
  slope = (total(rows[high]) - total(rows[low])) / (high - low)
  fixed = total(rows[low]) - slope * low + rows[low]["all_tasks_data_bytes"]
  return {"bytes_per_seed": slope, "fixed_bytes": fixed,
          "max_seeds_by_gpu_gib": {g: int((g * 2 ** 30 * 0.9 - fixed) // slope)
                                   for g in GPU_GIB}}


def main(argv):
  del argv
  counts = sorted(int(s) for s in _SEEDS.value)
  payload = {"jax": jax.__version__, "backend": jax.default_backend(), "workloads": {}}
  for name, (benchmark, _) in WORKLOADS.items():
    rows = {s: epoch_memory(benchmark, s) for s in counts}
    payload["workloads"][name] = {"benchmark": benchmark, "by_seeds": rows,
                                  **per_seed(rows, counts)}
    summary = payload["workloads"][name]
    print(f"{name}: {summary['bytes_per_seed'] / 2 ** 20:.1f} MiB per seed, fixed "
          f"{summary['fixed_bytes'] / 2 ** 20:.1f} MiB; seeds that fit in 90 % of "
          + ", ".join(f"{g} GiB: {n}" for g, n in summary["max_seeds_by_gpu_gib"].items()))
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(payload, f, indent=1)


if __name__ == "__main__":
  app.run(main)
