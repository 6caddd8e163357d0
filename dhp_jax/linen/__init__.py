"""The Flax linen front end: heads and the paper's networks over the shared core
(``dhp_jax.hebbian``, ``dhp_jax.ops``). ``dhp_jax.nnx`` is the NNX front end, with the
same names and parameter paths.

``heads``     ``DHPSoftmax``, ``MatchedSoftmax``, ``Softmax``; the trace collection
              ``HEBB_COLLECTION``.
``networks``  ``MLP``, ``CNN``; ``make_head`` and ``HEAD_MODULES`` (names from
              ``heads_spec.HEADS``).
"""
from dhp_jax.linen.heads import HEBB_COLLECTION, DHPSoftmax, MatchedSoftmax, Softmax
from dhp_jax.linen.networks import CNN, HEAD_MODULES, MLP, make_head
