"""What determines a run's numbers: ``Config`` and the one preset table.

``make_config(benchmark, preset, method, **overrides)`` starts from ``BENCHMARK_PRESETS``
(SPEC §3: the paper's settings and λ/ξ per method), applies the preset and overrides,
and validates; ``describe`` spells a config out as a label. Table I's rows and the
paper's numbers live with the experiments (``experiments/rows.py``). Every vocabulary is
imported from the module that owns it.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple

from dhp_jax import consolidation, heads_spec, hebbian, streams

# 'quick' and 'medium' = the paper's settings with fewer epochs per task (reduced scale).
PRESET_NAMES = ("paper", "quick", "medium")
ETA_CONSTRAINTS = ("none", "project")    # 'project': stored η clipped into [0, 1] per step

# SPEC §3 (paper Appendix A), keyed by Config field names. Per benchmark: the paper's
# settings, what 'quick' and 'medium' change (only the epochs, to fit a 2-core CPU), and each
# consolidation method's λ (``strength``) and SI ξ (``si_xi``). 'ewc' has no column in
# the paper: it uses the Online EWC λ.
_PERMUTED_PAPER = dict(num_tasks=10, epochs=20, batch_size=64, lr=0.01, eta_init=1e-3,
                       hidden=(400, 400))   # both permuted benchmarks
BENCHMARK_PRESETS = {
    "permuted_mnist": {
        "paper": _PERMUTED_PAPER, "quick": dict(epochs=1), "medium": dict(epochs=5),
        "methods": {"online_ewc": dict(strength=100.0), "ewc": dict(strength=100.0),
                    "si": dict(strength=0.1, si_xi=0.1), "mas": dict(strength=0.1)}},
    "imbalanced_permuted_mnist": {
        "paper": _PERMUTED_PAPER, "quick": dict(epochs=1), "medium": dict(epochs=5),
        "methods": {"online_ewc": dict(strength=400.0), "ewc": dict(strength=400.0),
                    "si": dict(strength=1.0, si_xi=0.1), "mas": dict(strength=0.1)}},
    "split_mnist": {
        "paper": dict(num_tasks=5, epochs=10, batch_size=64, lr=0.01, eta_init=1e-3,
                      hidden=(256, 256)),
        "quick": dict(epochs=2), "medium": dict(epochs=5),
        "methods": {"online_ewc": dict(strength=400.0), "ewc": dict(strength=400.0),
                    "si": dict(strength=1.0, si_xi=0.001), "mas": dict(strength=1.5)}},
    # The paper does not say how many samples its importance estimates used; on a CPU
    # the CNN's per-sample gradients cost ~10-65 ms each, so we use 1,000 per task.
    "vision_mixture": {
        "paper": dict(num_tasks=5, epochs=50, batch_size=32, lr=0.01, eta_init=1e-4,
                      hidden=(), importance_samples=1000),
        # 'medium' (a fifth of the paper's epochs) is what 3 seeds × 10 rows fit in
        # about 6-8 hours of a 2-core CPU (BUILD_NOTES, "vision mixture").
        "quick": dict(epochs=2), "medium": dict(epochs=10),
        "methods": {"online_ewc": dict(strength=100.0), "ewc": dict(strength=100.0),
                    "si": dict(strength=0.1, si_xi=0.1), "mas": dict(strength=1.0)}},
}
assert tuple(BENCHMARK_PRESETS) == streams.BENCHMARKS


def _field(default, help_: str):
  """A ``Config`` field with its flag help (``experiments/cli.py`` reads it)."""
  return dataclasses.field(default=default, metadata={"help": help_})


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that determines a run's numbers (out_dir/data_dir/resume excluded)."""
  benchmark: str = _field("permuted_mnist", "Task stream.")
  method: str = _field("finetune", "Consolidation method.")
  head: str = _field("dhp", "Output head: dhp, or matched (the paper's capacity-matched "
                     "plain head).")
  freeze_alpha: bool = _field(False, "DHP head with α held at 0 (ablation, SPEC §1).")
  theta_init: str = _field("author", "Output-layer θ init, the same for every head "
                           "(SPEC §1).")
  preset: str = _field("quick", "paper = SPEC §3 exactly; quick, medium = the same with "
                       "fewer epochs (reduced scale).")
  num_tasks: int = _field(10, "Number of tasks.")
  epochs: int = _field(1, "Epochs per task.")
  batch_size: int = _field(64, "Batch size.")
  lr: float = _field(0.01, "SGD learning rate.")
  eta_init: float = _field(1e-3, "Initial η.")
  strength: float = _field(0.0, "Penalty strength λ.")
  si_xi: float = _field(0.1, "SI damping ξ.")
  ewc_gamma: float = _field(1.0, "Online EWC decay γ.")
  fisher_mode: str = _field("exact", "Fisher estimate for (Online) EWC.")
  mas_variant: str = _field("global", "MAS importance: global (output norm) or local "
                            "(layer-wise, Hebbian).")
  importance_samples: int = _field(0, "Samples for the Fisher/MAS estimate (0 = whole "
                                   "task).")
  eta_constraint: str = _field("none", "project = clip the stored η into [0, 1] after "
                               "each step.")
  num_seeds: int = _field(1, "Seeds trained together (vmapped).")
  seed: int = _field(0, "First seed; seeds are seed .. seed+num_seeds-1.")
  hidden: tuple = _field((400, 400), "Hidden layer widths of the MLP.")
  scenario: str = _field("task", "Split MNIST scenario.")
  vision_datasets: tuple = _field(streams.VISION_DATASETS, "Data sets of the vision "
                                  "mixture, in task order.")
  train_subset: int = _field(0, "First n training samples of each task (smoke tests; "
                             "0 = all).")

  def validate(self) -> "Config":
    """Returns self, or raises ValueError naming the first field out of range."""
    for name, ok, expected in _checks(self):
      if not ok:
        raise ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")
    return self

  def to_json(self) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_json(cls, saved: Mapping) -> "Config":
    """The config a results.json saved (``to_json``'s inverse; fields added since it was
    saved take their defaults, as ``with_defaults``)."""
    return cls(**{k: tuple(v) if isinstance(v, list) else v
                  for k, v in with_defaults(saved).items()})


