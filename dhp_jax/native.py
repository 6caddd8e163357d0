"""CPU kernels for what XLA:CPU emits slowly: a unit-stride convolution's patches (im2col)
and the sum of their cotangent back onto its input (col2im), as XLA FFI custom calls.

``available()``       builds (once per machine) and registers them; False when they cannot
                      be built here, and then ``ops`` keeps its XLA path.
``disabled()``        a context in which programs traced use the XLA path (comparisons).
``im2col(x, kernel_hw, padding)``    x [..., H, W, C] -> [..., H', W', kh, kw, C].
``col2im(cotangent, padding, hw)``   [..., H', W', kh, kw, C] -> [..., H, W, C].

Both give exactly the values of ``ops``' XLA path (col2im adds in the same order), so a
run's numbers do not depend on whether they are used. Why: inside the epoch's scan XLA:CPU
builds the patches as per-element concatenate loops and the col2im as 25 in-place adds,
each on one thread (BUILD_NOTES.md section 2.9). ``csrc/patches.cc`` is compiled with the
system C++ compiler (``$CXX``, else ``c++``) against the installed jaxlib's FFI headers
into ``$XDG_CACHE_HOME/dhp_jax/kernels/`` (one file per source, jaxlib and flags);
``DHP_JAX_NATIVE=0`` turns the kernels off.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings

import jax
import jaxlib
import numpy as np

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "patches.cc")
ENV_VAR = "DHP_JAX_NATIVE"
# No -march=native: the cache may be shared between machines; no FMA contraction.
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-ffp-contract=off")
_TARGETS = {"dhp_im2col": "DhpIm2col", "dhp_col2im": "DhpCol2im"}


def _library_path() -> str:
  with open(SOURCE, "rb") as f:
    key = hashlib.sha256(f.read() + jaxlib.__version__.encode()
                         + " ".join(FLAGS).encode()).hexdigest()[:16]
  cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                       "dhp_jax", "kernels")
  return os.path.join(cache, f"patches-{key}.so")


def _build(path: str) -> None:
  """Compiles ``SOURCE`` to ``path`` (written under a temporary name, then renamed, so
  processes building at once never load a half-written file)."""
  compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
  if compiler is None:
    raise OSError("no C++ compiler (set $CXX)")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
  os.close(fd)
  try:
    subprocess.run([compiler, *FLAGS, f"-I{jax.ffi.include_dir()}", SOURCE, "-o", tmp],
                   check=True, capture_output=True, text=True)
    os.replace(tmp, path)
  except subprocess.CalledProcessError as e:
    raise OSError(f"{compiler} failed: {e.stderr.strip()[-2000:]}") from None
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


@functools.lru_cache(maxsize=None)
def available() -> bool:
  """Whether the kernels are registered with XLA (built on the first call)."""
  if os.environ.get(ENV_VAR, "1") == "0":
    return False
  path = _library_path()
  try:
    if not os.path.exists(path):
      _build(path)
    library = ctypes.cdll.LoadLibrary(path)
    for target, symbol in _TARGETS.items():
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                  platform="cpu")
  except (OSError, AttributeError) as e:
    warnings.warn(f"dhp_jax.native: CPU convolution kernels unavailable ({e}); using XLA's "
                  f"(same numbers, slower CNN on CPU). Set {ENV_VAR}=0 to silence this.")
    return False
  return True


@contextlib.contextmanager
def disabled():
  """Programs traced inside use ``ops``' XLA path (as with ``DHP_JAX_NATIVE=0``)."""
  before = os.environ.get(ENV_VAR)
  os.environ[ENV_VAR] = "0"
  available.cache_clear()
  try:
    yield
  finally:
    if before is None:
      del os.environ[ENV_VAR]
    else:
      os.environ[ENV_VAR] = before
    available.cache_clear()


def _int_attrs(**values) -> dict:
  return {name: np.int64(v) for name, v in values.items()}


def im2col(x: jax.Array, kernel_hw, padding) -> jax.Array:
  """x [..., H, W, C] float32 -> its patches [..., H', W', kh, kw, C] (``padding``:
  ((top, bottom), (left, right)), zeros outside x)."""
  (top, bottom), (left, right) = padding
  kh, kw = kernel_hw
  *lead, height, width, channels = x.shape
  rows, cols = height + top + bottom - kh + 1, width + left + right - kw + 1
  out = jax.ShapeDtypeStruct((*lead, rows, cols, kh, kw, channels), x.dtype)
  return jax.ffi.ffi_call("dhp_im2col", out, vmap_method="broadcast_all")(
      x, **_int_attrs(kh=kh, kw=kw, top=top, left=left, rows=rows, cols=cols))


def col2im(cotangent: jax.Array, padding, hw) -> jax.Array:
  """The patches' cotangent [..., H', W', kh, kw, C] -> the input's [..., H, W, C]
  (``hw`` = (H, W)), each pixel's terms added from the last window offset to the first."""
  (top, _), (left, _) = padding
  *lead, _, _, _, _, channels = cotangent.shape
  out = jax.ShapeDtypeStruct((*lead, *hw, channels), cotangent.dtype)
  return jax.ffi.ffi_call("dhp_col2im", out, vmap_method="broadcast_all")(
      cotangent, **_int_attrs(top=top, left=left))
