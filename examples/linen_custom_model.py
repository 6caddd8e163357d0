"""Your own Flax linen model with a DHP Softmax head, trained with SI on Permuted MNIST.

The head is ``dhp_jax.DHPSoftmax`` (its Hebb trace lives in the ``'hebb'`` collection).
SI (Zenke et al. 2017) is two optax pieces from ``dhp_jax.consolidation``: the penalty
inside ``optax.chain`` and the path-integral tracker around it; at each task boundary the
importance is accumulated and written into the optimizer state. Prints the accuracy
matrix R[T, i] (test accuracy on task i after training task T).

  DHP_DATA_DIR=.data python examples/linen_custom_model.py --train_subset=10000
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import dhp_jax
import example_utils
from dhp_jax import consolidation, streams


class SmallCNN(nn.Module):
  """A user's network: two strided 3×3 convolutions, a dense layer, a plastic head."""

  @nn.compact
  def __call__(self, x, labels=None):
    for channels in (8, 16):
      x = nn.relu(nn.Conv(channels, (3, 3), strides=(2, 2))(x))
    h = nn.relu(nn.Dense(64)(x.reshape((x.shape[0], -1))))
    return dhp_jax.DHPSoftmax(10)(h, labels)   # labels given: the trace is updated


def make_train_step(model, tx):
  @jax.jit
  def train_step(params, hebb, opt_state, x, y):
    def loss_fn(params):
      logits, new = model.apply({"params": params, "hebb": hebb}, x, y, mutable=["hebb"])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, new["hebb"]

    grads, hebb = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), hebb, opt_state
  return train_step


def si_task_end(opt_state, params, task_start, xi):
  """SI at a task boundary: Ω += ω/((θ − θ_start)² + ξ), anchor θ* = θ, ω reset to 0."""
  penalty = consolidation.get_penalty(opt_state)
  importance, anchor = consolidation.si_accumulate(
      penalty.importance, consolidation.get_omega(opt_state), params, task_start, xi)
  return consolidation.reset_omega(
      consolidation.set_penalty(opt_state, importance=importance, anchor=anchor))


def main(argv=None):
  parser = example_utils.flags(__doc__.splitlines()[0], lr=0.1)
  parser.add_argument("--strength", type=float, default=0.1, help="SI λ (paper: 0.1)")
  parser.add_argument("--xi", type=float, default=0.1, help="SI ξ (paper: 0.1)")
  args = parser.parse_args(argv)

  stream = streams.permuted_mnist(num_tasks=args.num_tasks, seed=0)
  model = SmallCNN()
  tx = consolidation.track_path_integral(
      optax.chain(consolidation.quadratic_penalty(args.strength), optax.sgd(args.lr)))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  params, hebb = variables["params"], variables["hebb"]
  opt_state, train_step = tx.init(params), make_train_step(model, tx)
  accuracy = jax.jit(lambda params, hebb, x, y: jnp.mean(
      jnp.argmax(model.apply({"params": params, "hebb": hebb}, x), -1) == y))

  task_start, rows = params, []
  for t, task in enumerate(stream.tasks):
    for epoch in range(args.epochs):
      key = jax.random.fold_in(jax.random.key(t), epoch)
      for idx in example_utils.batch_rows(task, args.train_subset, key, 32):
        x, y = example_utils.train_batch(task, idx)
        params, hebb, opt_state = train_step(params, hebb, opt_state, x, y)
    opt_state = si_task_end(opt_state, params, task_start, args.xi)
    task_start = params
    rows.append([float(accuracy(params, hebb,
                                *example_utils.test_batch(other, args.test_subset)))
                 for other in stream.tasks])
  example_utils.print_accuracy_matrix(np.array(rows))


if __name__ == "__main__":
  main()
