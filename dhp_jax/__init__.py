"""dhp_jax: Differentiable Hebbian Consolidation for continual learning in JAX/Flax.

The core (``hebbian``: the pure DHP function and its state; ``ops``) has two parallel
front ends with the same heads, networks and parameter paths: ``dhp_jax.linen``
(re-exported here) and ``dhp_jax.nnx``.
"""
from dhp_jax import (config, consolidation, data, engine, heads_spec, hebbian, linen,
                     metrics, ops, results, seeds, store, streams, training)
from dhp_jax.config import Config, make_config
from dhp_jax.consolidation import (fisher_diagonal, mas_importance, mas_local_importance,
                                   quadratic_penalty, set_penalty, si_importance,
                                   slow_weights_mask, track_path_integral)
from dhp_jax.engine import NonFiniteError, extend_seeds, train_and_evaluate
from dhp_jax.hebbian import (DHPParams, alpha_initializer, dhp_apply, dhp_init,
                             hebb_update, init_hebb, theta_initializer)
from dhp_jax.linen import CNN, MLP, DHPSoftmax, MatchedSoftmax, Softmax, make_head
from dhp_jax.metrics import average_accuracy, backward_transfer, forward_transfer
from dhp_jax.ops import restrict_logits
from dhp_jax.store import StoreError

__version__ = "0.1.0"

# Imported on first use: ``nnx`` because flax.nnx is a second import a linen-only run
# never needs; ``layers`` and ``models``, the linen front end's old paths, because only
# old code reads them.
_LAZY = ("nnx", "layers", "models")


def __getattr__(name):
  if name in _LAZY:
    import importlib
    return importlib.import_module(f"dhp_jax.{name}")
  raise AttributeError(f"module 'dhp_jax' has no attribute {name!r}")