# Fields whose value is one of a vocabulary, with the vocabulary's owner.
CHOICES = {
    "benchmark": streams.BENCHMARKS, "method": tuple(consolidation.METHODS),
    "head": heads_spec.HEADS, "theta_init": hebbian.THETA_INITS, "preset": PRESET_NAMES,
    "eta_constraint": ETA_CONSTRAINTS, "fisher_mode": consolidation.FISHER_MODES,
    "mas_variant": consolidation.MAS_VARIANTS, "scenario": streams.SCENARIOS,
}


class Scope(NamedTuple):
  """Where a field has an effect: in configs whose field ``by`` is one of ``values``.
  Elsewhere only ``off`` is consistent (``Config.validate``); None: any value is (a
  preset sets it for every config), and only a flag set by hand there is refused."""
  by: str
  values: tuple
  off: object = None


def _read_by_methods(field: str, off=None) -> Scope:
  """The scope of a consolidation hyperparameter: the methods whose registry entry reads it."""
  return Scope("method", tuple(name for name, m in consolidation.METHODS.items()
                               if field in m.hyperparameters), off)


_DHP_HEAD = ("dhp",)   # η, its constraint and α exist only in the DHP head
SCOPES = {
    "strength": _read_by_methods("strength", off=0.0),
    "si_xi": _read_by_methods("si_xi"),
    "ewc_gamma": _read_by_methods("ewc_gamma", off=1.0),
    "fisher_mode": _read_by_methods("fisher_mode", off="exact"),
    "mas_variant": _read_by_methods("mas_variant", off="global"),
    "importance_samples": Scope("method", tuple(name for name, m in consolidation.METHODS.items()
                                                if m.uses_task_data)),
    "eta_init": Scope("head", _DHP_HEAD),
    "eta_constraint": Scope("head", _DHP_HEAD, off="none"),
    "freeze_alpha": Scope("head", _DHP_HEAD, off=False),
    # The task streams that read these options (``streams.STREAM_BUILDERS``).
    "scenario": Scope("benchmark", ("split_mnist",), off="task"),
    "vision_datasets": Scope("benchmark", ("vision_mixture",)),
}


def without_effect(config: Config, names) -> list:
  """The fields among ``names`` that have no effect in ``config`` (``SCOPES``)."""
  return [name for name in names
          if name in SCOPES and getattr(config, SCOPES[name].by) not in SCOPES[name].values]


def _scope_checks(c: Config) -> list:
  """(field, ok, what is expected) for the fields set away from ``off`` outside their scope."""
  checks = []
  for name in without_effect(c, [n for n, scope in SCOPES.items() if scope.off is not None]):
    by, scope = SCOPES[name].by, SCOPES[name]
    checks.append((name, getattr(c, name) == scope.off,
                   f"{scope.off!r} with {by} {getattr(c, by)!r}: it has an effect only with "
                   f"{by} in {scope.values}"))
  return checks


