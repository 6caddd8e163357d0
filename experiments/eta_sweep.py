r"""Fig. 4 of the paper: final average accuracy of DHP Softmax vs the initial η.

  python experiments/eta_sweep.py --benchmarks=split_mnist --preset=paper --num_seeds=5

Each (benchmark, η₀) trains its seeds vmapped into
``<out_root>/eta_sweep_<preset>/<benchmark>/eta_<η₀>/`` (resumable; complete points are
skipped); ``eta_sweep.json`` and ``eta_sweep.png`` summarise them.
"""
from __future__ import annotations

import json
import os

from absl import app, flags, logging

FLAGS = flags.FLAGS

from dhp_jax import plotting, training

ETAS = (0.1, 0.01, 0.001, 0.0005, 0.0001)


def run_sweep(benchmarks, etas, preset, num_seeds, out_root, *, seed=0, data_dir=None,
              progress=True, **overrides) -> dict:
  """Returns ``{benchmark: {"eta": [...], "mean": [...], "sem": [...]}}`` (fractions)."""
  sweep_dir = os.path.join(out_root, f"eta_sweep_{preset}")
  summary = {}
  for benchmark in benchmarks:
    points = {"eta": [], "mean": [], "sem": []}
    for eta in etas:
      config = training.make_config(benchmark, preset, "finetune", head="dhp", eta_init=eta,
                                    num_seeds=num_seeds, seed=seed, **overrides)
      out_dir = os.path.join(sweep_dir, benchmark, f"eta_{eta:g}")
      path = os.path.join(out_dir, "results.json")
      if training.is_complete(path, config):
        with open(path) as f:
          results = json.load(f)
      else:
        results = training.train_and_evaluate(config, out_dir, data_dir=data_dir, resume=True,
                                              progress=progress)
        print(f"η₀={eta:g}: " + training.summary_line(config, results), flush=True)
      points["eta"].append(eta)
      points["mean"].append(results["mean"]["avg_accuracy"])
      points["sem"].append(results["sem"]["avg_accuracy"])
    summary[benchmark] = points
  os.makedirs(sweep_dir, exist_ok=True)
  training.write_json_atomic(os.path.join(sweep_dir, "eta_sweep.json"),
                             {"preset": preset, "num_seeds": num_seeds, "sweep": summary})
  plotting.plot_eta_sweep(list(etas), {b: (p["mean"], p["sem"]) for b, p in summary.items()},
                          os.path.join(sweep_dir, "eta_sweep.png"))
  return summary




def define_flags() -> None:
  """Defined only when run as a binary, so modules can be imported side by side."""
  flags.DEFINE_list("benchmarks", ["split_mnist"], "Benchmarks to sweep.")
  flags.DEFINE_list("etas", [f"{e:g}" for e in ETAS], "Initial η values.")
  flags.DEFINE_enum("preset", "quick", list(training.PRESETS), "Preset.")
  flags.DEFINE_integer("num_seeds", 5, "Seeds per point (the paper: 5).",
                       lower_bound=1)
  flags.DEFINE_integer("epochs", None, "Override epochs per task.", lower_bound=1)
  flags.DEFINE_integer("num_tasks", None, "Override number of tasks.",
                       lower_bound=1)
  flags.DEFINE_integer("train_subset", 0, "First n training samples per task.",
                       lower_bound=0)
  flags.DEFINE_string("out_root", "results", "Root folder.")
  flags.DEFINE_string("data_dir", None, "Data search path.")
  flags.DEFINE_bool("progress", True, "Progress bars.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  try:
    etas = [float(e) for e in FLAGS.etas]
  except ValueError as e:
    raise app.UsageError(f"--etas must be a list of numbers, got {FLAGS.etas}") from e
  run_sweep(FLAGS.benchmarks, etas, FLAGS.preset, FLAGS.num_seeds, FLAGS.out_root,
            data_dir=FLAGS.data_dir, progress=FLAGS.progress, epochs=FLAGS.epochs,
            num_tasks=FLAGS.num_tasks, train_subset=FLAGS.train_subset)


if __name__ == "__main__":
  define_flags()
  app.run(main)
