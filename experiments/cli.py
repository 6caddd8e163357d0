"""What the binaries share: flags derived from ``Config``'s fields, and one entry point.

``define_config_flags(fv, fields, defaults)`` declares one flag per ``Config`` field (its
type from the field's default, enums from ``config.CHOICES``; default None = the
preset's value); ``config_overrides(fv, fields)`` reads them back for ``make_config``.
``main(run, define)`` is every binary's entry point: it parses, asks XLA for
deterministic ops on GPU (``--gpu_deterministic``), turns on JAX's persistent
compilation cache, joins the run's other processes (``--distributed``) and turns every
expected failure (bad flag, corrupt or busy run directory, missing data, divergence)
into one line on stderr and exit code 1, and a Ctrl-C into one line saying what is kept
and how to go on (exit code 130).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from typing import Callable, Mapping, Sequence

from absl import flags, logging

from dhp_jax import config as config_lib, distributed

DEFAULT_CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "dhp_jax", "jax")
# Where `make fetch` puts the data (the Makefile's DATA, $(CURDIR)/.data, run from the
# checkout these binaries are in): searched by default when it exists.
FETCHED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            ".data")


def define_config_flags(fv: flags.FlagValues, fields: Sequence[str] = (),
                        defaults: Mapping = ()) -> None:
  """One flag per ``Config`` field in ``fields`` (all when empty) on ``fv``."""
  defaults = dict(defaults)
  for field in dataclasses.fields(config_lib.Config):
    name = field.name
    if fields and name not in fields:
      continue
    default, help_ = defaults.get(name), field.metadata["help"]
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


def refuse_flags_without_effect(fv: flags.FlagValues, config: config_lib.Config,
                                names: Sequence[str]) -> None:
  """ValueError naming every flag among ``names`` set on the command line that has no
  effect in ``config`` (``config.SCOPES``), so it is not recorded as if it had one."""
  idle = config_lib.without_effect(config, [name for name in names if fv[name].present])
  if not idle:
    return
  reasons = []
  for name in idle:
    scope = config_lib.SCOPES[name]
    reasons.append(f"--{name} has no effect with --{scope.by}={getattr(config, scope.by)} "
                   f"(only with --{scope.by} in {list(scope.values)})")
  raise ValueError("; ".join(reasons) + f": drop {', '.join('--' + n for n in idle)} "
                   f"or change --{config_lib.SCOPES[idle[0]].by}")


def data_dirs(data_dir: str | None):
  """The data search path of ``--data_dir``: itself; unset, ``$DHP_DATA_DIR``; with
  neither, the library's default with ``FETCHED_DATA`` first when `make fetch` made it."""
  from dhp_jax import data

  if data_dir or os.environ.get(data.ENV_VAR) or not os.path.isdir(FETCHED_DATA):
    return data_dir or None
  return [FETCHED_DATA, *map(str, data.search_path())]


def define_table_flags(fv: flags.FlagValues, rows: Sequence[str], rows_help: str) -> None:
  """``--table_dir`` and ``--rows``, for the binaries that probe a table's trained rows."""
  flags.DEFINE_string("table_dir", "results/vision_mixture_medium", "A table's folder "
                      "(rows as subfolders, as experiments/table1.py writes them).",
                      flag_values=fv)
  flags.DEFINE_list("rows", list(rows), rows_help, flag_values=fv)


def table_row_dirs(fv: flags.FlagValues) -> dict:
  """{row: its folder} of ``--rows`` in ``--table_dir``; ValueError naming what is
  missing."""
  if not os.path.isdir(fv.table_dir):
    raise ValueError(f"--table_dir={fv.table_dir} is not a folder: give a table's folder, "
                     "e.g. results/vision_mixture_medium")
  missing = [r for r in fv.rows if not os.path.isdir(os.path.join(fv.table_dir, r))]
  if missing:
    raise ValueError(f"--rows: no folder {missing} in --table_dir={fv.table_dir}; "
                     f"rows there: {sorted(os.listdir(fv.table_dir))}")
  return {row: os.path.join(fv.table_dir, row) for row in fv.rows}


def write_table_report(table_dir: str, name: str, payload: dict, text: str) -> None:
  """``name``.json and ``name``.md into ``table_dir`` (each written atomically); prints
  the markdown."""
  from dhp_jax import store   # store imports orbax; only the report binaries need it
  store.write_json_atomic(os.path.join(table_dir, f"{name}.json"), payload)
  store.write_text_atomic(os.path.join(table_dir, f"{name}.md"), text)
  print(text)


