"""One run over two processes gives the numbers of one process, stops whole when a
process is killed, and resumes from its last commit.

Two ``experiments/run.py --distributed`` processes on 127.0.0.1, each with 2 CPU devices
(``--xla_force_host_platform_device_count=2``), exchange seeds over JAX's CPU
collectives (gloo). The reference is one process with 2 CPU devices: XLA:CPU's numbers
can depend on the devices a process has (the threads each gets; BUILD_NOTES, "Several
devices"), so each process of the pair has what the reference has; the pair's 4 devices
run the one-device program on 1 seed each, the reference's 2 on 2 seeds each (vmapped
seeds give per-seed numbers exactly, tests/test_devices.py). SI: a consolidation runs
too, and its numbers do not move with the threads a device gets, where MAS's and Online
EWC's can (MAS matched in this layout when checked by hand). Killing process 1 mid-task
must end process 0 with one line, and the rerun must resume after the last commit.
55–85 s on the loaded 2-core machine (the compilation cache warm or not).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from experiments import run as run_binary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("DHP_TEST_JAX_CACHE",
                       os.path.join(tempfile.gettempdir(), "dhp_jax_test_xla_cache"))
_CONFIG = ["--benchmark=permuted_mnist", "--preset=quick", "--method=si", "--num_tasks=2",
           "--train_subset=256", "--num_seeds=4", "--noprogress", f"--jax_cache_dir={CACHE}"]
# What one process and two must agree on: every number of the payload.
_COMPARED = ("per_seed", "mean", "sem", "trace", "completed_tasks")
# Long enough for a loaded 2-core machine (a process is slow, not dead), short enough for
# a lost process to be noticed within a test.
_TIMEOUT = 30


def _has_gloo() -> bool:
  try:
    from jax._src.lib import _jax
  except ImportError:
    return False
  return hasattr(_jax, "make_gloo_tcp_collectives")


needs_gloo = pytest.mark.skipif(not _has_gloo(), reason="this jaxlib has no gloo (JAX's "
                                "CPU collectives between processes)")


def _env() -> dict:
  env = {k: v for k, v in os.environ.items()   # no cluster for JAX to detect
         if not k.startswith(("SLURM_", "OMPI_", "PMI_"))}
  return dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2",
              JAX_PLATFORMS="cpu", PYTHONPATH=REPO)


def _start(root: str, name: str, flags: list) -> subprocess.Popen:
  """run.py with ``flags``; its output in ``root/name.{out,err}``."""
  out, err = (open(os.path.join(root, f"{name}.{kind}"), "w") for kind in ("out", "err"))
  return subprocess.Popen([sys.executable, "experiments/run.py", *_CONFIG, *flags],
                          env=_env(), cwd=REPO, stdout=out, stderr=err)


def _start_pair(root: str, name: str, *flags) -> list:
  """Processes 0 and 1 of one run in ``root/run``."""
  with socket.socket() as s:   # a free port for process 0 to listen on
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  shared = [f"--out_dir={root}/run", "--distributed", f"--coordinator_address=127.0.0.1:"
            f"{port}", "--num_processes=2", f"--distributed_timeout={_TIMEOUT}", *flags]
  return [_start(root, f"{name}{i}", [*shared, f"--process_id={i}"]) for i in (0, 1)]


def _read(root: str, name: str) -> str:
  with open(os.path.join(root, name)) as f:
    return f.read()


def _kill_after_first_commit(root: str, pair: list) -> dict:
  """Kills process 1 once task 1 is committed (so mid-task 2); how process 0 ended."""
  while not os.path.isdir(os.path.join(root, "run", "commits", "1")):
    assert pair[0].poll() is None, _read(root, "killed0.err")[-2000:]
    time.sleep(0.05)
  pair[1].send_signal(signal.SIGKILL)
  killed_at = time.time()
  code = pair[0].wait(4 * _TIMEOUT)
  pair[1].wait()
  return {"code": code, "seconds": time.time() - killed_at,
          "stderr": _read(root, "killed0.err"),
          "results": json.loads(_read(root, "run/results.json"))}


@pytest.fixture(scope="module")
def runs(mnist):
  del mnist   # the data must be there; the subprocesses load it themselves
  with tempfile.TemporaryDirectory() as root:
    one = _start(root, "one", [f"--out_dir={root}/one"])
    assert one.wait(600) == 0, _read(root, "one.err")[-2000:]
    stopped = _kill_after_first_commit(root, _start_pair(root, "killed"))
    codes = [p.wait(600) for p in _start_pair(root, "resumed", "--resume")]
    assert codes == [0, 0], [_read(root, f"resumed{i}.err")[-2000:] for i in (0, 1)]
    yield {"one": json.loads(_read(root, "one/results.json")),
           "two": json.loads(_read(root, "run/results.json")), "stopped": stopped,
           "lock": _read(root, "run/.lock"),
           "stdout": [_read(root, f"resumed{i}.out") for i in (0, 1)],
           "files": sorted(os.listdir(os.path.join(root, "run")))}


@needs_gloo
def test_two_processes_killed_and_resumed_equal_one_process(runs):
  one, two = runs["one"], runs["two"]
  assert len(one["devices"]) == 2 and len(two["devices"]) == 4
  for key in _COMPARED:
    assert two[key] == one[key], key


@needs_gloo
def test_a_killed_process_stops_the_other_with_one_line(runs):
  stopped = runs["stopped"]
  assert stopped["code"] == 1 and stopped["seconds"] < 2 * _TIMEOUT
  last = stopped["stderr"].strip().splitlines()[-1]
  assert last.startswith("error: another process of this run stopped"), stopped["stderr"]
  assert last.endswith("--resume") and "Traceback" not in stopped["stderr"]
  assert stopped["results"]["completed_tasks"] == 1   # what the rerun resumes from


@needs_gloo
def test_process_0_alone_writes_and_reports(runs):
  writer, other = runs["stdout"]
  assert "resuming" in writer and "after task 1/2" in writer and "ACC=" in writer
  assert "resuming" not in other and "ACC=" not in other
  assert "--process_id=0" in runs["lock"]   # the lock's holder
  assert {"accuracy.png", "plasticity.png", "results.json"} <= set(runs["files"])


@pytest.mark.parametrize("args, named", [
    (["--process_id=1"], ["--process_id", "--distributed"]),
    (["--distributed_timeout=5"], ["--distributed_timeout", "--distributed"]),
    (["--distributed", "--process_id=0"],
     ["--process_id", "--coordinator_address", "--num_processes", "SLURM"]),
    (["--distributed", "--coordinator_address=10.0.0.1:1234", "--num_processes=2",
      "--process_id=2"], ["--process_id=2", "--num_processes=2"]),
    (["--distributed", "--coordinator_address=10.0.0.1", "--num_processes=2",
      "--process_id=0"], ["--coordinator_address", "HOST:PORT"]),
])
def test_distributed_flags_that_cannot_work_are_refused_by_name(args, named, tmp_path):
  with pytest.raises(SystemExit) as exit_:
    run_binary.main(["run.py", *args, f"--out_dir={tmp_path / 'run'}"])
  message = str(exit_.value.code)
  assert message.startswith("error: ") and "\n" not in message
  assert all(name in message for name in named), message


def test_distributed_outside_a_cluster_says_which_flags_to_give(tmp_path):
  # A subprocess: jax.distributed.initialize must come before JAX's first computation.
  done = subprocess.run([sys.executable, "experiments/run.py", "--distributed",
                         f"--out_dir={tmp_path / 'run'}"], env=_env(), cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 1 and "Traceback" not in done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --distributed found no cluster"), done.stderr
  assert "--coordinator_address, --num_processes and --process_id" in last
