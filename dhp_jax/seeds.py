"""Many seeds in one program: per-seed keys and streams stacked on a leading seed axis,
``jax.jit(jax.vmap(...))`` over it, sharded over the devices when there are several.

Seed s's key is ``key(s)``: init uses ``fold_in(key, 0)``, task t's epoch e
``fold_in(fold_in(key, 1 + t), e)``, task t's consolidation
``fold_in(fold_in(key, 1 + t), 10_000)``. So seed s draws the same numbers in every row
(paired seeds) and in every vmapped batch of seeds, and a resumed run draws what an
uninterrupted one does.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dhp_jax import distributed, streams as streams_lib

_CONSOLIDATION_FOLD = 10_000   # after any epoch index


class SeedLayout(NamedTuple):
  """Where a run's S seeds sit: ``slots`` ≥ S seed slots, split evenly over ``devices``
  by ``sharding`` (None: one device, no sharding). Slots past S train copies of the last
  seed; ``unpad`` drops them before anything is recorded."""
  num_seeds: int
  slots: int
  sharding: Optional[NamedSharding]
  devices: tuple

  def pad(self, tree):
    """[S, ...] leaves -> [slots, ...] (the last seed repeated)."""
    if self.slots == self.num_seeds:
      return tree
    index = np.minimum(np.arange(self.slots), self.num_seeds - 1)
    return jax.tree.map(lambda x: x[index], tree)

  def unpad(self, tree):
    """[slots, ...] leaves -> [S, ...]."""
    if self.slots == self.num_seeds:
      return tree
    return jax.tree.map(lambda x: x[:self.num_seeds], tree)

  def gather(self, tree):
    """[slots, ...] leaves spread over the devices -> [S, ...] on one device (the
    program's output itself when there is no sharding); over several processes' devices
    -> [S, ...] host arrays in every process (a collective: every process calls it)."""
    if self.sharding is None:
      return tree
    if not self.sharding.is_fully_addressable:
      return self.unpad(distributed.allgather(tree))
    return self.unpad(jax.device_put(tree, jax.local_devices()[0]))


def devices_for(num_seeds: int, num_devices: int) -> tuple[int, int]:
  """(devices used, seeds per device) for ``num_seeds`` seeds on ``num_devices`` devices.

  The rule: each device holds k = ⌈S/N⌉ seeds (the fewest a device can hold, so the run
  is as fast as N devices allow), on ⌈S/k⌉ devices (no device idles with only padding);
  k·⌈S/k⌉ - S < k slots are padding. E.g. 4 seeds on 4 devices: 4 × 1; 6 on 4: 3 × 2;
  5 on 4: 3 × 2 (one padded slot); 1 on 4: 1 × 1.
  """
  if num_seeds < 1 or num_devices < 1:
    raise ValueError(f"devices_for: num_seeds and num_devices must be >= 1, got "
                     f"{num_seeds} and {num_devices}")
  per_device = -(-num_seeds // num_devices)
  return -(-num_seeds // per_device), per_device


def run_devices(num_devices: Optional[int] = None) -> list:
  """The first ``num_devices`` devices (all when None)."""
  devices = jax.devices()
  if num_devices is not None and not 1 <= num_devices <= len(devices):
    raise ValueError(f"--num_devices must be between 1 and {len(devices)} (the devices "
                     f"JAX sees), got {num_devices}")
  return devices[:num_devices]


def seed_layout(num_seeds: int, devices: Optional[Sequence] = None) -> SeedLayout:
  """The ``SeedLayout`` of ``num_seeds`` seeds on ``devices`` (default: every device, of
  every process). ValueError when a process would hold no seed."""
  devices = list(jax.devices() if devices is None else devices)
  used, per_device = devices_for(num_seeds, len(devices))
  _check_every_process_has_seeds(num_seeds, devices, used, per_device)
  if used == 1:
    return SeedLayout(num_seeds, num_seeds, None, tuple(devices[:1]))
  mesh = Mesh(np.asarray(devices[:used]), ("seed",))
  sharding = NamedSharding(mesh, PartitionSpec("seed"))
  return SeedLayout(num_seeds, used * per_device, sharding, tuple(devices[:used]))


def _check_every_process_has_seeds(num_seeds: int, devices: list, used: int,
                                   per_device: int) -> None:
  """Each process runs the program on its own devices' seeds, so each needs some."""
  holding = {d.process_index for d in devices[:used]}
  idle = sorted(set(range(jax.process_count())) - holding)
  if idle:
    raise ValueError(f"{num_seeds} seed(s) on {len(devices)} devices of "
                     f"{jax.process_count()} processes fill the first {used} devices "
                     f"({per_device} each), leaving process(es) {idle} without a seed: run "
                     f"more seeds (e.g. --num_seeds={len(devices)}) or fewer processes")


def replicated(sharding):
  """The sharding that copies an array to every device of ``sharding``'s mesh."""
  return None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())


def put(tree, sharding):
  """``tree`` (the same in every process) laid out as ``sharding`` says (None: as is).
  Over several processes each builds its own devices' pieces: ``device_put`` does not
  place arrays on another process's devices."""
  if sharding is None:
    return tree
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)

  def pieces(x):
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(pieces, tree)


