r"""PROTOTYPE, not used by dhp_jax: what the vision CNN's epoch would gain from a conv
block (conv → bias → leaky ReLU → 2×2 max pool) whose backward is written by hand.

  python benchmarks/conv_block_prototype.py --prototype_out=results/conv_block_prototype.json

Why a prototype (BUILD_NOTES §4.1, session 13): XLA:CPU recomputes the pool's and the
leaky ReLU's backward inside each consumer of the conv output's cotangent (the bias
gradient, the transposed operand of the kernel gradient, the pool backward), each a
single-threaded loop. ``conv_block_prototype.cc`` writes that cotangent, its transpose and
the bias gradient in one pass. The bias gradient's sums then run in another order than
XLA's, so landing it changes the last bits of every CNN run; and the consolidation
estimators' Conv shortcut and layer-wise MAS recognise ``nn.Conv`` calls, which a fused
block would hide. This script measures, on real CIFAR-10 images as
``benchmarks/throughput.py`` does: the gradients' agreement with autodiff of the current
CNN (bias sums against a float64 reference), and the epoch's samples/s, current vs block,
at 1 and 4 seeds in alternating rounds (best of ``--prototype_rounds``).
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import os
import subprocess
import sys
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags

import programs
import throughput
from dhp_jax import linen, native, ops

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "conv_block_prototype.cc")
# (throughput.py's flags, --out among them, are defined too: these have their own names.)
_OUT = flags.DEFINE_string("prototype_out", "results/conv_block_prototype.json",
                           "Where to write the JSON.")
_ROUNDS = flags.DEFINE_integer("prototype_rounds", 6, "Alternating timed rounds (best is "
                               "kept).", lower_bound=1)


def register_kernel() -> None:
  """Compiles ``SOURCE`` with ``dhp_jax.native``'s flags and registers it with XLA."""
  library = os.path.join(tempfile.mkdtemp(prefix="conv_block_"), "block.so")
  # -fno-trapping-math (no value changes) lets the branch-free selects vectorize: ~20×.
  subprocess.run([os.environ.get("CXX", "c++"), *native.FLAGS, "-fno-trapping-math",
                  f"-I{jax.ffi.include_dir()}", SOURCE, "-o", library], check=True,
                 capture_output=True)
  handler = ctypes.cdll.LoadLibrary(library).ProtoBlockGrad
  jax.ffi.register_ffi_target("proto_block_grad", jax.ffi.pycapsule(handler), platform="cpu")


def _block_grad(z, pooled, cotangent, slope):
  """(dz [B, H, W, C], dz transposed [C, B·H·W], bias gradient [C]) from the kernel."""
  batch, height, width, channels = z.shape
  shapes = ((z.shape, z.dtype), ((channels, batch * height * width), z.dtype),
            ((channels,), z.dtype))
  return jax.ffi.ffi_call("proto_block_grad", [jax.ShapeDtypeStruct(*s) for s in shapes],
                          vmap_method="broadcast_all")(z, pooled, cotangent,
                                                       slope=np.float32(slope))


