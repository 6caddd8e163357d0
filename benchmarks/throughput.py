r"""Throughput of the Permuted MNIST training step (batch 64), measured, not assumed.

  python benchmarks/throughput.py --out=results/throughput.json

Measures in one run: samples/s of one epoch-scan of the MLP 784-400-400-10 on real
permuted MNIST for the plain (matched) head vs the DHP head, with 1, 4 and 10 vmapped
seeds; this machine's practical roofline, the best FLOP/s of a large float32 matmul
(2048² and 4096², numpy and ``jax.jit(jnp.dot)``, best of ``--roofline_repeats``; the JSON
names the library and size that gave it); and the step's FLOP/s (6 × multiply-adds per
sample: forward + backward). Prints the ratios.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dhp_jax import config as config_lib
from dhp_jax import seeds as seeds_lib
from dhp_jax import training

_OUT = flags.DEFINE_string("out", "results/throughput.json", "Where to write the JSON.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per timed epoch.", lower_bound=10)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed round-robin repeats (best is reported).",
                                lower_bound=1)
_SEEDS = flags.DEFINE_list("seeds", ["1", "4", "10"], "Vmapped seed counts to measure.")
_ROOFLINE_SIZES = flags.DEFINE_list("roofline_sizes", ["2048", "4096"],
                                    "Square matmul sizes n tried for the roofline.")
_ROOFLINE_REPEATS = flags.DEFINE_integer("roofline_repeats", 5, "Repeats per roofline "
                                         "matmul (best is kept).", lower_bound=1)


def best_seconds(run, repeats: int) -> float:
  """Best wall time of ``run()`` over ``repeats`` calls, after one untimed warm-up."""
  run()
  best = float("inf")
  for _ in range(repeats):
    tic = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - tic)
  return best


def matmul_runners(n: int) -> dict:
  """{library: a callable doing one n×n @ n×n float32 matmul to completion}."""
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  dot = jax.jit(jnp.dot)
  a_dev, b_dev = jnp.asarray(a), jnp.asarray(b)
  return {"numpy": lambda: np.dot(a, b),
          "jax": lambda: dot(a_dev, b_dev).block_until_ready()}


def matmul_roofline(sizes=(2048, 4096), repeats: int = 5) -> dict:
  """This machine's practical roofline: the best FLOP/s (2n³ per matmul) of any library
  and size tried, and every candidate's, so a fraction of it is not flattered by a
  weak baseline (a matmul at the MLP's own small shapes runs far below peak)."""
  candidates = {}
  for n in sizes:
    for library, run in matmul_runners(n).items():
      candidates[f"{library}_{n}"] = {"library": library, "n": n,
                                      "flops_per_s": 2 * n ** 3 / best_seconds(run, repeats)}
  best = max(candidates.values(), key=lambda c: c["flops_per_s"])
  return {**best, "repeats": repeats, "candidates": candidates}


def step_macs(hidden=(400, 400), inputs=784, classes=10) -> int:
  """Multiply-adds per sample of the MLP forward pass (the head counts once; the DHP
  head's α⊙Hebb is per batch, not per sample, so it adds nothing per sample)."""
  sizes = (inputs, *hidden, classes)
  return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def make_epoch(head: str, num_seeds: int, steps: int, xla_defaults: bool = False):
  """A compiled, warmed-up, vmapped epoch of ``steps`` steps; returns a runner that
  executes it once and returns its wall time."""
  config = config_lib.make_config("permuted_mnist", "paper", "finetune", head=head,
                                  num_seeds=num_seeds, num_tasks=1,
                                  train_subset=steps * 64)
  seeds = list(range(num_seeds))
  streams = seeds_lib.build_streams(config, seeds)
  model = training.make_model(config, streams[0].num_classes)
  optimizer = training.make_optimizer(config)
  keys = jax.vmap(jax.random.key)(jnp.arange(num_seeds, dtype=jnp.uint32))
  create = lambda k: training.create_state(k, model, streams[0].input_shape, optimizer)
  state = seeds_lib.seed_jit(create, 0)(keys)
  split, perms = seeds_lib.task_training_inputs(config, streams, 0)

  def epoch(state, key, split, perm):
    return training.train_epoch(state, key, split, perm, batch_size=64, model=model,
                                optimizer=optimizer)

  fn = seeds_lib.seed_jit(epoch, (0, 0, None, 0), xla_defaults=xla_defaults)
  holder = {"state": fn(state, keys, split, perms)[0]}   # compile + warm-up
  jax.block_until_ready(holder["state"])

  def run_once() -> float:
    tic = time.perf_counter()
    holder["state"], stats = fn(holder["state"], keys, split, perms)
    jax.block_until_ready(stats)
    return time.perf_counter() - tic

  return run_once


def main(argv):
  del argv
  best_matmul = matmul_roofline([int(n) for n in _ROOFLINE_SIZES.value],
                                _ROOFLINE_REPEATS.value)
  roofline = best_matmul["flops_per_s"]
  flops_per_sample = 6 * step_macs()
  configs = [(head, int(s), False) for head in ("matched", "dhp") for s in _SEEDS.value]
  configs += [("dhp", int(s), True) for s in _SEEDS.value]
  runners = {c: make_epoch(c[0], c[1], _STEPS.value, xla_defaults=c[2]) for c in configs}
  # Round-robin repeats, best time per config: slow drifts of a shared machine hit every
  # configuration alike instead of whichever happened to run last.
  best = {c: float("inf") for c in configs}
  for _ in range(_REPEATS.value):
    for c in configs:
      best[c] = min(best[c], runners[c]())
  rows = {}
  for head, s, xla_defaults in configs:
    sps = s * _STEPS.value * 64 / best[(head, s, xla_defaults)]
    name = f"{head}_{s}" + ("_xla_defaults" if xla_defaults else "")
    rows[name] = {"head": head, "num_seeds": s, "xla_defaults": xla_defaults,
                  "samples_per_s": sps, "step_flops_per_s": sps * flops_per_sample,
                  "fraction_of_roofline": sps * flops_per_sample / roofline}
    print(f"{name:22s} {sps:12,.0f} samples/s  "
          f"{sps * flops_per_sample / 1e9:7.1f} GFLOP/s  "
          f"({100 * sps * flops_per_sample / roofline:5.1f}% of matmul roofline)")
  one = int(_SEEDS.value[0])
  ratios = {
      "dhp_time_over_plain_time_1seed": rows[f"matched_{one}"]["samples_per_s"]
      / rows[f"dhp_{one}"]["samples_per_s"],
      **{f"dhp_{s}seeds_total_over_1seed": rows[f"dhp_{s}"]["samples_per_s"]
         / rows[f"dhp_{one}"]["samples_per_s"] for s in (int(x) for x in _SEEDS.value)},
      **{f"dhp_{s}seeds_total_over_1seed_xla_defaults":
         rows[f"dhp_{s}_xla_defaults"]["samples_per_s"]
         / rows[f"dhp_{one}_xla_defaults"]["samples_per_s"]
         for s in (int(x) for x in _SEEDS.value)},
  }
  payload = {"machine": {"devices": [str(d) for d in jax.devices()],
                         "cpu_count": os.cpu_count(), "jax": jax.__version__},
             "matmul_roofline_flops_per_s": roofline, "matmul_roofline": best_matmul,
             "flops_per_sample": flops_per_sample,
             "steps": _STEPS.value, "batch_size": 64, "rows": rows, "ratios": ratios}
  print(f"matmul roofline: {roofline / 1e9:.1f} GFLOP/s ({best_matmul['library']}, "
        f"{best_matmul['n']}×{best_matmul['n']} float32; candidates: "
        + ", ".join(f"{k} {c['flops_per_s'] / 1e9:.1f}"
                    for k, c in best_matmul["candidates"].items()) + ")")
  for k, v in ratios.items():
    print(f"{k}: {v:.3f}")
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(payload, f, indent=1)


if __name__ == "__main__":
  app.run(main)
