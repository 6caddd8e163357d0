"""dhp_jax.config: the presets against SPEC §3, validation, row labels, vocabularies."""
import dataclasses

import pytest

from dhp_jax import consolidation, heads_spec, hebbian, streams
from dhp_jax import config as config_lib
from dhp_jax.config import make_config
from experiments import rows as rows_lib
from experiments.rows import ROWS, row_config, row_label, row_of

# SPEC §3 (paper Appendix A), written out: tasks, hidden, batch, lr, epochs, η₀,
# λ of Online EWC / SI / MAS, SI ξ. The vision mixture's CNN has no MLP hidden layers.
SPEC = {
    "permuted_mnist": (10, (400, 400), 64, 0.01, 20, 1e-3, (100.0, 0.1, 0.1), 0.1),
    "imbalanced_permuted_mnist": (10, (400, 400), 64, 0.01, 20, 1e-3, (400.0, 1.0, 0.1),
                                  0.1),
    "split_mnist": (5, (256, 256), 64, 0.01, 10, 1e-3, (400.0, 1.0, 1.5), 0.001),
    "vision_mixture": (5, (), 32, 0.01, 50, 1e-4, (100.0, 0.1, 1.0), 0.1),
}


def test_spec_covers_every_benchmark():
  assert tuple(SPEC) == streams.BENCHMARKS


@pytest.mark.parametrize("benchmark", SPEC)
def test_paper_preset_is_spec_section_3(benchmark):
  tasks, hidden, batch, lr, epochs, eta, (online_ewc, si, mas), xi = SPEC[benchmark]
  # 'ewc' has no column in the paper: it uses the Online EWC λ.
  strengths = {"finetune": 0.0, "ewc": online_ewc, "online_ewc": online_ewc, "si": si,
               "mas": mas}
  assert set(strengths) == set(consolidation.METHODS)
  for method, strength in strengths.items():
    c = make_config(benchmark, "paper", method)
    assert (c.num_tasks, c.hidden, c.batch_size, c.lr, c.epochs, c.eta_init, c.strength) == (
        tasks, hidden, batch, lr, epochs, eta, strength)
    # 'quick' and 'medium' are the paper's settings with fewer epochs.
    quick, medium = (make_config(benchmark, p, method) for p in ("quick", "medium"))
    assert quick.epochs < medium.epochs < epochs
    for reduced in (quick, medium):
      assert dataclasses.replace(reduced, preset="paper", epochs=epochs) == c
  assert make_config(benchmark, "paper", "si").si_xi == xi


def test_overrides_replace_preset_values_and_none_keeps_them():
  assert make_config("split_mnist", "paper", "si", lr=0.05, si_xi=None).lr == 0.05
  assert make_config("split_mnist", "paper", "si", lr=None, si_xi=None).si_xi == 0.001
  assert make_config("split_mnist", hidden=[8, 8]).hidden == (8, 8)


def test_a_saved_config_reads_back_as_itself():
  config = make_config("vision_mixture", "medium", "si", vision_datasets=("mnist", "cifar10"))
  saved = config.to_json()
  assert config_lib.Config.from_json(saved) == config
  del saved["mas_variant"]   # a field added after the config was saved: its default
  assert config_lib.Config.from_json(saved) == config


@pytest.mark.parametrize("args, overrides, field", [
    (("rotated_mnist",), {}, "benchmark"),
    (("permuted_mnist", "quick", "l2"), {}, "method"),
    (("permuted_mnist", "slow"), {}, "preset"),
    (("permuted_mnist",), {"lr": -0.1}, "lr"),
    (("permuted_mnist",), {"head": "matched", "freeze_alpha": True}, "freeze_alpha"),
    (("permuted_mnist",), {"learning_rate": 0.1}, "learning_rate"),
    (("permuted_mnist",), {"head": "plastic"}, "head"),
    (("permuted_mnist",), {"ewc_gamma": 1.5}, "ewc_gamma"),
])
def test_bad_values_raise_naming_the_field(args, overrides, field):
  with pytest.raises(ValueError, match=rf"\b{field}\b"):
    make_config(*args, **overrides)


