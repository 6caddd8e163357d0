"""dhp_jax: Differentiable Hebbian Consolidation for continual learning in JAX/Flax."""
from dhp_jax.hebbian import (DHPParams, alpha_initializer, dhp_apply, dhp_init,
                             hebb_update, init_hebb, theta_initializer)
from dhp_jax.layers import DHPSoftmax, MatchedSoftmax, Softmax
from dhp_jax.models import CNN, MLP, make_head, restrict_logits

__version__ = "0.1.0"
