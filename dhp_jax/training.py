"""The continual-learning engine: jitted per-seed steps, vmapped over seeds, one task at
a time, with consolidation bookkeeping at task boundaries.

Four small pieces, flax-examples style:
  ``create_state(key, model, input_shape, optimizer, ...)``  one seed's initial state
  ``train_step(state, batch)``                              one SGD step (pure, jitted)
  ``evaluate(state, split, ...)``                          accuracy on one task's test split
  ``train_and_evaluate(config, out_dir, ...)``             the whole run, resumable

Shapes: every array of a ``TrainState`` carries a leading seed axis [S, ...] once the
seeds are stacked; the per-seed functions never see it (``jax.vmap`` adds it).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dhp_jax import benchmarks, consolidation, metrics, models

BENCHMARKS = ("permuted_mnist", "imbalanced_permuted_mnist", "split_mnist", "vision_mixture")
METHODS = ("finetune", "ewc", "online_ewc", "si", "mas")
HEADS = ("dhp", "matched", "softmax")
ETA_CONSTRAINTS = ("none", "project")
FISHER_MODES = ("exact", "empirical", "sample")
MAS_VARIANTS = ("global", "local")

# SPEC §3. 'quick' keeps everything but the epochs, so it fits a 2-core CPU.
_PAPER = {
    "permuted_mnist": dict(num_tasks=10, epochs=20, batch_size=64, lr=0.01, eta_init=1e-3,
                           hidden=(400, 400)),
    "imbalanced_permuted_mnist": dict(num_tasks=10, epochs=20, batch_size=64, lr=0.01,
                                      eta_init=1e-3, hidden=(400, 400)),
    "split_mnist": dict(num_tasks=5, epochs=10, batch_size=64, lr=0.01, eta_init=1e-3,
                        hidden=(256, 256)),
    # The paper does not say how many samples its importance estimates used; on a CPU
    # the CNN's per-sample gradients cost ~10-65 ms each, so we use 1,000 per task.
    "vision_mixture": dict(num_tasks=5, epochs=50, batch_size=32, lr=0.01, eta_init=1e-4,
                           hidden=(), importance_samples=1000),
}
_QUICK_EPOCHS = {"permuted_mnist": 1, "imbalanced_permuted_mnist": 1, "split_mnist": 2,
                 "vision_mixture": 2}
PRESETS = ("paper", "quick")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that determines a run's numbers (out_dir/data_dir/resume excluded)."""
  benchmark: str = "permuted_mnist"
  method: str = "finetune"
  head: str = "dhp"                 # 'matched' = the paper's capacity-matched baseline
  freeze_alpha: bool = False        # DHP head with α held at 0 (ablation, SPEC §1)
  theta_init: str = "author"
  preset: str = "quick"
  num_tasks: int = 10
  epochs: int = 1
  batch_size: int = 64
  lr: float = 0.01
  eta_init: float = 1e-3
  strength: float = 0.0             # λ of the quadratic penalty
  si_xi: float = 0.1
  ewc_gamma: float = 1.0
  fisher_mode: str = "exact"
  mas_variant: str = "global"       # 'local' = layer-wise (Hebbian) MAS
  importance_samples: int = 0       # 0 = the task's whole training set
  eta_constraint: str = "none"
  num_seeds: int = 1
  seed: int = 0
  hidden: tuple = (400, 400)
  scenario: str = "task"            # split MNIST: 'task' | 'class'
  vision_datasets: tuple = ("mnist", "not_mnist", "fashion_mnist", "svhn_cropped", "cifar10")
  train_subset: int = 0             # >0: first n training samples per task (smoke tests)

  def validate(self) -> "Config":
    checks = [
        ("benchmark", self.benchmark in BENCHMARKS, f"one of {BENCHMARKS}"),
        ("method", self.method in METHODS, f"one of {METHODS}"),
        ("head", self.head in HEADS, f"one of {HEADS}"),
        ("theta_init", self.theta_init in ("author", "dense"), "'author' or 'dense'"),
        ("preset", self.preset in PRESETS, f"one of {PRESETS}"),
        ("eta_constraint", self.eta_constraint in ETA_CONSTRAINTS, f"one of {ETA_CONSTRAINTS}"),
        ("fisher_mode", self.fisher_mode in FISHER_MODES, f"one of {FISHER_MODES}"),
        ("mas_variant", self.mas_variant in MAS_VARIANTS, f"one of {MAS_VARIANTS}"),
        ("num_tasks", self.num_tasks >= 1, "an integer >= 1"),
        ("epochs", self.epochs >= 1, "an integer >= 1"),
        ("batch_size", self.batch_size >= 1, "an integer >= 1"),
        ("num_seeds", self.num_seeds >= 1, "an integer >= 1"),
        ("lr", self.lr > 0, "> 0"),
        ("strength", self.strength >= 0, ">= 0"),
        ("si_xi", self.si_xi > 0, "> 0"),
        ("ewc_gamma", 0 <= self.ewc_gamma <= 1, "in [0, 1]"),
        ("importance_samples", self.importance_samples >= 0, ">= 0"),
        ("train_subset", self.train_subset >= 0, ">= 0"),
        ("scenario", self.scenario in ("task", "class"), "'task' or 'class'"),
        ("freeze_alpha", not (self.freeze_alpha and self.head != "dhp"),
         "used only with the DHP head"),
    ]
    for name, ok, expected in checks:
      if not ok:
        raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")
    return self

  def to_json(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}


