"""Per-seed pure pieces of training (flax-examples style); ``dhp_jax.engine`` runs them.

  ``create_state(key, model, input_shape, optimizer, ...)``  one seed's initial state
  ``train_step(state, batch)``                              one SGD step (pure, jitted)
  ``train_epoch(states, keys, split, permutations)``        one epoch of every seed
  ``evaluate(params, hebb, split, permutation)``            accuracy on one task's test split
  ``consolidate(state, ...)``                               the method's task-end bookkeeping
  ``plasticity_stats(state)``                               η, ‖Hebb‖_F, ‖α‖_F (Fig. 3)

None but ``train_epoch`` sees the seed axis: ``dhp_jax.seeds.seed_jit`` vmaps them over
it. ``train_epoch`` maps its step over the seeds inside the epoch's scan itself, so the
CNN can take them one at a time (``seeds.seed_map``).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from dhp_jax import consolidation, linen, ops, streams
from dhp_jax.config import Config


def is_convolutional(config: Config) -> bool:
  """Whether ``config``'s network is the CNN (the vision mixture's) rather than the MLP."""
  return config.benchmark == "vision_mixture"


def make_model(config: Config, num_classes: int):
  common = dict(num_classes=num_classes, head=config.head, eta_init=config.eta_init,
                theta_init=config.theta_init)
  if is_convolutional(config):
    return linen.CNN(**common)
  return linen.MLP(hidden=config.hidden, **common)


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """The optax chain of ``config.method`` (``consolidation.METHODS``), SGD included, then
  α's freeze (the α-frozen control) on the update it makes.

  η's projection into [0, 1] stays a clip of the stored η after the step
  (``train_step(project_eta=True)``): ``consolidation.project`` computes the same values,
  but inside the chain XLA rounds the in-bounds η update differently in the last bit
  (measured on the golden configs), and recorded runs must keep their numbers.
  """
  method = consolidation.METHODS[config.method].optimizer(config)
  # Unconstrained chains keep their state's structure (recorded checkpoints restore).
  return optax.chain(method, consolidation.freeze("alpha")) if config.freeze_alpha else method


class TrainState(NamedTuple):
  params: Any      # Flax 'params' collection
  hebb: Any        # Flax 'hebb' collection ({} for heads without a trace)
  opt_state: Any


def create_state(key, model, input_shape: Sequence[int], optimizer, *,
                 freeze_alpha: bool = False) -> TrainState:
  """One seed's initial state; the Hebb trace starts at zero (first task only)."""
  variables = model.init(key, jnp.zeros((1, *input_shape), jnp.float32))
  params = variables["params"]
  if freeze_alpha:
    frozen = consolidation.plastic_mask(params, "alpha")
    params = jax.tree.map(lambda p, zero: jnp.zeros_like(p) if zero else p, params, frozen)
  return TrainState(params, variables.get("hebb", {}), optimizer.init(params))


def _variables(params, hebb):
  return {"params": params, "hebb": hebb} if hebb else {"params": params}


