"""The engine's seed-vmapped epoch program for one config, for the speed and memory scripts.

``epoch_program(config, num_seeds)`` builds what ``dhp_jax.engine`` runs for the first
task: the jitted program, its initial state and its arguments.
"""
from __future__ import annotations

from dhp_jax import engine, seeds as seeds_lib
from dhp_jax import training


def epoch_program(config, num_seeds: int, *, xla_defaults: bool = False, unroll=None):
  """(program, state [S, ...], (keys [S], split, permutations), streams) of the first
  task's epoch of ``config`` with seeds 0..num_seeds-1; ``unroll`` as
  ``engine.epoch_function``."""
  seeds = list(range(num_seeds))
  streams = seeds_lib.build_streams(config, seeds)
  task = streams[0].tasks[0]
  model = training.make_model(config, streams[0].num_classes)
  optimizer = training.make_optimizer(config)
  keys = seeds_lib.base_keys(seeds)
  create = engine.create_function(config, model, streams[0].input_shape, optimizer)
  state = seeds_lib.seed_jit(create, 0)(keys)
  split, perms = seeds_lib.task_training_inputs(config, streams, 0)
  epoch = engine.epoch_function(config, model, optimizer, task.output_slice, unroll)
  program = seeds_lib.jit_seeds(epoch, xla_defaults=xla_defaults)
  return program, state, (keys, split, perms), streams
