"""dhp_jax.nnx: the NNX modules against the linen ones and the pure core (hebbian)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from dhp_jax import consolidation, heads_spec
from dhp_jax import linen as dlinen
from dhp_jax import nnx as dnnx
from dhp_jax.hebbian import DHPParams, dhp_apply

M, D = 6, 5
H = jax.random.normal(jax.random.key(1), (7, M))
LABELS = jnp.array([0, 1, 1, 4, 4, 4, 2], jnp.int32)
HEBB = jax.random.normal(jax.random.key(2), (M, D))
WEIGHTS = jax.random.normal(jax.random.key(3), (7, D))   # loss = Σ logits·w


def _loss(logits):
  return jnp.sum(logits * WEIGHTS)


def _linen_params():
  head = dlinen.DHPSoftmax(D, eta_init=0.3)
  return head, head.init(jax.random.key(0), H)["params"]


class HeadTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_nnx_head_equals_linen_head_and_dhp_apply(self):
    linen_head, p = _linen_params()
    graphdef, state = nnx.split(dnnx.DHPSoftmax(M, D, rngs=nnx.Rngs(0)))

    @self.variant
    def nnx_forward(state, p, h):
      head = nnx.merge(graphdef, state)
      nnx.update(head, {**p, "hebb": HEBB})
      grad_params, grad_h = nnx.grad(lambda m, h: _loss(m(h, LABELS)), argnums=(0, 1))(
          nnx.clone(head), h)
      logits = head(h, LABELS)
      return logits, head.hebb[...], nnx.to_pure_dict(grad_params), grad_h

    logits, hebb, grads, grad_h = nnx_forward(state, p, H)

    def pure(params, h):
      return dhp_apply(DHPParams(**params), HEBB, h, LABELS)

    want_logits, want_hebb = pure(p, H)
    want_grads, want_grad_h = jax.grad(lambda q, h: _loss(pure(q, h)[0]), (0, 1))(p, H)
    linen_logits, mutated = linen_head.apply({"params": p, "hebb": {"hebb": HEBB}}, H,
                                             LABELS, mutable=["hebb"])
    linen_grads = jax.grad(lambda q: _loss(linen_head.apply(
        {"params": q, "hebb": {"hebb": HEBB}}, H, LABELS, mutable=["hebb"])[0]))(p)
    chex.assert_trees_all_close(logits, want_logits, linen_logits, rtol=1e-6)
    chex.assert_trees_all_close(hebb, want_hebb, mutated["hebb"]["hebb"], rtol=1e-6)
    chex.assert_trees_all_close(grads, want_grads, linen_grads, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(grad_h, want_grad_h, rtol=1e-5, atol=1e-6)
    assert set(grads) == {"theta", "alpha", "eta"} and float(grads["eta"]) != 0.0


def _mlp(head="dhp", seed=0, hidden=(8,)):
  return dnnx.MLP(12, hidden, D, head=head, rngs=nnx.Rngs(seed))


def _paths(state) -> set:
  return {jax.tree_util.keystr(path) for path, _ in
          jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(state))}


def test_trace_is_not_a_param_and_only_a_labelled_forward_changes_it():
  model = _mlp()
  assert _paths(nnx.state(model, dnnx.HebbTrace)) == {"['head']['hebb']"}
  assert "['head']['hebb']" not in _paths(nnx.state(model, nnx.Param))
  nnx.update(model, {"head": {"hebb": jax.random.normal(jax.random.key(4), (8, D))}})
  saved = nnx.clone(nnx.state(model, dnnx.HebbTrace))
  x = jax.random.normal(jax.random.key(5), (7, 12))
  model(x)                                                      # evaluation
  chex.assert_trees_all_equal(nnx.state(model, dnnx.HebbTrace), saved)
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(
      m(x, LABELS), LABELS).mean()
  grads = nnx.grad(loss)(model)                                 # training forward
  trained = nnx.clone(nnx.state(model, dnnx.HebbTrace))
  assert not np.allclose(trained["head"]["hebb"][...], saved["head"]["hebb"][...])
  optimizer.update(model, grads)                                # the step leaves it
  chex.assert_trees_all_equal(nnx.state(model, dnnx.HebbTrace), trained)
  nnx.update(model, saved)                                      # restore
  chex.assert_trees_all_equal(nnx.state(model, dnnx.HebbTrace), saved)


@pytest.mark.parametrize("head,plastic", [("dhp", {"alpha", "eta"}), ("matched", set())])
def test_slow_weights_mask_on_nnx_state(head, plastic):
  params = nnx.state(_mlp(head), nnx.Param)
  for state in (params, nnx.as_pure(params)):
    mask = nnx.to_pure_dict(nnx.as_pure(consolidation.slow_weights_mask(state)))
    assert {k for k, slow in mask["head"].items() if not slow} == plastic
    assert all(mask["dense_0"].values())


@pytest.mark.parametrize("jit", [False, True])
def test_penalty_and_path_integral_inside_nnx_optimizer(jit):
  strength, lr = 0.7, 0.05
  model = _mlp()
  tx = consolidation.track_path_integral(
      optax.chain(consolidation.quadratic_penalty(strength), optax.sgd(lr)))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  transform = nnx.jit if jit else (lambda f: f)
  params_state = nnx.state(model, nnx.Param)
  omega_state = jax.tree.map(lambda a: jnp.full_like(a, 1.5), params_state)  # Variables
  anchor_state = jax.tree.map(lambda a: a + 0.25, nnx.as_pure(params_state))  # arrays
  set_penalty = transform(lambda optimizer, **values: dnnx.update_opt_state(
      optimizer, consolidation.set_penalty, **values))
  set_penalty(optimizer, importance=omega_state, anchor=params_state)
  set_penalty(optimizer, anchor=anchor_state)                   # Ω kept, θ* replaced
  params, omega, anchor = map(nnx.to_pure_dict, (params_state, omega_state, anchor_state))
  penalty = consolidation.get_penalty(nnx.as_pure(optimizer.opt_state))
  chex.assert_trees_all_equal(nnx.to_pure_dict(penalty.importance), omega)
  chex.assert_trees_all_equal(nnx.to_pure_dict(penalty.anchor), anchor)
  x = jax.random.normal(jax.random.key(5), (7, 12))

  @transform
  def step(model, optimizer):
    grads = nnx.grad(lambda m: _loss(m(x, LABELS)))(model)
    optimizer.update(model, grads)
    return grads

  grads = nnx.to_pure_dict(step(model, optimizer))
  # Hand-written reference: SGD on g + 2λΩ(θ−θ*) for slow weights, on g for α and η.
  def reference(path, theta, g, w, star):
    slow = jax.tree_util.keystr(path) not in ("['head']['alpha']", "['head']['eta']")
    return g + (2 * strength * w * (theta - star) if slow else 0.0)

  total = jax.tree_util.tree_map_with_path(reference, params, grads, omega, anchor)
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  chex.assert_trees_all_close(got, jax.tree.map(lambda t, u: t - lr * u, params, total),
                              rtol=1e-6, atol=1e-7)
  # SI: ω = −g ⊙ Δθ with g the unregularised gradient.
  path_integral = consolidation.get_omega(nnx.as_pure(optimizer.opt_state))
  chex.assert_trees_all_close(nnx.to_pure_dict(path_integral),
                              jax.tree.map(lambda g, u: g * lr * u, grads, total),
                              rtol=1e-6, atol=1e-9)


def _linen_mlp_and_variables(head, x, hidden=(8,)):
  linen = dlinen.MLP(hidden=hidden, num_classes=D, head=head)
  return linen, linen.init(jax.random.key(0), x)


@pytest.mark.parametrize("head", heads_spec.HEADS)
def test_mlp_mirrors_linen(head):
  x = jax.random.uniform(jax.random.key(6), (3, 3, 4, 1))
  linen, variables = _linen_mlp_and_variables(head, x, hidden=(400, 300))
  linen_params = variables["params"]
  model = dnnx.MLP(12, (400, 300), D, head=head, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  chex.assert_trees_all_equal_shapes(params, linen_params)
  # Same init laws: kernels U(±1/√fan_in), zero biases, θ ~ U(±1/√d) (author).
  for name, fan_in in (("dense_0", 12), ("dense_1", 400)):
    bound = float(jnp.abs(params[name]["kernel"]).max())
    assert 0.95 / np.sqrt(fan_in) < bound <= 1 / np.sqrt(fan_in)
    np.testing.assert_array_equal(params[name]["bias"], 0.0)
  theta = params["head"]["theta1" if head == "matched" else "theta"]
  assert 0.9 / np.sqrt(D) < float(jnp.abs(theta).max()) <= 1 / np.sqrt(D)
  # Same function: linen's parameters loaded into the NNX model give the same logits.
  nnx.update(model, linen_params)
  chex.assert_trees_all_close(model(x), linen.apply(variables, x), rtol=1e-6, atol=1e-6)


def test_matched_head_starts_as_dhp_with_alpha_zero():
  dhp, matched = _mlp("dhp"), _mlp("matched")
  chex.assert_trees_all_equal(matched.head.theta1[...], dhp.head.theta[...])
  np.testing.assert_array_equal(matched.head.theta2[...], 0.0)
  alpha = dhp.head.alpha[...]
  assert 0.0 <= float(alpha.min()) and float(alpha.max()) <= 0.01
  np.testing.assert_array_equal(dhp.head.hebb[...], 0.0)
  dhp.head.alpha[...] = jnp.zeros_like(dhp.head.alpha[...])
  x = jax.random.normal(jax.random.key(5), (7, 12))
  chex.assert_trees_all_close(dhp(x, LABELS), matched(x), rtol=1e-6)


def test_cnn_mirrors_linen():
  x = jax.random.uniform(jax.random.key(7), (2, 32, 32, 3))
  linen = dlinen.CNN(num_classes=50)
  variables = linen.init(jax.random.key(0), x)
  linen_params = variables["params"]
  model = dnnx.CNN(50, rngs=nnx.Rngs(0))
  chex.assert_trees_all_equal_shapes(nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                                     linen_params)
  assert model.head.eta[...] == pytest.approx(1e-4)
  nnx.update(model, linen_params)
  chex.assert_trees_all_close(model(x), linen.apply(variables, x), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="input_shape"):
    dnnx.CNN(rngs=nnx.Rngs(0), input_shape=(12, 12, 1))


def test_vmapped_ensemble_equals_a_loop_over_the_same_keys():
  keys = jax.random.split(jax.random.key(0), 3)
  make = lambda rngs: dnnx.MLP(12, (8,), D, rngs=rngs)
  x = jax.random.normal(jax.random.key(5), (3, 7, 12))       # one batch per member
  tx = optax.sgd(0.1)

  def step(model, optimizer, x):
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(
        m(x, LABELS), LABELS).mean()
    optimizer.update(model, nnx.grad(loss)(model))

  stacked = dnnx.ensemble(make, keys)
  optimizers = nnx.vmap(lambda m: nnx.Optimizer(m, tx, wrt=nnx.Param))(stacked)
  nnx.jit(nnx.vmap(step))(stacked, optimizers, x)
  for i, key in enumerate(keys):
    member = make(nnx.Rngs(key))
    step(member, nnx.Optimizer(member, tx, wrt=nnx.Param), x[i])
    chex.assert_trees_all_close(
        nnx.to_pure_dict(jax.tree.map(lambda a: a[i], nnx.state(stacked))),
        nnx.to_pure_dict(nnx.state(member)), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="keys"):
    dnnx.ensemble(make, jnp.arange(3))


@pytest.mark.parametrize("estimator", ["fisher", "mas"])
def test_importance_estimators_on_nnx_model_equal_linen(estimator):
  x = jax.random.uniform(jax.random.key(8), (10, 12))
  linen, variables = _linen_mlp_and_variables("dhp", x)
  linen_params = variables["params"]
  hebb = jax.random.normal(jax.random.key(9), (8, D))    # evaluation uses the trace
  model = _mlp()
  nnx.update(model, {**linen_params, "head": {**linen_params["head"], "hebb": hebb}})
  params, apply_fn = dnnx.split_apply(model)
  run = {"fisher": consolidation.fisher_diagonal,
         "mas": consolidation.mas_importance}[estimator]
  got = run(apply_fn, params, x, batch_size=4)
  want = run(lambda p, x: linen.apply({"params": p, "hebb": {"head": {"hebb": hebb}}}, x),
             linen_params, x, batch_size=4)
  chex.assert_trees_all_close(nnx.to_pure_dict(got), want, rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(model.head.hebb[...], hebb)
