r"""Fig. 4 of the paper: final average accuracy of DHP Softmax vs the initial η.

  python experiments/eta_sweep.py --benchmarks=split_mnist --preset=paper --num_seeds=5

Each (benchmark, η₀) trains its seeds vmapped into
``<out_root>/eta_sweep_<preset>/<benchmark>/eta_<η₀>/`` (resumable; complete points are
skipped); ``eta_sweep.json`` and ``eta_sweep.png`` summarise them.
"""
from __future__ import annotations

import os
import sys

from absl import flags

if __package__ in (None, ""):   # run as a script: make `experiments` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dhp_jax import engine, plotting, results as results_lib, store
from dhp_jax.config import PRESET_NAMES, RUN_SIZE_FIELDS, make_config
from experiments import cli

ETAS = (0.1, 0.01, 0.001, 0.0005, 0.0001)


def sweep_config(benchmark: str, preset: str, eta: float, **overrides):
  """The config of one point: DHP Softmax fine-tuned from η₀ = ``eta``."""
  return make_config(benchmark, preset, "finetune", head="dhp", eta_init=eta, **overrides)


def run_sweep(benchmarks, etas, preset, num_seeds, out_root, *, seed=0, data_dir=None,
              progress=True, logdir=None, **overrides) -> dict:
  """Returns ``{benchmark: {"eta": [...], "mean": [...], "sem": [...]}}`` (fractions)."""
  sweep_dir = os.path.join(out_root, f"eta_sweep_{preset}")
  summary = {}
  for benchmark in benchmarks:
    points = {"eta": [], "mean": [], "sem": []}
    for eta in etas:
      config = sweep_config(benchmark, preset, eta, num_seeds=num_seeds, seed=seed,
                            **overrides)
      out_dir = os.path.join(sweep_dir, benchmark, f"eta_{eta:g}")
      record = results_lib.load(out_dir)
      if record is None or not record.holds(config):
        name = f"eta_sweep_{preset}/{benchmark}/eta_{eta:g}"
        with cli.metric_writers(logdir, name, config) as writers:
          record = results_lib.read(engine.train_and_evaluate(
              config, out_dir, data_dir=data_dir, resume=True, progress=progress,
              observers=writers))
        print(f"η₀={eta:g}: " + results_lib.summary_line(config, record), flush=True)
      mean, sem = record.summary()
      points["eta"].append(eta)
      points["mean"].append(mean["avg_accuracy"])
      points["sem"].append(sem["avg_accuracy"])
    summary[benchmark] = points
  os.makedirs(sweep_dir, exist_ok=True)
  store.write_json_atomic(os.path.join(sweep_dir, "eta_sweep.json"),
                          {"preset": preset, "num_seeds": num_seeds, "sweep": summary})
  plotting.plot_eta_sweep(list(etas), {b: (p["mean"], p["sem"]) for b, p in summary.items()},
                          os.path.join(sweep_dir, "eta_sweep.png"))
  return summary


def define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_list("benchmarks", ["split_mnist"], "Benchmarks to sweep.", flag_values=fv)
  flags.DEFINE_list("etas", [f"{e:g}" for e in ETAS], "Initial η values.", flag_values=fv)
  flags.DEFINE_enum("preset", "quick", list(PRESET_NAMES), "Preset.", flag_values=fv)
  cli.define_config_flags(fv, RUN_SIZE_FIELDS, defaults=dict(num_seeds=5, seed=0))
  flags.DEFINE_string("out_root", "results", "Root folder.", flag_values=fv)


def run(fv: flags.FlagValues) -> dict:
  try:
    etas = [float(e) for e in fv.etas]
  except ValueError:
    raise ValueError(f"--etas must be a list of numbers, got {fv.etas}") from None
  cli.check_directory_flag("out_root", fv.out_root)
  overrides = cli.config_overrides(fv, RUN_SIZE_FIELDS)
  for benchmark in fv.benchmarks:   # every point is DHP Softmax fine-tuning
    cli.refuse_flags_without_effect(fv, sweep_config(benchmark, fv.preset, etas[0], **overrides),
                                    RUN_SIZE_FIELDS)
  return run_sweep(fv.benchmarks, etas, fv.preset, overrides.pop("num_seeds"), fv.out_root,
                   seed=overrides.pop("seed"), data_dir=cli.data_dirs(fv.data_dir),
                   progress=fv.progress,
                   logdir=fv.logdir, **overrides)


def main(argv=None) -> dict:
  return cli.main(run, define_flags, argv, advice=cli.TABLE_ADVICE)


if __name__ == "__main__":
  cli.entry_point(run, define_flags, advice=cli.TABLE_ADVICE)