def make_config(benchmark: str, preset: str = "quick", method: str = "finetune",
                **overrides) -> Config:
  """A ``Config`` from a benchmark preset (SPEC §3), the paper's λ/ξ, then overrides.

  Overrides whose value is None are ignored, so absl flags can pass their defaults.
  """
  if benchmark not in BENCHMARKS:
    raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
  if preset not in PRESETS:
    raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  values = dict(_PAPER[benchmark])
  if preset == "quick":
    values["epochs"] = _QUICK_EPOCHS[benchmark]
  if method != "finetune":
    values.update(consolidation.PRESETS[benchmark][method])
  values.update({k: v for k, v in overrides.items() if v is not None})
  if "xi" in values:
    values["si_xi"] = values.pop("xi")
  known = {f.name for f in dataclasses.fields(Config)}
  unknown = set(values) - known
  if unknown:
    raise ValueError(f"unknown config keys {sorted(unknown)}; expected some of {sorted(known)}")
  values["hidden"] = tuple(values["hidden"])
  values["vision_datasets"] = tuple(values.get("vision_datasets", Config.vision_datasets))
  return Config(benchmark=benchmark, preset=preset, method=method, **values).validate()


def row_label(config: Config) -> str:
  """The paper's name for a run (Table I rows), with the ablations spelled out."""
  method = {"finetune": "Finetune", "ewc": "EWC", "online_ewc": "Online EWC", "si": "SI",
            "mas": "MAS"}[config.method]
  preset_strength = consolidation.PRESETS[config.benchmark].get(config.method, {}).get(
      "strength", config.strength)
  if config.strength != preset_strength:
    method += f" (λ = {config.strength:g})"
  if config.method in ("ewc", "online_ewc"):
    method += ((f" (γ = {config.ewc_gamma:g})" if config.ewc_gamma != 1.0 else "")
               + (f" ({config.fisher_mode} Fisher)" if config.fisher_mode != "exact" else ""))
  if config.head != "dhp":
    return method + (" (dense θ init)" if config.theta_init == "dense" else "")
  dhp = ("DHP Softmax" + (" (α frozen at 0)" if config.freeze_alpha else "")
         + (" (η projected into [0, 1])" if config.eta_constraint == "project" else ""))
  return dhp if config.method == "finetune" else f"{dhp} + {method}"


def summary_line(config: Config, results: dict) -> str:
  """One line: row, benchmark, seeds, tasks done, mean ± SEM accuracy and BWT."""
  mean, sem = results["mean"], results["sem"]
  kept = sum("diverged" not in e for e in results["per_seed"])
  seeds = str(config.num_seeds) if kept == config.num_seeds else f"{kept}/{config.num_seeds}"
  return (f"{row_label(config):<28} {config.benchmark:<26} seeds={seeds:<3} "
          f"tasks={results['completed_tasks']}/{results['num_tasks']}  "
          f"ACC={100 * mean['avg_accuracy']:6.2f} ± {100 * sem['avg_accuracy']:.2f}%  "
          f"BWT={mean['bwt']:+.3f} ± {sem['bwt']:.3f}")


# ---------------------------------------------------------------------------------------
# Model, optimizer and state.

def make_model(config: Config, num_classes: int):
  common = dict(num_classes=num_classes, head=config.head, eta_init=config.eta_init,
                theta_init=config.theta_init)
  if config.benchmark == "vision_mixture":
    return models.CNN(**common)
  return models.MLP(hidden=config.hidden, **common)


def _path_names(path) -> tuple:
  return tuple(getattr(k, "key", getattr(k, "name", None)) for k in path)


def _map_plastic(fn: Callable, params, field: str):
  """Applies ``fn`` to the DHP head's ``field`` ('alpha' or 'eta') leaves only."""
  mask = consolidation.slow_weights_mask(params)

  def visit(path, leaf, slow):
    return fn(leaf) if (not slow and _path_names(path)[-1] == field) else leaf

  return jax.tree_util.tree_map_with_path(visit, params, mask)


def make_optimizer(config: Config) -> optax.GradientTransformation:
  """SGD, with the quadratic penalty on the slow weights for the consolidation methods.

  SI wraps the whole chain so its path integral sees the *unregularised* gradient
  (as the original pathint code) and the applied update.
  """
  sgd = optax.sgd(config.lr)
  if config.method == "finetune":
    return sgd
  chain = optax.chain(consolidation.quadratic_penalty(config.strength), sgd)
  if config.method == "si":
    return consolidation.track_path_integral(chain)
  return chain


class TrainState(NamedTuple):
  params: Any      # Flax 'params' collection
  hebb: Any        # Flax 'hebb' collection ({} for heads without a trace)
  opt_state: Any


