"""Several processes (hosts) in one run: joining them, who writes, gathering the seeds.

A run of several processes (``jax.distributed``) lays its seed axis over one mesh of
every process's devices (``seeds.seed_layout``). Each process runs the one-device
program on its own devices' seeds, so the numbers are those of one process; the
processes meet only to gather the seeds (``allgather``) and to agree (``writer_first``).
Process 0 is the writer: it alone holds the run directory's lock and writes commits,
results, figures and metric logs. Every process reads the run directory (when resuming),
so it must be on a filesystem they share.

With one process (no ``initialize``) each function here is the plain single-process
behaviour, and no collective runs.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import jax
import numpy as np

# JAX's heartbeat default: a process silent this long is taken as dead.
DEFAULT_TIMEOUT = 100


class ProcessError(Exception):
  """Another process of the run failed at a step every process waits for; that
  process's own error (in its log) says why and what to do."""


class ProcessLost(ProcessError):
  """A collective among the processes failed: another process is gone (killed, crashed
  or stopped by its own error). The run can go on from its last commit."""
  advice = "resume"


@contextlib.contextmanager
def _collective():
  """Turns a collective's failure into ``ProcessLost``: its error is gloo's or the
  network's, while the cause is in the other process's log."""
  try:
    yield
  except jax.errors.JaxRuntimeError as e:
    raise ProcessLost(f"another process of this run stopped (here: "
                      f"{str(e).splitlines()[0][:160]}); its log says why") from None


def initialize(coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None, process_id: Optional[int] = None, *,
               timeout: int = DEFAULT_TIMEOUT) -> None:
  """Joins this process to the run's others (``jax.distributed.initialize``); call it
  before any JAX computation.

  With no address, count or id, JAX reads them from the cluster it runs in (SLURM, Open
  MPI, Cloud TPU). ``timeout`` (seconds): a process silent that long is taken as dead
  and the others stop (JAX's heartbeat timeout); also how long a process leaving waits
  for the others to leave too (its shutdown timeout), so an error in one process stops
  every process within about ``timeout`` seconds instead of leaving them waiting.
  On CPU the processes exchange seeds over JAX's CPU collectives (gloo by default,
  ``jax_cpu_collectives_implementation``).
  """
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               heartbeat_timeout_seconds=timeout,
                               shutdown_timeout_seconds=timeout)
  except ValueError as e:   # what JAX could not find out
    where = "found no cluster (SLURM, Open MPI, Cloud TPU) to join" \
        if coordinator_address is None else "cannot join the processes"
    raise ValueError(f"{where} ({e})") from None
  except jax.errors.JaxRuntimeError as e:   # e.g. the others never came
    where = coordinator_address or "the cluster's address"
    raise ValueError(f"cannot join the processes at {where} "
                     f"({str(e).splitlines()[0][:200]})") from None


def several_processes() -> bool:
  """Whether this run has other processes."""
  # Not distributed: no need to ask JAX, which would start its backend (e.g. claim a
  # GPU's memory for a binary that only rewrites tables).
  return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer() -> bool:
  """True in the process that writes the run directory: process 0 (the only one when
  JAX is not distributed)."""
  return not several_processes() or jax.process_index() == 0


def on_writer(fn: Callable, *args, **kwargs):
  """``fn(*args, **kwargs)`` in the writer only (None elsewhere). The arguments are
  evaluated in every process, so a collective among them runs everywhere."""
  return fn(*args, **kwargs) if is_writer() else None


def _agree(failed: bool) -> bool:
  """Whether the writer failed, told by the writer to every process (a collective, so
  also a barrier: the others pass it only once the writer has done its step)."""
  from jax.experimental import multihost_utils

  with _collective():
    return bool(multihost_utils.broadcast_one_to_all(np.int32(failed)))


def writer_first(step: str, write: Callable, *args, read: Optional[Callable] = None):
  """``write(*args)`` in the writer, then, once it returned, ``read(*args)`` (None: no
  step) in every other process: e.g. the writer tidies the run directory, the others
  read it tidied. Returns the process's own step's value. When ``write`` raises, the
  writer raises it and the others ``ProcessError`` naming ``step`` (what the writer was
  doing), instead of going on without it."""
  if not several_processes():
    return write(*args)
  value, error = None, None
  if is_writer():
    try:
      value = write(*args)
    except Exception as e:   # told to the others first, then raised
      error = e
  if _agree(error is not None):
    if error is not None:
      raise error
    raise ProcessError(f"process 0 failed {step} (its own error says why and what to do)")
  return value if is_writer() or read is None else read(*args)


@contextlib.contextmanager
def writer_context(step: str, make: Callable[[], contextlib.AbstractContextManager]):
  """``make()``'s context (e.g. the run directory's lock) held by the writer for the
  block; the other processes enter the block once the writer holds it, and raise
  ``ProcessError`` naming ``step`` when it could not (e.g. the directory is in use)."""
  with contextlib.ExitStack() as stack:
    writer_first(step, lambda: stack.enter_context(make()))
    yield


def allgather(tree):
  """A tree of seed-axis arrays laid over every process's devices -> the same tree of
  whole host arrays in every process (a collective: every process calls it)."""
  from jax.experimental import multihost_utils

  with _collective():
    return multihost_utils.process_allgather(tree, tiled=True)


def leave_together() -> None:
  """Waits until every process got here (a collective: no timeout), e.g. so the writer's
  last files are written before the others leave and JAX's shutdown, which waits for
  every process only ``timeout`` seconds, does not stop the writer halfway."""
  if several_processes():
    from jax.experimental import multihost_utils

    with _collective():
      multihost_utils.sync_global_devices("dhp_jax: leave together")
