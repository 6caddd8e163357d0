"""Eight seeds of an NNX MLP with a DHP Softmax head, trained at once with ``nnx.vmap``.

``dhp_jax.nnx.ensemble`` builds the models under ``nnx.vmap`` (seed s is initialised from
``key(s)``), so every Variable — Params, the Hebb trace — has a leading seed axis; one
jitted, vmapped step trains all seeds, each on its own batch order (the task
permutations are shared). Prints the seed-mean accuracy matrix and the mean ± SEM over
seeds of the final average accuracy.

  DHP_DATA_DIR=.data python examples/nnx_seed_ensemble.py --train_subset=10000
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import example_utils
from dhp_jax import metrics, streams
from dhp_jax import nnx as dhp_nnx


@nnx.jit
@nnx.vmap(in_axes=(0, 0, 0, 0))              # model, optimizer, x, y: one slice per seed
def train_step(model, optimizer, x, y):
  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x, y), y).mean()

  optimizer.update(model, nnx.grad(loss_fn)(model))


@nnx.jit
@nnx.vmap(in_axes=(0, None, None))           # every seed sees the same test images
def accuracy(model, x, y):
  return jnp.mean(jnp.argmax(model(x), -1) == y)


def main(argv=None):
  parser = example_utils.flags(__doc__.splitlines()[0], lr=0.05)
  parser.add_argument("--num_seeds", type=int, default=8)
  parser.add_argument("--hidden", type=int, nargs="+", default=[400, 400])
  args = parser.parse_args(argv)

  stream = streams.permuted_mnist(num_tasks=args.num_tasks, seed=0)
  seeds = jnp.arange(args.num_seeds)
  model = dhp_nnx.ensemble(lambda rngs: dhp_nnx.MLP(784, args.hidden, 10, rngs=rngs),
                           jax.vmap(jax.random.key)(seeds))
  tx = optax.sgd(args.lr)
  optimizer = nnx.vmap(lambda model: nnx.Optimizer(model, tx, wrt=nnx.Param))(model)

  num_tasks = len(stream.tasks)
  accuracy_matrix = np.zeros((args.num_seeds, num_tasks, num_tasks))   # [seed, T, i]
  for t, task in enumerate(stream.tasks):
    for epoch in range(args.epochs):
      # Every seed shuffles the task's rows its own way: orders [seeds, steps, 64].
      keys = jax.random.split(jax.random.fold_in(jax.random.key(t), epoch), args.num_seeds)
      orders = jax.vmap(lambda key: example_utils.batch_rows(
          task, args.train_subset, key, 64))(keys)
      for idx in orders.swapaxes(0, 1):                       # idx [seeds, 64]
        x, y = jax.vmap(lambda i: example_utils.train_batch(task, i))(idx)
        train_step(model, optimizer, x, y)
    for i, other in enumerate(stream.tasks):
      accuracy_matrix[:, t, i] = accuracy(model,
                                          *example_utils.test_batch(other, args.test_subset))

  example_utils.print_accuracy_matrix(accuracy_matrix.mean(0),
                                      f", mean over {args.num_seeds} seeds")
  mean, sem = metrics.mean_and_sem([metrics.average_accuracy(r) for r in accuracy_matrix])
  print(f"final average accuracy: {mean:.4f} ± {sem:.4f} (mean ± SEM over "
        f"{args.num_seeds} seeds)")


if __name__ == "__main__":
  main()
