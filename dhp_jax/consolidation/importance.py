"""Importance estimators (EWC's Fisher, MAS) and the task-boundary accumulators.

Estimators take ``apply_fn(params, x [B, ...]) -> logits [B, C]``, already restricted to
the task's outputs, and ``images`` float [N, ...], preprocessed.

Cost. Every per-sample estimator is a sum over samples of an elementwise function φ
(square for the Fisher, abs for MAS) of per-sample gradients ``Jᵀu`` (u: one cotangent per
class for the exact Fisher, one in total otherwise), computed with ``jax.vmap`` over the
samples of a mini-batch and ``lax.scan`` over mini-batches. Materialising per-sample
gradients costs N·K·P memory traffic (K cotangents, P parameters): ~8 min for the exact
Fisher of the 784-400-400-10 MLP on 60k samples. So the ``flax.linen.Dense`` and 2-D
``nn.Conv`` calls made inside ``apply_fn`` (exact types, kernel used by that call only)
take a shortcut. δ, the cotangent at a layer's output, is read as the gradient of a zero
perturbation added there (Flax method interception); the kernel itself is never
differentiated per sample. Dense: the per-sample kernel gradient is a⊗δ (a: the input)
and φ(a⊗δ) = φ(a)⊗φ(δ) for φ ∈ {square, abs}, so the sum over samples is one matmul
φ(A)ᵀ·Σ_k w_k φ(Δ_k). Conv: patchesᵀ·δ, one small matmul per sample. Everything else
(heads, other layers, plain functions) uses plain per-sample gradients; peak memory per
mini-batch ≈ batch_size·K·(their size). Measured on 2 CPU cores, 60k MNIST, that MLP:
exact Fisher 14–16 s, empirical 4.4 s, MAS 5.3 s. A jitted ``apply_fn`` hides its layer
calls: correct results through the slow path (``mas_local_importance`` refuses it).
"""
from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from dhp_jax.consolidation._checks import PyTree, check_like, is_tracer
from dhp_jax.consolidation._per_sample import (check_count, check_images,
                                               per_sample_statistic, sample_batches,
                                               single_output)

FISHER_MODES = ("exact", "empirical", "sample", "batch")


def ewc_accumulate(importance: PyTree, anchor: PyTree, fisher: PyTree,
                   params: PyTree) -> tuple[PyTree, PyTree]:
  """EWC (Kirkpatrick et al. 2017) with one penalty per past task, in O(1) memory.

  Σ_t Ω_t(θ−θ*_t)² has gradient 2(Aθ − B) with A = Σ_t Ω_t, B = Σ_t Ω_t θ*_t, which is
  the gradient of A(θ − B/A)². So the state keeps Ω = A and θ* = B/A (θ* = params where
  A = 0, where it does not matter). Valid for Ω ≥ 0 and states produced by this function
  (or the zero initial state).

  Returns:
    ``(importance + fisher, new_anchor)``.
  """
  for name, tree in (("importance", importance), ("anchor", anchor), ("fisher", fisher)):
    check_like(name, tree, params)

  new_importance = jax.tree.map(jnp.add, importance, fisher)

  def collapsed_anchor(a, star, f, theta, total):
    weighted = a * star + f * theta                   # B = Σ_t Ω_t θ*_t
    positive = total > 0
    return jnp.where(positive, weighted / jnp.where(positive, total, 1), theta)

  new_anchor = jax.tree.map(collapsed_anchor, importance, anchor, fisher, params,
                            new_importance)
  return new_importance, new_anchor


def online_ewc_accumulate(importance: PyTree, fisher: PyTree, params: PyTree,
                          gamma: float = 1.0) -> tuple[PyTree, PyTree]:
  """Online EWC (Schwarz et al. 2018): ``(γ·Ω + F, params)``; γ ∈ [0, 1]."""
  if not is_tracer(gamma) and not 0.0 <= float(gamma) <= 1.0:
    raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}")
  check_like("importance", importance, params)
  check_like("fisher", fisher, params)
  return jax.tree.map(lambda old, f: gamma * old + f, importance, fisher), params


def mas_accumulate(importance: PyTree, mas: PyTree, params: PyTree
                   ) -> tuple[PyTree, PyTree]:
  """MAS at a task boundary: ``(Ω + Ω_MAS, params)`` — summed over tasks, as the original."""
  check_like("importance", importance, params)
  check_like("mas", mas, params)
  return jax.tree.map(jnp.add, importance, mas), params