def create_state(key, model, input_shape: Sequence[int], optimizer, *,
                 freeze_alpha: bool = False) -> TrainState:
  """One seed's initial state; the Hebb trace starts at zero (first task only)."""
  variables = model.init(key, jnp.zeros((1, *input_shape), jnp.float32))
  params = variables["params"]
  if freeze_alpha:
    params = _map_plastic(jnp.zeros_like, params, "alpha")
  return TrainState(params, variables.get("hebb", {}), optimizer.init(params))


def _variables(params, hebb):
  return {"params": params, "hebb": hebb} if hebb else {"params": params}


def masked_cross_entropy(logits, local_labels, mask):
  """Mean softmax cross-entropy over the rows with ``mask`` True."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(mask, local_labels, 0))
  count = jnp.maximum(jnp.sum(mask), 1)
  return jnp.sum(jnp.where(mask, ce, 0.0)) / count


def train_step(state: TrainState, batch, *, model, optimizer, output_slice=None,
               freeze_alpha=False, project_eta=False):
  """One SGD step. ``batch = (x [B, ...], labels int [B] global, mask bool [B])``.

  The loss uses the task's outputs only (``output_slice``); the DHP trace is updated
  with the global labels in the forward pass (Algorithm 1) and carried as data.
  """
  x, labels, mask = batch
  start = 0 if output_slice is None else output_slice[0]
  plastic = bool(state.hebb)

  def loss_fn(params):
    if plastic:
      logits, mutated = model.apply(_variables(params, state.hebb), x, labels, mask=mask,
                                    mutable=["hebb"])
      new_hebb = mutated["hebb"]
    else:
      logits, new_hebb = model.apply(_variables(params, state.hebb), x), state.hebb
    logits = models.restrict_logits(logits, output_slice)
    loss = masked_cross_entropy(logits, labels - start, mask)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels - start) & mask)
    return loss, (new_hebb, correct)

  (loss, (new_hebb, correct)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  if freeze_alpha:
    grads = _map_plastic(jnp.zeros_like, grads, "alpha")
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if project_eta:
    # Projection of the *stored* η after the step keeps it movable (SPEC §1).
    params = _map_plastic(lambda e: jnp.clip(e, 0.0, 1.0), params, "eta")
  new_state = TrainState(params, jax.lax.stop_gradient(new_hebb), opt_state)
  return new_state, {"loss": loss, "correct": correct, "count": jnp.sum(mask)}


def _padded_batches(order, batch_size):
  """[n] → ([nb, B] indices, [nb, B] mask); the last partial batch is padded (masked)."""
  n = order.shape[0]
  nb = -(-n // batch_size)
  pad = nb * batch_size - n
  order = jnp.concatenate([order, jnp.zeros((pad,), order.dtype)])
  valid = jnp.arange(nb * batch_size) < n
  return order.reshape(nb, batch_size), valid.reshape(nb, batch_size)


def train_epoch(state: TrainState, key, split: "benchmarks.Split", permutation, *,
                batch_size: int, **step_kwargs):
  """One epoch = one ``lax.scan`` over the batches of a fresh shuffle (one seed)."""
  order = jax.random.permutation(key, split.index.shape[0])
  batch_idx, batch_valid = _padded_batches(order, batch_size)

  def body(state, inputs):
    idx, valid = inputs
    x, labels = benchmarks.make_batch(split.images, split.labels, split.index[idx], permutation)
    return train_step(state, (x, labels, valid), **step_kwargs)

  state, stats = jax.lax.scan(body, state, (batch_idx, batch_valid))
  count = jnp.maximum(jnp.sum(stats["count"]), 1)
  return state, {"loss": jnp.sum(stats["loss"] * stats["count"]) / count,
                 "accuracy": jnp.sum(stats["correct"]) / count}


def evaluate(params, hebb, split: "benchmarks.Split", permutation, *, model,
             output_slice=None, batch_size: int = 1000):
  """Test accuracy (fraction) of one seed on one task; the trace is used, not updated."""
  start = 0 if output_slice is None else output_slice[0]
  n = split.index.shape[0]
  batch_idx, batch_valid = _padded_batches(jnp.arange(n), min(batch_size, n))

  def body(total, inputs):
    idx, valid = inputs
    x, labels = benchmarks.make_batch(split.images, split.labels, split.index[idx], permutation)
    logits = models.restrict_logits(model.apply(_variables(params, hebb), x), output_slice)
    return total + jnp.sum((jnp.argmax(logits, -1) + start == labels) & valid), None

  correct, _ = jax.lax.scan(body, jnp.zeros((), jnp.int32), (batch_idx, batch_valid))
  return correct / n


def task_inputs(split: "benchmarks.Split", permutation, key, num_samples: int):
  """The task's training inputs as float32 [n, ...] and global labels (for importance)."""
  index = split.index
  if num_samples and num_samples < index.shape[0]:
    index = index[jax.random.choice(key, index.shape[0], (num_samples,), replace=False)]
  return benchmarks.make_batch(split.images, split.labels, index, permutation)


