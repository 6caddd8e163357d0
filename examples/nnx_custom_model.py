"""Your own Flax NNX model with a DHP Softmax head, trained with MAS on Permuted MNIST.

The head is ``dhp_jax.nnx.DHPSoftmax`` (its Hebb trace is a ``HebbTrace`` variable, never
an ``nnx.Param``, so the optimizer and the penalty never touch it). The MAS penalty is an
optax transformation inside an ``nnx.Optimizer``; at each task boundary the MAS
importance (Aljundi et al. 2018) of the model is accumulated and written into the
optimizer with ``dhp_jax.nnx.update_opt_state``. Prints the accuracy matrix R[T, i].

  DHP_DATA_DIR=.data python examples/nnx_custom_model.py --train_subset=10000
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import example_utils
from dhp_jax import consolidation, streams
from dhp_jax import nnx as dhp_nnx


class SmallCNN(nnx.Module):
  """Two strided 3×3 convolutions (28 → 14 → 7 pixels) and a dense layer, then DHP."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 8, (3, 3), strides=(2, 2), rngs=rngs)
    self.conv2 = nnx.Conv(8, 16, (3, 3), strides=(2, 2), rngs=rngs)
    self.dense = nnx.Linear(7 * 7 * 16, 64, rngs=rngs)
    self.head = dhp_nnx.DHPSoftmax(64, 10, rngs=rngs)

  def __call__(self, x, labels=None):
    x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
    h = nnx.relu(self.dense(x.reshape((x.shape[0], -1))))
    return self.head(h, labels)               # labels given: the trace is updated


@nnx.jit
def train_step(model, optimizer, x, y):
  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x, y), y).mean()

  grads = nnx.grad(loss_fn)(model)            # over the nnx.Params only
  optimizer.update(model, grads)


@nnx.jit
def accuracy(model, x, y):
  return jnp.mean(jnp.argmax(model(x), -1) == y)   # no labels: the trace is only read


def mas_task_end(model, optimizer, x):
  """MAS at a task boundary: Ω += mean_x |∂‖f(x)‖²/∂θ|, anchor θ* = θ."""
  params, apply_fn = dhp_nnx.split_apply(model)
  mas = consolidation.mas_importance(apply_fn, params, x)
  penalty = consolidation.get_penalty(nnx.as_pure(optimizer.opt_state))
  importance, anchor = consolidation.mas_accumulate(penalty.importance, mas, params)
  dhp_nnx.update_opt_state(optimizer, consolidation.set_penalty, importance=importance,
                           anchor=anchor)


def main(argv=None):
  parser = example_utils.flags(__doc__.splitlines()[0], lr=0.1)
  parser.add_argument("--strength", type=float, default=0.1, help="MAS λ (paper: 0.1)")
  parser.add_argument("--importance_samples", type=int, default=1000,
                      help="training images MAS averages over")
  args = parser.parse_args(argv)

  stream = streams.permuted_mnist(num_tasks=args.num_tasks, seed=0)
  model = SmallCNN(nnx.Rngs(0))
  tx = optax.chain(consolidation.quadratic_penalty(args.strength), optax.sgd(args.lr))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  accuracy_matrix = np.zeros((len(stream.tasks), len(stream.tasks)))
  for t, task in enumerate(stream.tasks):
    for epoch in range(args.epochs):
      key = jax.random.fold_in(jax.random.key(t), epoch)
      for idx in example_utils.batch_rows(task, args.train_subset, key, 32):
        train_step(model, optimizer, *example_utils.train_batch(task, idx))
    x, _ = example_utils.train_batch(task, task.train.index[:args.importance_samples])
    mas_task_end(model, optimizer, x)
    for i, other in enumerate(stream.tasks):
      accuracy_matrix[t, i] = accuracy(model,
                                       *example_utils.test_batch(other, args.test_subset))
  example_utils.print_accuracy_matrix(accuracy_matrix)


if __name__ == "__main__":
  main()
