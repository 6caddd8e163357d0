"""benchmarks/throughput.py: the FLOP counts and the round-robin timing, on fake runners."""
import importlib.util
import os
import sys

import pytest

_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
sys.path.insert(0, _DIR)   # throughput imports its sibling startup, as when run as a script
_SPEC = importlib.util.spec_from_file_location("throughput_benchmark",
                                               os.path.join(_DIR, "throughput.py"))
throughput = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(throughput)


def test_cnn_macs_count_the_spec_network_by_hand():
  conv1 = 28 * 28 * 20 * (5 * 5 * 3)      # 32 → 28, pooled to 14
  conv2 = 10 * 10 * 50 * (5 * 5 * 20)     # 14 → 10, pooled to 5
  assert throughput.cnn_macs() == conv1 + conv2 + 5 * 5 * 50 * 500 + 500 * 50
  assert throughput.step_macs() == 784 * 400 + 400 * 400 + 400 * 10


def test_round_robin_keeps_each_runners_best_and_alternates():
  calls = []

  def runner(name, times):
    times = iter(times)
    return lambda: calls.append(name) or next(times)

  best = throughput.round_robin({"a": runner("a", [3.0, 1.0, 2.0]),
                                 "b": runner("b", [5.0, 6.0, 4.0])}, repeats=3)
  assert best == {"a": 1.0, "b": 4.0}
  assert calls == ["a", "b"] * 3


def test_throughput_row_is_samples_over_seconds_against_the_roofline():
  row = throughput.throughput_row(3200, 2.0, flops_per_sample=10, roofline=3200.0, num_seeds=1)
  assert row == pytest.approx({"num_seeds": 1, "samples_per_s": 1600.0,
                               "step_flops_per_s": 16000.0, "fraction_of_roofline": 5.0})
