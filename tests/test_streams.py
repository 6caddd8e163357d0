"""dhp_jax.streams: the four task streams on real MNIST (and the mirror sets if present)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dhp_jax import streams
from dhp_jax.streams import make_batch


@pytest.fixture(scope="module")
def permuted():
  return streams.permuted_mnist(num_tasks=4, seed=0)


def as_uint8(x):
  """Undoes make_batch's scaling: exact, since x = pixel / 255 up to float rounding."""
  return np.rint(np.asarray(x) * 255).astype(np.uint8)


def rows(split):
  """Host (images, labels) of the split's own rows."""
  index = np.asarray(split.index)
  return np.asarray(split.images)[index], np.asarray(split.labels)[index]


# ---- make_batch --------------------------------------------------------------------

@pytest.mark.parametrize("jit", [False, True])
def test_make_batch_gathers_permutes_and_scales(permuted, mnist, jit):
  task = permuted.tasks[1]
  idx = jnp.array([0, 7, 59999], jnp.int32)
  fn = jax.jit(make_batch) if jit else make_batch
  x, y = fn(task.train.images, task.train.labels, idx, task.permutation)
  assert x.shape == (3, 28, 28, 1) and x.dtype == jnp.float32 and y.dtype == jnp.int32
  flat = mnist.train_images[[0, 7, 59999]].reshape(3, -1)
  np.testing.assert_array_equal(as_uint8(x).reshape(3, -1), flat[:, task.permutation])
  np.testing.assert_allclose(np.asarray(x).reshape(3, -1), flat[:, task.permutation] / 255,
                             rtol=1e-6)
  assert y.tolist() == mnist.train_labels[[0, 7, 59999]].tolist()
  x_plain, _ = fn(task.train.images, task.train.labels, idx)
  np.testing.assert_array_equal(as_uint8(x_plain), mnist.train_images[[0, 7, 59999]])


def test_make_batch_vmaps_over_seeds_with_stacked_permutations():
  seed_streams = [streams.permuted_mnist(num_tasks=2, seed=s) for s in range(3)]
  permutations = np.stack([s.tasks[1].permutation for s in seed_streams])
  task = seed_streams[0].tasks[1]
  idx = jnp.tile(jnp.arange(5, dtype=jnp.int32), (3, 1))
  x, y = jax.vmap(make_batch, in_axes=(None, None, 0, 0))(
      task.train.images, task.train.labels, idx, permutations)
  assert x.shape == (3, 5, 28, 28, 1) and y.shape == (3, 5)
  for s, stream in enumerate(seed_streams):
    expected, _ = make_batch(task.train.images, task.train.labels, idx[s],
                             stream.tasks[1].permutation)
    np.testing.assert_array_equal(x[s], expected)


# ---- Permuted MNIST ----------------------------------------------------------------

def test_permutations_are_bijections_distinct_per_task_and_seed(permuted):
  other_seed = streams.permuted_mnist(num_tasks=4, seed=1)
  all_permutations = [t.permutation for s in (permuted, other_seed) for t in s.tasks]
  for permutation in all_permutations:
    assert permutation.dtype == np.int32 and permutation.shape == (784,)
    np.testing.assert_array_equal(np.sort(permutation), np.arange(784))
  assert len({p.tobytes() for p in all_permutations}) == 8
  assert not np.array_equal(permuted.tasks[0].permutation, np.arange(784))  # first too
  first_plain = streams.permuted_mnist(num_tasks=2, seed=0, permute_first=False)
  assert first_plain.tasks[0].permutation is None
  np.testing.assert_array_equal(first_plain.tasks[1].permutation,
                                permuted.tasks[1].permutation)


def test_permuted_tasks_use_all_of_mnist_with_one_permutation_for_train_and_test(permuted):
  assert (permuted.name, permuted.num_classes, permuted.input_shape) == (
      "permuted_mnist", 10, (28, 28, 1))
  for task in permuted.tasks:
    assert task.train.index.shape == (60000,) and task.test.index.shape == (10000,)
    assert task.classes == tuple(range(10)) and task.output_slice is None
    # One `permutation` per task: make_batch applies it to train and test batches alike.
    x_test, _ = make_batch(task.test.images, task.test.labels, jnp.arange(2),
                           task.permutation)
    original = np.asarray(task.test.images[:2]).reshape(2, -1)
    np.testing.assert_array_equal(as_uint8(x_test).reshape(2, -1),
                                  original[:, task.permutation])


def test_seeds_share_the_device_arrays(permuted):
  other = streams.permuted_mnist(num_tasks=4, seed=7)
  for a, b in zip(permuted.tasks, other.tasks):
    for split in ("train", "test"):
      for field in ("images", "labels", "index"):
        assert getattr(getattr(a, split), field) is getattr(getattr(b, split), field)
  assert permuted.tasks[0].train.images is permuted.tasks[3].train.images
  assert permuted.tasks[0].train.images.dtype == jnp.uint8


# ---- Imbalanced Permuted MNIST -----------------------------------------------------

def test_imbalanced_counts_follow_the_removal_probabilities(mnist):
  stream = streams.imbalanced_permuted_mnist(num_tasks=10, seed=0, imbalance_seed=0)
  available = np.bincount(mnist.train_labels, minlength=10)
  for t, task in enumerate(stream.tasks):
    # The documented draw: per task, p ~ U(0, 1) per class from the imbalance seed.
    rng = np.random.default_rng((streams.IMBALANCE_STREAM, 0, t))
    removal = rng.uniform(size=10)
    kept = streams.class_counts(task.train, 10)
    mean, var = available * (1 - removal), available * removal * (1 - removal)
    assert np.all(np.abs(kept - mean) <= 5 * np.sqrt(var) + 1), (t, kept, mean)
    assert f"train class counts {kept.tolist()}" in stream.notes[-10 + t]
    assert task.test.index.shape == (10000,)  # test sets untouched
    assert np.isin(np.asarray(task.train.index), np.arange(60000)).all()


