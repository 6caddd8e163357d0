r"""Throughput of the training epoch, measured, not assumed: the MLP and the vision CNN.

  python benchmarks/throughput.py --out=results/throughput.json

Measures in one run this machine's practical roofline, the best FLOP/s of a large float32
matmul (2048² and 4096², numpy and ``jax.jit(jnp.dot)``, best of ``--roofline_repeats``;
the JSON names the library and size that gave it), and per section (``--sections``):

* ``mlp``: samples/s of one epoch-scan of the MLP 784-400-400-10 on real permuted MNIST
  (batch 64) for the plain (matched) head vs the DHP head, with 1, 4 and 10 vmapped seeds.
* ``cnn``: the vision CNN (SPEC §3, batch 32, plain SGD 0.01) on real CIFAR-10 images of
  the vision mixture, one compiled epoch as the engine runs it, DHP and matched heads, 1
  and 4 seeds (the engine's seeds one at a time, ``seeds.seed_map``, and vmapped; the DHP
  head also with ``ops``' XLA patches and col2im instead of ``dhp_jax.native``'s) —
  beside a PyTorch implementation of the same network and step
  (``benchmarks/torch_cnn.py`` in its own venv, ``--torch_python``; 2 threads, eager
  loop, the same images), the two timed in alternating rounds, best of each.

Each row's FLOP/s counts 6 × multiply-adds per sample (forward + backward), as a fraction
of the roofline. Prints the ratios.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import programs   # sibling scripts (benchmarks/ is on the path when run as a script)
from dhp_jax import config as config_lib
from dhp_jax import native
from dhp_jax import seeds as seeds_lib
from startup import INSTALL_TORCH

TORCH_CNN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_cnn.py")
SECTIONS = ("mlp", "cnn")
CNN_BATCH = 32

_OUT = flags.DEFINE_string("out", "results/throughput.json", "Where to write the JSON.")
_STEPS = flags.DEFINE_integer("steps", 300, "Training steps per timed epoch.", lower_bound=10)
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed round-robin repeats (best is reported).",
                                lower_bound=1)
_SEEDS = flags.DEFINE_list("seeds", ["1", "4", "10"], "Vmapped seed counts to measure.")
_ROOFLINE_SIZES = flags.DEFINE_list("roofline_sizes", ["2048", "4096"],
                                    "Square matmul sizes n tried for the roofline.")
_ROOFLINE_REPEATS = flags.DEFINE_integer("roofline_repeats", 5, "Repeats per roofline "
                                         "matmul (best is kept).", lower_bound=1)
_SECTIONS = flags.DEFINE_list("sections", list(SECTIONS), f"Sections to run, of {SECTIONS}.")
_CNN_STEPS = flags.DEFINE_integer("cnn_steps", 100, "CNN training steps (batch 32) per "
                                  "timed epoch.", lower_bound=10)
_CNN_SEEDS = flags.DEFINE_list("cnn_seeds", ["1", "4"], "Seed counts for the CNN.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", "/work/torchenv/bin/python",
                                    "Python of the venv that has torch (never the project's); "
                                    "the CNN's PyTorch rows are skipped, and say so, without it.")


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


def cnn_macs(image=32, kernel=5, channels=(3, 20, 50), hidden=500, classes=50) -> int:
  """Multiply-adds per sample of the vision CNN's forward pass (valid 5×5 convolutions,
  each followed by a 2×2 pool; pooling and activations are not counted)."""
  macs, size = 0, image
  for c_in, c_out in zip(channels[:-1], channels[1:]):
    size -= kernel - 1
    macs += size * size * c_out * kernel * kernel * c_in
    size //= 2
  flat = size * size * channels[-1]
  return macs + flat * hidden + hidden * classes


def _timed(fn, state, *args):
  """A runner of the warmed-up ``fn``: each call runs one epoch, returns its seconds."""
  holder = {"state": fn(state, *args)[0]}   # compile + warm-up
  jax.block_until_ready(holder["state"])

  def run_once() -> float:
    tic = time.perf_counter()
    holder["state"], stats = fn(holder["state"], *args)
    jax.block_until_ready(stats)
    return time.perf_counter() - tic

  return run_once


def make_epoch(config, num_seeds: int, split=None, xla_defaults: bool = False, unroll=None):
  """A compiled, warmed-up epoch of ``config``'s seeds as the engine runs it (on ``split``
  when given, else the first task's training split; ``unroll`` as
  ``programs.epoch_program``); returns its runner."""
  program, state, (keys, task_split, perms), _ = programs.epoch_program(
      config, num_seeds, xla_defaults=xla_defaults, unroll=unroll)
  return _timed(program, state, keys, task_split if split is None else split, perms)


def round_robin(runners: dict, repeats: int) -> dict:
  """{name: best seconds}: every runner once per round, ``repeats`` rounds, so slow drifts
  of a shared machine hit every configuration alike instead of whichever ran last."""
  best = {name: float("inf") for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      best[name] = min(best[name], run())
  return best


def throughput_row(samples: int, seconds: float, flops_per_sample: int, roofline: float,
                   **fields) -> dict:
  sps = samples / seconds
  return {**fields, "samples_per_s": sps, "step_flops_per_s": sps * flops_per_sample,
          "fraction_of_roofline": sps * flops_per_sample / roofline}


def print_rows(rows: dict) -> None:
  for name, row in rows.items():
    print(f"{name:24s} {row['samples_per_s']:12,.0f} samples/s  "
          f"{row['step_flops_per_s'] / 1e9:7.1f} GFLOP/s  "
          f"({100 * row['fraction_of_roofline']:5.1f}% of matmul roofline)")


def mlp_section(roofline: float) -> dict:
  """Permuted MNIST MLP, batch 64: matched vs DHP head, 1/4/10 seeds, engine vs XLA
  default options."""
  steps, seed_counts = _STEPS.value, [int(s) for s in _SEEDS.value]
  flops_per_sample = 6 * step_macs()
  configs = [(head, s, False) for head in ("matched", "dhp") for s in seed_counts]
  configs += [("dhp", s, True) for s in seed_counts]
  runners = {}
  for head, s, xla_defaults in configs:
    config = config_lib.make_config("permuted_mnist", "paper", "finetune", head=head,
                                    num_seeds=s, num_tasks=1, train_subset=steps * 64)
    name = f"{head}_{s}" + ("_xla_defaults" if xla_defaults else "")
    runners[name] = ((head, s, xla_defaults), make_epoch(config, s, xla_defaults=xla_defaults))
  best = round_robin({name: run for name, (_, run) in runners.items()}, _REPEATS.value)
  rows = {name: throughput_row(c[1] * steps * 64, best[name], flops_per_sample, roofline,
                               head=c[0], num_seeds=c[1], xla_defaults=c[2])
          for name, (c, _) in runners.items()}
  print_rows(rows)
  one = seed_counts[0]
  sps = lambda name: rows[name]["samples_per_s"]
  ratios = {
      "dhp_time_over_plain_time_1seed": sps(f"matched_{one}") / sps(f"dhp_{one}"),
      **{f"dhp_{s}seeds_total_over_1seed": sps(f"dhp_{s}") / sps(f"dhp_{one}")
         for s in seed_counts},
      **{f"dhp_{s}seeds_total_over_1seed_xla_defaults":
         sps(f"dhp_{s}_xla_defaults") / sps(f"dhp_{one}_xla_defaults") for s in seed_counts},
  }
  return {"flops_per_sample": flops_per_sample, "steps": steps, "batch_size": 64,
          "rows": rows, "ratios": ratios}


def cnn_split(steps: int):
  """``steps`` × 32 real CIFAR-10 training images of the vision mixture (a fixed random
  draw, all classes), as the engine's ``Split`` and as host arrays for PyTorch."""
  config = config_lib.make_config("vision_mixture", "paper", "finetune", num_tasks=1,
                                  vision_datasets=("cifar10",))
  split = seeds_lib.build_streams(config, [0])[0].tasks[0].train
  rows = np.random.default_rng(0).permutation(np.asarray(split.index))[:steps * CNN_BATCH]
  host = {"images": np.asarray(split.images)[rows],
          "labels": np.asarray(split.labels)[rows] - np.asarray(split.labels)[rows].min()}
  return config, split._replace(index=jnp.asarray(rows, jnp.int32)), host