def consolidate(state: TrainState, task_start_params, split, permutation, key, *,
                config: Config, model, output_slice=None) -> TrainState:
  """Task-boundary bookkeeping (one seed): new importance Ω and anchor θ* in the penalty.

  Only SI has accrued anything during the task (its ω); EWC/Online EWC/MAS estimate Ω
  here, so their Ω is zero throughout the first task (paper §IV-B).
  """
  method = config.method
  if method == "finetune":
    return state
  start = 0 if output_slice is None else output_slice[0]
  params, opt_state = state.params, state.opt_state
  importance = optax.tree_utils.tree_get(opt_state, "importance")
  anchor = optax.tree_utils.tree_get(opt_state, "anchor")

  def apply_fn(p, x):
    return models.restrict_logits(model.apply(_variables(p, state.hebb), x), output_slice)

  if method == "si":
    omega = optax.tree_utils.tree_get(opt_state, "omega")
    importance, anchor = consolidation.si_accumulate(importance, omega, params,
                                                     task_start_params, config.si_xi)
    opt_state = consolidation.reset_omega(opt_state)
  else:
    sample_key, fisher_key = jax.random.split(key)
    x, labels = task_inputs(split, permutation, sample_key, config.importance_samples)
    if method == "mas":
      estimate = (consolidation.mas_importance if config.mas_variant == "global"
                  else consolidation.mas_local_importance)
      new = estimate(apply_fn, params, x)
      importance, anchor = consolidation.mas_accumulate(importance, new, params)
    else:
      fisher = consolidation.fisher_diagonal(apply_fn, params, x, labels - start,
                                             mode=config.fisher_mode, key=fisher_key)
      if method == "ewc":
        importance, anchor = consolidation.ewc_accumulate(importance, anchor, fisher, params)
      else:
        importance, anchor = consolidation.online_ewc_accumulate(importance, fisher, params,
                                                                 config.ewc_gamma)
  opt_state = consolidation.set_penalty(opt_state, importance=importance, anchor=anchor)
  return state._replace(opt_state=opt_state)


def plasticity_stats(state: TrainState) -> dict:
  """One seed's η, ‖Hebb‖_F and ‖α‖_F of the DHP head (paper Fig. 3); {} without one."""
  head = state.params.get("head", {})
  if "alpha" not in head:
    return {}
  hebb = jax.tree.leaves(state.hebb)
  return {"eta": head["eta"], "alpha_norm": jnp.linalg.norm(head["alpha"]),
          "hebb_norm": jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in hebb))}


# ---------------------------------------------------------------------------------------
# Many seeds in one program.

def seed_sharding(num_seeds: int):
  """A ``NamedSharding`` splitting the leading seed axis over the visible devices.

  Uses as many devices as divide ``num_seeds``; None when that is one (no sharding).
  """
  devices = jax.devices()
  k = math.gcd(len(devices), num_seeds)
  if k <= 1:
    return None
  mesh = Mesh(np.asarray(devices[:k]), ("seed",))
  return NamedSharding(mesh, PartitionSpec("seed"))


# XLA:CPU hands single dots to YNNPACK by default; once the dots carry the seed batch axis
# that path is slower than XLA's own dot emitter (Permuted MNIST MLP step, 10 vmapped
# seeds: 0.81x -> 0.96x of one seed's samples/s; benchmarks/throughput.py measures both).
# Keeping only the convolution fusion turns the dot fusion off and leaves the CNN alone.
_CPU_SEED_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
                     "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"}


def seed_jit(fn: Callable, in_axes, *, xla_defaults: bool = False, **jit_kwargs):
  """``jax.jit(jax.vmap(fn, in_axes))`` over a leading seed axis, compiled with the XLA
  options that keep vmapped seeds as fast as one seed on CPU (``xla_defaults=True``
  drops them, for the throughput comparison). ``jit_kwargs`` go to ``jax.jit``."""
  options = None if xla_defaults or jax.default_backend() != "cpu" else _CPU_SEED_OPTIONS
  return jax.jit(jax.vmap(fn, in_axes=in_axes), compiler_options=options, **jit_kwargs)


def _replicated(sharding):
  return None if sharding is None else NamedSharding(sharding.mesh, PartitionSpec())


def _put(tree, sharding):
  return tree if sharding is None else jax.device_put(tree, sharding)


def build_streams(config: Config, seeds: Sequence[int], data_dir=None):
  """One task stream per seed (permutations differ per seed; images are shared)."""
  b = config.benchmark
  if b == "permuted_mnist":
    make = lambda s: benchmarks.permuted_mnist(config.num_tasks, s, data_dir=data_dir)
  elif b == "imbalanced_permuted_mnist":
    make = lambda s: benchmarks.imbalanced_permuted_mnist(config.num_tasks, s,
                                                          data_dir=data_dir)
  elif b == "split_mnist":
    make = lambda s: benchmarks.split_mnist(scenario=config.scenario, data_dir=data_dir)
  else:
    make = lambda s: benchmarks.vision_mixture(config.vision_datasets, skip_missing=True,
                                               data_dir=data_dir, seed=s)
  streams = [make(s) for s in seeds]
  available = len(streams[0].tasks)
  if config.num_tasks > available:
    raise ValueError(f"num_tasks must be <= {available} for {b} (tasks available here), "
                     f"got {config.num_tasks}")
  return streams


