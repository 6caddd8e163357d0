"""Consolidation of the slow weights: EWC, Online EWC, SI and MAS (paper §II, §IV-B).

Loss on task n (paper Eq. 1/4): ``L̃ = Lⁿ + λ Σ_k Ω_k (θ_k − θ*_k)²`` over the slow weights
of the whole network only — never the DHP plasticity coefficients α, the Hebbian rate η or
the Hebb trace (not a parameter at all). The penalty acts on gradients, as an optax
transformation, so its gradient is ``2·λ·Ω·(θ − θ*)`` (factor 2, no ½).

Modules (public API re-exported here; all pure, every state a NamedTuple, so
jit/vmap/tree_get/tree_set work):

``penalty``
  ``slow_weights_mask(params)``        pytree of bool: False exactly on DHP α and η.
  ``quadratic_penalty(strength, mask=None)``  optax transformation adding 2λΩ(θ−θ*) to
                                       the slow weights' gradients (or ``mask``'s leaves);
                                       state ``QuadraticPenaltyState``.
  ``get_penalty(opt_state)``           the ``QuadraticPenaltyState`` inside any optimizer state.
  ``set_penalty(opt_state, *, importance=None, anchor=None)``  new Ω / θ* (optax tree_set).
  ``largest_importance(opt_state, params)``  {slow-weight layer: largest Ω} (stability).
``constraints`` (DHP α and η; at the end of a chain)
  ``plastic_mask(params, field)``      pytree of bool: True exactly on DHP ``field`` leaves.
  ``freeze(field)``                    zero updates (``optax.masked(set_to_zero)``).
  ``project(field, low, high)``        updates cut so the stored value stays in [low, high].
``path_integral`` (SI, Zenke et al. 2017)
  ``track_path_integral(inner)``       ω += −g⊙u around ``inner``; state
                                       ``PathIntegralState(omega, inner_state)``.
  ``get_omega(opt_state)`` / ``reset_omega(opt_state)``        SI's running ω.
  ``si_importance(omega, params, anchor, xi)``  ω / ((θ − θ*)² + ξ).
  ``si_accumulate(importance, omega, params, anchor, xi)``     Ω ← max(Ω + ω/(Δ²+ξ), 0).
``importance`` (``apply_fn(params, x [B, ...]) -> logits [B, C]``, restricted to the
task's outputs; ``images`` float [N, ...], preprocessed)
  ``fisher_diagonal(apply_fn, params, images, labels=None, *, mode, ...)``  diagonal
                                       Fisher ('exact' | 'empirical' | 'sample' | 'batch').
  ``mas_importance`` / ``mas_local_importance``  MAS, global / layer-wise (Aljundi 2018).
  ``ewc_accumulate`` (EWC collapsed to O(1) memory), ``online_ewc_accumulate`` (Ω ← γΩ + F),
  ``mas_accumulate`` (Ω ← Ω + Ω_MAS): each returns ``(importance, anchor)``.
``methods``
  ``METHODS``: the registry, name → ``Method`` (how to build its optax chain, what to do
  at the end of a task). Adding a method is one entry there.
"""
from dhp_jax.consolidation.constraints import freeze, plastic_mask, project
from dhp_jax.consolidation.importance import (FISHER_MODES, MAS_VARIANTS, ewc_accumulate,
                                              fisher_diagonal, mas_accumulate,
                                              mas_importance, mas_local_importance,
                                              online_ewc_accumulate)
from dhp_jax.consolidation.methods import METHODS, Method, TaskEnd
from dhp_jax.consolidation.path_integral import (PathIntegralState, get_omega, reset_omega,
                                                 si_accumulate, si_importance,
                                                 track_path_integral)
from dhp_jax.consolidation.penalty import (QuadraticPenaltyState, get_penalty,
                                           largest_importance, quadratic_penalty,
                                           set_penalty, slow_weights_mask)
