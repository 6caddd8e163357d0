"""dhp_jax.training: one seed's steps against a hand-written model, SGD step and trace;
an epoch of several seeds against a loop of those steps.

The tiny model is ``MLP(hidden=(3,), num_classes=4)`` on 5 synthetic inputs; the
reference below writes its forward pass out (Algorithm 1 as a loop over classes).
"""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from dhp_jax import consolidation, engine, linen, seeds, streams, training
from dhp_jax import config as config_lib
from experiments import rows as rows_lib

IN, WIDTH, NUM_CLASSES = 5, 3, 4
LR, LAMBDA = 0.1, 0.5
X = jax.random.normal(jax.random.key(1), (6, IN))
LABELS = jnp.array([1, 2, 2, 1, 2, 1], jnp.int32)   # classes 0 and 3 absent
ALL = jnp.ones(6, bool)
TRACE = {"head": {"hebb": jax.random.uniform(jax.random.key(2), (WIDTH, NUM_CLASSES))}}


def _tiny(head="dhp"):
  return linen.MLP(hidden=(WIDTH,), num_classes=NUM_CLASSES, head=head)


def _state(head="dhp", optimizer=optax.sgd(LR), **kwargs):
  state = training.create_state(jax.random.key(0), _tiny(head), (IN,), optimizer, **kwargs)
  return state._replace(hebb=TRACE) if head == "dhp" else state


def _random_like(tree, seed, low=-1.0, high=1.0):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([jax.random.uniform(k, jnp.shape(x), minval=low, maxval=high)
                            for k, x in zip(keys, leaves)])


def _forward(params, hebb, x, labels=None, mask=None):
  """The tiny MLP written out: (logits, trace after Algorithm 1 when labels are given)."""
  z = x.reshape(x.shape[0], -1) @ params["dense_0"]["kernel"] + params["dense_0"]["bias"]
  h = jnp.where(z > 0, z, 0.01 * z)
  head = params["head"]
  if "theta1" in head:
    return h @ (head["theta1"] + head["theta2"]), hebb
  new = hebb
  if labels is not None:
    for c in range(NUM_CLASSES):
      rows = (np.asarray(labels) == c) & np.asarray(mask)
      if rows.any():
        mean = h[rows].mean(0)
        new = new.at[:, c].set((1 - head["eta"]) * hebb[:, c] + head["eta"] * mean)
  return h @ (head["theta"] + head["alpha"] * new), new


