"""What the binaries share: flags derived from ``Config``'s fields, and one entry point.

``define_config_flags(fv, fields, defaults)`` declares one flag per ``Config`` field (its
type from the field's default, enums from ``config.CHOICES``; default None = the
preset's value); ``config_overrides(fv, fields)`` reads them back for ``make_config``.
``main(run, define)`` is every binary's entry point: it parses, asks XLA for
deterministic ops on GPU (``--gpu_deterministic``), turns on JAX's persistent
compilation cache and turns every expected failure (bad flag, corrupt or busy
run directory, missing data, divergence) into one line on stderr and exit code 1.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Callable, Mapping, Sequence

from absl import flags, logging

from dhp_jax import config as config_lib

_HELP = {
    "benchmark": "Task stream.",
    "method": "Consolidation method.",
    "head": "Output head: dhp, or matched (the paper's capacity-matched plain head).",
    "freeze_alpha": "DHP head with α held at 0 (ablation).",
    "theta_init": "Output-layer θ init, the same for every head (SPEC §1).",
    "preset": "paper = SPEC §3 exactly; quick, medium = the same with fewer epochs "
              "(reduced scale).",
    "num_tasks": "Number of tasks.", "epochs": "Epochs per task.",
    "batch_size": "Batch size.", "lr": "SGD learning rate.", "eta_init": "Initial η.",
    "strength": "Penalty strength λ.", "si_xi": "SI damping ξ.",
    "ewc_gamma": "Online EWC decay γ.", "fisher_mode": "Fisher estimate for (Online) EWC.",
    "mas_variant": "MAS importance: global (output norm) or local (layer-wise, Hebbian).",
    "importance_samples": "Samples for the Fisher/MAS estimate (0 = whole task).",
    "eta_constraint": "project = clip the stored η into [0, 1] after each step.",
    "num_seeds": "Seeds trained together (vmapped).",
    "seed": "First seed; seeds are seed .. seed+num_seeds-1.",
    "hidden": "Hidden layer widths of the MLP.",
    "scenario": "Split MNIST scenario.",
    "vision_datasets": "Data sets of the vision mixture, in task order.",
    "train_subset": "First n training samples of each task (smoke tests; 0 = all).",
}
# The fields a table or sweep leaves to the user: how long, how many seeds, which data.
RUN_SIZE_FIELDS = ("num_tasks", "epochs", "num_seeds", "seed", "importance_samples",
                   "train_subset")
DEFAULT_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "dhp_jax", "jax")


def define_config_flags(fv: flags.FlagValues, fields: Sequence[str] = (),
                        defaults: Mapping = ()) -> None:
  """One flag per ``Config`` field in ``fields`` (all when empty) on ``fv``."""
  defaults = dict(defaults)
  for field in dataclasses.fields(config_lib.Config):
    name = field.name
    if fields and name not in fields:
      continue
    default, help_ = defaults.get(name), _HELP[name]
    kind = type(field.default)
    if name in config_lib.CHOICES:
      flags.DEFINE_enum(name, default, list(config_lib.CHOICES[name]), help_, flag_values=fv)
    elif kind is bool:
      flags.DEFINE_bool(name, default, help_, flag_values=fv)
    elif kind is int:
      flags.DEFINE_integer(name, default, help_, lower_bound=0, flag_values=fv)
    elif kind is float:
      flags.DEFINE_float(name, default, help_, lower_bound=0.0, flag_values=fv)
    elif kind is tuple:
      flags.DEFINE_list(name, default, help_, flag_values=fv)
    else:
      flags.DEFINE_string(name, default, help_, flag_values=fv)


def config_overrides(fv: flags.FlagValues, fields: Sequence[str]) -> dict:
  """{field: value} of the config flags the user set (None = the preset's value)."""
  values = {name: fv[name].value for name in fields}
  if values.get("hidden") is not None:
    try:
      values["hidden"] = tuple(int(width) for width in values["hidden"])
    except ValueError:
      raise ValueError(f"--hidden must be a list of integers, got {values['hidden']}") \
          from None
  return values


def define_run_flags(fv: flags.FlagValues) -> None:
  """Flags of every binary that do not change the numbers."""
  flags.DEFINE_string("data_dir", None, "Data search path (default: $DHP_DATA_DIR).",
                      flag_values=fv)
  flags.DEFINE_bool("progress", True, "Show progress bars.", flag_values=fv)
  flags.DEFINE_string("jax_cache_dir", DEFAULT_CACHE, "JAX's persistent compilation cache "
                      "(a rerun skips compilation); '' turns it off.", flag_values=fv)
  flags.DEFINE_string("logdir", None, "Write TensorBoard events and metrics.csv here.",
                      flag_values=fv)
  flags.DEFINE_bool("gpu_deterministic", True, "On GPU, XLA's deterministic ops (same seed, "
                    "same numbers; resume bit-identical); --nogpu_deterministic trades that "
                    "for speed. No effect on CPU.", flag_values=fv)


# Scatter-adds (segment_sum, the Hebbian update) and some convolution algorithms use
# atomics on GPU: without this, the same seed gives different last bits run to run.
GPU_DETERMINISM = "--xla_gpu_deterministic_ops=true"


def set_gpu_determinism(on: bool) -> None:
  """Adds XLA's deterministic-ops flag to ``XLA_FLAGS`` (read when the backend starts:
  call before the first computation). Leaves a flag the user set alone."""
  current = os.environ.get("XLA_FLAGS", "")
  if on and "xla_gpu_deterministic_ops" not in current:
    os.environ["XLA_FLAGS"] = f"{current} {GPU_DETERMINISM}".strip()


def enable_compilation_cache(path: str) -> None:
  if not path:
    return
  import jax

  jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def _expected_errors() -> tuple:
  from dhp_jax import engine, store

  return (store.StoreError, engine.NonFiniteError, FileNotFoundError, ValueError)


def main(run: Callable[[flags.FlagValues], object], define: Callable[[flags.FlagValues], None],
         argv: Sequence[str] | None = None, fv: flags.FlagValues | None = None):
  """Parses ``argv`` into ``fv`` (a fresh FlagValues unless given), then ``run(fv)``.

  Expected failures end in one line on stderr and ``SystemExit(1)``, never a traceback.
  """
  fv = fv or flags.FlagValues()
  define(fv)
  define_run_flags(fv)
  argv = list(argv if argv is not None else sys.argv)
  if {"--help", "-h", "--helpfull"} & set(argv[1:]):
    print(fv.get_help())
    sys.exit(0)
  try:
    fv(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}\nPass --help for the flags.")
  logging.set_verbosity(logging.WARNING)   # orbax logs every checkpoint at INFO
  set_gpu_determinism(fv.gpu_deterministic)
  enable_compilation_cache(fv.jax_cache_dir)
  try:
    return run(fv)
  except _expected_errors() as e:
    sys.exit(f"error: {e}")


def entry_point(run, define) -> None:
  """``if __name__ == '__main__'`` of a binary: ``main`` on ``sys.argv``."""
  main(run, define)


@contextlib.contextmanager
def metric_writers(logdir, run: str, config):
  """[a ``MetricsWriter``] for ``config``'s seeds when ``logdir`` is set, else []."""
  if not logdir:
    yield []
    return
  from dhp_jax.metric_writers import MetricsWriter

  writer = MetricsWriter(logdir, run, range(config.seed, config.seed + config.num_seeds),
                         config.epochs)
  try:
    yield [writer]
  finally:
    writer.close()