def _subset(split, n):
  return split if not n or n >= split.index.shape[0] else split._replace(index=split.index[:n])


def _stack_permutations(tasks):
  perms = [t.permutation for t in tasks]
  if perms[0] is None:
    return None
  return jnp.asarray(np.stack(perms), jnp.int32)


def task_training_inputs(config: Config, streams, task: int):
  """Task ``task``'s (0-based) training split — its first ``config.train_subset`` samples
  when that is set — and the seeds' pixel permutations stacked ``[S, D]`` int32 (None for
  benchmarks without permutations): what ``train_epoch`` takes, seed-vmapped."""
  tasks = [s.tasks[task] for s in streams]
  return _subset(tasks[0].train, config.train_subset), _stack_permutations(tasks)


# ---------------------------------------------------------------------------------------
# Results on disk: atomic JSON and per-task checkpoints.

def write_text_atomic(path: str, text: str) -> None:
  """Write-then-rename, so a kill never leaves a half-written file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_json_atomic(path: str, payload: dict) -> None:
  write_text_atomic(path, json.dumps(payload, indent=1))


def _save_checkpoint(out_dir: str, task: int, state: TrainState) -> None:
  import orbax.checkpoint as ocp  # heavy import, only when checkpointing

  final = os.path.abspath(os.path.join(out_dir, "checkpoint"))
  tmp = final + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(os.path.join(tmp, "state"), jax.device_get(state))
  checkpointer.wait_until_finished()
  with open(os.path.join(tmp, "TASK"), "w") as f:
    f.write(str(task))
  old = final + ".old"
  shutil.rmtree(old, ignore_errors=True)
  if os.path.exists(final):
    os.replace(final, old)
  os.replace(tmp, final)
  shutil.rmtree(old, ignore_errors=True)


def _restore_checkpoint(out_dir: str, target: TrainState) -> tuple[int, TrainState]:
  import orbax.checkpoint as ocp

  final = os.path.abspath(os.path.join(out_dir, "checkpoint"))
  with open(os.path.join(final, "TASK")) as f:
    task = int(f.read())
  state = ocp.StandardCheckpointer().restore(os.path.join(final, "state"),
                                             jax.device_get(target))
  return task, jax.tree.map(jnp.asarray, state)


def is_complete(results_path: str, config: Config) -> bool:
  """True when ``results_path`` holds a finished run of exactly ``config``: all tasks
  done, or stopped because every seed diverged (rerunning it would diverge again).

  A run that stopped when only some seeds had diverged (written before the engine let
  the others go on) is not complete: resuming it trains the other seeds to the end.
  """
  if not os.path.exists(results_path):
    return False
  with open(results_path) as f:
    saved = json.load(f)
  if not config_matches(saved.get("config", {}), config):
    return False
  if saved.get("completed_tasks") == saved.get("num_tasks"):
    return True
  if "diverged" not in saved:
    return False
  gone = set(saved["diverged"]["seeds"]) | {e["seed"] for e in saved["per_seed"]
                                            if "diverged" in e}
  return len(gone) == config.num_seeds


def _with_defaults(saved: dict) -> dict:
  """A saved config as JSON, keys added to ``Config`` after it was saved at their
  defaults (so older results stay valid)."""
  return {**Config().to_json(), **saved}


def config_matches(saved: dict, config: Config) -> bool:
  """Whether a saved config describes ``config`` (see ``_with_defaults``)."""
  return _with_defaults(saved) == config.to_json()


def seeds_to_extend(results_path: str, config: Config) -> int:
  """How many seeds a finished run at ``results_path`` holds when it is ``config`` with
  fewer seeds (same first seed; every task done, or stopped with all its seeds diverged);
  0 when there is no such run. Those seeds need not be trained again for ``config``."""
  if not os.path.exists(results_path):
    return 0
  with open(results_path) as f:
    saved = json.load(f)
  held = saved.get("config", {}).get("num_seeds", 1)
  if held >= config.num_seeds:
    return 0
  fewer = dataclasses.replace(config, num_seeds=held)
  return held if is_complete(results_path, fewer) else 0


def _mark_stopped_seeds(run: dict) -> list:
  """Per-seed entries of a finished run, the seeds a run-wide divergence stopped marked
  as diverged in their own entry (as the engine marks a seed that diverged alone)."""
  stop = run.get("diverged")
  return [{**e, "diverged": {k: stop[k] for k in ("task", "epoch", "quantities")}}
          if stop and e["seed"] in stop["seeds"] and "diverged" not in e else e
          for e in run["per_seed"]]


def merge_seed_runs(first: dict, second: dict) -> dict:
  """One results payload holding the seeds of two finished runs of one config.

  Args:
    first, second: ``results.json`` payloads of the same config whose seeds follow on
      (``second``'s first seed = ``first``'s first seed + its ``num_seeds``), each with
      every task done or stopped because all its seeds diverged.
  Returns:
    The payload ``train_and_evaluate`` would have written for all the seeds at once (up
    to float reassociation in the vmapped matmuls): per-seed entries and per-epoch trace
    values concatenated (None where a run had stopped), mean/SEM over the surviving
    seeds, wall times summed; run-wide ``"diverged"`` only if no seed finished.
  """
  a, b = _with_defaults(first["config"]), _with_defaults(second["config"])
  if {**b, "seed": a["seed"], "num_seeds": a["num_seeds"]} != a or \
      b["seed"] != a["seed"] + a["num_seeds"]:
    raise ValueError(f"merge_seed_runs: second run (seed {b['seed']}, {b['num_seeds']} "
                     f"seeds) does not continue the first (seed {a['seed']}, "
                     f"{a['num_seeds']} seeds) with the same config")
  for name, run in (("first", first), ("second", second)):
    if run["completed_tasks"] != run["num_tasks"] and "diverged" not in run:
      raise ValueError(f"merge_seed_runs: {name} run is unfinished "
                       f"({run['completed_tasks']}/{run['num_tasks']} tasks)")
  per_seed = _mark_stopped_seeds(first) + _mark_stopped_seeds(second)
  longer = max(first, second, key=lambda r: len(r["trace"]["task"]))
  trace = {"task": list(longer["trace"]["task"])}
  for key in first["trace"]:
    if key != "task":
      trace[key] = [
          [v for run, n in ((first, a["num_seeds"]), (second, b["num_seeds"]))
           for v in (run["trace"][key][i] if i < len(run["trace"][key]) else [None] * n)]
          for i in range(len(trace["task"]))]
  merged = {**first, "config": {**a, "num_seeds": a["num_seeds"] + b["num_seeds"]},
            "completed_tasks": longer["completed_tasks"], "per_seed": per_seed,
            "trace": trace, "wall_time_s": round((first.get("wall_time_s") or 0)
                                                 + (second.get("wall_time_s") or 0), 1)}
  merged.pop("diverged", None)
  if all("diverged" in e for e in per_seed):
    merged["diverged"] = {**longer["diverged"], "seeds": [e["seed"] for e in per_seed]}
  merged["mean"], merged["sem"] = summarize(per_seed)
  return merged


def extend_seeds(config: Config, out_dir: str, *, train=None, **train_kwargs) -> dict:
  """Adds seeds to the finished run in ``out_dir`` until it holds ``config.num_seeds``.

  Trains only the missing seeds (in ``out_dir/seeds_<first>-<last>``, resumable like any
  run) and merges them into ``out_dir/results.json`` (atomically). ``train`` defaults to
  ``train_and_evaluate``; ``train_kwargs`` go to it. A ``NonFiniteError`` of the new
  seeds is not raised: they are merged as diverged seeds.
  """
  results_path = os.path.join(out_dir, "results.json")
  held = seeds_to_extend(results_path, config)
  if not held:
    raise ValueError(f"extend_seeds: {results_path} holds no finished run of this config "
                     f"with fewer than {config.num_seeds} seeds")
  extra = dataclasses.replace(config, seed=config.seed + held,
                              num_seeds=config.num_seeds - held)
  extra_dir = os.path.join(out_dir, f"seeds_{extra.seed}-{config.seed + config.num_seeds - 1}")
  try:
    (train or train_and_evaluate)(extra, extra_dir, resume=True, **train_kwargs)
  except NonFiniteError:
    if not os.path.exists(os.path.join(extra_dir, "results.json")):
      raise   # diverged in the first task: nothing recorded to merge
    # otherwise recorded in extra_dir's results.json as a run-wide divergence
  with open(results_path) as f, open(os.path.join(extra_dir, "results.json")) as g:
    merged = merge_seed_runs(json.load(f), json.load(g))
  write_json_atomic(results_path, merged)
  return merged


def summarize(per_seed: list) -> tuple[dict, dict]:
  """Mean and SEM over the seeds that did not diverge (their numbers would stop earlier)."""
  mean, sem = {}, {}
  for key in ("avg_accuracy", "bwt", "fwt"):
    values = [s[key] for s in per_seed if s.get(key) is not None and "diverged" not in s]
    if values:
      mean[key], sem[key] = metrics.mean_and_sem(values)
  return mean, sem


def _per_seed_results(seeds, acc, init_acc, done, diverged_seeds=None):
  """acc: [S, T, T] full matrix (rows > done unfilled); returns the JSON per-seed list.

  ``diverged_seeds`` maps a seed to its {task, epoch, quantities}: that seed's numbers
  stop after the last task it finished, and its entry says where it diverged.
  """
  out = []
  for s, seed in enumerate(seeds):
    diverged = (diverged_seeds or {}).get(seed)
    n = done if diverged is None else min(done, diverged["task"] - 1)
    full = acc[s, :n, :n]
    lower = [[float(full[t, i]) if i <= t else None for i in range(n)] for t in range(n)]
    entry = {"seed": int(seed), "accuracy_matrix": lower,
             "accuracy_matrix_all_tasks": [[float(v) for v in row] for row in acc[s, :n]],
             "init_accuracy": [float(v) for v in init_acc[s]]}
    if diverged is not None:
      entry["diverged"] = diverged
    if n:
      entry["avg_accuracy"] = metrics.average_accuracy(full)
      entry["bwt"] = metrics.backward_transfer(full)
      entry["fwt"] = metrics.forward_transfer(full, init_acc[s, :n])
      entry["avg_accuracy_curve"] = [float(v) for v in metrics.average_accuracy_curve(full)]
    out.append(entry)
  return out


class NonFiniteError(FloatingPointError):
  """Training produced a non-finite loss, trace or parameter."""


@jax.jit
def _finite_by_seed(loss, state) -> dict:
  """[S] bools per quantity: is each seed's loss / Hebb trace / parameters finite."""
  def per_seed(tree):
    ok = [jnp.isfinite(x).reshape(x.shape[0], -1).all(1) for x in jax.tree.leaves(tree)]
    return jnp.stack(ok).all(0) if ok else jnp.ones(loss.shape, bool)
  return {"loss": jnp.isfinite(loss), "Hebb trace": per_seed(state.hebb),
          "parameters": per_seed(state.params)}


