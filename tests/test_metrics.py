"""dhp_jax.metrics against the formulas written out by hand."""
import numpy as np
import pytest

from dhp_jax import metrics

R = np.array([[0.9, 0.1, 0.2],
              [0.7, 0.8, 0.15],
              [0.6, 0.5, 0.95]])


def test_average_accuracy_and_curve():
  assert metrics.average_accuracy(R) == pytest.approx((0.6 + 0.5 + 0.95) / 3)
  np.testing.assert_allclose(metrics.average_accuracy_curve(R),
                             [0.9, (0.7 + 0.8) / 2, (0.6 + 0.5 + 0.95) / 3])


def test_bwt_and_fwt():
  assert metrics.backward_transfer(R) == pytest.approx(((0.6 - 0.9) + (0.5 - 0.8)) / 2)
  assert metrics.backward_transfer(R[:1, :1]) == 0.0
  init = [0.1, 0.12, 0.09]
  assert metrics.forward_transfer(R, init) == pytest.approx(((0.1 - 0.12) + (0.15 - 0.09)) / 2)


def test_mean_and_sem():
  mean, sem = metrics.mean_and_sem([1.0, 2.0, 4.0])
  assert mean == pytest.approx(7 / 3)
  assert sem == pytest.approx(np.std([1, 2, 4], ddof=1) / np.sqrt(3))
  assert metrics.mean_and_sem([0.5]) == (0.5, 0.0)


def test_bad_input():
  with pytest.raises(ValueError, match="accuracy_matrix"):
    metrics.backward_transfer(np.ones((2, 3)))
  with pytest.raises(ValueError, match="init_accuracy"):
    metrics.forward_transfer(R, [0.1])
  with pytest.raises(ValueError, match="values"):
    metrics.mean_and_sem([])
