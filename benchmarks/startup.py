r"""Time to first result: the dhp_jax binary vs a PyTorch reference, as whole processes.

  python benchmarks/startup.py --rounds=3                    # print only
  python benchmarks/startup.py --rounds=3 --out=results/startup.json
  python benchmarks/startup.py --rounds=1 --count_compiles   # also list XLA programs

One Permuted MNIST task × ``--epochs`` epochs, DHP head, batch 64, plain SGD: the wall
time of the whole process (interpreter start, imports, data, compilation, training,
writing results), ``time.perf_counter`` around ``subprocess.run``. Three modes, run in
turn within every round (the order rotates per round, so a slow drift of a shared
machine does not always hit the same mode):

* ``dhp_jax_cold`` — ``experiments/run.py`` with a fresh, empty ``--jax_cache_dir``;
* ``dhp_jax_warm`` — the same with a cache dir warmed by one untimed run first;
* ``pytorch`` — ``benchmarks/torch_dhp_mlp.py`` in its own venv (``--torch_python``).

Reports per mode the median, min and max, and the ratios dhp_jax / PyTorch (cold and
warm): of the medians and per round (each round's runs are neighbours in time).
``--count_compiles`` adds untimed runs with ``JAX_LOG_COMPILES=1`` (cold and warm) and
lists the programs XLA compiled or loaded from the cache.

PyTorch lives in a venv of its own (a benchmark-only tool, not a dhp_jax dependency):
``python3 -m venv /work/torchenv && /work/torchenv/bin/pip install torch==2.13.0 numpy``.
On a CPU shared with other work, PyTorch's OpenMP threads spin-wait for a descheduled
partner and its small steps slow down many-fold; ``--torch_omp_wait_policy=PASSIVE``
avoids that (recorded in the JSON). Such numbers are not measurements of either library.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_PY = os.path.join(ROOT, "experiments", "run.py")
TORCH_PY = os.path.join(ROOT, "benchmarks", "torch_dhp_mlp.py")
# The run being timed; --epochs, --out_dir and --jax_cache_dir are added per run.
BINARY_FLAGS = ("--benchmark=permuted_mnist", "--preset=paper", "--num_tasks=1",
                "--num_seeds=1", "--head=dhp", "--method=finetune", "--noprogress")
MODES = ("dhp_jax_cold", "dhp_jax_warm", "pytorch")
TARGET_RATIO = 0.5   # issue 12: warm dhp_jax ≤ 0.5 × PyTorch
INSTALL_TORCH = ("python3 -m venv /work/torchenv && "
                 "/work/torchenv/bin/pip install torch==2.13.0 numpy")

_COMPILED = re.compile(r"Finished XLA compilation of (\S+) in")
_CACHE_HIT = re.compile(r"Persistent compilation cache hit for '([^']+)'")


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_integer("rounds", 3, "Timed rounds (each runs every mode once).",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("epochs", 10, "Epochs of the one task.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_list("modes", list(MODES), f"Modes to time, of {MODES}.", flag_values=fv)
  flags.DEFINE_string("out", None, "Write the JSON here (default: print only).",
                      flag_values=fv)
  flags.DEFINE_string("torch_python", "/work/torchenv/bin/python",
                      "Python of the venv that has torch (never the project's).",
                      flag_values=fv)
  flags.DEFINE_string("data_dir", None, "Data search path (default: $DHP_DATA_DIR).",
                      flag_values=fv)
  flags.DEFINE_string("torch_omp_wait_policy", "", "OMP_WAIT_POLICY of the PyTorch run "
                      "('' = PyTorch's default). On a CPU shared with other work, "
                      "PASSIVE keeps libgomp's spinning threads from stalling its steps.",
                      flag_values=fv)
  flags.DEFINE_bool("count_compiles", False, "Also count the dhp_jax run's XLA programs "
                    "(untimed runs with JAX_LOG_COMPILES=1).", flag_values=fv)


# ---- commands ------------------------------------------------------------------------

def binary_command(out_dir: str, cache_dir: str, epochs: int) -> list[str]:
  return [sys.executable, RUN_PY, *BINARY_FLAGS, f"--epochs={epochs}",
          f"--out_dir={out_dir}", f"--jax_cache_dir={cache_dir}"]


def torch_command(python: str, out_dir: str, epochs: int, data_dir: str) -> list[str]:
  return [python, TORCH_PY, f"--epochs={epochs}", f"--out_dir={out_dir}",
          f"--data_dir={data_dir}", "--threads=2"]


def run_process(argv: list[str], env: dict) -> tuple[float, str]:
  """Runs ``argv`` to completion; returns (wall seconds, stderr). Raises on failure."""
  tic = time.perf_counter()
  proc = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True)
  seconds = time.perf_counter() - tic
  if proc.returncode:
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    raise RuntimeError(f"{' '.join(argv[:2])} exited with {proc.returncode}:\n{tail}")
  return seconds, proc.stderr


# ---- one run per mode ------------------------------------------------------------------

def read_accuracy(out_dir: str) -> float:
  """Test accuracy of the one task, from either implementation's results.json."""
  with open(os.path.join(out_dir, "results.json")) as f:
    payload = json.load(f)
  if "test_accuracy" in payload:   # the PyTorch reference
    return float(payload["test_accuracy"])
  return float(payload["per_seed"][0]["accuracy_matrix"][0][0])