def test_imbalanced_counts_are_identical_across_trial_seeds():
  a = streams.imbalanced_permuted_mnist(num_tasks=3, seed=0, imbalance_seed=0)
  b = streams.imbalanced_permuted_mnist(num_tasks=3, seed=5, imbalance_seed=0)
  c = streams.imbalanced_permuted_mnist(num_tasks=3, seed=0, imbalance_seed=1)
  for ta, tb, tc in zip(a.tasks, b.tasks, c.tasks):
    np.testing.assert_array_equal(ta.train.index, tb.train.index)
    assert not np.array_equal(ta.permutation, tb.permutation)
    assert ta.train.index.shape != tc.train.index.shape
  np.testing.assert_array_equal(a.tasks[0].permutation,
                                streams.permuted_mnist(1, seed=0).tasks[0].permutation)


# ---- Split MNIST -------------------------------------------------------------------

@pytest.mark.parametrize("scenario", ["task", "class"])
def test_split_tasks_hold_exactly_their_two_classes(mnist, scenario):
  stream = streams.split_mnist(scenario=scenario)
  assert len(stream.tasks) == 5 and stream.num_classes == 10
  for t, task in enumerate(stream.tasks):
    assert task.classes == (2 * t, 2 * t + 1)
    assert task.output_slice == ((2 * t, 2 * t + 2) if scenario == "task" else None)
    for split, labels in (("train", mnist.train_labels), ("test", mnist.test_labels)):
      _, task_labels = rows(getattr(task, split))
      assert set(task_labels.tolist()) == set(task.classes)
      assert len(task_labels) == np.isin(labels, task.classes).sum()


# ---- 5-Vision mixture --------------------------------------------------------------

def test_vision_mixture_batches_and_output_slices(mnist):
  stream = streams.vision_mixture(("mnist", "fashion_mnist"))
  assert stream.num_classes == 20 and stream.input_shape == (32, 32, 3)
  for t, task in enumerate(stream.tasks):
    assert task.output_slice == (10 * t, 10 * t + 10)
    assert task.classes == tuple(range(10 * t, 10 * t + 10))
    x, y = make_batch(task.train.images, task.train.labels, jnp.arange(16, dtype=jnp.int32))
    assert x.shape == (16, 32, 32, 3) and x.dtype == jnp.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert ((10 * t <= y) & (y < 10 * t + 10)).all()
    assert task.train.images.dtype == jnp.uint8
  # MNIST: a zero border of 2, the 28×28 digit inside, replicated to 3 channels.
  images = np.asarray(stream.tasks[0].train.images[:3])
  np.testing.assert_array_equal(images[:, 2:30, 2:30, :],
                                np.repeat(mnist.train_images[:3], 3, axis=3))
  assert images[:, :2].max() == images[:, 30:].max() == images[:, :, :2].max() == 0
  again = streams.vision_mixture(("mnist", "fashion_mnist"), seed=3)
  assert again.tasks[1].train.images is stream.tasks[1].train.images
  assert again.tasks[1].train.labels is stream.tasks[1].train.labels


def test_vision_mixture_skips_missing_sets_loudly():
  with pytest.warns(UserWarning, match="svhn_cropped: SKIPPED"):
    stream = streams.vision_mixture(skip_missing=True, source="files")
  names = [task.name for task in stream.tasks]
  assert "svhn_cropped" not in names and {"mnist", "fashion_mnist"} <= set(names)
  assert stream.num_classes == 10 * len(names)
  assert any("svhn_cropped: SKIPPED" in note for note in stream.notes)
  assert [t.output_slice for t in stream.tasks] == [(10 * t, 10 * t + 10)
                                                   for t in range(len(names))]
  for task in stream.tasks:
    if task.name == "not_mnist" and any("80%/20%" in n for n in stream.notes):
      assert task.train.index.shape == (8000,) and task.test.index.shape == (2000,)
    if task.name == "cifar10":
      assert task.train.images.shape == (50000, 32, 32, 3)
  with pytest.raises(FileNotFoundError, match="svhn_cropped"):
    streams.vision_mixture(("mnist", "svhn_cropped"), source="files")


# ---- argument checks ---------------------------------------------------------------

@pytest.mark.parametrize("build, argument", [
    (lambda: streams.permuted_mnist(num_tasks=0), "num_tasks"),
    (lambda: streams.permuted_mnist(seed=-1), "seed"),
    (lambda: streams.imbalanced_permuted_mnist(imbalance_seed=1.5), "imbalance_seed"),
    (lambda: streams.split_mnist(scenario="domain"), "scenario"),
    (lambda: streams.vision_mixture(("mnist", "emnist")), "datasets"),
    (lambda: streams.vision_mixture(("mnist", "mnist")), "datasets"),
    (lambda: streams.permuted_mnist(source="web"), "source"),
])
def test_bad_arguments_raise_naming_the_argument(build, argument):
  with pytest.raises(ValueError, match=argument):
    build()


def test_old_module_name_forwards_to_streams_with_a_warning():
  from dhp_jax import benchmarks as old
  with pytest.warns(DeprecationWarning, match="dhp_jax.streams"):
    assert old.permuted_mnist is streams.permuted_mnist