class TorchWorker:
  """``benchmarks/torch_cnn.py`` in the torch venv: each call times one eager epoch."""

  def __init__(self, python: str, batches: str, head: str):
    self.proc = subprocess.Popen(
        [python, TORCH_CNN, f"--batches={batches}", f"--head={head}", "--threads=2"],
        cwd=os.path.dirname(TORCH_CNN), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    self.version = self._line()

  def _line(self) -> str:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"{TORCH_CNN} exited with {self.proc.wait()} (see its stderr)")
    return line.strip()

  def __call__(self) -> float:
    self.proc.stdin.write("round\n")
    self.proc.stdin.flush()
    return float(self._line())

  def close(self) -> None:
    self.proc.communicate("quit\n")


def cnn_section(roofline: float) -> dict:
  """Vision CNN, batch 32: DHP and matched heads at 1 and 4 seeds beside PyTorch."""
  steps, seed_counts = _CNN_STEPS.value, [int(s) for s in _CNN_SEEDS.value]
  flops_per_sample = 6 * cnn_macs()
  base, split, host = cnn_split(steps)
  runners, workers, seeds_of = {}, [], {}
  for head in ("dhp", "matched"):
    for s in seed_counts:
      config = dataclasses.replace(base, head=head, num_seeds=s)
      runners[f"jax_{head}_{s}"], seeds_of[f"jax_{head}_{s}"] = make_epoch(config, s, split), s
      if s > 1:   # the engine unrolls the CNN's seeds; vmapped, as before session 10
        name = f"jax_{head}_{s}_vmap"
        runners[name], seeds_of[name] = make_epoch(config, s, split, unroll=False), s
      if head == "dhp":   # ops' XLA path for the patches and col2im, the baseline
        with native.disabled():
          name = f"jax_{head}_{s}_xla_patches"
          runners[name], seeds_of[name] = make_epoch(config, s, split), s
  torch_note = None
  if os.path.exists(_TORCH_PYTHON.value):
    tmp = tempfile.mkdtemp(prefix="torch_cnn_")
    batches = os.path.join(tmp, "batches.npz")
    np.savez(batches, images=host["images"].reshape(steps, CNN_BATCH, 32, 32, 3),
             labels=host["labels"].reshape(steps, CNN_BATCH))
    for head in ("dhp", "matched"):
      workers.append(TorchWorker(_TORCH_PYTHON.value, batches, head))
      runners[f"torch_{head}_1"], seeds_of[f"torch_{head}_1"] = workers[-1], 1
    torch_note = workers[0].version
  else:
    print(f"PyTorch rows skipped: no {_TORCH_PYTHON.value} (install: {INSTALL_TORCH})")
  try:
    best = round_robin(runners, _REPEATS.value)
  finally:
    for worker in workers:
      worker.close()
  rows = {name: throughput_row(seeds_of[name] * steps * CNN_BATCH, best[name],
                               flops_per_sample, roofline, num_seeds=seeds_of[name])
          for name in runners}
  print_rows(rows)
  sps = lambda name: rows[name]["samples_per_s"]
  ratios = {f"jax_{s}seeds_over_1seed_{h}": sps(f"jax_{h}_{s}") / sps(f"jax_{h}_1")
            for h in ("dhp", "matched") for s in seed_counts}
  ratios.update({f"jax_{s}seeds_unrolled_over_vmapped_{h}":
                 sps(f"jax_{h}_{s}") / sps(f"jax_{h}_{s}_vmap")
                 for h in ("dhp", "matched") for s in seed_counts if s > 1})
  ratios.update({f"jax_{s}seeds_native_over_xla_patches_dhp":
                 sps(f"jax_dhp_{s}") / sps(f"jax_dhp_{s}_xla_patches") for s in seed_counts})
  if workers:
    ratios.update({f"jax_over_torch_{h}_1seed": sps(f"jax_{h}_1") / sps(f"torch_{h}_1")
                   for h in ("dhp", "matched")})
  return {"flops_per_sample": flops_per_sample, "steps": steps, "batch_size": CNN_BATCH,
          "data": "vision mixture CIFAR-10 training images, a fixed random draw",
          "torch": torch_note, "rows": rows, "ratios": ratios}