def _reference(params, hebb, batch, output_slice=None):
  """(loss, grads, new trace) of the masked mean cross-entropy on the task's outputs."""
  x, labels, mask = batch
  start, stop = output_slice or (0, NUM_CLASSES)
  rows = np.flatnonzero(np.asarray(mask))

  def loss_fn(p):
    logits, new = _forward(p, hebb, x, labels, mask)
    log_p = jax.nn.log_softmax(logits[:, start:stop])
    return -jnp.mean(log_p[rows, np.asarray(labels)[rows] - start]), new

  (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return loss, grads, new


def _sgd(params, grads, lr=LR):
  return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def _close(a, b):
  chex.assert_trees_all_close(a, b, rtol=1e-5, atol=1e-6)


class TrainStepTest(chex.TestCase):

  def _step(self, state, batch, head="dhp", optimizer=optax.sgd(LR), **kwargs):
    step = functools.partial(training.train_step, model=_tiny(head), optimizer=optimizer,
                             **kwargs)
    return self.variant(step)(state, batch)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(head=("dhp", "matched"), output_slice=(None, (1, 3)))
  def test_step_is_hand_written_sgd(self, head, output_slice):
    state = _state(head)
    hebb = TRACE["head"]["hebb"] if head == "dhp" else None
    loss, grads, new_hebb = _reference(state.params, hebb, (X, LABELS, ALL), output_slice)
    new, stats = self._step(state, (X, LABELS, ALL), head, output_slice=output_slice)
    _close(stats["loss"], loss)
    _close(new.params, _sgd(state.params, grads))
    if head == "dhp":
      _close(new.hebb, {"head": {"hebb": new_hebb}})
      np.testing.assert_array_equal(new.hebb["head"]["hebb"][:, [0, 3]], hebb[:, [0, 3]])
      assert np.any(np.asarray(grads["head"]["alpha"]) != 0)
    else:
      assert new.hebb == {}

  @chex.variants(with_jit=True, without_jit=True)
  def test_frozen_alpha_stays_exactly_zero(self):
    optimizer = optax.chain(optax.sgd(LR), consolidation.freeze("alpha"))
    state = _state(optimizer=optimizer, freeze_alpha=True)
    np.testing.assert_array_equal(state.params["head"]["alpha"], 0.0)
    _, grads, _ = _reference(state.params, TRACE["head"]["hebb"], (X, LABELS, ALL))
    assert np.any(np.asarray(grads["head"]["alpha"]) != 0)   # zeroed by the chain only
    new, _ = self._step(state, (X, LABELS, ALL), optimizer=optimizer)
    np.testing.assert_array_equal(new.params["head"]["alpha"], 0.0)
    grads["head"]["alpha"] = jnp.zeros_like(grads["head"]["alpha"])
    _close(new.params, _sgd(state.params, grads))

  @chex.variants(with_jit=True, without_jit=True)
  def test_projected_eta_ends_exactly_at_one(self):
    # From a zero trace, raising η strengthens the true classes' columns: dL/dη < 0.
    state = _state()
    params = {**state.params, "head": {**state.params["head"], "eta": jnp.float32(0.99999)}}
    hebb = jax.tree.map(jnp.zeros_like, TRACE)
    state = state._replace(params=params, hebb=hebb)
    _, grads, _ = _reference(params, hebb["head"]["hebb"], (X, LABELS, ALL))
    expected = _sgd(params, grads)
    assert expected["head"]["eta"] > 1   # plain SGD pushes η past 1
    new, _ = self._step(state, (X, LABELS, ALL), project_eta=True)
    assert new.params["head"]["eta"] == 1.0
    expected["head"]["eta"] = jnp.float32(1.0)
    _close(new.params, expected)

  @chex.variants(with_jit=True, without_jit=True)
  def test_penalty_adds_lr_2_lambda_omega_delta_on_slow_weights_only(self):
    optimizer = optax.chain(consolidation.quadratic_penalty(LAMBDA), optax.sgd(LR))
    state = _state(optimizer=optimizer)
    omega, anchor = _random_like(state.params, 3, 0.0, 2.0), _random_like(state.params, 4)
    penalised = state._replace(opt_state=consolidation.set_penalty(
        state.opt_state, importance=omega, anchor=anchor))
    plain = state._replace(opt_state=optax.sgd(LR).init(state.params))
    new, _ = self._step(penalised, (X, LABELS, ALL), optimizer=optimizer)
    base, _ = self._step(plain, (X, LABELS, ALL))
    diff = jax.tree.map(jnp.subtract, new.params, base.params)
    expected = jax.tree.map(lambda o, t, a: -LR * 2 * LAMBDA * o * (t - a),
                            omega, state.params, anchor)
    for field in ("alpha", "eta"):
      expected["head"][field] = jnp.zeros_like(expected["head"][field])
    chex.assert_trees_all_close(diff, expected, atol=1e-6)
    chex.assert_trees_all_equal(new.params["head"]["alpha"], base.params["head"]["alpha"])
    chex.assert_trees_all_equal(new.params["head"]["eta"], base.params["head"]["eta"])
    _close(new.hebb, base.hebb)

  @chex.variants(with_jit=True, without_jit=True)
  def test_padded_rows_change_nothing(self):
    padding = 50 * jax.random.normal(jax.random.key(5), (3, IN))
    x = jnp.concatenate([X[:5], padding])
    labels = jnp.concatenate([LABELS[:5], jnp.array([0, 3, 0], jnp.int32)])
    mask = jnp.arange(8) < 5
    state = _state()
    padded, stats = self._step(state, (x, labels, mask))
    alone, alone_stats = self._step(state, (X[:5], LABELS[:5], jnp.ones(5, bool)))
    _close(padded, alone)
    _close(stats, alone_stats)
    assert stats["count"] == 5

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(("all_outputs", None), ("task_outputs", (1, 3)))
  def test_evaluate_ignores_padded_rows(self, output_slice):
    start, stop = output_slice or (0, NUM_CLASSES)
    images = jax.random.randint(jax.random.key(6), (10, 1, IN, 1), 0, 256).astype(jnp.uint8)
    index = jnp.array([2, 5, 7, 0, 9, 4, 8], jnp.int32)   # n = 7: batches of 4, 3 + 1 pad
    state = _state()
    logits, _ = _forward(state.params, TRACE["head"]["hebb"],
                         images[index].astype(jnp.float32) / 255)
    predicted = np.argmax(np.asarray(logits)[:, start:stop], -1) + start
    wrong = start + (predicted - start + 1) % (stop - start)
    right = np.isin(np.arange(7), [0, 3])        # the padding repeats row 0, a right one
    labels = np.zeros(10, np.int32)
    labels[np.asarray(index)] = np.where(right, predicted, wrong)
    split = streams.Split(images, jnp.asarray(labels), index)
    evaluate = functools.partial(training.evaluate, model=_tiny(), output_slice=output_slice,
                                 batch_size=4)
    accuracy = self.variant(evaluate)(state.params, state.hebb, split, None)
    assert accuracy == pytest.approx(2 / 7, rel=1e-6)


def test_plasticity_stats_are_eta_and_frobenius_norms():
  state = _state()
  stats = training.plasticity_stats(state)
  assert stats["eta"] == state.params["head"]["eta"]
  _close(stats["alpha_norm"], np.sqrt(np.sum(np.square(state.params["head"]["alpha"]))))
  _close(stats["hebb_norm"], np.sqrt(np.sum(np.square(TRACE["head"]["hebb"]))))
  assert training.plasticity_stats(_state("matched")) == {}


# ---- one epoch of several seeds ------------------------------------------------------

SEEDS, BATCH = 3, 4


def _small_cnn(head):
  return linen.CNN(num_classes=NUM_CLASSES, head=head, features=(3, 4), hidden=6)


def _epoch_inputs(model, size, rows, lr=LR, num_seeds=SEEDS):
  """(states [S], keys [S], split): ``rows`` random size×size×3 images (rows 1..rows of
  rows + 2), ``model`` initialised per seed with SGD ``lr``."""
  images = jax.random.randint(jax.random.key(3), (rows + 2, size, size, 3), 0, 256)
  labels = jax.random.randint(jax.random.key(4), (rows + 2,), 0, model.num_classes)
  split = streams.Split(images.astype(jnp.uint8), labels.astype(jnp.int32),
                        jnp.arange(1, rows + 1, dtype=jnp.int32))
  keys = seeds.base_keys(range(num_seeds))
  create = functools.partial(training.create_state, model=model, input_shape=(size, size, 3),
                             optimizer=optax.sgd(lr))
  return jax.vmap(create)(seeds.init_keys(keys)), keys, split


def _epoch(model, states, keys, split, seed_map, batch_size=BATCH, lr=LR):
  """The engine's program of one epoch of every seed (``seeds.jit_seeds``)."""
  epoch = functools.partial(training.train_epoch, batch_size=batch_size, model=model,
                            optimizer=optax.sgd(lr), seed_map=seed_map)
  return seeds.jit_seeds(epoch)(states, keys, split, None)


@pytest.mark.parametrize("head", ["dhp", "matched"])
def test_epoch_is_each_seeds_steps_over_its_shuffle(head):
  model = _small_cnn(head)
  states, keys, split = _epoch_inputs(model, 16, 14)   # 3 batches of 4 and one of 2
  new, stats = _epoch(model, states, keys, split, jax.vmap)
  n = split.index.shape[0]
  step = jax.jit(functools.partial(training.train_step, model=model, optimizer=optax.sgd(LR)))
  for s in range(SEEDS):
    state, order = jax.tree.map(lambda x: x[s], states), jax.random.permutation(keys[s], n)
    losses, correct = [], 0
    for start in range(0, n, BATCH):
      rows = split.index[order[start:start + BATCH]]
      x, labels = streams.make_batch(split.images, split.labels, rows)
      state, step_stats = step(state, (x, labels, jnp.ones(len(rows), bool)))
      losses += [step_stats["loss"]] * len(rows)
      correct += int(step_stats["correct"])
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[s], new), state, rtol=1e-5,
                                atol=1e-6)
    _close(stats["loss"][s], np.mean(losses))
    _close(stats["accuracy"][s], correct / n)