def _checks(c: Config) -> list:
  """(field, ok, what is expected) for every field of ``c``."""
  checks = [(name, getattr(c, name) in known, f"one of {known}")
            for name, known in CHOICES.items()]
  return checks + _scope_checks(c) + [
      ("num_tasks", c.num_tasks >= 1, "an integer >= 1"),
      ("epochs", c.epochs >= 1, "an integer >= 1"),
      ("batch_size", c.batch_size >= 1, "an integer >= 1"),
      ("num_seeds", c.num_seeds >= 1, "an integer >= 1"),
      ("lr", c.lr > 0, "> 0"),
      ("strength", c.strength >= 0, ">= 0"),
      ("si_xi", c.si_xi > 0, "> 0"),
      ("ewc_gamma", 0 <= c.ewc_gamma <= 1, "in [0, 1]"),
      ("importance_samples", c.importance_samples >= 0, ">= 0"),
      ("train_subset", c.train_subset >= 0, ">= 0"),
      ("vision_datasets", set(c.vision_datasets) <= set(streams.VISION_DATASETS),
       f"some of {streams.VISION_DATASETS}"),
      ("hidden", all(isinstance(w, int) and w >= 1 for w in c.hidden),
       "a list of layer widths >= 1 (empty: no hidden layer)"),
  ]


def preset_values(benchmark: str, preset: str, method: str) -> dict:
  """The ``Config`` fields a preset sets for one benchmark and method."""
  for name, value, known in (("benchmark", benchmark, streams.BENCHMARKS),
                             ("preset", preset, PRESET_NAMES),
                             ("method", method, tuple(consolidation.METHODS))):
    if value not in known:
      raise ValueError(f"{name} must be one of {known}, got {value!r}")
  table = BENCHMARK_PRESETS[benchmark]
  values = dict(table["paper"])
  if preset != "paper":
    values.update(table[preset])
  values.update(table["methods"].get(method, {}))
  return values


def make_config(benchmark: str, preset: str = "quick", method: str = "finetune",
                **overrides) -> Config:
  """A validated ``Config``: the preset (``preset_values``), then ``overrides``.

  Overrides whose value is None are ignored, so absl flags can pass their defaults.
  """
  values = preset_values(benchmark, preset, method)
  values.update({k: v for k, v in overrides.items() if v is not None})
  known = {f.name for f in dataclasses.fields(Config)}
  unknown = set(values) - known
  if unknown:
    raise ValueError(f"unknown config keys {sorted(unknown)}; expected some of {sorted(known)}")
  values["hidden"] = tuple(values["hidden"])
  values["vision_datasets"] = tuple(values.get("vision_datasets", Config.vision_datasets))
  return Config(benchmark=benchmark, preset=preset, method=method, **values).validate()


# The fields a table or sweep leaves to its user (how long, how many seeds, how much
# data).
RUN_SIZE_FIELDS = ("num_tasks", "epochs", "num_seeds", "seed", "importance_samples",
                   "train_subset")


def describe(config: Config) -> str:
  """A label spelled out from the config's fields: method, head and the hyperparameters
  that differ from the paper's (e.g. "DHP Softmax + SI (lr = 0.1)")."""
  method = consolidation.METHODS[config.method]
  usual = {**Config().to_json(), **preset_values(config.benchmark, "paper", config.method)}
  label = method.label + "".join(
      f" ({name} = {getattr(config, name):g})" if isinstance(getattr(config, name), float)
      else f" ({name} = {getattr(config, name)})"
      for name in ("lr", *method.hyperparameters) if getattr(config, name) != usual[name])
  if config.head != "dhp":
    return label + (" (dense θ init)" if config.theta_init == "dense" else "")
  dhp = ("DHP Softmax" + (" (α frozen at 0)" if config.freeze_alpha else "")
         + (" (η projected into [0, 1])" if config.eta_constraint == "project" else ""))
  if not method.penalised:   # plain fine-tuning: the head is the whole story
    return dhp + label[len(method.label):]   # the changed hyperparameters, if any
  return f"{dhp} + {label}"


def with_defaults(saved: Mapping) -> dict:
  """A saved config (JSON), keys added to ``Config`` after it was saved at their
  defaults, so older results stay valid."""
  return {**Config().to_json(), **saved}


def config_matches(saved: Mapping, config: Config) -> bool:
  """Whether a saved config (JSON) describes ``config`` (see ``with_defaults``)."""
  return with_defaults(saved) == config.to_json()
