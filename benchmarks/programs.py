"""The engine's seed-vmapped epoch program for one config, for the speed and memory scripts.

``epoch_program(config, num_seeds)`` builds what ``dhp_jax.engine`` runs for the first
task: the jitted program, its initial state and its arguments.
"""
from __future__ import annotations

import functools

from dhp_jax import seeds as seeds_lib
from dhp_jax import training


def epoch_program(config, num_seeds: int, *, xla_defaults: bool = False, unroll=None):
  """(program, state [S, ...], (keys [S], split, permutations), streams) of the first
  task's epoch of ``config`` with seeds 0..num_seeds-1; ``unroll`` (default: the engine's
  choice, ``training.is_convolutional``) picks ``seeds.seed_map``."""
  seeds = list(range(num_seeds))
  streams = seeds_lib.build_streams(config, seeds)
  task = streams[0].tasks[0]
  model = training.make_model(config, streams[0].num_classes)
  optimizer = training.make_optimizer(config)
  keys = seeds_lib.base_keys(seeds)
  create = functools.partial(training.create_state, model=model,
                             input_shape=streams[0].input_shape, optimizer=optimizer)
  state = seeds_lib.seed_jit(create, 0)(keys)
  split, perms = seeds_lib.task_training_inputs(config, streams, 0)
  unroll = training.is_convolutional(config) if unroll is None else unroll
  epoch = functools.partial(training.train_epoch, batch_size=config.batch_size, model=model,
                            optimizer=optimizer, output_slice=task.output_slice,
                            seed_map=seeds_lib.seed_map(unroll))
  program = seeds_lib.jit_seeds(epoch, xla_defaults=xla_defaults)
  return program, state, (keys, split, perms), streams
