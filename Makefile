# Set-up and the everyday commands. `make demo`, `make test` and `make quick` each create the
# environment on first use (Python 3.11 virtualenv in .venv) and then run the demo job, the test
# suite (lint first; what CI runs), or the quick edit-and-test loop (tests not marked slow, heavy or
# long: no servers, no `launch.py` subprocesses, no runs of several seconds).
PYTHON ?= python3.11
VENV ?= .venv
# torch is installed first, on its own: on a machine with a local CPU wheel this takes seconds,
# elsewhere PyPI's default Linux wheel (with CUDA) is used. Override, e.g.
#   make test TORCH_INSTALL="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_INSTALL ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: env demo test quick lint format clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_INSTALL)
	$(BIN)/pip install --quiet -e '.[dev]'
	# Environments made before our own sweeper still hold hydra-optuna-sweeper (built for optuna 2).
	$(BIN)/pip uninstall --quiet --yes hydra-optuna-sweeper 2>/dev/null || true
	touch $@

env: $(BIN)/.installed

demo: env
	$(BIN)/python launch.py

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/hadolint docker/Dockerfile

test: lint
	$(BIN)/python -m pytest -q

quick: env
	$(BIN)/python -m pytest -q -m 'not slow and not heavy and not long'

format: env
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs multirun