def define_run_flags(fv: flags.FlagValues) -> None:
  """Flags of every binary that do not change the numbers."""
  flags.DEFINE_string("data_dir", None, "Data search path, os.pathsep-separated (default: "
                      f"$DHP_DATA_DIR, else {FETCHED_DATA} if `make fetch` made it, and "
                      "~/.cache/dhp_jax).", flag_values=fv)
  flags.DEFINE_bool("progress", True, "Show progress bars.", flag_values=fv)
  flags.DEFINE_string("jax_cache_dir", DEFAULT_CACHE, "JAX's persistent compilation cache "
                      "(a rerun skips compilation); '' turns it off.", flag_values=fv)
  flags.DEFINE_string("logdir", None, "Write TensorBoard events and metrics.csv here.",
                      flag_values=fv)
  flags.DEFINE_bool("gpu_deterministic", True, "On GPU, XLA's deterministic ops (same seed, "
                    "same numbers; resume bit-identical); --nogpu_deterministic trades that "
                    "for speed. No effect on CPU.", flag_values=fv)
  define_distributed_flags(fv)


# Where a process of a several-process run is, when no cluster tells JAX.
_COORDINATES = ("coordinator_address", "num_processes", "process_id")


def define_distributed_flags(fv: flags.FlagValues) -> None:
  """The flags of one run over several processes (hosts): README, "Scaling out"."""
  flags.DEFINE_bool("distributed", False, "One run over several processes (hosts), e.g. "
                    "`srun python experiments/run.py --distributed ...`: the seeds are split "
                    "over every process's devices and process 0 writes the run directory, "
                    "which every process must see. On SLURM, Open MPI or Cloud TPU JAX "
                    "finds the processes; elsewhere give --coordinator_address, "
                    "--num_processes and --process_id.", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None, "With --distributed: HOST:PORT where "
                      "process 0 listens (the same in every process).", flag_values=fv)
  flags.DEFINE_integer("num_processes", None, "With --distributed: how many processes the "
                       "run has.", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("process_id", None, "With --distributed: this process's id, 0 to "
                       "--num_processes - 1 (0 writes the run directory).", lower_bound=0,
                       flag_values=fv)
  flags.DEFINE_integer("distributed_timeout", distributed.DEFAULT_TIMEOUT, "With "
                       "--distributed: seconds after which a silent or failed process stops "
                       "the others.", lower_bound=1, flag_values=fv)


def distributed_options(fv: flags.FlagValues) -> dict | None:
  """The arguments of ``distributed.initialize`` the flags ask for (None: one process);
  ValueError naming the flag when they do not describe one run."""
  given = [name for name in (*_COORDINATES, "distributed_timeout")
           if fv[name].present]
  if not fv.distributed:
    if given:
      raise ValueError(f"--{given[0]} is only read with --distributed: add --distributed "
                       f"or drop --{given[0]}")
    return None
  missing = [name for name in _COORDINATES if fv[name].value is None]
  if 0 < len(missing) < len(_COORDINATES):
    present = next(name for name in _COORDINATES if name not in missing)
    raise ValueError(f"--{present} needs {' and '.join('--' + n for n in missing)} too: "
                     f"give all three, or none on SLURM, Open MPI or Cloud TPU (JAX finds "
                     f"them there)")
  if not missing and fv.process_id >= fv.num_processes:
    raise ValueError(f"--process_id={fv.process_id} must be below --num_processes="
                     f"{fv.num_processes} (the ids are 0 to {fv.num_processes - 1})")
  address = fv.coordinator_address
  host, _, port = (address or "").rpartition(":")
  if address is not None and not (host and port.isdigit()):
    raise ValueError(f"--coordinator_address={address} must be HOST:PORT, e.g. "
                     f"10.0.0.1:1234 (process 0's address and a free port)")
  return {**{name: fv[name].value for name in _COORDINATES},
          "timeout": fv.distributed_timeout}


def start_processes(fv: flags.FlagValues) -> None:
  """Joins the run's other processes when the flags ask for it (before any JAX work)."""
  options = distributed_options(fv)
  if options is None:
    return
  try:
    distributed.initialize(**options)
  except ValueError as e:
    advice = "" if fv.coordinator_address else (
        "; outside one, pass --coordinator_address, --num_processes and --process_id")
    raise ValueError(f"--distributed {e}{advice}") from None


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


# What a binary tells its user to do next, by the ``advice`` an error carries ('resume':
# the run can go on from its last commit; 'restart': it cannot, and must start over).
RUN_ADVICE = {"resume": "to go on, rerun the same command with --resume",
              "restart": "rerun with --restart to start that run over"}
TABLE_ADVICE = {"resume": "to go on, rerun the same command: what is finished is skipped "
                          "and this run resumes",
                "restart": "delete that run's directory to train it again"}
INTERRUPTED_EXIT = 130   # 128 + SIGINT, as a shell reports a Ctrl-C


def _expected_errors() -> tuple:
  from dhp_jax import engine, store

  return (store.StoreError, engine.NonFiniteError, FileNotFoundError, ValueError,
          distributed.ProcessError)


def with_advice(error: Exception, advice: Mapping[str, str]) -> str:
  """``error``'s message and, when it asks for advice, the binary's words for it."""
  # Every binary's words after a data set was not found (``data.DataNotFoundError``).
  found_nowhere = (f"pass --data_dir=DIR or set $DHP_DATA_DIR to the folder holding it "
                   f"(`make fetch` puts MNIST and Fashion-MNIST in {FETCHED_DATA}, searched "
                   f"by default when it exists)")
  kind, advice = getattr(error, "advice", None), {"data": found_nowhere, **advice}
  return f"{error}; {advice[kind]}" if kind in advice else str(error)


def main(run: Callable[[flags.FlagValues], object], define: Callable[[flags.FlagValues], None],
         argv: Sequence[str] | None = None, fv: flags.FlagValues | None = None,
         advice: Mapping[str, str] = RUN_ADVICE):
  """Parses ``argv`` into ``fv`` (a fresh FlagValues unless given), then ``run(fv)``.

  Expected failures end in one line on stderr and ``SystemExit(1)``, never a traceback;
  Ctrl-C in one line saying what is kept and how to go on, and exit code 130. ``advice``:
  how this binary resumes or restarts a run (``RUN_ADVICE``, ``TABLE_ADVICE``).
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
  from dhp_jax import engine

  try:
    start_processes(fv)
    if not distributed.is_writer():   # one report of a run: process 0's (errors: all)
      sys.stdout = open(os.devnull, "w")
    result = run(fv)
    distributed.leave_together()   # once the writer's last files are written
    return result
  except engine.Interrupted as e:
    print(with_advice(e, advice), file=sys.stderr)
  except KeyboardInterrupt:   # outside training: every finished task is committed
    print(f"interrupted; {advice['resume']}", file=sys.stderr)
  except distributed.ProcessLost as e:
    # Leave at once: JAX's shutdown would wait for the lost process, then abort this one.
    print(f"error: {with_advice(e, advice)}", file=sys.stderr, flush=True)
    os._exit(1)
  except _expected_errors() as e:
    sys.exit(f"error: {with_advice(e, advice)}")
  sys.exit(INTERRUPTED_EXIT)


def entry_point(run, define, advice: Mapping[str, str] = RUN_ADVICE) -> None:
  """``if __name__ == '__main__'`` of a binary: ``main`` on ``sys.argv``."""
  main(run, define, advice=advice)


def check_directory_flag(flag: str, path: str) -> None:
  """Creates the directory ``path`` given as ``--<flag>`` if needed; ValueError naming the
  flag when it is a file, under one, or not writable."""
  from dhp_jax import store
  problem = store.directory_problem(path)
  if problem:
    raise ValueError(f"--{flag}={path} {problem}")


@contextlib.contextmanager
def metric_writers(logdir, run: str, config):
  """[a ``MetricsWriter``] for ``config``'s seeds when ``logdir`` is set, else [] (and
  in a process other than the writer, process 0, of a several-process run)."""
  if not logdir or not distributed.is_writer():
    yield []
    return
  from dhp_jax.metric_writers import MetricsWriter

  check_directory_flag("logdir", logdir)
  writer = MetricsWriter(logdir, run, range(config.seed, config.seed + config.num_seeds),
                         config.epochs)
  try:
    yield [writer]
  finally:
    writer.close()
