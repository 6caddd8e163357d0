"""examples/ run on a real-MNIST subset and print a plausible accuracy matrix; the
README's "Using the library" code runs as written."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--train_subset=4000", "--test_subset=2000"]
CHANCE = 0.1   # 10 digit classes


def _run(script: str, *flags: str) -> str:
  command = [sys.executable, str(ROOT / "examples" / script), *SMALL, *flags]
  result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ), timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def _accuracy_matrix(stdout: str) -> np.ndarray:
  rows = re.findall(r"^after task (\d+): ([\d. ]+)$", stdout, re.MULTILINE)
  assert [int(t) for t, _ in rows] == list(range(len(rows))), stdout
  return np.array([[float(a) for a in values.split()] for _, values in rows])


@pytest.mark.parametrize("script,flags", [
    ("linen_custom_model.py", ()),
    ("nnx_custom_model.py", ("--importance_samples=500",)),
    ("nnx_seed_ensemble.py", ()),
])
def test_example_trains_two_permuted_mnist_tasks(mnist, script, flags):
  del mnist  # only makes sure the data is there
  stdout = _run(script, *flags)
  matrix = _accuracy_matrix(stdout)
  assert matrix.shape == (2, 2), stdout
  assert np.all((0 <= matrix) & (matrix <= 1)), stdout
  # Each task is learnt (diagonal far above chance); task 1's permutation is unseen
  # after task 0 (near chance).
  assert np.all(np.diag(matrix) > 5 * CHANCE), stdout
  assert matrix[0, 1] < 3 * CHANCE, stdout
  if script == "nnx_seed_ensemble.py":
    mean, sem = map(float, re.search(r"final average accuracy: ([\d.]+) ± ([\d.]+)",
                                     stdout).groups())
    assert mean == pytest.approx(matrix[-1].mean(), abs=1e-3)
    assert 0 < sem < 0.05, stdout
  else:
    average = float(re.search(r"average accuracy: ([\d.]+)", stdout).group(1))
    assert average == pytest.approx(matrix[-1].mean(), abs=1e-3)


def _readme_section_code(title: str) -> list[str]:
  text = (ROOT / "README.md").read_text()
  section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_readme_using_the_library_blocks_run_in_order():
  blocks = _readme_section_code("Using the library")
  assert len(blocks) >= 4   # preamble, NNX, linen, pure function (+ consolidation)
  namespace = {}
  for i, block in enumerate(blocks):
    exec(compile(block, f"README.md[Using the library, block {i}]", "exec"), namespace)
  assert namespace["logits"].shape == (32, 10)