def fisher_diagonal(apply_fn: Callable, params: PyTree, images: jax.Array,
                    labels: Optional[jax.Array] = None, *, mode: str = "exact",
                    num_samples: Optional[int] = None, batch_size: int = 256,
                    key: Optional[jax.Array] = None) -> PyTree:
  """Diagonal of the Fisher information, averaged over samples (EWC's Ω).

  With p = softmax(apply_fn(params, x)) and g_c = ∂ log p_c/∂θ per sample:
    'exact':     mean_x Σ_c p_c g_c²    — expectation under the model's predictive
                 distribution (C per-sample backward passes; the reference choice);
    'empirical': mean_x g_y²            — y = the true label;
    'sample':    mean_x g_ŷ²            — one ŷ ~ p per sample (needs ``key``);
    'batch':     mean_B (mean_{x∈B} g_y)² — the square of each mini-batch's *mean*
                 gradient (B: ``batch_size`` samples, shuffled with ``key``), as many
                 public EWC implementations compute it: roughly ``batch_size`` times
                 smaller than 'empirical' once the per-sample gradients decorrelate.

  Args:
    apply_fn: ``(params, x [B, ...]) -> logits [B, C]``, restricted to the task's outputs.
      Pass it unjitted so its Dense/Conv layers can take the shortcut (module docstring).
    params: the parameters to differentiate (any pytree).
    images: float [N, ...] preprocessed inputs.
    labels: int [N] in [0, C), indices into apply_fn's outputs; needed for 'empirical'
      and 'batch'.
    mode: one of ``FISHER_MODES``.
    num_samples: use this many of the N inputs (random with ``key``, else evenly
      strided); None = all. The way to bound cost.
    batch_size: per-sample gradients are vmapped over mini-batches of this size; for
      'batch' it is the mini-batch whose mean gradient is squared (part of the estimate).
    key: PRNG key for 'sample', for random subsampling and for the 'batch' shuffle.
  Returns:
    A pytree like ``params``: float, ≥ 0.
  """
  _check_fisher_arguments(apply_fn, params, images, labels, mode, num_samples, batch_size,
                          key)
  num_images = jnp.shape(images)[0]
  subset_key, sample_key = (None, None) if key is None else jax.random.split(key)
  index, valid = sample_batches(num_images, num_samples, batch_size, subset_key,
                                shuffle=mode == "batch")
  if mode == "batch":
    return jax.jit(_mean_gradient_fisher, static_argnums=0)(apply_fn, params, images,
                                                            labels, index, valid)
  logits_fn = single_output(apply_fn)
  out_fn = lambda p, x: jax.nn.log_softmax(logits_fn(p, x))
  extras = (jnp.zeros((num_images,), jnp.int32) if labels is None else labels,
            jnp.arange(num_images))
  run = jax.jit(functools.partial(per_sample_statistic, out_fn,
                                  _fisher_cotangents(mode, sample_key), jnp.square,
                                  local=False))
  return run(params, images, index, valid, extras)


def _check_fisher_arguments(apply_fn, params, images, labels, mode, num_samples,
                            batch_size, key) -> None:
  if mode not in FISHER_MODES:
    raise ValueError(f"mode must be one of {FISHER_MODES}, got {mode!r}")
  check_images(images)
  check_count("num_samples", num_samples, allow_none=True)
  check_count("batch_size", batch_size)
  if mode in ("empirical", "batch") and labels is None:
    raise ValueError(f"labels are required for mode={mode!r}, got None")
  if mode == "sample" and key is None:
    raise ValueError("key is required for mode='sample', got None")
  if labels is None:
    return
  num_images = jnp.shape(images)[0]
  if jnp.shape(labels) != (num_images,) or not jnp.issubdtype(
      jnp.result_type(labels), jnp.integer):
    raise ValueError(f"labels must be int [{num_images}] like images, got "
                     f"{jnp.result_type(labels)} {jnp.shape(labels)}")
  if is_tracer(labels):
    return
  if int(jnp.min(labels)) < 0:
    raise ValueError(f"labels must be >= 0 (indices into apply_fn's outputs), got "
                     f"min {int(jnp.min(labels))}")
  num_classes = jax.eval_shape(single_output(apply_fn), params, images[0]).shape[0]
  if int(jnp.max(labels)) >= num_classes:
    raise ValueError(f"labels must lie in [0, {num_classes}) (apply_fn's outputs), got "
                     f"max {int(jnp.max(labels))}")


