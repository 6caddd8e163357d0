"""Consolidation of the slow weights: EWC, Online EWC, SI and MAS (paper §II, §IV-B).

Loss on task n (paper Eq. 1/4): ``L̃ = Lⁿ + λ Σ_k Ω_k (θ_k − θ*_k)²`` over the slow weights
of the whole network only — never the DHP plasticity coefficients α, the Hebbian rate η or
the Hebb trace (not a parameter at all). The penalty acts on gradients, as an optax
transformation, so its gradient is ``2·λ·Ω·(θ − θ*)`` (factor 2, no ½).

Public API (all pure; every state is a NamedTuple, so jit/vmap/tree_get/tree_set work):

Masks and the penalty
  ``slow_weights_mask(params)``        pytree of bool: False exactly on DHP α and η.
  ``quadratic_penalty(strength)``      optax transformation adding 2λΩ(θ−θ*) to the slow
                                       weights' gradients; state ``QuadraticPenaltyState``.
  ``track_path_integral(inner)``       SI wrapper: ω += −g⊙u around ``inner``; state
                                       ``PathIntegralState(omega, inner_state)``.
  ``get_penalty(opt_state)``           the ``QuadraticPenaltyState`` inside any optimizer state.
  ``set_penalty(opt_state, *, importance=None, anchor=None)``  new Ω / θ* (optax tree_set).
  ``get_omega(opt_state)`` / ``reset_omega(opt_state)``        SI's running ω.

Importance estimators (``apply_fn(params, x [B, ...]) -> logits [B, C]``, already
restricted to the task's outputs; ``images`` float [N, ...], preprocessed)
  ``fisher_diagonal(apply_fn, params, images, labels=None, *, mode, num_samples,
                    batch_size, key)``  diagonal Fisher ('exact' | 'empirical' | 'sample').
  ``mas_importance(apply_fn, params, images, *, num_samples, batch_size, key)``
                                       mean_x |∂‖f(x)‖²/∂θ| (Aljundi et al. 2018).
  ``mas_local_importance(...)``        same arguments; layer-wise (Hebbian) MAS.
  ``si_importance(omega, params, anchor, xi)``  ω / ((θ − θ*)² + ξ) (Zenke et al. 2017).

Task-boundary accumulators — each returns the new ``(importance, anchor)`` pair for
``set_penalty``
  ``ewc_accumulate(importance, anchor, fisher, params)``       EWC, one penalty per task,
                                                              collapsed to O(1) memory.
  ``online_ewc_accumulate(importance, fisher, params, gamma=1.0)``  Ω ← γΩ + F.
  ``si_accumulate(importance, omega, params, anchor, xi)``     Ω ← max(Ω + ω/(Δ²+ξ), 0).
  ``mas_accumulate(importance, mas, params)``                  Ω ← Ω + Ω_MAS.

``PRESETS[benchmark][method]``: the paper's λ (``strength``) and SI ξ (``xi``), SPEC §3.

Cost of the estimators. Every estimator is a sum over samples of an elementwise function φ
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

import contextlib
import functools
import math
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dhp_jax import layers, models
from dhp_jax.hebbian import DHPParams

PyTree = Any

FISHER_MODES = ("exact", "empirical", "sample")
METHODS = ("ewc", "online_ewc", "si", "mas")

# SPEC §3 (paper Appendix A). 'ewc' has no column in the paper: we use the Online EWC λ.
PRESETS = {
    "permuted_mnist": {
        "online_ewc": {"strength": 100.0}, "ewc": {"strength": 100.0},
        "si": {"strength": 0.1, "xi": 0.1}, "mas": {"strength": 0.1}},
    "imbalanced_permuted_mnist": {
        "online_ewc": {"strength": 400.0}, "ewc": {"strength": 400.0},
        "si": {"strength": 1.0, "xi": 0.1}, "mas": {"strength": 0.1}},
    "split_mnist": {
        "online_ewc": {"strength": 400.0}, "ewc": {"strength": 400.0},
        "si": {"strength": 1.0, "xi": 0.001}, "mas": {"strength": 1.5}},
    "vision_mixture": {
        "online_ewc": {"strength": 100.0}, "ewc": {"strength": 100.0},
        "si": {"strength": 0.1, "xi": 0.1}, "mas": {"strength": 1.0}},
}

_PLASTIC_FIELDS = ("alpha", "eta")
_HEADS = (layers.DHPSoftmax, layers.MatchedSoftmax, layers.Softmax)
# Layers whose parameters a local (layer-wise) MAS sees; their first argument is the input.
_LOCAL_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Conv, nn.ConvTranspose, nn.ConvLocal)


# ----------------------------------------------------------------------------- checks

def _is_tracer(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _check_nonnegative(name: str, value) -> None:
  if _is_tracer(value):
    return
  if not (math.isfinite(float(value)) and float(value) >= 0):
    raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_positive(name: str, value) -> None:
  if not _is_tracer(value) and not (math.isfinite(float(value)) and float(value) > 0):
    raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_like(name: str, tree: PyTree, reference: PyTree, reference_name: str = "params"):
  """Raises ValueError unless ``tree`` has the structure and leaf shapes of ``reference``."""
  structure, expected = jax.tree.structure(tree), jax.tree.structure(reference)
  if structure != expected:
    raise ValueError(f"{name} must have the same pytree structure as {reference_name}; "
                     f"expected {expected}, got {structure}")
  for (path, leaf), ref in zip(jax.tree_util.tree_leaves_with_path(tree),
                               jax.tree.leaves(reference)):
    if jnp.shape(leaf) != jnp.shape(ref):
      raise ValueError(f"{name}{jax.tree_util.keystr(path)} must have shape "
                       f"{jnp.shape(ref)} like {reference_name}, got {jnp.shape(leaf)}")


# ------------------------------------------------------------------------ slow weights

def _key_name(key) -> Any:
  return getattr(key, "key", getattr(key, "name", getattr(key, "idx", None)))


def _is_dhp_node(node) -> bool:
  """A DHP head's parameters: ``DHPParams`` or a Flax ``DHPSoftmax`` params dict."""
  return isinstance(node, DHPParams) or (
      isinstance(node, Mapping) and "theta" in node and "alpha" in node)


