"""The method registry: name → how to build its optax chain, what to do at a task's end.

The engine looks a method up here and never branches on its name; adding a method is one
entry in ``METHODS`` (plus its tests). ``hyper`` is any object with the attributes a
method reads (``dhp_jax.config.Config`` in the engine): ``lr``, ``strength``, ``si_xi``,
``ewc_gamma``, ``fisher_mode``, ``mas_variant``, ``batch_size``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import optax

from dhp_jax.consolidation import importance as estimators
from dhp_jax.consolidation import path_integral, penalty
from dhp_jax.consolidation._checks import PyTree

# Mini-batch of the per-sample estimators' vmap: it fixes their float summation order,
# so it stays what every recorded run used ('batch' Fisher uses the training batch).
_ESTIMATOR_CHUNK = 256


class TaskEnd(NamedTuple):
  """What a method may use at the end of a task (one seed, inside the engine's jit).

  opt_state: the optimizer state at the task's end.
  params: θ after the task; task_start_params: θ at its start (SI's Δθ).
  apply_fn: ``(params, x [B, ...]) -> logits [B, C]`` restricted to the task's outputs,
    the Hebb trace used as is (not updated).
  images: float [N, ...] training inputs of the task, labels: int [N] indices into
    apply_fn's outputs — None unless the method ``uses_task_data``.
  key: PRNG key for the estimators.
  """
  opt_state: Any
  params: PyTree
  task_start_params: PyTree
  apply_fn: Callable
  images: Optional[jax.Array]
  labels: Optional[jax.Array]
  key: jax.Array


class Method(NamedTuple):
  """label: the method's name in tables; optimizer(hyper) -> the optax chain (SGD
  included); end_task(TaskEnd, hyper) -> the optimizer state for the next task (None:
  nothing to do); hyperparameters: the ``hyper`` fields it reads beyond ``lr``;
  stability(opt_state, params) -> {layer: largest Ω} of its penalty, which the engine
  records as lr·λ·Ω after every task (None: no penalty to record)."""
  label: str
  optimizer: Callable[[Any], optax.GradientTransformation]
  end_task: Optional[Callable[[TaskEnd, Any], Any]] = None
  uses_task_data: bool = False
  hyperparameters: tuple = ()
  stability: Optional[Callable[[Any, PyTree], dict]] = None

  @property
  def penalised(self) -> bool:
    """Whether the optimizer holds a ``QuadraticPenaltyState``."""
    return self.end_task is not None


def _sgd(hyper) -> optax.GradientTransformation:
  return optax.sgd(hyper.lr)


def _penalised_sgd(hyper) -> optax.GradientTransformation:
  return optax.chain(penalty.quadratic_penalty(hyper.strength), optax.sgd(hyper.lr))


def _si_optimizer(hyper) -> optax.GradientTransformationExtraArgs:
  # SI wraps the whole chain so its path integral sees the *unregularised* gradient (as
  # the original pathint code) and the applied update.
  return path_integral.track_path_integral(_penalised_sgd(hyper))


def _fisher(end: TaskEnd, hyper) -> PyTree:
  chunk = hyper.batch_size if hyper.fisher_mode == "batch" else _ESTIMATOR_CHUNK
  return estimators.fisher_diagonal(end.apply_fn, end.params, end.images, end.labels,
                                    mode=hyper.fisher_mode, batch_size=chunk, key=end.key)


def _ewc_end(end: TaskEnd, hyper):
  current = penalty.get_penalty(end.opt_state)
  importance, anchor = estimators.ewc_accumulate(current.importance, current.anchor,
                                                 _fisher(end, hyper), end.params)
  return penalty.set_penalty(end.opt_state, importance=importance, anchor=anchor)


def _online_ewc_end(end: TaskEnd, hyper):
  current = penalty.get_penalty(end.opt_state)
  importance, anchor = estimators.online_ewc_accumulate(
      current.importance, _fisher(end, hyper), end.params, hyper.ewc_gamma)
  return penalty.set_penalty(end.opt_state, importance=importance, anchor=anchor)


def _si_end(end: TaskEnd, hyper):
  current = penalty.get_penalty(end.opt_state)
  importance, anchor = path_integral.si_accumulate(
      current.importance, path_integral.get_omega(end.opt_state), end.params,
      end.task_start_params, hyper.si_xi)
  opt_state = path_integral.reset_omega(end.opt_state)
  return penalty.set_penalty(opt_state, importance=importance, anchor=anchor)


def _mas_end(end: TaskEnd, hyper):
  current = penalty.get_penalty(end.opt_state)
  new = estimators.MAS_ESTIMATORS[hyper.mas_variant](end.apply_fn, end.params, end.images)
  importance, anchor = estimators.mas_accumulate(current.importance, new, end.params)
  return penalty.set_penalty(end.opt_state, importance=importance, anchor=anchor)


_PENALISED = dict(stability=penalty.largest_importance)

METHODS = {
    "finetune": Method("Finetune", _sgd),
    # EWC (Kirkpatrick et al. 2017), one penalty per past task collapsed to O(1) memory.
    "ewc": Method("EWC", _penalised_sgd, _ewc_end, uses_task_data=True,
                  hyperparameters=("strength", "fisher_mode"), **_PENALISED),
    # Online EWC (Schwarz et al. 2018): Ω ← γΩ + F.
    "online_ewc": Method("Online EWC", _penalised_sgd, _online_ewc_end, uses_task_data=True,
                         hyperparameters=("strength", "ewc_gamma", "fisher_mode"),
                         **_PENALISED),
    # SI (Zenke et al. 2017): Ω accrues during the task; nothing estimated at its end.
    "si": Method("SI", _si_optimizer, _si_end, hyperparameters=("strength", "si_xi"),
                 **_PENALISED),
    # MAS (Aljundi et al. 2018), global or layer-wise (Hebbian).
    "mas": Method("MAS", _penalised_sgd, _mas_end, uses_task_data=True,
                  hyperparameters=("strength", "mas_variant"), **_PENALISED),
}
