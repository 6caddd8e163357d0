"""dhp_jax.hebbian against a plain NumPy transcription of Algorithm 1."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from dhp_jax import hebbian
from dhp_jax.hebbian import dhp_apply, dhp_init, hebb_update, init_hebb


def reference_hebb_update(hebb, h, labels, eta, mask=None):
  """Algorithm 1, lines 3–9, as written in the paper: a loop over the classes present."""
  hebb = np.array(hebb, dtype=np.float64)
  h = np.asarray(h, np.float64)
  labels = np.asarray(labels)
  keep = labels >= 0 if mask is None else (labels >= 0) & np.asarray(mask)
  for c in np.unique(labels[keep]):
    h_mean = h[keep & (labels == c)].mean(axis=0)
    hebb[:, c] = (1 - eta) * hebb[:, c] + eta * h_mean
  return hebb


@settings(max_examples=40, deadline=None)
@given(batch=st.integers(1, 12), m=st.integers(1, 6), d=st.integers(1, 5),
       seed=st.integers(0, 2**16), masked=st.booleans(), eta=st.floats(-0.5, 1.5))
def test_hebb_update_matches_algorithm_1(batch, m, d, seed, masked, eta):
  rng = np.random.default_rng(seed)
  hebb = rng.normal(size=(m, d)).astype(np.float32)
  h = rng.normal(size=(batch, m)).astype(np.float32)
  # Some labels -1 (padding): ignored like masked entries.
  labels = rng.integers(-1, d, size=batch).astype(np.int32)
  mask = rng.random(batch) < 0.7 if masked else None
  got = hebb_update(jnp.asarray(hebb), jnp.asarray(h), jnp.asarray(labels),
                    jnp.float32(eta), d, None if mask is None else jnp.asarray(mask))
  want = reference_hebb_update(hebb, h, labels, np.float32(eta), mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("labels", [[3, 3, 3, 3], [0, 1, 2, 3], [2], [1, 1, 4, 0, 4]])
def test_hebb_update_edge_batches(labels):
  """All samples of one class, one sample per class, a single sample, absent classes."""
  rng = np.random.default_rng(0)
  labels = np.asarray(labels, np.int32)
  hebb = rng.normal(size=(3, 5)).astype(np.float32)
  h = rng.normal(size=(len(labels), 3)).astype(np.float32)
  got = hebb_update(hebb, h, labels, 0.3, 5)
  np.testing.assert_allclose(got, reference_hebb_update(hebb, h, labels, 0.3), rtol=1e-6)
  absent = np.setdiff1d(np.arange(5), labels)
  np.testing.assert_array_equal(np.asarray(got)[:, absent], hebb[:, absent])


def _random_state(seed=0, m=6, d=4, batch=9, use_bias=True):
  keys = jax.random.split(jax.random.key(seed), 4)
  params = dhp_init(keys[0], m, d, eta_init=0.2, use_bias=use_bias)
  params = params._replace(bias=None if not use_bias else
                           jax.random.normal(keys[3], (d,)))
  hebb = jax.random.normal(keys[1], (m, d))
  h = jax.random.normal(keys[2], (batch, m))
  labels = jnp.arange(batch, dtype=jnp.int32) % (d - 1)  # class d-1 absent
  return params, hebb, h, labels


@pytest.mark.parametrize("use_bias", [False, True])
def test_alpha_zero_is_plain_softmax_layer(use_bias):
  params, hebb, h, labels = _random_state(use_bias=use_bias)
  params = params._replace(alpha=jnp.zeros_like(params.alpha))
  logits, _ = dhp_apply(params, hebb, h, labels)
  want = h @ params.theta + (params.bias if use_bias else 0.0)
  np.testing.assert_array_equal(logits, want)


def test_eta_zero_keeps_trace_and_eta_one_stores_class_means():
  params, hebb, h, labels = _random_state()
  _, kept = dhp_apply(params._replace(eta=jnp.float32(0.0)), hebb, h, labels)
  np.testing.assert_array_equal(kept, hebb)
  _, means = dhp_apply(params._replace(eta=jnp.float32(1.0)), hebb, h, labels)
  for c in range(3):
    np.testing.assert_allclose(means[:, c], h[labels == c].mean(0), rtol=1e-6)
  np.testing.assert_array_equal(means[:, 3], hebb[:, 3])


def test_logits_use_the_updated_trace():
  params, hebb, h, labels = _random_state()
  logits, new = dhp_apply(params, hebb, h, labels)
  want_trace = reference_hebb_update(hebb, h, labels, float(params.eta))
  np.testing.assert_allclose(new, want_trace, rtol=1e-5, atol=1e-6)
  want = h @ (params.theta + params.alpha * want_trace) + params.bias
  np.testing.assert_allclose(logits, want, rtol=1e-5, atol=1e-5)


def test_evaluation_never_changes_trace():
  params, hebb, h, _ = _random_state()
  logits, same = dhp_apply(params, hebb, h)
  assert same is hebb or np.array_equal(same, hebb)
  np.testing.assert_allclose(logits, h @ (params.theta + params.alpha * hebb) + params.bias,
                             rtol=1e-6)


def test_gradients_match_finite_differences():
  with jax.enable_x64(True):
    params, hebb, h, labels = _random_state()
    params = jax.tree.map(lambda x: x.astype(jnp.float64), params)
    hebb, h = hebb.astype(jnp.float64), h.astype(jnp.float64)

    def loss(p):
      logits, _ = dhp_apply(p, hebb, h, labels)
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(h.shape[0]), labels])

    grads = jax.grad(loss)(params)
    eps = 1e-6
    for field in ("theta", "alpha", "eta", "bias"):
      value = getattr(params, field)
      flat = np.asarray(value).ravel()
      for i in range(min(flat.size, 5)):
        bump = np.zeros_like(flat)
        bump[i] = eps
        up = params._replace(**{field: value + bump.reshape(value.shape)})
        down = params._replace(**{field: value - bump.reshape(value.shape)})
        numeric = (loss(up) - loss(down)) / (2 * eps)
        np.testing.assert_allclose(np.ravel(getattr(grads, field))[i], numeric,
                                   rtol=1e-5, atol=1e-9)
    assert abs(float(grads.eta)) > 0


def test_gradient_reaches_h_through_update_but_not_the_carried_trace():
  params, hebb, h, labels = _random_state()

  def loss(hebb_in, h_in):
    logits, _ = dhp_apply(params, hebb_in, h_in, labels)
    return jnp.sum(logits ** 2)

  g_hebb, g_h = jax.grad(loss, argnums=(0, 1))(hebb, h)
  np.testing.assert_array_equal(g_hebb, 0.0)
  # h enters both directly and through this step's trace update.
  direct = jax.grad(lambda x: jnp.sum((x @ (params.theta + params.alpha * jax.lax.stop_gradient(
      dhp_apply(params, hebb, h, labels)[1])) + params.bias) ** 2))(h)
  assert not np.allclose(g_h, direct)


@pytest.mark.parametrize("transform", ["none", "jit", "jit_closed_over_labels"])
def test_jit_equals_eager(transform):
  params, hebb, h, labels = _random_state()
  fn = {"none": dhp_apply, "jit": jax.jit(dhp_apply),
        "jit_closed_over_labels": lambda p, t, x, _: jax.jit(
            lambda p, t, x: dhp_apply(p, t, x, labels))(p, t, x)}[transform]
  got = fn(params, hebb, h, labels)
  want = dhp_apply(params, hebb, h, labels)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_vmap_over_seeds_equals_loop():
  states = [_random_state(seed=s) for s in range(4)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
  logits, hebbs = jax.vmap(dhp_apply)(*stacked)
  for s, state in enumerate(states):
    want_logits, want_hebb = dhp_apply(*state)
    np.testing.assert_allclose(logits[s], want_logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hebbs[s], want_hebb, rtol=1e-6, atol=1e-6)


def test_init_shapes_and_theta_bounds():
  params = dhp_init(jax.random.key(0), 400, 10)
  assert params.theta.shape == params.alpha.shape == (400, 10)
  assert params.eta.shape == () and float(params.eta) == pytest.approx(1e-3)
  assert params.bias is None
  # 'author': fan-in seen by kaiming_uniform_ on the (in, out) tensor is d = 10.
  assert 0.25 < float(jnp.max(jnp.abs(params.theta))) <= 1 / np.sqrt(10)
  dense = dhp_init(jax.random.key(0), 400, 10, theta_init="dense")
  assert float(jnp.max(jnp.abs(dense.theta))) <= 1 / np.sqrt(400)
  assert 0 <= float(params.alpha.min()) and float(params.alpha.max()) <= 0.01
  np.testing.assert_array_equal(init_hebb(400, 10), np.zeros((400, 10)))


def _bad_inputs():
  params, hebb, h, labels = _random_state(use_bias=False)
  return [
      ("h", dict(h=h[0])),
      ("h", dict(h=h[:, :-1])),
      ("labels", dict(labels=labels[:-1])),
      ("labels", dict(labels=labels[:, None])),
      ("labels", dict(labels=labels.astype(jnp.float32))),
      ("labels", dict(labels=labels.at[0].set(4))),
      ("hebb", dict(hebb=hebb[:, :-1])),
      ("mask", dict(mask=jnp.ones(3, bool))),
  ]


@pytest.mark.parametrize("name,override", _bad_inputs(), ids=lambda x: str(x)[:20])
def test_bad_inputs_name_the_argument(name, override):
  params, hebb, h, labels = _random_state(use_bias=False)
  args = dict(hebb=hebb, h=h, labels=labels, mask=None)
  args.update(override)
  with pytest.raises(ValueError, match=name):
    dhp_apply(params, args["hebb"], args["h"], args["labels"], mask=args["mask"])


@pytest.mark.parametrize("kwargs,name", [
    (dict(in_features=0, num_classes=3), "in_features"),
    (dict(in_features=3, num_classes=0), "num_classes"),
])
def test_bad_sizes_name_the_argument(kwargs, name):
  with pytest.raises(ValueError, match=name):
    dhp_init(jax.random.key(0), **kwargs)
  with pytest.raises(ValueError, match=name):
    init_hebb(**kwargs)
  with pytest.raises(ValueError, match="theta_init"):
    hebbian.theta_initializer("xavier")