class Runner:
  """Builds and runs each mode's command in a scratch directory of its own."""

  def __init__(self, scratch: str, epochs: int, torch_python: str, data_dir: str,
               torch_env: dict | None = None):
    self.scratch, self.epochs = scratch, epochs
    self.torch_python, self.data_dir = torch_python, data_dir
    self.warm_cache = os.path.join(scratch, "warm_cache")
    self.env = {**os.environ, **({"DHP_DATA_DIR": data_dir} if data_dir else {})}
    self.torch_env = {**self.env, **(torch_env or {})}

  def fresh_dir(self, prefix: str) -> str:
    return tempfile.mkdtemp(prefix=prefix, dir=self.scratch)

  def command(self, mode: str, out_dir: str) -> list[str]:
    if mode == "pytorch":
      return torch_command(self.torch_python, out_dir, self.epochs, self.data_dir)
    cache = self.warm_cache if mode == "dhp_jax_warm" else self.fresh_dir("cold_cache_")
    return binary_command(out_dir, cache, self.epochs)

  def run(self, mode: str, env: dict | None = None) -> tuple[float, float, str]:
    """(wall seconds, test accuracy, stderr) of one run of ``mode``."""
    out_dir = self.fresh_dir(f"{mode}_")
    env = env or (self.torch_env if mode == "pytorch" else self.env)
    seconds, stderr = run_process(self.command(mode, out_dir), env)
    return seconds, read_accuracy(out_dir), stderr

  def warm_up(self) -> None:
    """One untimed run that fills the warm cache."""
    self.run("dhp_jax_warm")


def round_order(modes, round_index: int) -> list[str]:
  """``modes`` rotated by the round number."""
  shift = round_index % len(modes)
  return list(modes[shift:]) + list(modes[:shift])


def time_rounds(runner: Runner, modes, rounds: int) -> tuple[dict, dict]:
  """{mode: [seconds per round]}, {mode: [accuracy per round]}."""
  times = {m: [] for m in modes}
  accuracies = {m: [] for m in modes}
  for r in range(rounds):
    for mode in round_order(modes, r):
      seconds, accuracy, _ = runner.run(mode)
      times[mode].append(seconds)
      accuracies[mode].append(accuracy)
      print(f"round {r + 1}/{rounds}  {mode:13s} {seconds:7.2f} s  "
            f"test accuracy {100 * accuracy:.2f}%", flush=True)
  return times, accuracies


# ---- statistics ------------------------------------------------------------------------

def summarize(times: dict) -> dict:
  """{mode: {median, min, max, runs}} of {mode: [seconds]}."""
  return {mode: {"median": statistics.median(ts), "min": min(ts), "max": max(ts),
                 "runs": list(ts)} for mode, ts in times.items() if ts}


def ratios(times: dict) -> dict:
  """dhp_jax / PyTorch per dhp_jax mode: of the medians, and per round (paired)."""
  if not times.get("pytorch"):
    return {}
  torch_times = times["pytorch"]
  out = {}
  for mode in ("dhp_jax_cold", "dhp_jax_warm"):
    if not times.get(mode):
      continue
    per_round = [a / b for a, b in zip(times[mode], torch_times)]
    out[f"{mode}_over_pytorch"] = {
        "of_medians": statistics.median(times[mode]) / statistics.median(torch_times),
        "per_round": per_round, "median_per_round": statistics.median(per_round)}
  return out


