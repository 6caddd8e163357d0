r"""PyTorch reference of the vision CNN's training epoch, timed round by round on request.

  /work/torchenv/bin/python benchmarks/torch_cnn.py --batches=batches.npz --head=dhp

``benchmarks/throughput.py`` starts it (in the torch venv; torch is not a dhp_jax
dependency) with the same real images and labels its JAX epoch trains on, then sends one
line per round; the worker answers each with the seconds of one eager epoch, so the two
implementations are timed in alternating rounds on the same machine state.

Network (SPEC §3): conv5×5 20 → LeakyReLU(0.3) → maxpool 2 → conv5×5 50 → LeakyReLU(0.3)
→ maxpool 2 → FC 500 → LeakyReLU(0.3) → head (the DHP Softmax of ``torch_dhp_mlp`` or the
capacity-matched θ₁ + θ₂ head), PyTorch-default init, plain SGD at ``--lr``; NHWC uint8
batches are scaled to [0, 1] and made NCHW once, before timing.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from torch_dhp_mlp import DHPSoftmax


class MatchedSoftmax(nn.Module):
  """z = h·(θ₁ + θ₂), θ₂ = 0 at init (the paper's capacity-matched head)."""

  def __init__(self, in_features: int, num_classes: int):
    super().__init__()
    bound = 1.0 / num_classes ** 0.5
    self.theta1 = nn.Parameter(torch.empty(in_features, num_classes).uniform_(-bound, bound))
    self.theta2 = nn.Parameter(torch.zeros(in_features, num_classes))

  def forward(self, h, labels=None):
    del labels
    return h @ (self.theta1 + self.theta2)


class CNN(nn.Module):
  def __init__(self, head: str, num_classes: int, eta_init: float):
    super().__init__()
    self.conv1, self.conv2 = nn.Conv2d(3, 20, 5), nn.Conv2d(20, 50, 5)
    self.dense = nn.Linear(50 * 5 * 5, 500)
    self.head = (DHPSoftmax(500, num_classes, eta_init) if head == "dhp"
                 else MatchedSoftmax(500, num_classes))

  def forward(self, x, labels=None):
    h = F.max_pool2d(F.leaky_relu(self.conv1(x), 0.3), 2)
    h = F.max_pool2d(F.leaky_relu(self.conv2(h), 0.3), 2)
    h = F.leaky_relu(self.dense(h.flatten(1)), 0.3)
    return self.head(h, labels)


def epoch(model, optimizer, images, labels) -> float:
  """One pass over the [steps, B, ...] batches; returns its wall seconds."""
  tic = time.perf_counter()
  for x, y in zip(images, labels):
    loss = F.cross_entropy(model(x, y), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
  return time.perf_counter() - tic


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batches", required=True,
                      help="npz with images uint8 [steps, B, 32, 32, 3] and labels [steps, B]")
  parser.add_argument("--head", choices=("dhp", "matched"), default="dhp")
  parser.add_argument("--num_classes", type=int, default=50)
  parser.add_argument("--lr", type=float, default=0.01)
  parser.add_argument("--eta_init", type=float, default=1e-4)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args(argv)
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  data = np.load(args.batches)
  images = torch.from_numpy(data["images"].astype(np.float32) / 255.0).permute(0, 1, 4, 2, 3)
  images = images.contiguous()
  labels = torch.from_numpy(data["labels"].astype(np.int64))
  model = CNN(args.head, args.num_classes, args.eta_init)
  optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
  epoch(model, optimizer, images[:2], labels[:2])   # warm-up (allocator, oneDNN kernels)
  print(f"ready torch {torch.__version__} threads {torch.get_num_threads()}", flush=True)
  for line in sys.stdin:
    if line.strip() == "quit":
      break
    print(f"{epoch(model, optimizer, images, labels):.6f}", flush=True)


if __name__ == "__main__":
  main()
