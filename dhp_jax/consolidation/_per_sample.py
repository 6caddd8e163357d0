"""Per-sample gradient statistics Σ_b Σ_k w_bk φ(J_bᵀu_bk), with the Dense/Conv
shortcut (see ``dhp_jax.consolidation.importance``). Private: the estimators use it."""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from dhp_jax import linen, ops
from dhp_jax.consolidation._checks import PyTree

_HEADS = tuple(linen.HEAD_MODULES.values())
# Layers whose parameters a local (layer-wise) MAS sees; their first argument is the input.
_LOCAL_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.ConvTranspose, nn.ConvLocal)


class _Shortcut(NamedTuple):
  """A Dense or 2-D Conv call whose kernel statistics skip per-sample autodiff.

  ``kernel``/``bias`` index the params leaves; ``out_shape`` is the call's output for
  one sample ([1, ...]); ``conv`` = (strides, padding, input_dilation, kernel_dilation).
  """
  kernel: int
  bias: Optional[int]
  out_shape: tuple
  conv: Optional[tuple] = None


_UNSEEN_LAYERS = ("apply_fn must call its Flax layers at trace time: do not pass a jitted "
                  "apply_fn (jit caches the trace and hides the layer calls; the estimators "
                  "jit themselves), and mas_local_importance needs Flax layers")


def _is_call(context, types) -> bool:
  return context.method_name == "__call__" and isinstance(context.module, types)


def _is_shortcut_call(context) -> bool:
  # Exact types: a subclass may compute something else with the same parameters.
  return context.method_name == "__call__" and type(context.module) in (nn.Dense, nn.Conv)


def _own_params(module) -> Mapping:
  return module.variables.get("params", {})


def _conv_config(module: nn.Conv) -> Optional[tuple]:
  """``lax`` arguments that reproduce a plain 2-D ``nn.Conv``, else None (no shortcut)."""
  if (module.feature_group_count != 1 or module.mask is not None
      or module.conv_general_dilated not in (None, ops.patch_conv)
      or module.conv_general_dilated_cls is not None):
    return None

  def pair(value):
    value = 1 if value is None else value
    return (value, value) if isinstance(value, int) else tuple(value)

  padding = module.padding
  if isinstance(padding, str):
    if padding not in ("SAME", "VALID"):
      return None
  elif isinstance(padding, int):
    padding = ((padding, padding),) * 2
  else:
    padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
  if not isinstance(padding, str) and (
      len(padding) != 2 or any(p < 0 for pads in padding for p in pads)):
    return None
  if pair(module.input_dilation) != (1, 1):
    return None
  return (pair(module.strides), padding, pair(module.input_dilation),
          pair(module.kernel_dilation))


def _local_interceptor(layer_outputs: list, head_seen: list):
  """Layer-wise MAS: every layer sees a stop-gradient input; heads act as their slow map.

  Each recognised layer's output goes to ``layer_outputs``, so ∂Σ_l‖y_l‖²/∂θ_l is the
  layer's own local gradient. A head (DHP / matched / plain softmax) is replaced by its
  slow linear map ``h·Σθ (+b)`` whose output continues to ``apply_fn``'s return value
  (so the task restriction of the logits applies to it).
  """
  def intercept(next_fun, args, kwargs, context):
    if _is_call(context, _HEADS):
      head_seen.append(True)
      own = _own_params(context.module)
      h = jax.lax.stop_gradient(args[0])
      out = h @ sum(v for k, v in own.items() if k.startswith("theta"))
      return out + own["bias"] if "bias" in own else out
    if _is_call(context, _LOCAL_LAYERS):
      out = next_fun(jax.lax.stop_gradient(args[0]), *args[1:], **kwargs)
      layer_outputs.append(out)
      return out
    return next_fun(*args, **kwargs)
  return intercept


