"""Flax heads and models: one implementation (hebbian.dhp_apply) behind the modules."""
from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dhp_jax import linen, ops
from dhp_jax.hebbian import DHPParams, dhp_apply


def test_module_equals_pure_function():
  head = linen.DHPSoftmax(5, eta_init=0.3)
  h = jax.random.normal(jax.random.key(1), (7, 6))
  labels = jnp.array([0, 1, 1, 4, 4, 4, 2], jnp.int32)
  variables = head.init(jax.random.key(0), h, labels)
  np.testing.assert_array_equal(variables["hebb"]["hebb"], 0.0)  # init leaves it at zero
  p = variables["params"]
  hebb = jax.random.normal(jax.random.key(2), (6, 5))
  variables = {"params": p, "hebb": {"hebb": hebb}}
  logits, mutated = head.apply(variables, h, labels, mutable=["hebb"])
  want_logits, want_hebb = dhp_apply(DHPParams(p["theta"], p["alpha"], p["eta"]), hebb, h,
                                     labels)
  np.testing.assert_array_equal(logits, want_logits)
  np.testing.assert_array_equal(mutated["hebb"]["hebb"], want_hebb)
  # Without labels, or with the collection immutable, the trace is used but not updated.
  np.testing.assert_array_equal(head.apply(variables, h),
                                dhp_apply(DHPParams(p["theta"], p["alpha"], p["eta"]),
                                          hebb, h)[0])
  _, unchanged = head.apply(variables, h, mutable=["hebb"])
  np.testing.assert_array_equal(unchanged["hebb"]["hebb"], hebb)


@pytest.mark.parametrize("theta_init", ["author", "dense"])
def test_matched_head_equals_dhp_with_alpha_zero_at_init(theta_init):
  x = jax.random.uniform(jax.random.key(3), (4, 28, 28, 1))
  labels = jnp.array([1, 2, 3, 1], jnp.int32)
  dhp = linen.MLP(hidden=(32,), head="dhp", theta_init=theta_init)
  matched = linen.MLP(hidden=(32,), head="matched", theta_init=theta_init)
  v_dhp = dhp.init(jax.random.key(0), x)
  v_matched = matched.init(jax.random.key(0), x)
  np.testing.assert_array_equal(v_matched["params"]["head"]["theta1"],
                                v_dhp["params"]["head"]["theta"])
  np.testing.assert_array_equal(v_matched["params"]["head"]["theta2"], 0.0)
  v_dhp["params"]["head"]["alpha"] = jnp.zeros_like(v_dhp["params"]["head"]["alpha"])
  got, _ = dhp.apply(v_dhp, x, labels, mutable=["hebb"])
  np.testing.assert_allclose(got, matched.apply(v_matched, x), rtol=1e-6)


def test_model_shapes_and_task_restriction():
  mlp = linen.MLP(hidden=(256, 256), head="softmax")
  v = mlp.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
  assert set(v["params"]) == {"dense_0", "dense_1", "head"}
  assert "hebb" not in v
  cnn = linen.CNN(num_classes=50)
  v = cnn.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)))
  assert v["params"]["dense"]["kernel"].shape == (5 * 5 * 50, 500)
  logits = cnn.apply(v, jnp.ones((2, 32, 32, 3)))
  assert logits.shape == (2, 50)
  np.testing.assert_array_equal(ops.restrict_logits(logits, (10, 20)), logits[:, 10:20])
  assert ops.restrict_logits(logits, None) is logits
  with pytest.raises(ValueError, match="output_slice"):
    ops.restrict_logits(logits, (40, 60))
  with pytest.raises(ValueError, match="head"):
    linen.MLP(head="hebbian").init(jax.random.key(0), jnp.zeros((1, 4)))


class UserCNN(nn.Module):
  """A user's own small Flax CNN with DHPSoftmax dropped in as its head."""

  @nn.compact
  def __call__(self, x, labels=None):
    x = nn.relu(nn.Conv(8, (3, 3), strides=(2, 2))(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))
    x = nn.relu(nn.Dense(64)(x.reshape((x.shape[0], -1))))
    return linen.DHPSoftmax(10)(x, labels)


def test_user_cnn_with_dhp_head_learns_real_mnist(mnist):
  model = UserCNN()
  x_train = jnp.asarray(mnist.train_images[:12800], jnp.float32) / 255.0
  y_train = jnp.asarray(mnist.train_labels[:12800])
  variables = model.init(jax.random.key(0), x_train[:1])
  params, hebb = variables["params"], variables["hebb"]
  opt = optax.sgd(0.05, momentum=0.9)
  opt_state = opt.init(params)

  @jax.jit
  def step(carry, idx):
    params, hebb, opt_state = carry
    x, y = x_train[idx], y_train[idx]

    def loss_fn(p):
      logits, new = model.apply({"params": p, "hebb": hebb}, x, y, mutable=["hebb"])
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new

    (_, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), new["hebb"], opt_state), None

  batches = jax.random.permutation(jax.random.key(1), 12800).reshape(200, 64)
  (params, hebb, _), _ = jax.lax.scan(step, (params, hebb, opt_state), batches)
  x_test = jnp.asarray(mnist.test_images[:2000], jnp.float32) / 255.0
  logits = model.apply({"params": params, "hebb": hebb}, x_test)
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == mnist.test_labels[:2000]))
  assert accuracy > 0.85, accuracy
  assert float(jnp.abs(hebb["DHPSoftmax_0"]["hebb"]).sum()) > 0