# XLA:CPU hands single dots to YNNPACK by default; once the dots carry the seed batch axis
# that path is slower than XLA's own dot emitter (Permuted MNIST MLP step, 10 vmapped
# seeds: 0.81x -> 0.96x of one seed's samples/s; benchmarks/throughput.py measures both).
# Keeping only the convolution fusion turns the dot fusion off and leaves the CNN alone.
_CPU_SEED_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                     "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}


def seed_jit(fn: Callable, in_axes, *, sharding=None, xla_defaults: bool = False,
             **jit_kwargs):
  """``jax.jit(jax.vmap(fn, in_axes))`` over a leading seed axis: ``jit_seeds`` of the
  vmapped ``fn``."""
  return jit_seeds(jax.vmap(fn, in_axes=in_axes), sharding=sharding,
                   xla_defaults=xla_defaults, **jit_kwargs)


def jit_seeds(fn: Callable, *, sharding=None, xla_defaults: bool = False, **jit_kwargs):
  """``jax.jit(fn)`` of a ``fn`` over a leading seed axis, compiled with the XLA options
  that keep vmapped seeds as fast as one seed on CPU (``xla_defaults=True`` drops them,
  for the throughput comparison). ``jit_kwargs`` go to ``jax.jit``.

  With a seed ``sharding`` (``SeedLayout.sharding``) the program runs on each of its
  devices (this process's) on that device's seeds — arguments not split by seed are
  expected on every device — and the outputs are assembled into arrays of that sharding.
  """
  options = None if xla_defaults or jax.default_backend() != "cpu" else _CPU_SEED_OPTIONS
  program = jax.jit(fn, compiler_options=options, **jit_kwargs)
  return program if sharding is None else _on_each_device(program, sharding)


def _mapped_size(args, in_axes) -> tuple[tuple, int]:
  """(in_axes per argument, the size of their mapped axis)."""
  axes = tuple(in_axes) if isinstance(in_axes, (tuple, list)) else (in_axes,) * len(args)
  return axes, jax.tree.leaves([a for a, axis in zip(args, axes) if axis == 0])[0].shape[0]


def per_seed_map(fn: Callable, in_axes=0) -> Callable:
  """``jax.vmap(fn, in_axes)``'s values computed as one size-1 ``jax.vmap`` of ``fn`` per
  seed, concatenated: each seed runs a one-seed program's ops, so its numbers are a
  one-seed run's whatever the number of seeds beside it. ``in_axes``: 0 or None per
  positional argument (or one for all).
  """
  def mapped(*args):
    axes, size = _mapped_size(args, in_axes)
    pick = lambda i: [a if axis is None else jax.tree.map(lambda x: x[i:i + 1], a)
                      for a, axis in zip(args, axes)]
    outs = [jax.vmap(fn, in_axes=axes)(*pick(i)) for i in range(size)]
    return jax.tree.map(lambda *per_seed: jnp.concatenate(per_seed), *outs)
  return mapped


def seed_map(unroll: bool) -> Callable:
  """The map of a training step over a device's seeds (``jax.vmap``'s signature).

  ``unroll`` on CPU: ``per_seed_map`` from two seeds up, ``jax.vmap`` itself at one (the
  same size-1 program without ``per_seed_map``'s slice and concatenate, so one-seed runs
  keep the exact program their recorded numbers came from). Why: XLA:CPU runs the CNN's
  seed-batched conv-1 patches and weight-gradient dot 1.5-2.3× slower per seed than one
  seed's, and one seed's shapes without a seed axis fuse the conv biases' gradients into
  slower loops than a size-1 seed axis does: the 4-seed CNN epoch is 1.09-1.14× as fast
  as with one seed's shapes (BUILD_NOTES §4.1), and a seed trains bit for bit as it does
  alone (``tests/test_training.py``). Otherwise ``jax.vmap`` (the MLP's seed-batched
  dots run faster than one seed's).
  """
  if not unroll or jax.default_backend() != "cpu":
    return jax.vmap

  def mapper(fn: Callable, in_axes=0) -> Callable:
    def mapped(*args):
      one_seed = _mapped_size(args, in_axes)[1] == 1
      return (jax.vmap if one_seed else per_seed_map)(fn, in_axes)(*args)
    return mapped
  return mapper


def _on_each_device(program: Callable, sharding: NamedSharding) -> Callable:
  """``program`` (compiled for one device) run on every local device of ``sharding``.

  Not ``shard_map`` or XLA's partitioner: a partitioned module goes through another pass
  order (CSE before algebraic simplification), which rewrites some divisions into
  multiplications by the reciprocal where the one-device program does not, or the
  reverse; the last bits differ and training amplifies them (MAS, 4 seeds on 4 devices:
  η 0.6 % apart after 2 tasks). The one-device program on each device's seeds computes
  exactly what one device computes for them (BUILD_NOTES, "Several devices").
  """
  devices = [d for d in sharding.mesh.devices.flat
             if d.process_index == jax.process_index()]

  def run(*args):
    pieces = jax.tree.map(lambda x: {s.device: s.data for s in x.addressable_shards}, args)
    outs = [program(*jax.tree.map(lambda piece: piece[d], pieces,
                                  is_leaf=lambda x: isinstance(x, dict) and d in x))
            for d in devices]
    def assemble(*per_device):
      shape = (per_device[0].shape[0] * sharding.mesh.size, *per_device[0].shape[1:])
      return jax.make_array_from_single_device_arrays(shape, sharding, list(per_device))
    return jax.tree.map(assemble, *outs)
  return run


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
  build = streams_lib.STREAM_BUILDERS[config.benchmark]
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
