"""The public names: the two front ends (``dhp_jax.linen``, ``dhp_jax.nnx``) and every
name users imported before the layout of issue 19, old module paths included."""
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import dhp_jax
from dhp_jax import heads_spec, linen, ops

ROOT = Path(__file__).resolve().parent.parent

# The public names of each module as of 509bfac (``dir()`` minus imported modules and
# typing names), before the linen/ and nnx/ packages.
BEFORE = {
    "dhp_jax": (
        "CNN", "Config", "DHPParams", "DHPSoftmax", "MLP", "MatchedSoftmax",
        "NonFiniteError", "Softmax", "StoreError", "alpha_initializer", "average_accuracy",
        "backward_transfer", "config", "consolidation", "data", "dhp_apply", "dhp_init",
        "engine", "extend_seeds", "fisher_diagonal", "forward_transfer", "hebb_update",
        "hebbian", "init_hebb", "layers", "make_config", "make_head", "mas_importance",
        "mas_local_importance", "metrics", "models", "nnx", "ops", "quadratic_penalty",
        "restrict_logits", "results", "seeds", "set_penalty", "si_importance",
        "slow_weights_mask", "store", "streams", "theta_initializer",
        "track_path_integral", "train_and_evaluate", "training"),
    "dhp_jax.nnx": (
        "CNN", "DHPSoftmax", "HebbTrace", "MLP", "MatchedSoftmax", "Softmax", "ensemble",
        "make_head", "split_apply", "update_opt_state"),
}
# The old linen paths: name → where it lives now.
MOVED = {
    "dhp_jax.layers": {"DHPSoftmax": linen, "MatchedSoftmax": linen, "Softmax": linen,
                       "HEBB_COLLECTION": linen},
    "dhp_jax.models": {"CNN": linen, "MLP": linen, "make_head": linen,
                       "HEAD_MODULES": linen, "HEADS": heads_spec,
                       "patch_conv": ops, "restrict_logits": ops, "torch_kernel_init": ops},
}


@pytest.mark.parametrize("module,name", [(m, n) for m, names in BEFORE.items()
                                         for n in names])
def test_name_users_imported_before_still_resolves(module, name):
  assert getattr(importlib.import_module(module), name) is not None


@pytest.mark.parametrize("old,name", [(m, n) for m, names in MOVED.items() for n in names])
def test_old_module_path_forwards_to_the_new_home_with_a_warning(old, name):
  module = importlib.import_module(old)
  with pytest.warns(DeprecationWarning, match=f"{old}.{name} is now"):
    assert getattr(module, name) is getattr(MOVED[old][name], name)


def test_old_module_path_has_no_other_names():
  with pytest.raises(AttributeError, match="no_such_name"):
    dhp_jax.models.no_such_name   # pylint: disable=pointless-statement


def test_front_ends_are_parallel():
  nnx = importlib.import_module("dhp_jax.nnx")
  for front_end in (linen, nnx):
    assert tuple(front_end.HEAD_MODULES) == heads_spec.HEADS
    for head, cls in front_end.HEAD_MODULES.items():
      assert cls is getattr(front_end, heads_spec.HEAD_CLASSES[head])
  assert dhp_jax.DHPSoftmax is linen.DHPSoftmax and dhp_jax.MLP is linen.MLP
  assert nnx.DHPSoftmax is not linen.DHPSoftmax


# Run apart: a fresh interpreter sees every import-time use of an old path, and
# ``import dhp_jax`` must not import flax.nnx.
_FRESH = """
import sys, warnings
warnings.filterwarnings("error", category=DeprecationWarning,
                        module=r"(dhp_jax|experiments|examples|benchmarks)(\\.|$)")
import jax, optax
import dhp_jax
assert "flax.nnx" not in sys.modules and "dhp_jax.nnx" not in sys.modules
from dhp_jax import config as config_lib, training
config = config_lib.make_config("permuted_mnist", "quick", "si", hidden=(8,))
model = training.make_model(config, 10)
optimizer = training.make_optimizer(config)
state = training.create_state(jax.random.key(0), model, (784,), optimizer)
batch = (jax.numpy.zeros((4, 784)), jax.numpy.arange(4), jax.numpy.ones(4, bool))
training.train_step(state, batch, model=model, optimizer=optimizer)
import dhp_jax.nnx, experiments.run, experiments.table1, experiments.eta_sweep
import experiments.instability, experiments.label_leak, experiments.replay_divergence
print("ok")
"""


def test_package_imports_and_a_training_step_use_no_old_path_and_no_nnx():
  result = subprocess.run([sys.executable, "-c", _FRESH], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
  assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