def _shortcut_interceptor(plan: list, perturbations: list, layer_inputs: list):
  """Adds a zero perturbation to each planned Dense/Conv output and records its input.

  ``plan`` holds, per Dense/Conv call in call order, a ``_Shortcut`` or None; the
  gradient with respect to a perturbation is the cotangent δ at that layer's output.
  """
  slots = {i: slot for slot, i in enumerate(i for i, call in enumerate(plan) if call)}
  seen = []

  def intercept(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if _is_shortcut_call(context):
      i = len(seen)
      seen.append(i)
      if i >= len(plan):
        raise ValueError(_UNSEEN_LAYERS)
      if i in slots:
        layer_inputs.append(args[0])
        out = out + perturbations[slots[i]]
    return out
  return intercept


def _plan_shortcuts(out_fn, leaves, treedef, x, local: bool) -> list:
  """Which Dense/Conv calls in ``out_fn`` may take the shortcut (one abstract pass).

  A call qualifies when its kernel (and bias) are leaves of ``params`` used by this call
  only, and it sees one sample ([1, features] for Dense, [1, H, W, C] for Conv).
  """
  records = []

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if _is_shortcut_call(context):
      records.append((context.module, _own_params(context.module), jnp.shape(args[0]),
                      jnp.shape(out)))
    return out

  plan = []

  def trace(leaves, x):
    index = {id(leaf): i for i, leaf in enumerate(leaves)}
    with _interceptors(local, [], [], record):
      out_fn(treedef.unflatten(leaves), x)
    uses = {}
    for _, own, _, _ in records:
      for leaf in own.values():
        uses[id(leaf)] = uses.get(id(leaf), 0) + 1
    for module, own, in_shape, out_shape in records:
      kernel = index.get(id(own.get("kernel")))
      bias = index.get(id(own["bias"])) if "bias" in own else None
      rank = 2 if type(module) is nn.Dense else 4
      conv = _conv_config(module) if rank == 4 else None
      ok = (kernel is not None and jnp.ndim(leaves[kernel]) == rank
            and ("bias" not in own or bias is not None)
            and all(uses[id(leaf)] == 1 for leaf in own.values())
            and len(in_shape) == rank and in_shape[0] == 1 and len(out_shape) == rank
            and (rank == 2 or conv is not None))
      plan.append(_Shortcut(kernel, bias, out_shape, conv) if ok else None)

  jax.eval_shape(trace, leaves, x)
  return plan


def _interceptors(local: bool, layer_outputs: list, head_seen: list, shortcut):
  """Local MAS outermost, so the shortcut's perturbation lands inside what it records."""
  stack = contextlib.ExitStack()
  if local:
    stack.enter_context(nn.intercept_methods(_local_interceptor(layer_outputs, head_seen)))
  stack.enter_context(nn.intercept_methods(shortcut))
  return stack


def _shortcut_statistic(call: _Shortcut, a, delta, leaves, phi, weighted) -> tuple:
  """One sample's (left, right, bias) factors of a shortcut call's statistic.

  ``a``: the call's input [1, ...]; ``delta`` [K, out] / [K, H', W', out]: the
  cotangents at its output. Dense: the kernel's statistic is φ(a)ᵀ·Σ_k w φ(δ_k), formed
  after the batch sum; Conv: Σ_k w φ(patchesᵀ·δ_k) directly (left is None).
  """
  if call.conv is None:
    return phi(a[0]), weighted(delta), weighted(delta)
  strides, padding, _, dilation = call.conv
  patches = ops.conv_patches(a, jnp.shape(leaves[call.kernel])[:2], strides,
                                padding, dilation)[0]       # [H', W', kh, kw, C]
  kernel_grads = jnp.einsum("hwijc,khwo->kijco", patches, delta)
  return None, weighted(kernel_grads), weighted(delta.sum((1, 2)))


def per_sample_statistic(out_fn: Callable, cotangent_fn: Callable, phi: Callable,
                          params: PyTree, images: jax.Array, index: jax.Array,
                          valid: jax.Array, extras: PyTree, *, local: bool) -> PyTree:
  """(1/n) Σ_b Σ_k w_bk · φ(J_bᵀ u_bk), a pytree like ``params``.

  ``out_fn(params, x [...]) -> y`` is one sample's output (J = ∂y/∂θ);
  ``cotangent_fn(y, extra) -> (u [K, *y.shape], w [K])`` picks the cotangents and their
  weights. ``index`` [n_batches, batch_size] selects rows of ``images``; ``valid`` masks
  the padding; ``extras`` [N, ...] are per-sample inputs of ``cotangent_fn``.

  Shortcuts (φ is multiplicative: φ(ab) = φ(a)φ(b)): a Dense kernel's per-sample
  gradient is a⊗δ, so Σ_b φ(a_b)⊗Σ_k w φ(δ_bk) is one matmul per mini-batch; a Conv
  kernel's is patchesᵀ·δ, a matmul per sample instead of a vmapped transposed conv.
  """
  leaves, treedef = jax.tree.flatten(params)
  plan = _plan_shortcuts(out_fn, leaves, treedef, images[0], local)
  calls = [call for call in plan if call is not None]
  fast = {i for call in calls for i in (call.kernel, call.bias) if i is not None}
  generic = [i for i in range(len(leaves)) if i not in fast]

  def one_sample(x, extra, weight):
    def forward(generic_leaves, perturbations):
      full = list(leaves)
      for i, leaf in zip(generic, generic_leaves):
        full[i] = leaf
      layer_outputs, head_seen, layer_inputs = [], [], []
      shortcut = _shortcut_interceptor(plan, perturbations, layer_inputs)
      with _interceptors(local, layer_outputs, head_seen, shortcut):
        out = out_fn(treedef.unflatten(full), x)
      if len(layer_inputs) != len(calls) or (local and not (layer_outputs or head_seen)):
        raise ValueError(_UNSEEN_LAYERS)
      if local:   # the head's slow map is in `out` only if a head ran
        out = (out if head_seen else None, layer_outputs)
      return out, [jax.lax.stop_gradient(a) for a in layer_inputs]

    zeros = [jnp.zeros(call.out_shape, leaves[call.kernel].dtype) for call in calls]
    y, vjp_fn, inputs = jax.vjp(forward, [leaves[i] for i in generic], zeros,
                                has_aux=True)
    cotangents, weights = cotangent_fn(y, extra)
    weights = weights * weight
    grads, deltas = jax.vmap(vjp_fn)(cotangents)
    weighted = lambda g: jnp.tensordot(weights, phi(g), axes=1)
    return [weighted(g) for g in grads], [
        _shortcut_statistic(call, a, delta[:, 0], leaves, phi, weighted)
        for call, a, delta in zip(calls, inputs, deltas)]

  def body(total, batch):
    idx, ok = batch
    generic_sum, shortcut_sums = total
    g, stats = jax.vmap(one_sample)(images[idx], jax.tree.map(lambda e: e[idx], extras),
                                    ok.astype(images.dtype))
    generic_sum = [s + gi.sum(0) for s, gi in zip(generic_sum, g)]
    shortcut_sums = [
        (kernel + (right.sum(0) if left is None else left.T @ right), bias + db.sum(0))
        for (kernel, bias), (left, right, db) in zip(shortcut_sums, stats)]
    return (generic_sum, shortcut_sums), None

  init = ([jnp.zeros_like(leaves[i]) for i in generic],
          [(jnp.zeros_like(leaves[c.kernel]),
            jnp.zeros(c.out_shape[-1:], leaves[c.kernel].dtype)) for c in calls])
  (generic_sum, shortcut_sums), _ = jax.lax.scan(body, init, (index, valid))
  count = jnp.maximum(valid.sum(), 1).astype(images.dtype)
  result = list(leaves)
  for i, s in zip(generic, generic_sum):
    result[i] = s / count
  for call, (kernel, bias) in zip(calls, shortcut_sums):
    result[call.kernel] = kernel / count
    if call.bias is not None:
      result[call.bias] = (bias / count).reshape(jnp.shape(leaves[call.bias]))
  return treedef.unflatten(result)


def check_images(images) -> None:
  if jnp.ndim(images) < 2 or not jnp.issubdtype(jnp.result_type(images), jnp.floating):
    raise ValueError(f"images must be a float array [N, ...] (preprocessed), got dtype "
                     f"{jnp.result_type(images)} and shape {jnp.shape(images)}")
  if jnp.shape(images)[0] < 1:
    raise ValueError("images must hold at least one sample, got 0")


def check_count(name: str, value, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1{' or None' if allow_none else ''}, "
                     f"got {value!r}")


def sample_batches(num_images: int, num_samples: Optional[int], batch_size: int, key, *,
                   shuffle: bool = False):
  """Sample indices as [n_batches, batch_size] plus a validity mask for the padding.

  ``num_samples`` < N takes a random subset without replacement when ``key`` is given,
  else an evenly strided one (deterministic, and spread over class-sorted data). All N
  samples come in their order unless ``shuffle`` (and a ``key``): for estimates whose
  value depends on which samples share a mini-batch.
  """
  n = num_images if num_samples is None else min(num_samples, num_images)
  if n == num_images and not (shuffle and key is not None):
    chosen = jnp.arange(n)
  elif key is not None:
    chosen = jax.random.choice(key, num_images, (n,), replace=False)
  else:
    chosen = (jnp.arange(n) * num_images) // n
  batch_size = min(batch_size, n)
  padded = -(-n // batch_size) * batch_size
  index = jnp.zeros((padded,), jnp.int32).at[:n].set(chosen)
  valid = jnp.arange(padded) < n
  return index.reshape(-1, batch_size), valid.reshape(-1, batch_size)


def single_output(apply_fn: Callable) -> Callable:
  """One sample's logits [C] from ``apply_fn(params, x[None]) -> [1, C]``."""
  def out_fn(params, x):
    logits = apply_fn(params, x[None])
    if jnp.ndim(logits) != 2:
      raise ValueError(f"apply_fn must return logits [batch, classes], got shape "
                       f"{jnp.shape(logits)}")
    return logits[0]
  return out_fn


