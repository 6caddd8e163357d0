"""dhp_jax: Differentiable Hebbian Consolidation for continual learning in JAX/Flax."""
from dhp_jax import (config, consolidation, data, engine, metrics, models, ops, results,
                     seeds, store, streams, training)
from dhp_jax.config import Config, make_config
from dhp_jax.consolidation import (fisher_diagonal, mas_importance, mas_local_importance,
                                   quadratic_penalty, set_penalty, si_importance,
                                   slow_weights_mask, track_path_integral)
from dhp_jax.engine import NonFiniteError, extend_seeds, train_and_evaluate
from dhp_jax.hebbian import (DHPParams, alpha_initializer, dhp_apply, dhp_init,
                             hebb_update, init_hebb, theta_initializer)
from dhp_jax.layers import DHPSoftmax, MatchedSoftmax, Softmax
from dhp_jax.metrics import average_accuracy, backward_transfer, forward_transfer
from dhp_jax.models import CNN, MLP, make_head, restrict_logits
from dhp_jax.store import StoreError

__version__ = "0.1.0"


def __getattr__(name):
  # ``dhp_jax.nnx`` on first use: flax.nnx is a second import a linen-only run never needs.
  if name == "nnx":
    import importlib
    return importlib.import_module("dhp_jax.nnx")
  raise AttributeError(f"module 'dhp_jax' has no attribute {name!r}")