def masked_cross_entropy(logits, local_labels, mask):
  """Mean softmax cross-entropy over the rows with ``mask`` True."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(mask, local_labels, 0))
  count = jnp.maximum(jnp.sum(mask), 1)
  return jnp.sum(jnp.where(mask, ce, 0.0)) / count


def train_step(state: TrainState, batch, *, model, optimizer, output_slice=None,
               project_eta=False):
  """One SGD step. ``batch = (x [B, ...], labels int [B] global, mask bool [B])``.

  The loss uses the task's outputs only (``output_slice``); the DHP trace is updated
  with the global labels in the forward pass (Algorithm 1) and carried as data. α's
  freeze is part of ``optimizer`` (``make_optimizer``); ``project_eta`` clips the
  stored η into [0, 1] after the step.
  """
  x, labels, mask = batch
  start = 0 if output_slice is None else output_slice[0]
  plastic = bool(state.hebb)

  def loss_fn(params):
    if plastic:
      logits, mutated = model.apply(_variables(params, state.hebb), x, labels, mask=mask,
                                    mutable=["hebb"])
      new_hebb = mutated["hebb"]
    else:
      logits, new_hebb = model.apply(_variables(params, state.hebb), x), state.hebb
    logits = ops.restrict_logits(logits, output_slice)
    loss = masked_cross_entropy(logits, labels - start, mask)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels - start) & mask)
    return loss, (new_hebb, correct)

  (loss, (new_hebb, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if project_eta:
    # Projection of the *stored* η after the step keeps it movable (SPEC §1).
    eta = consolidation.plastic_mask(params, "eta")
    params = jax.tree.map(lambda p, on: jnp.clip(p, 0.0, 1.0) if on else p, params, eta)
  new_state = TrainState(params, jax.lax.stop_gradient(new_hebb), opt_state)
  return new_state, {"loss": loss, "correct": correct, "count": jnp.sum(mask)}


def _padded_batches(order, batch_size):
  """[n] → ([nb, B] indices, [nb, B] mask); the last partial batch is padded (masked)."""
  n = order.shape[0]
  nb = -(-n // batch_size)
  pad = nb * batch_size - n
  order = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)])
  valid = jnp.arange(nb * batch_size) < n
  return order.reshape(nb, batch_size), valid.reshape(nb, batch_size)


def train_epoch(states: TrainState, keys, split: "streams.Split", permutations, *,
                batch_size: int, seed_map=jax.vmap, per_step: Optional[Callable] = None,
                **step_kwargs):
  """One epoch of every seed: one ``lax.scan`` over the batches of each seed's fresh
  shuffle, its body ``seed_map`` (``seeds.seed_map``) of ``train_step`` over the seeds.

  ``states``, ``keys`` [S] and ``permutations`` [S, ...] carry a leading seed axis;
  ``split`` is shared. Returns (states, {"loss", "accuracy"} [S]). With ``jax.vmap`` this
  is bit for bit the vmap of a one-seed epoch (the engine's up to session 9): the batch
  mask and counts stay seed-independent, as they were under that vmap.

  ``per_step(state_before, state_after, stats) -> pytree`` of one seed (diagnostics,
  e.g. ``experiments/replay_divergence.py``) adds a third output, its values per step,
  [nb, S, ...]; the training arithmetic is the same with or without it.
  """
  n = split.index.shape[0]
  _, batch_valid = _padded_batches(jnp.arange(n), batch_size)          # [nb, B]
  shuffle = lambda key: _padded_batches(jax.random.permutation(key, n), batch_size)[0]
  batch_idx = jnp.swapaxes(jax.vmap(shuffle)(keys), 0, 1)               # [nb, S, B]

  def body(states, inputs):
    idx, valid = inputs

    def step(state, idx, permutation):
      x, labels = streams.make_batch(split.images, split.labels, split.index[idx],
                                     permutation)
      new_state, stats = train_step(state, (x, labels, valid), **step_kwargs)
      traced = None if per_step is None else per_step(state, new_state, stats)
      return new_state, (stats, traced)

    states, (stats, traced) = seed_map(step)(states, idx, permutations)
    return states, (stats["loss"], stats["correct"], jnp.sum(valid), traced)

  states, (loss, correct, count, traced) = jax.lax.scan(body, states,
                                                        (batch_idx, batch_valid))

  def summary(loss, correct):                                           # [nb] each
    total = jnp.maximum(jnp.sum(count), 1)
    return {"loss": jnp.sum(loss * count) / total, "accuracy": jnp.sum(correct) / total}

  summaries = jax.vmap(summary, in_axes=1)(loss, correct)
  return (states, summaries) if per_step is None else (states, summaries, traced)


def evaluate(params, hebb, split: "streams.Split", permutation, *, model,
             output_slice=None, batch_size: int = 1000):
  """Test accuracy (fraction) of one seed on one task; the trace is used, not updated."""
  start = 0 if output_slice is None else output_slice[0]
  n = split.index.shape[0]
  batch_idx, batch_valid = _padded_batches(jnp.arange(n), min(batch_size, n))

  def body(total, inputs):
    idx, valid = inputs
    x, labels = streams.make_batch(split.images, split.labels, split.index[idx], permutation)
    logits = ops.restrict_logits(model.apply(_variables(params, hebb), x), output_slice)
    return total + jnp.sum((jnp.argmax(logits, -1) + start == labels) & valid), None

  correct, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), (batch_idx, batch_valid))
  return correct / n


def task_inputs(split: "streams.Split", permutation, key, num_samples: int):
  """The task's training inputs as float32 [n, ...] and global labels (for importance)."""
  index = split.index
  if num_samples and num_samples < index.shape[0]:
    index = index[jax.random.choice(key, index.shape[0], (num_samples,), replace=False)]
  return streams.make_batch(split.images, split.labels, index, permutation)


def consolidate(state: TrainState, task_start_params, split, permutation, key, *,
                config: Config, model, output_slice=None) -> TrainState:
  """Task-boundary bookkeeping of ``config.method`` (one seed): its ``end_task`` entry.

  Only SI has accrued anything during the task (its ω); EWC/Online EWC/MAS estimate Ω
  here, so their Ω is zero throughout the first task (paper §IV-B).
  """
  method = consolidation.METHODS[config.method]
  if method.end_task is None:
    return state
  start = 0 if output_slice is None else output_slice[0]
  sample_key, estimate_key = jax.random.split(key)
  images = labels = None
  if method.uses_task_data:
    images, labels = task_inputs(split, permutation, sample_key, config.importance_samples)
    labels = labels - start

  def apply_fn(p, x):
    return ops.restrict_logits(model.apply(_variables(p, state.hebb), x), output_slice)

  end = consolidation.TaskEnd(state.opt_state, state.params, task_start_params, apply_fn,
                              images, labels, estimate_key)
  return state._replace(opt_state=method.end_task(end, config))


def plasticity_stats(state: TrainState) -> dict:
  """One seed's η, ‖Hebb‖_F and ‖α‖_F of the DHP head (paper Fig. 3); {} without one."""
  head = state.params.get("head", {})
  if "alpha" not in head:
    return {}
  hebb = jax.tree.leaves(state.hebb)
  return {"eta": head["eta"], "alpha_norm": jnp.linalg.norm(head["alpha"]),
          "hebb_norm": jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in hebb))}