@pytest.mark.parametrize("head", ["dhp", "matched"])
def test_per_seed_map_trains_each_seed_bit_for_bit_as_alone(head):
  model = _small_cnn(head)
  states, keys, split = _epoch_inputs(model, 16, 14)
  together = _epoch(model, states, keys, split, seeds.per_seed_map)
  for s in range(SEEDS):
    alone = _epoch(model, *jax.tree.map(lambda x: x[s:s + 1], (states, keys)), split,
                   jax.vmap)
    seed_s = jax.tree.map(lambda x: x[s:s + 1], together)
    chex.assert_trees_all_equal(seed_s[0], alone[0])
    # The epoch's summary divides vmapped over seeds, which XLA may round differently.
    _close(seed_s[1], alone[1])


def test_the_engines_vision_cnn_seed_trains_as_a_one_seed_run():
  # seeds.seed_map on the vision CNN (3 seeds: the medium preset's), against the engine's
  # one-seed program of each seed: a seed's numbers do not depend on the seeds beside it.
  model = linen.CNN(num_classes=10)
  states, keys, split = _epoch_inputs(model, 32, 40, lr=0.01)   # batches of 32 and 8
  run = lambda states, keys: _epoch(model, states, keys, split, seeds.seed_map(True),
                                    batch_size=32, lr=0.01)
  together = run(states, keys)
  for s in range(SEEDS):
    alone = run(*jax.tree.map(lambda x: x[s:s + 1], (states, keys)))
    chex.assert_trees_all_equal(jax.tree.map(lambda x: x[s:s + 1], together[0]), alone[0])