def parse_compiles(stderr: str) -> dict:
  """XLA programs in a ``JAX_LOG_COMPILES=1`` log: all built (compiled or loaded from
  the persistent cache, JAX logs both as 'Finished XLA compilation') and the cache hits."""
  names = _COMPILED.findall(stderr)
  hits = _CACHE_HIT.findall(stderr)
  return {"programs": len(names), "names": sorted(names), "cache_hits": len(hits),
          "compiled": len(names) - len(hits)}


def count_compiles(runner: Runner) -> dict:
  """Untimed cold and warm runs with compile logging on; their program lists."""
  if not os.path.isdir(runner.warm_cache):
    runner.warm_up()
  env = {**runner.env, "JAX_LOG_COMPILES": "1"}
  return {mode: parse_compiles(runner.run(mode, env)[2])
          for mode in ("dhp_jax_cold", "dhp_jax_warm")}


# ---- report ----------------------------------------------------------------------------

def print_report(summary: dict, ratio: dict, accuracies: dict, compiles: dict | None):
  for mode, s in summary.items():
    mean_acc = statistics.mean(accuracies[mode])
    print(f"{mode:13s} median {s['median']:7.2f} s  (min {s['min']:.2f}, max "
          f"{s['max']:.2f}, {len(s['runs'])} runs)  test accuracy {100 * mean_acc:.2f}%")
  for name, r in ratio.items():
    print(f"{name}: {r['of_medians']:.3f} of medians, {r['median_per_round']:.3f} "
          f"median per round (target ≤ {TARGET_RATIO})")
  for mode, c in (compiles or {}).items():
    print(f"{mode}: {c['programs']} XLA programs ({c['compiled']} compiled, "
          f"{c['cache_hits']} from the cache): {', '.join(c['names'])}")


def machine() -> dict:
  return {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]}


def check_flags(fv: flags.FlagValues) -> None:
  unknown = set(fv.modes) - set(MODES)
  if unknown:
    raise app.UsageError(f"--modes: unknown {sorted(unknown)}; choose from {MODES}")
  if "pytorch" in fv.modes and not os.path.exists(fv.torch_python):
    raise app.UsageError(f"--torch_python={fv.torch_python} not found: pass the python of "
                         f"a venv with torch (never the project's; {INSTALL_TORCH})")


def measure(runner: Runner, modes, rounds: int, compiles: bool):
  """Warm-up, the timed rounds, then (optionally) the compile-counting runs."""
  if "dhp_jax_warm" in modes:
    runner.warm_up()
  times, accuracies = time_rounds(runner, modes, rounds)
  return times, accuracies, count_compiles(runner) if compiles else None


def run(fv: flags.FlagValues) -> dict:
  """Measures what the parsed flags ask for; prints, writes ``--out`` if set, returns the
  payload."""
  check_flags(fv)
  modes = [m for m in MODES if m in fv.modes]
  data_dir = fv.data_dir or os.environ.get("DHP_DATA_DIR", "")
  torch_env = {"OMP_WAIT_POLICY": fv.torch_omp_wait_policy} if fv.torch_omp_wait_policy else {}
  payload = {"machine": machine(), "rounds": fv.rounds, "epochs": fv.epochs,
             "binary_command": binary_command("<out_dir>", "<cache_dir>", fv.epochs),
             "torch_command": torch_command(fv.torch_python, "<out_dir>", fv.epochs,
                                            data_dir),
             "torch_env": torch_env, "load_average_at_start": list(os.getloadavg())}
  scratch = tempfile.mkdtemp(prefix="dhp_startup_")
  try:
    runner = Runner(scratch, fv.epochs, fv.torch_python, data_dir, torch_env)
    times, accuracies, compiles = measure(runner, modes, fv.rounds, fv.count_compiles)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  # Other work on the machine makes every number suspect: the load averages tell.
  payload.update(load_average_at_end=list(os.getloadavg()), summary=summarize(times),
                 ratios=ratios(times), test_accuracy=accuracies, xla_programs=compiles)
  print_report(payload["summary"], payload["ratios"], accuracies, compiles)
  if fv.out:
    os.makedirs(os.path.dirname(os.path.abspath(fv.out)), exist_ok=True)
    with open(fv.out, "w") as f:
      json.dump(payload, f, indent=1)
  return payload


def main(argv) -> None:
  del argv
  try:
    run(flags.FLAGS)
  except (RuntimeError, FileNotFoundError) as e:   # a child failed: its stderr's tail
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(main)
