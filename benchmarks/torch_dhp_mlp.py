r"""A plain PyTorch reference of one Permuted MNIST task with the DHP Softmax head.

  /work/torchenv/bin/python benchmarks/torch_dhp_mlp.py --data_dir=$DHP_DATA_DIR \
      --out_dir=runs/torch_dhp_mlp

The same run as ``experiments/run.py --benchmark=permuted_mnist --preset=paper
--num_tasks=1 --epochs=10 --head=dhp --method=finetune``, written from the paper (§IV,
Eq. 2–3, Algorithm 1) and SPEC §1/§3, for ``benchmarks/startup.py`` to time as a whole
process against the dhp_jax binary. A benchmark-only tool: it runs in its own venv
(torch is not a dhp_jax dependency) and imports nothing of ours.

MLP 784-400-400 with LeakyReLU(0.01) and PyTorch-default ``nn.Linear`` init; DHP Softmax
head θ (400, 10) ~ U(±1/√10), α = 0.01·U(0, 1), η = η₀ (one learned scalar), no bias; one
random pixel permutation; plain SGD, batch 64 (the last partial batch included), a fresh
shuffle per epoch; test accuracy on the permuted test set with the latest trace. Prints
the accuracy and the in-process wall time, writes ``results.json`` in ``--out_dir``.
"""
from __future__ import annotations

import time

_START = time.perf_counter()   # before the heavy imports: the in-process total includes them

import argparse
import gzip
import json
import os

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data_dir", default=os.environ.get("DHP_DATA_DIR", ""),
                      help="Folder holding mnist/<IDX files> (or the IDX files); "
                      "default $DHP_DATA_DIR (its first entry).")
  parser.add_argument("--out_dir", default="runs/torch_dhp_mlp",
                      help="Where results.json goes.")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch_size", type=int, default=64)
  parser.add_argument("--lr", type=float, default=0.01)
  parser.add_argument("--eta_init", type=float, default=1e-3)
  parser.add_argument("--hidden", type=int, nargs="+", default=[400, 400])
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--seed", type=int, default=0)
  return parser.parse_args(argv)


# ---- data --------------------------------------------------------------------------

