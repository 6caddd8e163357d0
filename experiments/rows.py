"""Table I's rows and the paper's numbers: what the experiment binaries compare.

``ROWS`` names the configurations a table compares (the paper's eight rows, controls
and variants) with their labels; ``row_config`` builds a row's config for a table,
``row_label`` labels any config (its row's label, else ``config.describe``).
``BASELINE_OF`` pairs DHP+X with X; ``PAPER`` holds the paper's Table I.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple

from dhp_jax import config as config_lib, streams
from dhp_jax.config import RUN_SIZE_FIELDS, Config

# Table I of the paper: average test accuracy (%) / BWT after all tasks, 10 trials.
PAPER = {
    "permuted_mnist": {"finetune": (76.73, -0.19), "dhp": (78.49, -0.16), "si": (84.72, -0.13),
                       "dhp+si": (85.20, -0.09), "online_ewc": (86.24, -0.11),
                       "dhp+online_ewc": (87.30, -0.09), "mas": (88.52, -0.08),
                       "dhp+mas": (89.53, -0.06)},
    "imbalanced_permuted_mnist": {"finetune": (76.44, -0.20), "dhp": (80.85, -0.14),
                                  "si": (85.92, -0.06), "dhp+si": (85.39, -0.06),
                                  "online_ewc": (87.18, -0.09), "dhp+online_ewc": (87.43, -0.08),
                                  "mas": (87.32, -0.09), "dhp+mas": (88.80, -0.05)},
    "split_mnist": {"finetune": (90.43, -0.13), "dhp": (98.23, -0.02), "si": (97.77, -0.04),
                    "dhp+si": (99.15, 0.00), "online_ewc": (97.65, -0.03),
                    "dhp+online_ewc": (98.96, -0.01), "mas": (98.24, -0.02),
                    "dhp+mas": (98.43, -0.01)},
    "vision_mixture": {"finetune": (60.02, -0.33), "dhp": (62.94, -0.26), "si": (81.26, -0.06),
                       "dhp+si": (81.75, -0.04), "online_ewc": (78.61, -0.07),
                       "dhp+online_ewc": (79.10, -0.04), "mas": (78.51, -0.05),
                       "dhp+mas": (80.66, -0.01)},
}


class Row(NamedTuple):
  """One configuration a table compares: its label and its ``make_config`` overrides."""
  label: str
  overrides: Mapping


ROWS = {
    # The paper's eight rows.
    "finetune": Row("Finetune", dict(method="finetune", head="matched")),
    "dhp": Row("DHP Softmax", dict(method="finetune", head="dhp")),
    "si": Row("SI", dict(method="si", head="matched")),
    "dhp+si": Row("DHP Softmax + SI", dict(method="si", head="dhp")),
    "online_ewc": Row("Online EWC", dict(method="online_ewc", head="matched")),
    "dhp+online_ewc": Row("DHP Softmax + Online EWC", dict(method="online_ewc", head="dhp")),
    "mas": Row("MAS", dict(method="mas", head="matched")),
    "dhp+mas": Row("DHP Softmax + MAS", dict(method="mas", head="dhp")),
    # Two controls that separate plasticity from the θ init.
    "dhp_frozen_alpha": Row("DHP Softmax, α frozen at 0 (control)",
                            dict(method="finetune", head="dhp", freeze_alpha=True)),
    "finetune_dense": Row("Finetune, dense θ init (control)",
                          dict(method="finetune", head="matched", theta_init="dense")),
    # Opt-in from here on. SGD may drive the learned η past 1, where the trace update
    # over-relaxes; this keeps the stored η in [0, 1] (SPEC §1 option).
    "dhp_eta_projected": Row("DHP Softmax, η projected into [0, 1] (control)",
                             dict(method="finetune", head="dhp", eta_constraint="project")),
    # Online EWC variants beside the faithful rows (SPEC §2: exact Fisher, γ = 1), to see
    # whether its divergence at the paper's λ depends on those choices.
    "online_ewc_gamma0.9": Row("Online EWC, γ = 0.9 (variant)",
                               dict(method="online_ewc", head="matched", ewc_gamma=0.9)),
    "dhp+online_ewc_gamma0.9": Row("DHP Softmax + Online EWC, γ = 0.9 (variant)",
                                   dict(method="online_ewc", head="dhp", ewc_gamma=0.9)),
    "online_ewc_empirical": Row("Online EWC, empirical Fisher (variant)",
                                dict(method="online_ewc", head="matched",
                                     fisher_mode="empirical")),
    "dhp+online_ewc_empirical": Row("DHP Softmax + Online EWC, empirical Fisher (variant)",
                                    dict(method="online_ewc", head="dhp",
                                         fisher_mode="empirical")),
    "online_ewc_lambda100": Row("Online EWC, λ = 100 (variant)",
                                dict(method="online_ewc", head="matched", strength=100.0)),
    "dhp+online_ewc_lambda100": Row("DHP Softmax + Online EWC, λ = 100 (variant)",
                                    dict(method="online_ewc", head="dhp", strength=100.0)),
    # DHP+MAS with η kept in [0, 1], where the trace is an average and cannot grow (the
    # penalty leaves α, η and the trace free, SPEC §2).
    "dhp+mas_eta_projected": Row("DHP Softmax + MAS, η projected into [0, 1] (control)",
                                 dict(method="mas", head="dhp", eta_constraint="project")),
    # MAS at the Permuted MNIST λ beside the vision mixture's faithful λ = 1.0, where
    # plain SGD on the penalty passes its stability bound (lr·λ·Ω > 1) on the CNN.
    "mas_lambda0.1": Row("MAS, λ = 0.1 (variant)",
                         dict(method="mas", head="matched", strength=0.1)),
    "dhp+mas_lambda0.1": Row("DHP Softmax + MAS, λ = 0.1 (variant)",
                             dict(method="mas", head="dhp", strength=0.1)),
    # The hypothesis that the paper's Online EWC squared mini-batch *mean* gradients
    # (as many public EWC implementations do): a Fisher ~batch-size times smaller.
    "online_ewc_batch": Row("Online EWC, mini-batch Fisher (variant)",
                            dict(method="online_ewc", head="matched", fisher_mode="batch")),
    "dhp+online_ewc_batch": Row("DHP Softmax + Online EWC, mini-batch Fisher (variant)",
                                dict(method="online_ewc", head="dhp", fisher_mode="batch")),
}
DEFAULT_ROWS = tuple(ROWS)[:10]   # Table I's eight rows and the two controls
# DHP+X is compared with X (its suffix dropped: a control's or variant's X is the plain
# X); DHP with Finetune.
BASELINE_OF = {"dhp": "finetune",
               **{row: row[len("dhp+"):].removesuffix("_eta_projected")
                  for row in ROWS if row.startswith("dhp+")}}
# Tables beyond the paper's four benchmarks: name -> (benchmark, config overrides). The
# paper's Split MNIST is task-incremental (a head per task); class-incremental shares one
# 10-way head, where a memory in the output layer has the most to do.
VARIANTS = {"split_mnist_class": ("split_mnist", {"scenario": "class"})}
TABLES = streams.BENCHMARKS + tuple(VARIANTS)
# What a row leaves to its user (``RUN_SIZE_FIELDS``) and to its table (which data).
_RUN_FIELDS = RUN_SIZE_FIELDS + ("scenario", "vision_datasets")


def table_benchmark(table: str) -> tuple[str, dict]:
  """(benchmark, config overrides) of a table name (a benchmark or a ``VARIANTS`` key)."""
  return VARIANTS.get(table, (table, {}))


def row_config(table: str, preset: str, row: str, **overrides) -> Config:
  """The config of row ``row`` of table ``table``."""
  benchmark, extra = table_benchmark(table)
  return config_lib.make_config(benchmark, preset, **ROWS[row].overrides,
                                **{**extra, **overrides})


def row_of(config: Config):
  """The name of the row ``config`` runs (run-size fields aside), or None."""
  run = {name: getattr(config, name) for name in _RUN_FIELDS}
  for name, row in ROWS.items():
    try:
      candidate = config_lib.make_config(config.benchmark, config.preset, **row.overrides)
    except ValueError:
      continue
    if dataclasses.replace(candidate, **run) == config:
      return name
  return None


def row_label(config: Config) -> str:
  """A config's label: its row's (``ROWS``), else spelled out from its fields."""
  row = row_of(config)
  return ROWS[row].label if row is not None else config_lib.describe(config)