def _forward(x, kernel, bias, slope):
  """(patches [B·H'·W', kh·kw·Cin], pre-activation z, pooled), as the current CNN."""
  kh, kw, _, out = kernel.shape
  patches = ops.conv_patches(x, (kh, kw))
  flat = patches.reshape(-1, patches.shape[3] * patches.shape[4] * patches.shape[5])
  z = jnp.dot(flat, kernel.reshape(-1, out)).reshape(*patches.shape[:3], out) + bias
  return flat, z, ops.max_pool(jax.nn.leaky_relu(z, slope), (2, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def conv_block(x, kernel, bias, slope):
  """max_pool(leaky_relu(conv_valid(x, kernel) + bias), 2×2): x [B, H, W, Cin]."""
  return _forward(x, kernel, bias, slope)[2]


def _conv_block_forward(x, kernel, bias, slope):
  flat, z, pooled = _forward(x, kernel, bias, slope)
  return pooled, (x, flat, z, pooled, kernel)


def _conv_block_backward(slope, residuals, cotangent):
  x, flat, z, pooled, kernel = residuals
  kh, kw, cin, out = kernel.shape
  dz, dz_t, d_bias = _block_grad(z, pooled, cotangent, slope)
  d_kernel = jnp.dot(dz_t, flat).T.reshape(kernel.shape)
  d_patches = jnp.dot(dz.reshape(-1, out), kernel.reshape(-1, out).T)
  d_x = native.col2im(d_patches.reshape(*z.shape[:3], kh, kw, cin), ((0, 0), (0, 0)),
                      x.shape[1:3])
  return d_x, d_kernel, d_bias


conv_block.defvjp(_conv_block_forward, _conv_block_backward)


class ConvBlock(nn.Module):
  """``nn.Conv``'s parameters (names, shapes, init) and ``conv_block``."""
  features: int
  negative_slope: float

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", ops.torch_kernel_init, (5, 5, x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    return conv_block(x, kernel, bias, self.negative_slope)


class BlockCNN(linen.CNN):
  """``linen.CNN`` with its two conv stages as ``ConvBlock``s: the same parameters."""

  @nn.compact
  def __call__(self, x, labels=None, *, mask=None):
    h = x
    for i, channels in enumerate(self.features):
      h = ConvBlock(channels, self.negative_slope, name=f"conv_{i}")(h)
    h = nn.Dense(self.hidden, kernel_init=ops.torch_kernel_init,
                 name="dense")(h.reshape((h.shape[0], -1)))
    return linen.make_head(self.head, self.num_classes, eta_init=self.eta_init,
                           alpha_scale=self.alpha_scale, theta_init=self.theta_init,
                           use_bias=self.use_bias)(nn.leaky_relu(h, self.negative_slope),
                                                   labels, mask=mask)


def _conv_cotangents(model, params, x, loss):
  """The cotangent of ``loss(logits)`` at each ``nn.Conv`` call's output (its bias
  gradient's summands)."""
  shapes = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Conv) and context.method_name == "__call__":
      shapes.append(out.shape)
    return out

  with nn.intercept_methods(record):
    model.apply(params, x)

  def perturbed(zeros):
    slots = iter(zeros)

    def add(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      is_conv = isinstance(context.module, nn.Conv) and context.method_name == "__call__"
      return out + next(slots) if is_conv else out

    with nn.intercept_methods(add):
      return loss(model.apply(params, x))

  return jax.grad(perturbed)([jnp.zeros(s) for s in shapes])


def gradient_agreement(host) -> dict:
  """Per parameter, max |block − current| of one batch's gradient (matched head), and
  each conv bias gradient's max error against the float64 sum of its summands."""
  x = jnp.asarray(host["images"][:throughput.CNN_BATCH])
  y = jnp.asarray(host["labels"][:throughput.CNN_BATCH])
  current = linen.CNN(num_classes=10, head="matched")
  block = BlockCNN(num_classes=10, head="matched")
  params = current.init(jax.random.key(0), x)
  loss = lambda logits: optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  grads = {name: jax.jit(jax.grad(lambda p, m=m: loss(m.apply(p, x))))(params)
           for name, m in (("block", block), ("current", current))}
  report = {jax.tree_util.keystr(path): float(jnp.max(jnp.abs(a - b))) for (path, a), b in
            zip(jax.tree_util.tree_leaves_with_path(grads["block"]),
                jax.tree.leaves(grads["current"]))}
  for i, dz in enumerate(_conv_cotangents(current, params, x, loss)):
    exact = np.asarray(dz, np.float64).reshape(-1, dz.shape[-1]).sum(0)
    for name, g in grads.items():
      error = np.abs(np.asarray(g["params"][f"conv_{i}"]["bias"], np.float64) - exact).max()
      report[f"conv_{i} bias: {name} vs float64 sum"] = float(error)
  return report


def main(argv):
  del argv
  if jax.default_backend() != "cpu" or not native.available():
    sys.exit("conv_block_prototype: CPU with dhp_jax.native's kernels only")
  register_kernel()
  roofline = throughput.matmul_roofline([2048, 4096], 3)["flops_per_s"]
  steps = 100
  base, split, host = throughput.cnn_split(steps)
  agreement = gradient_agreement(host)
  runners, current = {}, linen.CNN
  for seeds in (1, 4):
    config = dataclasses.replace(base, head="dhp", num_seeds=seeds)
    for name, cls in (("current", current), ("block", BlockCNN)):
      linen.CNN = cls   # training.make_model reads linen.CNN
      program, state, (keys, _, perms), _ = programs.epoch_program(config, seeds)
      runners[f"{name}_{seeds}"] = (seeds, throughput._timed(program, state, keys, split,
                                                             perms))
  linen.CNN = current
  best = throughput.round_robin({k: run for k, (_, run) in runners.items()}, _ROUNDS.value)
  flops = 6 * throughput.cnn_macs()
  rows = {k: throughput.throughput_row(s * steps * throughput.CNN_BATCH, best[k], flops,
                                       roofline, num_seeds=s) for k, (s, _) in runners.items()}
  throughput.print_rows(rows)
  ratios = {f"block_over_current_{s}": rows[f"block_{s}"]["samples_per_s"]
            / rows[f"current_{s}"]["samples_per_s"] for s in (1, 4)}
  print(json.dumps({"gradient_max_abs_diff": agreement, **ratios}, indent=1))
  with open(_OUT.value, "w") as f:
    json.dump({"roofline_flops_per_s": roofline, "rows": rows, "ratios": ratios,
               "gradient_max_abs_diff": agreement, "rounds": _ROUNDS.value}, f, indent=1)


if __name__ == "__main__":
  app.run(main)