def read_idx(path: str) -> np.ndarray:
  """An unsigned-byte IDX file (optionally gzipped) as a uint8 array of its shape."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] != 0x08:
    raise ValueError(f"{path}: not an unsigned-byte IDX file")
  ndim = raw[3]
  shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
  if data.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header says {shape}, file holds {data.size} values")
  return data.reshape(shape)


def find_file(data_dir: str, name: str) -> str:
  roots = [p for p in data_dir.split(os.pathsep) if p]
  for root in roots:
    for folder in (os.path.join(root, "mnist"), root):
      for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.exists(path):
          return path
  raise FileNotFoundError(f"{name} not found under --data_dir={data_dir!r} "
                          "(looked in <dir>/mnist and <dir>)")


def load_permuted_mnist(data_dir: str, permutation: np.ndarray) -> dict:
  """{split: (x float32 [n, 784] permuted and scaled to [0, 1], y int64 [n])}."""
  out = {}
  for split, (images, labels) in _FILES.items():
    x = read_idx(find_file(data_dir, images)).reshape(-1, 784)[:, permutation]
    y = read_idx(find_file(data_dir, labels))
    out[split] = (torch.from_numpy(x.astype(np.float32) / 255.0),
                  torch.from_numpy(y.astype(np.int64)))
  return out


# ---- model -------------------------------------------------------------------------

class DHPSoftmax(nn.Module):
  """DHP Softmax (Eq. 2–3): z = h·(θ + α ⊙ Hebb), Hebb updated per Algorithm 1.

  The trace is a buffer: this step's update is differentiable (θ, α, η and h get
  gradients through it), the stored trace is detached, so no graph spans two steps.
  """

  def __init__(self, in_features: int, num_classes: int, eta_init: float):
    super().__init__()
    bound = 1.0 / num_classes ** 0.5   # the author's kaiming_uniform_(a=√5) on (in, out)
    self.theta = nn.Parameter(torch.empty(in_features, num_classes).uniform_(-bound, bound))
    self.alpha = nn.Parameter(0.01 * torch.rand(in_features, num_classes))
    self.eta = nn.Parameter(torch.tensor(eta_init))
    self.register_buffer("hebb", torch.zeros(in_features, num_classes))

  def updated_hebb(self, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Algorithm 1: each present class's column moves towards its mean activation."""
    num_classes = self.hebb.shape[1]
    sums = h.new_zeros(num_classes, h.shape[1]).index_add(0, labels, h)   # [d, m]
    counts = torch.bincount(labels, minlength=num_classes).to(h.dtype)  # [d]
    means = sums / counts.clamp(min=1.0)[:, None]
    updated = (1.0 - self.eta) * self.hebb + self.eta * means.T
    return torch.where(counts[None, :] > 0, updated, self.hebb)

  def forward(self, h: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    hebb = self.hebb
    if labels is not None:   # training: update, and use the updated trace
      hebb = self.updated_hebb(h, labels)
      # Rebind, not copy_: the old buffer is saved for η's gradient of this step.
      self.hebb = hebb.detach()
    return h @ (self.theta + self.alpha * hebb)


class MLP(nn.Module):
  def __init__(self, hidden, eta_init: float, inputs: int = 784, num_classes: int = 10):
    super().__init__()
    sizes = (inputs, *hidden)
    self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
    self.head = DHPSoftmax(sizes[-1], num_classes, eta_init)

  def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    h = x
    for layer in self.hidden:
      h = F.leaky_relu(layer(h), 0.01)
    return self.head(h, labels)


# ---- training ----------------------------------------------------------------------

def train_epoch(model, optimizer, x, y, batch_size: int, generator) -> float:
  """One shuffled pass (the last partial batch included); returns the mean loss."""
  order = torch.randperm(x.shape[0], generator=generator)
  total = torch.zeros(())
  for start in range(0, x.shape[0], batch_size):
    idx = order[start:start + batch_size]
    labels = y[idx]
    loss = F.cross_entropy(model(x[idx], labels), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    total += loss.detach() * idx.shape[0]
  mean = float(total) / x.shape[0]
  if not np.isfinite(mean) or not torch.isfinite(model.head.hebb).all():
    raise FloatingPointError("non-finite loss or Hebb trace")
  return mean


@torch.no_grad()
def accuracy(model, x, y, batch_size: int = 1000) -> float:
  """Test accuracy with the latest trace, no update."""
  correct = sum(int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
                for i in range(0, x.shape[0], batch_size))
  return correct / x.shape[0]


def main(argv=None) -> dict:
  args = parse_args(argv)
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  generator = torch.Generator().manual_seed(args.seed)
  imported = time.perf_counter()
  permutation = np.random.default_rng(args.seed).permutation(784)
  data = load_permuted_mnist(args.data_dir, permutation)
  loaded = time.perf_counter()
  model = MLP(args.hidden, args.eta_init)
  optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
  losses = [train_epoch(model, optimizer, *data["train"], args.batch_size, generator)
            for _ in range(args.epochs)]
  trained = time.perf_counter()
  test_accuracy = accuracy(model, *data["test"])
  payload = {
      "implementation": "pytorch", "torch": torch.__version__,
      "threads": torch.get_num_threads(), "seed": args.seed, "epochs": args.epochs,
      "batch_size": args.batch_size, "lr": args.lr, "eta_init": args.eta_init,
      "hidden": list(args.hidden), "test_accuracy": test_accuracy,
      "train_loss_per_epoch": losses, "final_eta": float(model.head.eta.detach()),
      "seconds": {"imports": imported - _START, "data": loaded - imported,
                  "train": trained - loaded,
                  "total_in_process": time.perf_counter() - _START}}
  os.makedirs(args.out_dir, exist_ok=True)
  with open(os.path.join(args.out_dir, "results.json"), "w") as f:
    json.dump(payload, f, indent=1)
  print(f"pytorch dhp mlp: test accuracy {100 * test_accuracy:.2f}%  "
        f"final train loss {losses[-1]:.4f}  η {payload['final_eta']:.5f}  "
        f"wall {payload['seconds']['total_in_process']:.1f} s in process "
        f"(train {payload['seconds']['train']:.1f} s)")
  return payload


if __name__ == "__main__":
  try:
    main()
  except (FileNotFoundError, ValueError, FloatingPointError) as e:
    raise SystemExit(f"error: {e}")
