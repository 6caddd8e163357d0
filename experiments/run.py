r"""Train one method on one continual-learning benchmark, many seeds at once.

  python experiments/run.py --benchmark=permuted_mnist --method=si --head=dhp \
      --preset=quick --num_seeds=3 --out_dir=runs/pmnist_si_dhp

Commits every finished task to ``--out_dir`` (``results.json`` and a checkpoint,
atomically) and draws ``accuracy.png`` (Fig. 2 style) and ``plasticity.png`` (Fig. 3
style) at the end; ``--resume`` continues an interrupted run from its last finished task,
``--restart`` starts the directory over. Every ``Config`` field is a flag (see --help).
"""
from __future__ import annotations

import dataclasses
import os
import sys

from absl import flags

if __package__ in (None, ""):   # run as a script: make `experiments` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dhp_jax import config as config_lib
from dhp_jax import distributed, engine, plotting, results as results_lib
from experiments import cli
from experiments.rows import row_label

_CHOSEN_FIRST = ("benchmark", "preset", "method")   # make_config's positional arguments


def define_flags(fv: flags.FlagValues) -> None:
  cli.define_config_flags(fv, defaults=dict(benchmark="permuted_mnist", preset="quick",
                                            method="finetune", num_seeds=1, seed=0))
  flags.DEFINE_string("out_dir", None, "Run directory (default: runs/<benchmark>_<preset>_"
                      "<method>_<head>).", flag_values=fv)
  flags.DEFINE_bool("resume", False, "Continue the run in --out_dir.", flag_values=fv)
  flags.DEFINE_bool("restart", False, "Start the run in --out_dir over.", flag_values=fv)
  flags.DEFINE_integer("num_devices", None, "Use at most this many devices (default: all "
                       "JAX sees); the seeds are split over them (BUILD_NOTES, \"Several "
                       "devices\").", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("stop_after_task", None, "Stop after this many tasks (as a kill "
                       "would; for testing resume).", lower_bound=1, flag_values=fv)


def config_from_flags(fv: flags.FlagValues) -> config_lib.Config:
  fields = [f.name for f in dataclasses.fields(config_lib.Config)
            if f.name not in _CHOSEN_FIRST]
  config = config_lib.make_config(fv.benchmark, fv.preset, fv.method,
                                  **cli.config_overrides(fv, fields))
  cli.refuse_flags_without_effect(fv, config, fields)
  return config


def write_figures(config: config_lib.Config, record: results_lib.RunRecord,
                  out_dir: str) -> None:
  title = f"{config.benchmark} ({config.preset}), {config.num_seeds} seed(s)"
  plotting.plot_accuracy({row_label(config): record},
                         os.path.join(out_dir, "accuracy.png"), title)
  plotting.plot_plasticity(record, os.path.join(out_dir, "plasticity.png"), title)


def run(fv: flags.FlagValues) -> dict:
  """Runs the experiment the parsed flags describe; returns the results payload."""
  if fv.resume and fv.restart:
    raise ValueError("--resume and --restart exclude each other (--resume continues the "
                     "run in --out_dir, --restart deletes it and starts over): pass one")
  config = config_from_flags(fv)
  out_dir = fv.out_dir or os.path.join(
      "runs", f"{config.benchmark}_{config.preset}_{config.method}_{config.head}")
  cli.check_directory_flag("out_dir", out_dir)
  with cli.metric_writers(fv.logdir, os.path.basename(os.path.normpath(out_dir)),
                           config) as writers:
    results = engine.train_and_evaluate(config, out_dir,
                                        data_dir=cli.data_dirs(fv.data_dir),
                                        resume=fv.resume, restart=fv.restart,
                                        progress=fv.progress, observers=writers,
                                        stop_after_task=fv.stop_after_task,
                                        num_devices=fv.num_devices)
  record = results_lib.read(results)
  if distributed.is_writer():   # the one writer of the run directory (process 0)
    write_figures(config, record, out_dir)
  print(results_lib.summary_line(config, record, row_label(config)))
  return results


def main(argv=None) -> dict:
  """Parses ``argv`` (a list including the program name) with a fresh set of flags."""
  return cli.main(run, define_flags, argv)


if __name__ == "__main__":
  cli.entry_point(run, define_flags)
