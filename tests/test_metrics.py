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


def test_paired_difference_over_shared_seeds():
  first = {0: 3.0, 1: 5.0, 2: 4.0, 7: 1.0}   # seed 7 and seed 9 have no partner
  second = {0: 1.0, 1: 2.0, 2: 4.5, 9: 0.0}
  paired = metrics.paired_difference(first, second)
  # Differences 2, 3, -0.5: mean 1.5, sample variance (0.25 + 2.25 + 4) / 2 = 3.25.
  sem = (3.25 / 3) ** 0.5
  t_975_2dof = 4.302652729749462   # Student t table, 2 degrees of freedom
  assert paired["seeds"] == [0, 1, 2] and paired["n"] == 3
  np.testing.assert_allclose(paired["differences"], [2.0, 3.0, -0.5])
  assert paired["mean"] == pytest.approx(1.5)
  assert paired["sem"] == pytest.approx(sem)
  assert paired["ci95"] == pytest.approx((1.5 - t_975_2dof * sem, 1.5 + t_975_2dof * sem))
  assert paired["wins"] == 2


def test_paired_difference_ties_are_not_wins_and_equal_differences_have_no_width():
  paired = metrics.paired_difference({0: 2.0, 1: 3.0, 2: 1.0}, {0: 1.0, 1: 2.0, 2: 0.0})
  assert paired["wins"] == 3 and paired["ci95"] == pytest.approx((1.0, 1.0))
  assert metrics.paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})["wins"] == 0


def test_bad_input():
  with pytest.raises(ValueError, match="accuracy_matrix"):
    metrics.backward_transfer(np.ones((2, 3)))
  with pytest.raises(ValueError, match="init_accuracy"):
    metrics.forward_transfer(R, [0.1])
  with pytest.raises(ValueError, match="values"):
    metrics.mean_and_sem([])
  with pytest.raises(ValueError, match="share at least 2 seeds, got 1"):
    metrics.paired_difference({0: 1.0, 1: 2.0}, {1: 1.5, 2: 0.0})
