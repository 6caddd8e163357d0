r"""Train one method on one continual-learning benchmark, many seeds at once.

  python experiments/run.py --benchmark=permuted_mnist --method=si --dhp \
      --preset=quick --num_seeds=3 --out_dir=runs/pmnist_si_dhp

Writes ``results.json`` (after every task, atomically), ``accuracy.png`` (Fig. 2 style)
and ``plasticity.png`` (Fig. 3 style) to ``--out_dir``; ``--resume`` continues an
interrupted run from its last finished task.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from dhp_jax import plotting, training

_OVERRIDES = dict(num_tasks=int, epochs=int, batch_size=int, lr=float, eta_init=float,
                  strength=float, si_xi=float, ewc_gamma=float, importance_samples=int)


def define_flags(fv: flags.FlagValues) -> None:
  """Defines this binary's flags on ``fv`` (tests use a fresh FlagValues each call)."""
  flags.DEFINE_enum("benchmark", "permuted_mnist", training.BENCHMARKS, "Task stream.",
                    flag_values=fv)
  flags.DEFINE_enum("method", "finetune", training.METHODS, "Consolidation method.",
                    flag_values=fv)
  flags.DEFINE_bool("dhp", True, "DHP Softmax head; --nodhp = the capacity-matched plain "
                    "head of the paper's baselines.", flag_values=fv)
  flags.DEFINE_bool("freeze_alpha", False, "DHP head with α held at 0 (ablation).",
                    flag_values=fv)
  flags.DEFINE_enum("theta_init", "author", ["author", "dense"],
                    "Output-layer θ init, the same for every head (SPEC §1).", flag_values=fv)
  flags.DEFINE_enum("preset", "quick", list(training.PRESETS),
                    "paper = SPEC §3 exactly; quick = the same with fewer epochs.",
                    flag_values=fv)
  flags.DEFINE_integer("num_tasks", None, "Override: number of tasks.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("epochs", None, "Override: epochs per task.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("batch_size", None, "Override: batch size.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_float("lr", None, "Override: SGD learning rate.", lower_bound=0.0,
                     flag_values=fv)
  flags.DEFINE_float("eta_init", None, "Override: initial η.", flag_values=fv)
  flags.DEFINE_float("strength", None, "Override: penalty strength λ.", lower_bound=0.0,
                     flag_values=fv)
  flags.DEFINE_float("si_xi", None, "Override: SI damping ξ.", lower_bound=0.0,
                     flag_values=fv)
  flags.DEFINE_float("ewc_gamma", None, "Override: Online EWC decay γ.", lower_bound=0.0,
                     upper_bound=1.0, flag_values=fv)
  flags.DEFINE_enum("fisher_mode", "exact", list(training.FISHER_MODES),
                    "Fisher estimate for (Online) EWC.", flag_values=fv)
  flags.DEFINE_enum("mas_variant", "global", list(training.MAS_VARIANTS),
                    "MAS importance: global (output norm) or local (layer-wise, Hebbian).",
                    flag_values=fv)
  flags.DEFINE_integer("importance_samples", None,
                       "Samples for the Fisher/MAS estimate (0 = whole task).",
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_enum("eta_constraint", "none", list(training.ETA_CONSTRAINTS),
                    "project = clip the stored η into [0, 1] after each step.",
                    flag_values=fv)
  flags.DEFINE_enum("scenario", "task", ["task", "class"], "Split MNIST scenario.",
                    flag_values=fv)
  flags.DEFINE_integer("train_subset", 0, "Use the first n training samples of each task "
                       "(smoke tests; 0 = all).", lower_bound=0, flag_values=fv)
  flags.DEFINE_integer("num_seeds", 1, "Seeds trained together (vmapped).", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_integer("seed", 0, "First seed; seeds are seed .. seed+num_seeds-1.",
                       flag_values=fv)
  flags.DEFINE_string("data_dir", None, "Data search path (default: $DHP_DATA_DIR).",
                      flag_values=fv)
  flags.DEFINE_string("out_dir", None, "Where results.json and the figures go.",
                      flag_values=fv)
  flags.DEFINE_bool("resume", False, "Continue an interrupted run in --out_dir.",
                    flag_values=fv)
  flags.DEFINE_bool("progress", True, "Show a progress bar.", flag_values=fv)
  flags.DEFINE_integer("stop_after_task", None, "Stop after this many tasks (as a kill "
                       "would; for testing resume).", lower_bound=1, flag_values=fv)


def config_from_flags(fv: flags.FlagValues) -> training.Config:
  head = "dhp" if fv.dhp else "matched"
  if fv.freeze_alpha and not fv.dhp:
    raise ValueError("--freeze_alpha needs the DHP head (drop --nodhp)")
  overrides = {name: fv[name].value for name in _OVERRIDES}
  return training.make_config(fv.benchmark, fv.preset, fv.method, head=head,
                              freeze_alpha=fv.freeze_alpha, theta_init=fv.theta_init,
                              fisher_mode=fv.fisher_mode, mas_variant=fv.mas_variant,
                              eta_constraint=fv.eta_constraint,
                              scenario=fv.scenario, train_subset=fv.train_subset,
                              num_seeds=fv.num_seeds, seed=fv.seed, **overrides)


def write_figures(config: training.Config, results: dict, out_dir: str) -> None:
  title = f"{config.benchmark} ({config.preset}), {config.num_seeds} seed(s)"
  plotting.plot_accuracy({training.row_label(config): results}, os.path.join(out_dir, "accuracy.png"),
                         title)
  plotting.plot_plasticity(results, os.path.join(out_dir, "plasticity.png"), title)


def run(fv: flags.FlagValues, config: training.Config | None = None) -> dict:
  """Runs the experiment the parsed flags describe (``config``: already built from them);
  returns the results payload."""
  config = config or config_from_flags(fv)
  out_dir = fv.out_dir or os.path.join(
      "runs", f"{config.benchmark}_{config.preset}_{config.method}_{config.head}")
  results = training.train_and_evaluate(config, out_dir, data_dir=fv.data_dir,
                                        resume=fv.resume, progress=fv.progress,
                                        stop_after_task=fv.stop_after_task)
  write_figures(config, results, out_dir)
  print(training.summary_line(config, results))
  return results


def main(argv=None) -> dict:
  """Parses ``argv`` (a list including the program name) with a fresh set of flags."""
  fv = flags.FlagValues()
  define_flags(fv)
  fv(argv if argv is not None else sys.argv)
  return run(fv)


def _absl_main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint at INFO
  try:
    config = config_from_flags(flags.FLAGS)
  except ValueError as e:  # bad flag combinations: a usage error, before any training
    raise app.UsageError(str(e)) from e
  run(flags.FLAGS, config)


if __name__ == "__main__":
  define_flags(flags.FLAGS)
  app.run(_absl_main)