# ---- a two-task run through the engine's pieces, on synthetic data -------------------

def _tiny_config(method, **overrides):
  return config_lib.make_config("permuted_mnist", "quick", method, hidden=(WIDTH,),
                                batch_size=8, lr=LR, **overrides)


def _synthetic_tasks():
  """Two tasks over one 24-row image set: 20 training rows each, own pixel permutations."""
  images = jax.random.randint(jax.random.key(7), (24, 1, IN, 1), 0, 256).astype(jnp.uint8)
  labels = jax.random.randint(jax.random.key(8), (24,), 0, NUM_CLASSES).astype(jnp.int32)
  split = streams.Split(images, labels, jnp.arange(20, dtype=jnp.int32))
  perms = [jax.random.permutation(jax.random.key(9 + t), IN).astype(jnp.int32)
           for t in range(2)]
  return split, perms


def _after_task_one(config, seed=2):
  """(model, task inputs, state after task 1, after its consolidation). Seed 2: seed 0's
  init leaves the tiny MLP's units nearly silent (Ω ~ 1e-3), too weak a test."""
  model, optimizer = training.make_model(config, NUM_CLASSES), training.make_optimizer(config)
  key = seeds.base_keys([seed])
  state = training.create_state(seeds.init_keys(key)[0], model, (1, IN, 1), optimizer)
  split, perms = _synthetic_tasks()
  start = state.params
  one = lambda x: x[None]
  states, _ = training.train_epoch(jax.tree.map(one, state),
                                   seeds.epoch_keys(seeds.task_keys(key, 0), 0), split,
                                   one(perms[0]), batch_size=config.batch_size, model=model,
                                   optimizer=optimizer)
  state = jax.tree.map(lambda x: x[0], states)
  consolidated = training.consolidate(
      state, start, split, perms[0], seeds.consolidation_keys(seeds.task_keys(key, 0))[0],
      config=config, model=model)
  return model, (split, perms), state, consolidated


PENALISED = [name for name, method in consolidation.METHODS.items() if method.penalised]


