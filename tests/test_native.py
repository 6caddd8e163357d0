"""dhp_jax.native: the CPU im2col/col2im kernels give ops' XLA path's values bit for bit."""
import chex
import jax
import jax.numpy as jnp
import pytest

from dhp_jax import native, ops


def _patches_and_gradient(x, kernel_hw, padding, cotangent_key=1):
  """conv_patches(x) and its vjp of a fixed random cotangent, vmapped over x's first axis
  (the engine's seed axis), freshly traced."""
  fn = jax.vmap(lambda x: ops.conv_patches(x, kernel_hw, padding=padding))
  out, vjp = jax.vjp(jax.jit(fn), x)
  return out, vjp(jax.random.normal(jax.random.key(cotangent_key), out.shape))


@pytest.mark.parametrize("kernel_hw,padding", [((5, 5), "VALID"), ((3, 2), "SAME"),
                                               ((2, 3), ((1, 2), (0, 3)))])
def test_the_kernels_equal_the_xla_path(kernel_hw, padding):
  x = jax.random.normal(jax.random.key(0), (2, 3, 9, 8, 4))
  assert native.available()
  with_kernels = _patches_and_gradient(x, kernel_hw, padding)
  with native.disabled():
    without = _patches_and_gradient(x, kernel_hw, padding)
  chex.assert_trees_all_equal(with_kernels, without)


def test_the_program_calls_the_kernels_only_when_they_are_available():
  x = jnp.ones((2, 8, 8, 3))
  compiled = lambda: jax.jit(jax.grad(lambda x: jnp.sum(ops.conv_patches(x, (3, 3)) ** 2))
                             ).lower(x).compile().as_text()
  with native.disabled():
    without = compiled()
  assert native.available()
  with_kernels = compiled()
  assert "dhp_im2col" not in without and "dhp_col2im" not in without
  assert "dhp_im2col" in with_kernels and "dhp_col2im" in with_kernels
  assert "conditional" not in with_kernels   # the platform is picked when lowering


def test_without_a_compiler_it_warns_and_falls_back(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))   # nothing built there yet
  monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
  native.available.cache_clear()
  try:
    with pytest.warns(UserWarning, match="kernels unavailable"):
      assert not native.available()
    out = ops.conv_patches(jnp.ones((1, 4, 4, 2)), (2, 2))
    assert out.shape == (1, 3, 3, 2, 2, 2)
  finally:
    native.available.cache_clear()
