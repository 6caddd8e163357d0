"""experiments/label_leak.py: the probe of a training pass that reads its labels."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dhp_jax import config as config_lib, training
from experiments import cli, label_leak

CONFIG = config_lib.make_config("permuted_mnist", "quick", "finetune", head="dhp")


def _dhp_state(alpha: float, eta: float):
  model = training.make_model(CONFIG, 10)
  state = training.create_state(jax.random.key(0), model, (28, 28, 1),
                                training.make_optimizer(CONFIG))
  head = dict(state.params["head"], alpha=jnp.full_like(state.params["head"]["alpha"], alpha),
              eta=jnp.asarray(eta, jnp.float32))
  return model, dict(state.params, head=head), state.hebb


def _batches(nb=4, b=16):
  x = jax.random.normal(jax.random.key(1), (nb, b, 28, 28, 1))
  return x, jax.random.randint(jax.random.key(2), (nb, b), 0, 10)


def test_wrong_labels_move_one_class_on_within_the_task():
  labels = jnp.array([20, 25, 29])
  np.testing.assert_array_equal(label_leak.wrong_labels(labels, (20, 30)), [21, 26, 20])
  np.testing.assert_array_equal(label_leak.wrong_labels(jnp.array([9, 0]), None), [0, 1])


def test_with_alpha_zero_both_passes_agree():
  model, params, hebb = _dhp_state(alpha=0.0, eta=0.5)
  x, labels = _batches()
  got = label_leak.probe(params, hebb, x, labels, model=model)
  predicted = jnp.argmax(jax.vmap(lambda xb: model.apply(
      {"params": params, "hebb": hebb}, xb))(x), -1)
  assert float(got["train"]) == float(got["eval"]) == float(jnp.mean(predicted == labels))
  assert float(got["follows_wrong"]) == pytest.approx(
      float(jnp.mean(predicted == label_leak.wrong_labels(labels, None))))


def test_a_large_alpha_makes_the_training_pass_follow_the_labels():
  model, params, hebb = _dhp_state(alpha=1e3, eta=1.0)
  x, labels = _batches()
  got = label_leak.probe(params, hebb, x, labels, model=model)
  assert float(got["train"]) > 0.9 and float(got["follows_wrong"]) > 0.9
  assert float(got["eval"]) < 0.2   # untrained: near chance without the labels


def test_bad_folders_are_named(tmp_path):
  args = ["label_leak.py", "--noprogress", "--jax_cache_dir="]
  with pytest.raises(SystemExit) as exit_:
    cli.main(label_leak.run, label_leak.define_flags,
             [*args, f"--table_dir={tmp_path / 'none'}"])
  assert str(exit_.value.code).startswith(f"error: --table_dir={tmp_path / 'none'} is not")
  (tmp_path / "dhp").mkdir()
  with pytest.raises(SystemExit) as exit_:
    cli.main(label_leak.run, label_leak.define_flags,
             [*args, f"--table_dir={tmp_path}", "--rows=dhp,si"])
  assert "--rows: no folder ['si']" in str(exit_.value.code)
  assert "rows there: ['dhp']" in str(exit_.value.code)


def test_a_row_without_saved_state_is_refused_before_loading_data(tmp_path):
  row = tmp_path / "dhp"
  row.mkdir()   # a fresh clone's row: results.json only
  (row / "results.json").write_text(json.dumps(
      {"config": CONFIG.to_json(), "completed_tasks": 1, "num_tasks": 10}))
  with pytest.raises(ValueError, match="holds results but no saved state"):
    label_leak.row_leak(str(row), 32, data_dir=str(tmp_path / "no_data"))
