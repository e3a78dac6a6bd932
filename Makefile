# Set-up and the two everyday commands. `make demo` and `make test` each create the environment
# on first use (Python 3.11 virtualenv in .venv) and then run the demo job or the test suite.
PYTHON ?= python3.11
VENV ?= .venv
# torch is installed first, on its own: on a machine with a local CPU wheel this takes seconds,
# elsewhere PyPI's default Linux wheel (with CUDA) is used. Override, e.g.
#   make test TORCH_INSTALL="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_INSTALL ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: env demo test lint format clean

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

format: env
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) outputs multirun