def slow_weights_mask(params: PyTree) -> PyTree:
  """True for every slow weight, False for the DHP plastic parameters α and η.

  Args:
    params: any parameter pytree (Flax params dict, ``DHPParams``, nested mixes).
  Returns:
    A pytree of Python bools with the structure of ``params``: False exactly for the
    ``alpha``/``eta`` entries of a ``DHPParams`` or of a dict holding both ``theta`` and
    ``alpha`` (a ``DHPSoftmax`` params dict), wherever it sits; True for everything else
    (kernels, biases, θ, θ₁, θ₂). The Hebb trace is not a parameter and never appears.
  """
  def mask_node(path, node):
    del path
    if not _is_dhp_node(node):
      return True
    return jax.tree_util.tree_map_with_path(
        lambda sub, _: _key_name(sub[0]) not in _PLASTIC_FIELDS, node)

  return jax.tree_util.tree_map_with_path(mask_node, params, is_leaf=_is_dhp_node)


# ----------------------------------------------------------------------------- penalty

class QuadraticPenaltyState(NamedTuple):
  """Ω and θ* of the quadratic penalty; both have the structure of the params."""
  importance: PyTree   # Ω ≥ 0
  anchor: PyTree       # θ*


def quadratic_penalty(strength: float) -> optax.GradientTransformation:
  """Adds ``2·λ·Ω·(θ − θ*)`` to the gradient of every slow weight (paper Eq. 1/4).

  That is the gradient of ``λ Σ_k Ω_k (θ_k − θ*_k)²`` (no ½). α and η (see
  ``slow_weights_mask``, decided from the params' structure at update time) pass through
  untouched. The state starts at Ω = 0, θ* = 0 (no penalty); set both between tasks with
  ``set_penalty``. Use as ``optax.chain(quadratic_penalty(λ), optax.sgd(lr))``.

  Args:
    strength: λ ≥ 0 (a traced value is accepted, e.g. under ``optax.inject_hyperparams``).
  """
  _check_nonnegative("strength", strength)

  def init_fn(params):
    return QuadraticPenaltyState(importance=optax.tree_utils.tree_zeros_like(params),
                                 anchor=optax.tree_utils.tree_zeros_like(params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("params must be passed to the update of quadratic_penalty "
                       "(optimizer.update(grads, opt_state, params)), got None")
    _check_like("updates", updates, params)
    _check_like("importance", state.importance, params)
    _check_like("anchor", state.anchor, params)

    def add_penalty(slow, g, omega, anchor, theta):
      if not slow:
        return g
      return g + (2 * strength * omega * (theta - anchor)).astype(g.dtype)

    updates = jax.tree.map(add_penalty, slow_weights_mask(params), updates,
                           state.importance, state.anchor, params)
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def _field_of(tuple_name: str):
  """tree_get/tree_set filter: only the fields of our own NamedTuple state."""
  def keep(path, value):
    del value
    return bool(path) and isinstance(path[-1], optax.tree_utils.NamedTupleKey) and (
        path[-1].tuple_name == tuple_name)
  return keep


def _find_state(opt_state, cls, builder: str):
  try:
    found = optax.tree_utils.tree_get(opt_state, cls.__name__)
  except KeyError as error:
    raise ValueError(f"opt_state holds more than one {cls.__name__}") from error
  if not isinstance(found, cls):
    raise ValueError(f"opt_state holds no {cls.__name__}: build the optimizer with "
                     f"{builder}")
  return found


def get_penalty(opt_state) -> QuadraticPenaltyState:
  """The ``QuadraticPenaltyState`` inside a (chained, wrapped, nested) optimizer state."""
  return _find_state(opt_state, QuadraticPenaltyState, "quadratic_penalty(...)")


def set_penalty(opt_state, *, importance: Optional[PyTree] = None,
                anchor: Optional[PyTree] = None):
  """Returns ``opt_state`` with the penalty's Ω and/or θ* replaced (others unchanged).

  Built on ``optax.tree_utils.tree_set``, restricted to the fields of
  ``QuadraticPenaltyState`` so a params entry that happens to be named ``anchor`` is safe.
  Jit-able; works inside ``optax.chain``, ``track_path_integral`` and other wrappers.
  """
  current = get_penalty(opt_state)
  values = {}
  for name, value in (("importance", importance), ("anchor", anchor)):
    if value is not None:
      _check_like(name, value, getattr(current, name), "the penalty state (the params)")
      values[name] = value
  if not values:
    return opt_state
  return optax.tree_utils.tree_set(opt_state, _field_of(QuadraticPenaltyState.__name__),
                                   **values)


# ---------------------------------------------------------------------------------- SI

class PathIntegralState(NamedTuple):
  """SI's running path integral ω (structure of the params) and the wrapped state."""
  omega: PyTree
  inner_state: Any


def track_path_integral(inner: optax.GradientTransformation
                        ) -> optax.GradientTransformationExtraArgs:
  """Wraps ``inner`` and accumulates ``ω += −g ⊙ u`` at every step (Zenke et al. 2017).

  g is the gradient entering the wrapper and u the update ``inner`` returns (the applied
  parameter change Δθ with ``optax.apply_updates``). Put the penalty inside ``inner`` so g
  is the *unregularised* task-loss gradient, as in the original pathint code:
  ``track_path_integral(optax.chain(quadratic_penalty(λ), optax.sgd(lr)))``.
  ω is tracked for every leaf; the penalty alone decides which leaves are penalised.
  """
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    return PathIntegralState(omega=optax.tree_utils.tree_zeros_like(params),
                             inner_state=inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    new_updates, inner_state = inner.update(updates, state.inner_state, params,
                                            **extra_args)
    omega = jax.tree.map(lambda w, g, u: w - g * u, state.omega, updates, new_updates)
    return new_updates, PathIntegralState(omega=omega, inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def get_omega(opt_state) -> PyTree:
  """SI's ω inside a (wrapped) optimizer state built with ``track_path_integral``."""
  return _find_state(opt_state, PathIntegralState, "track_path_integral(...)").omega


def reset_omega(opt_state):
  """Returns ``opt_state`` with ω set to zero (start of a task)."""
  omega = get_omega(opt_state)
  return optax.tree_utils.tree_set(opt_state, _field_of(PathIntegralState.__name__),
                                   omega=optax.tree_utils.tree_zeros_like(omega))


def si_importance(omega: PyTree, params: PyTree, anchor: PyTree, xi: float) -> PyTree:
  """SI's per-task importance ``ω / ((θ − θ*)² + ξ)`` (Zenke et al. 2017, Eq. 5).

  Args:
    omega: the task's path integral (``get_omega``), structure of ``params``.
    params: θ at the end of the task.
    anchor: θ at the start of the task.
    xi: damping ξ > 0.
  """
  _check_positive("xi", xi)
  _check_like("omega", omega, params)
  _check_like("anchor", anchor, params)
  return jax.tree.map(lambda w, theta, start: w / ((theta - start) ** 2 + xi),
                      omega, params, anchor)


def si_accumulate(importance: PyTree, omega: PyTree, params: PyTree, anchor: PyTree,
                  xi: float) -> tuple[PyTree, PyTree]:
  """SI at a task boundary: ``(max(Ω + si_importance(...), 0), params)``.

  Ω is summed over tasks; the clip at 0 follows the original pathint code (a negative Ω
  would push θ away from θ*). Reset ω afterwards (``reset_omega``).
  """
  _check_like("importance", importance, params)
  new = si_importance(omega, params, anchor, xi)
  return jax.tree.map(lambda old, add: jnp.maximum(old + add, 0), importance, new), params


# ------------------------------------------------------------------- EWC / Online EWC / MAS

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
    _check_like(name, tree, params)

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
  if not _is_tracer(gamma) and not 0.0 <= float(gamma) <= 1.0:
    raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}")
  _check_like("importance", importance, params)
  _check_like("fisher", fisher, params)
  return jax.tree.map(lambda old, f: gamma * old + f, importance, fisher), params


def mas_accumulate(importance: PyTree, mas: PyTree, params: PyTree
                   ) -> tuple[PyTree, PyTree]:
  """MAS at a task boundary: ``(Ω + Ω_MAS, params)`` — summed over tasks, as the original."""
  _check_like("importance", importance, params)
  _check_like("mas", mas, params)
  return jax.tree.map(jnp.add, importance, mas), params


# ------------------------------------------------------- per-sample gradient statistics

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
      or module.conv_general_dilated not in (None, models.patch_conv)
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


def _per_sample_statistic(out_fn: Callable, cotangent_fn: Callable, phi: Callable,
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
    stats = []
    for call, a, delta in zip(calls, inputs, deltas):
      delta = delta[:, 0]                                      # [K, out] / [K, H', W', out]
      if call.conv is None:    # kernel from (φ(a), Σ_k w φ(δ_k)) after the batch sum
        stats.append((phi(a[0]), weighted(delta), weighted(delta)))
      else:
        strides, padding, _, dilation = call.conv
        patches = models.conv_patches(a, jnp.shape(leaves[call.kernel])[:2], strides,
                                      padding, dilation)[0]       # [H', W', kh, kw, C]
        kernel_grads = jnp.einsum("hwijc,khwo->kijco", patches, delta)
        stats.append((None, weighted(kernel_grads), weighted(delta.sum((1, 2)))))
    return [weighted(g) for g in grads], stats

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


def _check_images(images) -> None:
  if jnp.ndim(images) < 2 or not jnp.issubdtype(jnp.result_type(images), jnp.floating):
    raise ValueError(f"images must be a float array [N, ...] (preprocessed), got dtype "
                     f"{jnp.result_type(images)} and shape {jnp.shape(images)}")
  if jnp.shape(images)[0] < 1:
    raise ValueError("images must hold at least one sample, got 0")


def _check_count(name: str, value, allow_none: bool = False) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1{' or None' if allow_none else ''}, "
                     f"got {value!r}")


def _sample_batches(num_images: int, num_samples: Optional[int], batch_size: int, key):
  """Sample indices as [n_batches, batch_size] plus a validity mask for the padding.

  ``num_samples`` < N takes a random subset without replacement when ``key`` is given,
  else an evenly strided one (deterministic, and spread over class-sorted data).
  """
  n = num_images if num_samples is None else min(num_samples, num_images)
  if n == num_images:
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


def _single_output(apply_fn: Callable) -> Callable:
  """One sample's logits [C] from ``apply_fn(params, x[None]) -> [1, C]``."""
  def out_fn(params, x):
    logits = apply_fn(params, x[None])
    if jnp.ndim(logits) != 2:
      raise ValueError(f"apply_fn must return logits [batch, classes], got shape "
                       f"{jnp.shape(logits)}")
    return logits[0]
  return out_fn


def fisher_diagonal(apply_fn: Callable, params: PyTree, images: jax.Array,
                    labels: Optional[jax.Array] = None, *, mode: str = "exact",
                    num_samples: Optional[int] = None, batch_size: int = 256,
                    key: Optional[jax.Array] = None) -> PyTree:
  """Diagonal of the Fisher information, averaged over samples (EWC's Ω).

  With p = softmax(apply_fn(params, x)) and g_c = ∂ log p_c/∂θ per sample:
    'exact':     mean_x Σ_c p_c g_c²    — expectation under the model's predictive
                 distribution (C per-sample backward passes; the reference choice);
    'empirical': mean_x g_y²            — y = the true label;
    'sample':    mean_x g_ŷ²            — one ŷ ~ p per sample (needs ``key``).

  Args:
    apply_fn: ``(params, x [B, ...]) -> logits [B, C]``, restricted to the task's outputs.
      Pass it unjitted so its Dense/Conv layers can take the shortcut (module docstring).
    params: the parameters to differentiate (any pytree).
    images: float [N, ...] preprocessed inputs.
    labels: int [N] in [0, C), indices into apply_fn's outputs; needed for 'empirical'.
    mode: 'exact' | 'empirical' | 'sample'.
    num_samples: use this many of the N inputs (random with ``key``, else evenly
      strided); None = all. The way to bound cost.
    batch_size: per-sample gradients are vmapped over mini-batches of this size.
    key: PRNG key for 'sample' and for random subsampling.
  Returns:
    A pytree like ``params``: float, ≥ 0.
  """
  if mode not in FISHER_MODES:
    raise ValueError(f"mode must be one of {FISHER_MODES}, got {mode!r}")
  _check_images(images)
  _check_count("num_samples", num_samples, allow_none=True)
  _check_count("batch_size", batch_size)
  num_images = jnp.shape(images)[0]
  if mode == "empirical":
    if labels is None:
      raise ValueError("labels are required for mode='empirical', got None")
  if labels is not None:
    if jnp.shape(labels) != (num_images,) or not jnp.issubdtype(
        jnp.result_type(labels), jnp.integer):
      raise ValueError(f"labels must be int [{num_images}] like images, got "
                       f"{jnp.result_type(labels)} {jnp.shape(labels)}")
    if not _is_tracer(labels) and int(jnp.min(labels)) < 0:
      raise ValueError(f"labels must be >= 0 (indices into apply_fn's outputs), got "
                       f"min {int(jnp.min(labels))}")
  if mode == "sample" and key is None:
    raise ValueError("key is required for mode='sample', got None")
  subset_key, sample_key = (None, None) if key is None else jax.random.split(key)

  if mode == "exact":
    def cotangents(log_p, extra):
      del extra
      return jnp.eye(log_p.shape[0], dtype=log_p.dtype), jnp.exp(log_p)
  elif mode == "empirical":
    def cotangents(log_p, extra):
      label, _ = extra
      return jax.nn.one_hot(label, log_p.shape[0], dtype=log_p.dtype)[None], jnp.ones(1)
  else:
    def cotangents(log_p, extra):
      _, position = extra
      drawn = jax.random.categorical(jax.random.fold_in(sample_key, position), log_p)
      return jax.nn.one_hot(drawn, log_p.shape[0], dtype=log_p.dtype)[None], jnp.ones(1)

  logits_fn = _single_output(apply_fn)
  out_fn = lambda p, x: jax.nn.log_softmax(logits_fn(p, x))
  if labels is not None and not _is_tracer(labels):
    num_classes = jax.eval_shape(out_fn, params, images[0]).shape[0]
    if int(jnp.max(labels)) >= num_classes:
      raise ValueError(f"labels must lie in [0, {num_classes}) (apply_fn's outputs), got "
                       f"max {int(jnp.max(labels))}")
  extras = (jnp.zeros((num_images,), jnp.int32) if labels is None else labels,
            jnp.arange(num_images))
  index, valid = _sample_batches(num_images, num_samples, batch_size, subset_key)
  run = jax.jit(functools.partial(_per_sample_statistic, out_fn, cotangents, jnp.square,
                                  local=False))
  return run(params, images, index, valid, extras)


def _mas(apply_fn, params, images, num_samples, batch_size, key, local: bool) -> PyTree:
  _check_images(images)
  _check_count("num_samples", num_samples, allow_none=True)
  _check_count("batch_size", batch_size)

  def cotangents(y, extra):     # ∂‖y‖²/∂y = 2y
    del extra
    return jax.tree.map(lambda v: 2 * v[None], y), jnp.ones(1)

  index, valid = _sample_batches(jnp.shape(images)[0], num_samples, batch_size, key)
  extras = jnp.zeros((jnp.shape(images)[0],), jnp.int32)
  run = jax.jit(functools.partial(_per_sample_statistic, _single_output(apply_fn),
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