def main(argv):
  del argv
  unknown = set(_SECTIONS.value) - set(SECTIONS)
  if unknown:
    raise app.UsageError(f"--sections: unknown {sorted(unknown)}; expected some of "
                         f"{list(SECTIONS)}")
  best_matmul = matmul_roofline([int(n) for n in _ROOFLINE_SIZES.value],
                                _ROOFLINE_REPEATS.value)
  roofline = best_matmul["flops_per_s"]
  print(f"matmul roofline: {roofline / 1e9:.1f} GFLOP/s ({best_matmul['library']}, "
        f"{best_matmul['n']}×{best_matmul['n']} float32; candidates: "
        + ", ".join(f"{k} {c['flops_per_s'] / 1e9:.1f}"
                    for k, c in best_matmul["candidates"].items()) + ")")
  payload = {"machine": {"devices": [str(d) for d in jax.devices()],
                         "cpu_count": os.cpu_count(), "jax": jax.__version__},
             "matmul_roofline_flops_per_s": roofline, "matmul_roofline": best_matmul,
             "repeats": _REPEATS.value}
  sections = {"mlp": mlp_section, "cnn": cnn_section}
  for name in _SECTIONS.value:
    print(f"--- {name}")
    payload[name] = sections[name](roofline)
    for k, v in payload[name]["ratios"].items():
      print(f"{k}: {v:.3f}")
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  with open(_OUT.value, "w") as f:
    json.dump(payload, f, indent=1)


if __name__ == "__main__":
  app.run(main)
