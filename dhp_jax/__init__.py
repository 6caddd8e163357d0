"""dhp_jax: Differentiable Hebbian Consolidation for continual learning in JAX/Flax."""
from dhp_jax import benchmarks, consolidation, data, metrics, models, training
from dhp_jax.consolidation import (PRESETS, fisher_diagonal, mas_importance,
                                   mas_local_importance, quadratic_penalty, set_penalty,
                                   si_importance, slow_weights_mask, track_path_integral)
from dhp_jax.hebbian import (DHPParams, alpha_initializer, dhp_apply, dhp_init,
                             hebb_update, init_hebb, theta_initializer)
from dhp_jax.layers import DHPSoftmax, MatchedSoftmax, Softmax
from dhp_jax.metrics import average_accuracy, backward_transfer, forward_transfer
from dhp_jax.models import CNN, MLP, make_head, restrict_logits
from dhp_jax.training import Config, make_config, train_and_evaluate

__version__ = "0.1.0"
