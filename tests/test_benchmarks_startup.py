"""benchmarks/startup.py: commands, statistics and log parsing on fake data (no processes)."""
import importlib.util
import json
import os

import pytest
from absl import app, flags

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "benchmarks", "startup.py")
_SPEC = importlib.util.spec_from_file_location("startup_benchmark", _PATH)
startup = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(startup)


def test_binary_command_is_the_issue_12_run():
  argv = startup.binary_command("/o", "/c", 10)
  assert argv[1].endswith(os.path.join("experiments", "run.py"))
  for flag in ("--benchmark=permuted_mnist", "--preset=paper", "--num_tasks=1",
               "--epochs=10", "--num_seeds=1", "--head=dhp", "--method=finetune",
               "--noprogress", "--out_dir=/o", "--jax_cache_dir=/c"):
    assert flag in argv


def test_torch_command_uses_the_given_python_and_two_threads():
  argv = startup.torch_command("/venv/bin/python", "/o", 3, "/data")
  assert argv[0] == "/venv/bin/python" and argv[1].endswith("torch_dhp_mlp.py")
  assert {"--epochs=3", "--out_dir=/o", "--data_dir=/data", "--threads=2"} <= set(argv)


def test_round_order_rotates_so_no_mode_is_always_first():
  modes = startup.MODES
  assert [startup.round_order(modes, r)[0] for r in range(4)] == [*modes, modes[0]]
  assert sorted(startup.round_order(modes, 1)) == sorted(modes)


def test_summary_and_ratios_of_fake_timings():
  times = {"dhp_jax_cold": [30.0, 10.0, 20.0], "dhp_jax_warm": [4.0, 6.0, 5.0],
           "pytorch": [10.0, 20.0, 40.0]}
  summary = startup.summarize(times)
  assert summary["pytorch"] == {"median": 20.0, "min": 10.0, "max": 40.0,
                                "runs": [10.0, 20.0, 40.0]}
  ratios = startup.ratios(times)
  assert ratios["dhp_jax_warm_over_pytorch"]["of_medians"] == 5.0 / 20.0
  assert ratios["dhp_jax_cold_over_pytorch"]["per_round"] == [3.0, 0.5, 0.5]
  assert ratios["dhp_jax_cold_over_pytorch"]["median_per_round"] == 0.5
  assert startup.ratios({"dhp_jax_warm": [1.0]}) == {}
  assert set(startup.ratios({"dhp_jax_warm": [1.0], "pytorch": [2.0]})) == {
      "dhp_jax_warm_over_pytorch"}


def test_parse_compiles_counts_programs_and_cache_hits():
  log = "\n".join([
      "WARNING ... Finished tracing + transforming train_epoch for pjit in 0.1 sec",
      "WARNING ... Persistent compilation cache hit for 'jit_train_epoch' with key 'abc'",
      "WARNING ... Finished XLA compilation of jit(train_epoch) in 0.010 sec",
      "WARNING ... Finished XLA compilation of jit(evaluate) in 1.5 sec",
      "WARNING ... Finished XLA compilation of jit(iota) in 0.001 sec",
      "WARNING ... Finished XLA compilation of jit(iota) in 0.001 sec"])
  assert startup.parse_compiles(log) == {
      "programs": 4, "names": ["jit(evaluate)", "jit(iota)", "jit(iota)",
                               "jit(train_epoch)"],
      "cache_hits": 1, "compiled": 3}
  assert startup.parse_compiles("")["programs"] == 0


def test_read_accuracy_of_both_result_files(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  (tmp_path / "a" / "results.json").write_text(json.dumps({"test_accuracy": 0.97}))
  (tmp_path / "b" / "results.json").write_text(
      json.dumps({"per_seed": [{"accuracy_matrix": [[0.966]]}]}))
  assert startup.read_accuracy(str(tmp_path / "a")) == 0.97
  assert startup.read_accuracy(str(tmp_path / "b")) == 0.966


@pytest.mark.parametrize("argv, match", [
    (["--modes=dhp_jax_warm,bogus"], "--modes"),
    (["--torch_python=/nonexistent/python"], "--torch_python"),
])
def test_bad_flags_fail_before_any_process_starts(argv, match):
  fv = flags.FlagValues()
  startup.define_flags(fv)
  fv(["startup.py", *argv])
  with pytest.raises(app.UsageError, match=match):
    startup.run(fv)