def _fisher_cotangents(mode: str, sample_key) -> Callable:
  """``(log_p [C], (label, position)) -> (u [K, C], w [K])`` of a per-sample mode."""
  def exact(log_p, extra):
    del extra
    return jnp.eye(log_p.shape[0], dtype=log_p.dtype), jnp.exp(log_p)

  def empirical(log_p, extra):
    label, _ = extra
    return jax.nn.one_hot(label, log_p.shape[0], dtype=log_p.dtype)[None], jnp.ones(1)

  def sample(log_p, extra):
    _, position = extra
    drawn = jax.random.categorical(jax.random.fold_in(sample_key, position), log_p)
    return jax.nn.one_hot(drawn, log_p.shape[0], dtype=log_p.dtype)[None], jnp.ones(1)

  return {"exact": exact, "empirical": empirical, "sample": sample}[mode]


def _mean_gradient_fisher(apply_fn, params, images, labels, index, valid) -> PyTree:
  """mean over the mini-batches of ``index`` [nb, B] of (∇ mean_b log p_{y_b})²."""
  def body(total, batch):
    idx, ok = batch

    def mean_log_likelihood(p):
      log_p = jax.nn.log_softmax(apply_fn(p, images[idx]))
      picked = jnp.take_along_axis(log_p, labels[idx][:, None], axis=1)[:, 0]
      return jnp.sum(jnp.where(ok, picked, 0.0)) / jnp.maximum(jnp.sum(ok), 1)

    grads = jax.grad(mean_log_likelihood)(params)
    return jax.tree.map(lambda t, g: t + jnp.square(g), total, grads), None

  total, _ = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (index, valid))
  return jax.tree.map(lambda t: t / index.shape[0], total)


def _mas(apply_fn, params, images, num_samples, batch_size, key, local: bool) -> PyTree:
  check_images(images)
  check_count("num_samples", num_samples, allow_none=True)
  check_count("batch_size", batch_size)

  def cotangents(y, extra):     # ∂‖y‖²/∂y = 2y
    del extra
    return jax.tree.map(lambda v: 2 * v[None], y), jnp.ones(1)

  index, valid = sample_batches(jnp.shape(images)[0], num_samples, batch_size, key)
  extras = jnp.zeros((jnp.shape(images)[0],), jnp.int32)
  run = jax.jit(functools.partial(per_sample_statistic, single_output(apply_fn),
                                  cotangents, jnp.abs, local=local))
  return run(params, images, index, valid, extras)


def mas_importance(apply_fn: Callable, params: PyTree, images: jax.Array, *,
                   num_samples: Optional[int] = None, batch_size: int = 256,
                   key: Optional[jax.Array] = None) -> PyTree:
  """MAS importance ``mean_x |∂‖f(x)‖²₂/∂θ|`` (Aljundi et al. 2018), f = the logits.

  Per-sample gradients (abs taken per sample, then averaged), unlabeled.
  Arguments as ``fisher_diagonal``. Returns a pytree like ``params``, ≥ 0.
  """
  return _mas(apply_fn, params, images, num_samples, batch_size, key, local=False)


def mas_local_importance(apply_fn: Callable, params: PyTree, images: jax.Array, *,
                         num_samples: Optional[int] = None, batch_size: int = 256,
                         key: Optional[jax.Array] = None) -> PyTree:
  """Local (layer-wise, Hebbian) MAS: each layer l's parameters get
  ``mean_x |∂‖y_l(x)‖²₂/∂θ_l|`` with the layer's input h_l held fixed (Aljundi et al.
  2018, §4.2). For a dense layer y = hW + b that is mean |2·h_i·y_j| and mean |2·y_j|.

  Layers: every ``nn.Dense``/``DenseGeneral``/``Conv``/``ConvTranspose``/``ConvLocal``
  called inside ``apply_fn`` (output = its pre-activation), and the output head, which
  counts as the slow linear map h·θ (+b) (θ₁+θ₂ for the matched head), restricted like
  ``apply_fn``'s logits. α, η and parameters of other layer types get 0. ``apply_fn``
  must run Flax modules, unjitted (else ValueError). Arguments as ``mas_importance``.
  """
  return _mas(apply_fn, params, images, num_samples, batch_size, key, local=True)


# The MAS variants by name ('local' = layer-wise, Hebbian MAS).
MAS_ESTIMATORS = {"global": mas_importance, "local": mas_local_importance}
MAS_VARIANTS = tuple(MAS_ESTIMATORS)
