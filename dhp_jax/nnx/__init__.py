"""The Flax NNX front end: heads and the paper's networks over the shared core
(``dhp_jax.hebbian``, ``dhp_jax.ops``), with the names and parameter paths of the linen
front end (``dhp_jax.linen``), so ``nnx.update(model, linen_params)`` loads a linen model.

``heads``     ``DHPSoftmax``, ``MatchedSoftmax``, ``Softmax``; the trace variable
              ``HebbTrace``.
``networks``  ``MLP``, ``CNN``; ``make_head`` and ``HEAD_MODULES`` (names from
              ``heads_spec.HEADS``).
``glue``      ``split_apply``, ``update_opt_state``, ``ensemble``: NNX modules with the
              pure consolidation code and ``nnx.vmap``.

``dhp_jax`` imports this package on first use only: flax.nnx is a second import a
linen-only run never needs.
"""
from dhp_jax.nnx.glue import ensemble, split_apply, update_opt_state
from dhp_jax.nnx.heads import DHPSoftmax, HebbTrace, MatchedSoftmax, Softmax
from dhp_jax.nnx.networks import CNN, HEAD_MODULES, MLP, make_head