@pytest.mark.parametrize("method", PENALISED)
def test_task_two_step_carries_the_consolidated_penalty(method):
  config = _tiny_config(method, strength=100.0)
  model, (split, perms), trained, state = _after_task_one(config)
  penalty = consolidation.get_penalty(state.opt_state)
  _close(penalty.anchor, trained.params)
  step = functools.partial(training.train_step, model=model)
  optimizer, plain = training.make_optimizer(config), optax.sgd(LR)
  first, second = [(*streams.make_batch(split.images, split.labels, idx, perms[1]),
                    jnp.ones(8, bool)) for idx in (jnp.arange(8), jnp.arange(8, 16))]
  # Task 2's first step starts at θ = θ*; the second one sees the penalty.
  state, _ = step(state, first, optimizer=optimizer)
  new, _ = step(state, second, optimizer=optimizer)
  base, _ = step(state._replace(opt_state=plain.init(state.params)), second, optimizer=plain)
  expected = jax.tree.map(lambda o, t, a: -LR * 2 * config.strength * o * (t - a),
                          penalty.importance, state.params, penalty.anchor)
  for field in ("alpha", "eta"):
    expected["head"][field] = jnp.zeros_like(expected["head"][field])
  assert max(float(jnp.abs(e).max()) for e in jax.tree.leaves(expected)) > 1e-4
  chex.assert_trees_all_close(jax.tree.map(jnp.subtract, new.params, base.params),
                              expected, atol=1e-7)
  for field in ("alpha", "eta"):
    chex.assert_trees_all_equal(new.params["head"][field], base.params["head"][field])


@pytest.mark.parametrize("method", consolidation.METHODS)
def test_every_method_builds_and_consolidates(method):
  config = _tiny_config(method)
  entry = consolidation.METHODS[method]
  assert isinstance(entry.optimizer(config), optax.GradientTransformation)
  _, _, trained, state = _after_task_one(config)
  if not entry.penalised:
    assert state is trained
    with pytest.raises(ValueError, match="QuadraticPenaltyState"):
      consolidation.get_penalty(state.opt_state)
    return
  importance = jax.tree.leaves(consolidation.get_penalty(state.opt_state).importance)
  assert all(np.all(np.asarray(leaf) >= 0) for leaf in importance)
  assert any(np.any(np.asarray(leaf) > 0) for leaf in importance)
  before = jax.tree.leaves(consolidation.get_penalty(trained.opt_state).importance)
  if entry.uses_task_data:   # estimated at the task's end: zero throughout task 1
    assert all(np.all(np.asarray(leaf) == 0) for leaf in before)


# ---- paired seeds across rows (issue 14), on real MNIST ------------------------------

def _prepared(table, row, seed):
  return engine.prepare(rows_lib.row_config(table, "quick", row, num_seeds=1, seed=seed,
                                              num_tasks=2))


def _init_params(run):
  return jax.tree.map(lambda x: x[0], run.programs.create(seeds.init_keys(run.keys)).params)


def test_seed_gives_every_row_the_same_init_permutations_and_batch_order(mnist):
  seed = 3
  matched, dhp, other = (_prepared("permuted_mnist", "finetune", seed),
                         _prepared("permuted_mnist", "dhp", seed),
                         _prepared("permuted_mnist", "finetune", seed + 1))
  p_matched, p_dhp, p_other = map(_init_params, (matched, dhp, other))
  for layer in ("dense_0", "dense_1"):
    chex.assert_trees_all_equal(p_matched[layer], p_dhp[layer])
    assert not np.array_equal(p_matched[layer]["kernel"], p_other[layer]["kernel"])
  chex.assert_trees_all_equal(p_matched["head"]["theta1"], p_dhp["head"]["theta"])
  np.testing.assert_array_equal(p_matched["head"]["theta2"], 0.0)
  n = matched.train_splits[0].index.shape[0]
  for t in range(2):
    np.testing.assert_array_equal(matched.perms[t], dhp.perms[t])
    assert not np.array_equal(matched.perms[t], other.perms[t])
    keys = [seeds.epoch_keys(seeds.task_keys(run.keys, t), 0)[0]
            for run in (matched, dhp, other)]
    orders = [np.asarray(jax.random.permutation(key, n)) for key in keys]
    np.testing.assert_array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], orders[2])


def test_imbalanced_class_removal_is_the_same_for_every_row_and_seed(mnist):
  runs = [_prepared("imbalanced_permuted_mnist", row, seed)
          for row, seed in (("finetune", 0), ("dhp+si", 0), ("dhp", 1))]
  for t in range(2):
    for run in runs[1:]:
      np.testing.assert_array_equal(run.train_splits[t].index, runs[0].train_splits[t].index)
  assert runs[0].train_splits[0].index.shape != runs[0].train_splits[1].index.shape