@pytest.mark.parametrize("strides,padding,dilation", [
    ((1, 1), "VALID", (1, 1)), ((2, 1), "SAME", (1, 1)), ((1, 2), ((1, 2), (0, 3)), (2, 1))])
def test_patch_conv_equals_a_naive_convolution(strides, padding, dilation):
  x = np.random.default_rng(0).normal(size=(2, 9, 8, 3)).astype(np.float32)
  w = np.random.default_rng(1).normal(size=(3, 2, 3, 4)).astype(np.float32)
  # Naive reference: every output pixel as a sum over its window of the padded input.
  pads = (jax.lax.padtype_to_pads(x.shape[1:3], [(k - 1) * d + 1 for k, d in
                                                 zip(w.shape[:2], dilation)], strides, padding)
          if isinstance(padding, str) else padding)
  xp = np.pad(x, ((0, 0), *pads, (0, 0)))
  rows = (xp.shape[1] - (w.shape[0] - 1) * dilation[0] - 1) // strides[0] + 1
  cols = (xp.shape[2] - (w.shape[1] - 1) * dilation[1] - 1) // strides[1] + 1
  want = np.zeros((2, rows, cols, 4), np.float32)
  for r in range(rows):
    for c in range(cols):
      for i in range(w.shape[0]):
        for j in range(w.shape[1]):
          want[:, r, c] += xp[:, r * strides[0] + i * dilation[0],
                              c * strides[1] + j * dilation[1]] @ w[i, j]
  got = ops.patch_conv(x, w, strides, padding, rhs_dilation=dilation,
                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["VALID", "SAME", 2])
def test_patch_conv_as_flax_calls_it_equals_lax(padding):
  x = jax.random.uniform(jax.random.key(0), (2, 14, 14, 20))
  lax_conv = nn.Conv(50, (5, 5), padding=padding)
  ours = nn.Conv(50, (5, 5), padding=padding, conv_general_dilated=ops.patch_conv)
  params = lax_conv.init(jax.random.key(1), x)
  np.testing.assert_allclose(ours.apply(params, x), lax_conv.apply(params, x),
                             rtol=1e-5, atol=1e-5)


def _tied(shape, seed):
  """Small integers: most pooling windows hold tied maxima (as zero-padded images do)."""
  return jax.random.randint(jax.random.key(seed), shape, -2, 3).astype(jnp.float32)


class FastGradientsTest(chex.TestCase):
  """ops.max_pool and conv_patches' custom VJPs give XLA's own results bit for bit."""

  @chex.all_variants(with_pmap=False)
  @parameterized.parameters(((2, 8, 6, 3), (2, 2)), ((1, 7, 9, 2), (2, 2)),
                            ((2, 9, 8, 1), (3, 2)))
  def test_max_pool_equals_flax_max_pool(self, shape, window):
    x = _tied(shape, 0)
    ours, ours_vjp = jax.vjp(self.variant(lambda x: ops.max_pool(x, window)), x)
    flax, flax_vjp = jax.vjp(lambda x: nn.max_pool(x, window, strides=window), x)
    cotangent = jax.random.normal(jax.random.key(1), ours.shape)
    chex.assert_trees_all_equal(ours, flax)
    chex.assert_trees_all_equal(ours_vjp(cotangent), flax_vjp(cotangent))

  @chex.all_variants(with_pmap=False)
  @parameterized.parameters(((5, 5), "VALID"), ((3, 2), "SAME"), ((2, 3), ((1, 2), (0, 3))))
  def test_patch_gradient_equals_autodiff_of_stacked_slices(self, kernel_hw, padding):
    x = jax.random.normal(jax.random.key(0), (2, 9, 8, 3))
    pads = (jax.lax.padtype_to_pads(x.shape[1:3], kernel_hw, (1, 1), padding)
            if isinstance(padding, str) else padding)

    def reference(x):   # plain slices of the padded input, differentiated by JAX
      x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
      rows, cols = x.shape[1] - kernel_hw[0] + 1, x.shape[2] - kernel_hw[1] + 1
      return jnp.stack([jnp.stack([x[:, i:i + rows, j:j + cols] for j in range(kernel_hw[1])],
                                  axis=3) for i in range(kernel_hw[0])], axis=3)

    ours, ours_vjp = jax.vjp(self.variant(lambda x: ops.conv_patches(x, kernel_hw,
                                                                     padding=padding)), x)
    want, want_vjp = jax.vjp(self.variant(reference), x)
    cotangent = jax.random.normal(jax.random.key(1), ours.shape)
    chex.assert_trees_all_equal(ours, want)
    chex.assert_trees_all_equal(ours_vjp(cotangent), want_vjp(cotangent))


def test_max_pool_names_a_bad_window():
  with pytest.raises(ValueError, match="window"):
    ops.max_pool(jnp.zeros((1, 4, 4, 1)), (2, 2, 2))