# On the benchmarks whose paper λ of Online EWC is 100 (of MAS, 0.1), the λ = 100 (0.1)
# variant rows are the paper's rows (same config, same run), and they are labelled as those.
SAME_AS = {("permuted_mnist", "online_ewc_lambda100"): "online_ewc",
           ("permuted_mnist", "dhp+online_ewc_lambda100"): "dhp+online_ewc",
           ("vision_mixture", "online_ewc_lambda100"): "online_ewc",
           ("vision_mixture", "dhp+online_ewc_lambda100"): "dhp+online_ewc",
           **{(table, prefix + "mas_lambda0.1"): prefix + "mas"
              for table in ("permuted_mnist", "imbalanced_permuted_mnist")
              for prefix in ("", "dhp+")}}


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("table", rows_lib.TABLES)
def test_row_of_finds_the_row_back_and_labels_it(table, row):
  # Run-size fields do not change the row.
  c = row_config(table, "quick", row, num_tasks=2, epochs=1, num_seeds=3, seed=4,
                 train_subset=100)
  found = SAME_AS.get((table, row), row)
  assert row_of(c) == found
  assert row_label(c) == ROWS[found].label


def test_a_config_that_is_no_row_spells_out_its_changes():
  for config, label in [
      (row_config("permuted_mnist", "quick", "dhp", lr=0.05), "DHP Softmax (lr = 0.05)"),
      (row_config("permuted_mnist", "quick", "finetune", lr=0.05), "Finetune (lr = 0.05)"),
      (row_config("split_mnist", "paper", "si", strength=2.0), "SI (strength = 2)"),
      (make_config("permuted_mnist", method="mas", freeze_alpha=True),
       "DHP Softmax (α frozen at 0) + MAS")]:
    assert row_of(config) is None
    assert row_label(config) == label
    assert label not in {row.label for row in ROWS.values()}


# Each vocabulary and the module that owns it.
OWNERS = {"benchmark": streams.BENCHMARKS, "head": heads_spec.HEADS,
          "theta_init": hebbian.THETA_INITS, "preset": config_lib.PRESET_NAMES,
          "eta_constraint": config_lib.ETA_CONSTRAINTS,
          "fisher_mode": consolidation.FISHER_MODES,
          "mas_variant": consolidation.MAS_VARIANTS, "scenario": streams.SCENARIOS}


def test_every_vocabulary_is_its_owners_tuple():
  choices = config_lib.CHOICES
  assert set(choices) == set(OWNERS) | {"method"}
  assert choices["method"] == tuple(consolidation.METHODS)
  for name, owner in OWNERS.items():
    assert choices[name] is owner, name
  # Every string field of Config is one of a vocabulary, and every value of it validates.
  assert {f.name for f in dataclasses.fields(config_lib.Config) if f.type == "str"} == set(
      choices)
  # (where the field has an effect: see test_a_field_set_outside_its_scope_is_refused).
  for name, values in choices.items():
    scope = config_lib.SCOPES.get(name)
    where = {scope.by: scope.values[0]} if scope else {}
    for value in values:
      dataclasses.replace(config_lib.Config(), **where, **{name: value}).validate()


def test_a_field_set_outside_its_scope_is_refused():
  # Every Table I row of every table and preset is consistent (recorded runs reload).
  for table in rows_lib.TABLES:
    for preset in config_lib.PRESET_NAMES:
      for row in rows_lib.ROWS:
        rows_lib.row_config(table, preset, row)
  with pytest.raises(ValueError, match=r"strength must be 0.0 with method 'finetune'"):
    config_lib.make_config("permuted_mnist", method="finetune", strength=5.0)
  with pytest.raises(ValueError, match=r"mas_variant must be 'global' with method 'si'"):
    config_lib.make_config("split_mnist", method="si", mas_variant="local")
  config = config_lib.make_config("split_mnist", method="si", head="matched")
  assert config_lib.without_effect(config, ["si_xi", "eta_init", "vision_datasets"]) == [
      "eta_init", "vision_datasets"]
  assert config_lib.SCOPES["strength"].values == ("ewc", "online_ewc", "si", "mas")
