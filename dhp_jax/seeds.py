"""Many seeds in one program: per-seed keys and streams stacked on a leading seed axis,
``jax.jit(jax.vmap(...))`` over it, sharded over the devices when there are several.

Seed s's key is ``key(s)``: init uses ``fold_in(key, 0)``, task t's epoch e
``fold_in(fold_in(key, 1 + t), e)``, task t's consolidation
``fold_in(fold_in(key, 1 + t), 10_000)``. So seed s draws the same numbers in every row
(paired seeds) and in every vmapped batch of seeds, and a resumed run draws what an
uninterrupted one does.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dhp_jax import benchmarks

_CONSOLIDATION_FOLD = 10_000   # after any epoch index


def seed_sharding(num_seeds: int):
  """A ``NamedSharding`` splitting the leading seed axis over the visible devices.

  Uses as many devices as divide ``num_seeds``; None when that is one (no sharding).
  """
  devices = jax.devices()
  k = math.gcd(len(devices), num_seeds)
  if k <= 1:
    return None
  mesh = Mesh(np.asarray(devices[:k]), ("seed",))
  return NamedSharding(mesh, PartitionSpec("seed"))


def replicated(sharding):
  """The sharding that copies an array to every device of ``sharding``'s mesh."""
  return None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())


def put(tree, sharding):
  return tree if sharding is None else jax.device_put(tree, sharding)


# XLA:CPU hands single dots to YNNPACK by default; once the dots carry the seed batch axis
# that path is slower than XLA's own dot emitter (Permuted MNIST MLP step, 10 vmapped
# seeds: 0.81x -> 0.96x of one seed's samples/s; benchmarks/throughput.py measures both).
# Keeping only the convolution fusion turns the dot fusion off and leaves the CNN alone.
_CPU_SEED_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                     "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}


def seed_jit(fn: Callable, in_axes, *, xla_defaults: bool = False, **jit_kwargs):
  """``jax.jit(jax.vmap(fn, in_axes))`` over a leading seed axis, compiled with the XLA
  options that keep vmapped seeds as fast as one seed on CPU (``xla_defaults=True``
  drops them, for the throughput comparison). ``jit_kwargs`` go to ``jax.jit``."""
  options = None if xla_defaults or jax.default_backend() != "cpu" else _CPU_SEED_OPTIONS
  return jax.jit(jax.vmap(fn, in_axes=in_axes), compiler_options=options, **jit_kwargs)


def base_keys(seeds: Sequence[int]) -> jax.Array:
  """[S] typed PRNG keys, ``key(s)`` for each seed s."""
  return _keys(np.asarray(seeds, np.uint32))


@jax.jit
def _keys(seeds):   # one program instead of two op-by-op dispatches
  return jax.vmap(jax.random.key)(seeds)


@jax.jit
def _fold(keys, data):
  return jax.vmap(lambda k: jax.random.fold_in(k, data))(keys)


def init_keys(keys: jax.Array) -> jax.Array:
  return _fold(keys, 0)


def task_keys(keys: jax.Array, task: int) -> jax.Array:
  """[S] keys of task ``task`` (0-based)."""
  return _fold(keys, 1 + task)


def epoch_keys(task_keys_: jax.Array, epoch: int) -> jax.Array:
  return _fold(task_keys_, epoch)


def consolidation_keys(task_keys_: jax.Array) -> jax.Array:
  return _fold(task_keys_, _CONSOLIDATION_FOLD)


def build_streams(config, seeds: Sequence[int], data_dir=None) -> list:
  """One task stream per seed (permutations differ per seed; images are shared)."""
  build = benchmarks.STREAM_BUILDERS[config.benchmark]
  streams = [build(config, s, data_dir) for s in seeds]
  available = len(streams[0].tasks)
  if config.num_tasks > available:
    raise ValueError(f"num_tasks must be <= {available} for {config.benchmark} (tasks "
                     f"available here), got {config.num_tasks}")
  return streams


def _subset(split, n):
  return split if not n or n >= split.index.shape[0] else split._replace(index=split.index[:n])


def _stack_permutations(tasks):
  perms = [t.permutation for t in tasks]
  if perms[0] is None:
    return None
  return jnp.asarray(np.stack(perms), jnp.int32)


def task_training_inputs(config, streams, task: int):
  """Task ``task``'s (0-based) training split — its first ``config.train_subset`` samples
  when that is set — and the seeds' pixel permutations stacked ``[S, D]`` int32 (None for
  benchmarks without permutations): what ``train_epoch`` takes, seed-vmapped."""
  tasks = [s.tasks[task] for s in streams]
  return _subset(tasks[0].train, config.train_subset), _stack_permutations(tasks)
