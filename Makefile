# Two entry points: `make demo` (set up, fetch data, run the main job) and
# `make test` (set up, fetch data, run the whole test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where fetched data sets go (git-ignored). DHP_DATA_DIR is a search path
# (os.pathsep-separated); the first entry is also the fetch destination.
DATA ?= $(CURDIR)/.data
# Extra local sources (e.g. an offline mirror) may be appended by the caller:
#   make test EXTRA_DATA_DIRS=/path/to/mirror
EXTRA_DATA_DIRS ?=
export DHP_DATA_DIR := $(DATA)$(if $(EXTRA_DATA_DIRS),:$(EXTRA_DATA_DIRS),)
# Two CPU cores: let XLA use both, keep BLAS from oversubscribing.
export XLA_PYTHON_CLIENT_PREALLOCATE := false
PYTEST_ARGS ?=

.PHONY: demo test gpu-check reproduce setup setup-test fetch clean

$(VENV)/.core: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(PY) -m pip install -q -e '.[test,tfds]'
	touch $@

setup: $(VENV)/.core
setup-test: $(VENV)/.test

# Idempotent: files already present are only re-verified (sha256), so it always runs.
fetch: $(VENV)/.core
	$(PY) -m dhp_jax.data.fetch mnist fashion_mnist --dest $(DATA)

demo: fetch
	$(PY) experiments/table1.py --benchmarks=permuted_mnist --preset=quick \
		--rows=finetune,dhp --num_seeds=3 --out_root=runs/demo

# Everything recorded in results/ (BUILD_NOTES.md, "Measured results"), cheapest first.
# Hours on a 2-core CPU; every row/point resumes from its last finished task, so
# rerunning after an interruption continues where it stopped.
# 5 where SVHN is available (no registry ships it; BUILD_NOTES.md, "Data").
VISION_TASKS ?= 4
# Issue 14: the permuted benchmarks at the paper preset, 5 paired seeds per row; the rows
# carrying the headline claims first, then the mini-batch Fisher hypothesis rows, then the
# faithful Online EWC rows (they diverge; their added seeds record lr·λ·Ω per task).
PAPER_ROWS := finetune,dhp,dhp_frozen_alpha,mas,dhp+mas,dhp+mas_eta_projected,finetune_dense,si,dhp+si,dhp_eta_projected,online_ewc_batch,dhp+online_ewc_batch,online_ewc,dhp+online_ewc
# Issue 18: the vision mixture at the medium preset (10 epochs/task), 3 paired seeds.
VISION_ROWS := finetune,dhp,dhp_frozen_alpha,finetune_dense,si,dhp+si,mas,dhp+mas,online_ewc,dhp+online_ewc,mas_lambda0.1,dhp+mas_lambda0.1,dhp_eta_projected
reproduce: fetch
	$(PY) experiments/table1.py --benchmarks=split_mnist --preset=paper --num_seeds=10 \
		--out_root=results --noprogress
	$(PY) experiments/table1.py --benchmarks=permuted_mnist,imbalanced_permuted_mnist \
		--preset=quick --num_seeds=3 --importance_samples=10000 --out_root=results --noprogress
	$(PY) experiments/table1.py --benchmarks=imbalanced_permuted_mnist --preset=quick \
		--num_seeds=3 --importance_samples=10000 --out_root=results --noprogress \
		--rows=online_ewc_gamma0.9,dhp+online_ewc_gamma0.9,online_ewc_empirical,dhp+online_ewc_empirical,online_ewc_lambda100,dhp+online_ewc_lambda100
	$(PY) experiments/eta_sweep.py --benchmarks=split_mnist --preset=paper --num_seeds=5 \
		--out_root=results --noprogress
	$(PY) experiments/table1.py --benchmarks=vision_mixture --preset=quick --num_seeds=1 \
		--num_tasks=$(VISION_TASKS) --out_root=results --noprogress \
		--rows=finetune,dhp,si,dhp+si,online_ewc,dhp+online_ewc,mas,dhp+mas,dhp_frozen_alpha,finetune_dense,dhp_eta_projected
	$(PY) experiments/eta_sweep.py --benchmarks=permuted_mnist,imbalanced_permuted_mnist \
		--preset=quick --num_seeds=5 --out_root=results --noprogress
	$(PY) experiments/table1.py --benchmarks=imbalanced_permuted_mnist --preset=paper \
		--num_seeds=1 --out_root=results --noprogress \
		--rows=online_ewc_lambda100,dhp+online_ewc_lambda100
	$(PY) experiments/table1.py --benchmarks=permuted_mnist,imbalanced_permuted_mnist \
		--preset=paper --num_seeds=5 --out_root=results --noprogress --rows=$(PAPER_ROWS)
	$(PY) experiments/table1.py --benchmarks=vision_mixture --preset=medium --num_seeds=3 \
		--num_tasks=$(VISION_TASKS) --out_root=results --noprogress --rows=$(VISION_ROWS)

test: $(VENV)/.test fetch
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

# On a GPU machine (after `pip install -e .[cuda]`): the GPU-marked tests with XLA's
# deterministic ops, the multi-device tests, then the throughput benchmark.
gpu-check: $(VENV)/.test fetch
	XLA_FLAGS="$$XLA_FLAGS --xla_gpu_deterministic_ops=true" $(PY) -m pytest -q -m gpu tests
	$(PY) -m pytest -q tests/test_devices.py
	$(PY) benchmarks/throughput.py --sections=mlp --out=runs/gpu_throughput.json

clean:
	rm -rf $(VENV) $(DATA) runs
