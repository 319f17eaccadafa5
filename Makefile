# The two quick-start commands: `make demo` (the main job) and `make test` (the whole suite).
VENV ?= $(HOME)/.cache/forkrl/venv
export FORKRL_VENV := $(VENV)
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench bench-learning
setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/forkrl train examples/local-arith.yaml

test: setup
	bash scripts/run-tests.sh

lint: setup
	$(PY) -m ruff check .

bench: setup
	$(PY) bench/objectives.py
	$(PY) bench/verifier.py
	$(PY) bench/rollout.py
	$(PY) bench/learner.py
	$(PY) bench/e2e.py
	$(PY) bench/multihost.py
	$(PY) bench/operator.py --startup

# forkrl against TRL's GRPOTrainer (bench/learning.py): installs the bench extra (TRL) first.
bench-learning:
	@FORKRL_EXTRAS=dev,gpu,bench bash scripts/setup.sh
	$(PY) bench/learning.py
