r"""Throughput of the Permuted MNIST training step (batch 64), measured, not assumed.

  python benchmarks/throughput.py --out=results/throughput.json

Measures in one run: samples/s of one epoch-scan of the MLP 784-400-400-10 on real
permuted MNIST for the plain (matched) head vs the DHP head, with 1, 4 and 10 vmapped
seeds; the FLOP/s of a large float32 matmul (this machine's practical roofline); and the
step's FLOP/s (6 × multiply-adds per sample: forward + backward). Prints the ratios.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
from absl import app, flags

from dhp_jax import training

_OUT = flags.DEFINE_string("out", "results/throughput.json", "Where to write the JSON.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per timed epoch.", lower_bound=10)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed round-robin repeats (best is reported).",
                                lower_bound=1)
_SEEDS = flags.DEFINE_list("seeds", ["1", "4", "10"], "Vmapped seed counts to measure.")


def matmul_flops(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of an n×n float32 matmul (2n³ FLOPs), best of ``repeats``."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    tic = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - tic)
  return 2 * n ** 3 / best


def step_macs(hidden=(400, 400), inputs=784, classes=10) -> int:
  """Multiply-adds per sample of the MLP forward pass (the head counts once; the DHP
  head's α⊙Hebb is per batch, not per sample, so it adds nothing per sample)."""
  sizes = (inputs, *hidden, classes)
  return sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def make_epoch(head: str, num_seeds: int, steps: int, xla_defaults: bool = False):
  """A compiled, warmed-up, vmapped epoch of ``steps`` steps; returns a runner that
  executes it once and returns its wall time."""
  config = training.make_config("permuted_mnist", "paper", "finetune", head=head,
                                num_seeds=num_seeds, num_tasks=1,
                                train_subset=steps * 64)
  seeds = list(range(num_seeds))
  streams = training.build_streams(config, seeds)
  model = training.make_model(config, streams[0].num_classes)
  optimizer = training.make_optimizer(config)
  keys = jax.vmap(jax.random.key)(jnp.arange(num_seeds, dtype=jnp.uint32))
  create = lambda k: training.create_state(k, model, streams[0].input_shape, optimizer)
  state = training.seed_jit(create, 0)(keys)
  split, perms = training.task_training_inputs(config, streams, 0)

  def epoch(state, key, split, perm):
    return training.train_epoch(state, key, split, perm, batch_size=64, model=model,
                                optimizer=optimizer)

  fn = training.seed_jit(epoch, (0, 0, None, 0), xla_defaults=xla_defaults)
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
  roofline = matmul_flops()
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
             "matmul_roofline_flops_per_s": roofline, "flops_per_sample": flops_per_sample,
             "steps": _STEPS.value, "batch_size": 64, "rows": rows, "ratios": ratios}
  print(f"matmul roofline: {roofline / 1e9:.1f} GFLOP/s")
  for k, v in ratios.items():
    print(f"{k}: {v:.3f}")
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(payload, f, indent=1)


if __name__ == "__main__":
  app.run(main)