def _nonfinite_seeds(seeds, loss, state) -> dict:
  """{seed: [quantities]} for the seeds whose loss, trace or parameters are non-finite."""
  finite = {k: np.asarray(v) for k, v in _finite_by_seed(loss, state).items()}
  bad = {seed: [name for name, ok in finite.items() if not ok[s]]
         for s, seed in enumerate(seeds)}
  return {seed: names for seed, names in bad.items() if names}


def _finite_or_none(values: list) -> list:
  """JSON has no NaN: a diverged seed's trace entries are written as null."""
  return [v if np.isfinite(v) else None for v in values]


def train_and_evaluate(config: Config, out_dir: Optional[str] = None, *, data_dir=None,
                       resume: bool = False, stop_after_task: Optional[int] = None,
                       progress: bool = True, log: Callable[[str], None] = print) -> dict:
  """Trains ``config.num_seeds`` seeds (vmapped) on the task stream; returns results.

  After every task the state is checkpointed and ``results.json`` rewritten atomically in
  ``out_dir``; ``resume=True`` continues from the last finished task. ``stop_after_task``
  (1-based count) ends the run early, as a kill would (for tests).
  """
  config = config.validate()
  seeds = [config.seed + s for s in range(config.num_seeds)]
  streams = build_streams(config, seeds, data_dir)
  stream = streams[0]
  num_tasks = config.num_tasks
  model = make_model(config, stream.num_classes)
  optimizer = make_optimizer(config)
  sharding = seed_sharding(config.num_seeds)
  replicated = _replicated(sharding)

  base_keys = jax.vmap(jax.random.key)(jnp.asarray(seeds, jnp.uint32))
  init_keys = jax.vmap(lambda k: jax.random.fold_in(k, 0))(base_keys)
  create = functools.partial(create_state, model=model, input_shape=stream.input_shape,
                             optimizer=optimizer, freeze_alpha=config.freeze_alpha)
  state = _put(seed_jit(create, 0)(init_keys), sharding)

  tasks = stream.tasks[:num_tasks]
  test_splits = [_put(task.test, replicated) for task in tasks]
  train_inputs = [task_training_inputs(config, streams, t) for t in range(num_tasks)]
  train_splits = [_put(split, replicated) for split, _ in train_inputs]
  perms = [_put(perm, sharding) for _, perm in train_inputs]
  slices = [task.output_slice for task in tasks]

  step_kwargs = dict(model=model, optimizer=optimizer, freeze_alpha=config.freeze_alpha,
                     project_eta=config.eta_constraint == "project")

  @functools.lru_cache(maxsize=None)
  def epoch_fn(output_slice):
    fn = functools.partial(train_epoch, batch_size=config.batch_size,
                           output_slice=output_slice, **step_kwargs)
    return seed_jit(fn, (0, 0, None, 0), donate_argnums=0)

  @functools.lru_cache(maxsize=None)
  def eval_fn(output_slice):
    fn = functools.partial(evaluate, model=model, output_slice=output_slice)
    return seed_jit(fn, (0, 0, None, 0))

  @functools.lru_cache(maxsize=None)
  def consolidate_fn(output_slice):
    fn = functools.partial(consolidate, config=config, model=model, output_slice=output_slice)
    return seed_jit(fn, (0, 0, None, 0, 0))

  def eval_all(state):
    return np.stack([np.asarray(eval_fn(slices[i])(state.params, state.hebb, test_splits[i],
                                                   perms[i])) for i in range(num_tasks)], 1)

  acc = np.full((config.num_seeds, num_tasks, num_tasks), np.nan)
  # A seed that goes non-finite is recorded and left to run on with the others (its
  # slot in the vmapped program is independent of theirs); its numbers stop there.
  diverged_seeds = {}
  trace = {"eta": [], "hebb_norm": [], "alpha_norm": [], "epoch_loss": [], "task": []}
  first_task = 0
  wall_before = 0.0   # wall time of the tasks a resumed run did before
  results_path = None if out_dir is None else os.path.join(out_dir, "results.json")
  if out_dir is not None:
    os.makedirs(out_dir, exist_ok=True)
    if resume and os.path.exists(results_path):
      with open(results_path) as f:
        previous = json.load(f)
      if not config_matches(previous["config"], config):
        saved = _with_defaults(previous["config"])
        diff = {k: (saved.get(k), v) for k, v in config.to_json().items()
                if saved.get(k) != v}
        raise ValueError(f"--resume: the config in {results_path} differs from this run's "
                         f"(saved, now): {diff}")
      done, state = _restore_checkpoint(out_dir, state)
      state = _put(state, sharding)
      for s, entry in enumerate(previous["per_seed"]):
        rows = entry["accuracy_matrix_all_tasks"][:done]
        acc[s, :len(rows)] = np.asarray(rows, dtype=float).reshape(len(rows), num_tasks)
        if "diverged" in entry:
          diverged_seeds[entry["seed"]] = entry["diverged"]
      init_acc = np.asarray([e["init_accuracy"] for e in previous["per_seed"]])
      trace = previous["trace"]
      wall_before = previous.get("wall_time_s") or 0.0
      first_task = done
      log(f"resuming {out_dir} after task {done}/{num_tasks}")
    elif resume:
      log(f"nothing to resume in {out_dir} yet; starting from task 1")
  if first_task == 0:
    init_acc = eval_all(state)  # accuracy of the untrained model (for FWT)

  bar = None
  if progress:
    from tqdm.auto import tqdm
    bar = tqdm(total=num_tasks * config.epochs, initial=first_task * config.epochs,
               desc=f"{config.benchmark}/{config.method}/{config.head}", unit="epoch",
               dynamic_ncols=True)
  wall_start = time.time()
  for t in range(first_task, num_tasks):
    task_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1 + t))(base_keys)
    # A copy: the epoch function donates (and so deletes) the state's buffers.
    task_start_params = jax.tree.map(jnp.copy, state.params)
    n_train = int(train_splits[t].index.shape[0])
    for epoch in range(config.epochs):
      keys = _put(jax.vmap(lambda k: jax.random.fold_in(k, epoch))(task_keys), sharding)
      tic = time.time()
      state, stats = epoch_fn(slices[t])(state, keys, train_splits[t], perms[t])
      bad = {seed: names for seed, names in _nonfinite_seeds(seeds, stats["loss"], state).items()
             if seed not in diverged_seeds}
      for seed, names in bad.items():
        diverged_seeds[seed] = {"task": t + 1, "epoch": epoch + 1, "quantities": names}
      if bad and len(diverged_seeds) < len(seeds):
        log(f"seeds {sorted(bad)}: non-finite in task {t + 1}, epoch {epoch + 1}; recorded, "
            f"the other seeds go on")
      elif bad:
        if bar:
          bar.close()
        names = sorted({n for names in bad.values() for n in names})
        diverged = {"task": t + 1, "epoch": epoch + 1, "quantities": names,
                    "seeds": sorted(bad)}
        message = (f"non-finite {', '.join(names)} in task {t + 1}, epoch {epoch + 1} "
                   f"(seeds {diverged['seeds']}); results up to task {t} are in {out_dir}")
        if out_dir is not None and t > 0:
          # Recorded, so a table can show the row as diverged instead of re-running it.
          with open(results_path) as f:
            write_json_atomic(results_path, {**json.load(f), "diverged": diverged})
        raise NonFiniteError(message)
      elapsed = time.time() - tic
      for name, values in jax.vmap(plasticity_stats)(state).items():
        trace[name].append(_finite_or_none(np.asarray(values).tolist()))
      trace["epoch_loss"].append(_finite_or_none(np.asarray(stats["loss"]).tolist()))
      trace["task"].append(t)
      if bar:
        bar.set_postfix(task=f"{t + 1}/{num_tasks}", loss=f"{float(np.nanmean(stats['loss'])):.3f}",
                        samples_s=f"{config.num_seeds * n_train / max(elapsed, 1e-9):,.0f}")
        bar.update(1)
    consolidate_keys = jax.vmap(lambda k: jax.random.fold_in(k, 10_000))(task_keys)
    state = consolidate_fn(slices[t])(state, task_start_params, train_splits[t], perms[t],
                                      _put(consolidate_keys, sharding))
    acc[:, t] = eval_all(state)
    done = t + 1
    result = {"config": config.to_json(), "completed_tasks": done, "num_tasks": num_tasks,
              "notes": list(stream.notes), "task_names": [task.name for task in tasks],
              "per_seed": _per_seed_results(seeds, acc, init_acc, done, diverged_seeds),
              "trace": trace,
              "devices": [str(d) for d in jax.devices()],
              "wall_time_s": round(wall_before + time.time() - wall_start, 1)}
    result["mean"], result["sem"] = summarize(result["per_seed"])
    if out_dir is not None:
      _save_checkpoint(out_dir, done, state)
      write_json_atomic(results_path, result)
    if stop_after_task is not None and done >= stop_after_task:
      break
  if bar:
    bar.close()
  if first_task >= num_tasks:  # nothing left: report what is on disk
    with open(results_path) as f:
      return json.load(f)
  return result
