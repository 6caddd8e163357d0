"""Writes the golden results.json files of the fixed configs in ``GOLDEN_CONFIGS``.

Run once with the engine *before* a refactor that must not change numbers:
  DHP_DATA_DIR=... python tests/golden/make_golden.py
tests/test_golden.py reruns the same configs with the current engine and compares.
"""
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

# Small fixed configs that exercise every consolidation method, both heads, η
# projection, α freezing and a task-incremental stream: (file name, make_config args).
GOLDEN_CONFIGS = {
    "permuted_dhp_finetune": ("permuted_mnist", "finetune", dict(head="dhp")),
    "permuted_matched_online_ewc": ("permuted_mnist", "online_ewc",
                                    dict(head="matched", importance_samples=500)),
    "permuted_dhp_ewc_projected": ("permuted_mnist", "ewc",
                                   dict(head="dhp", eta_constraint="project",
                                        importance_samples=500)),
    "permuted_dhp_mas": ("permuted_mnist", "mas", dict(head="dhp", importance_samples=500)),
    "permuted_dhp_frozen_si": ("permuted_mnist", "si", dict(head="dhp", freeze_alpha=True)),
    "split_dhp_si": ("split_mnist", "si", dict(head="dhp")),
}
COMMON = dict(num_tasks=2, epochs=1, num_seeds=2, train_subset=1024, lr=0.05)


def machine() -> dict:
  """What decides float rounding: the CPU (model and instruction-set flags: XLA picks
  kernels by them) and the JAX/jaxlib versions. On another machine XLA may round
  differently, which is not a change of numbers."""
  import hashlib

  import jax
  import jaxlib

  info = {}
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      for line in f:
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
  flags = " ".join(sorted(info.get("flags", "").split()))
  return {"cpu": info.get("model name", ""),
          "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
          "jax": jax.__version__, "jaxlib": jaxlib.__version__}


def golden_config(name):
  from dhp_jax import make_config
  benchmark, method, extra = GOLDEN_CONFIGS[name]
  return make_config(benchmark, "quick", method, **COMMON, **extra)


def main():
  sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
  from dhp_jax import train_and_evaluate
  for name in GOLDEN_CONFIGS:
    with tempfile.TemporaryDirectory() as tmp:
      results = train_and_evaluate(golden_config(name), tmp, progress=False)
    with open(os.path.join(HERE, f"{name}.json"), "w") as f:
      json.dump(results, f, indent=1)
    print(name, results["mean"])
  with open(os.path.join(HERE, "MACHINE.json"), "w") as f:
    json.dump(machine(), f, indent=1)


if __name__ == "__main__":
  main()
