# The README's two set-up commands: `make demo` and `make test`.
# Each creates .venv and installs the project when missing; a second run installs nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

DEMO_RUN := runs/demo
DEMO_MLX := exports/demo-mlx
DEMO_REPORT := reports/openelm-sample

.PHONY: install test demo clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

test: $(STAMP)
	@bash tests/setup_chromium.sh
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/elm-corpus build manifests/openelm.yaml --sample
	$(VENV)/bin/elm-corpus stats openelm-sample --report $(DEMO_REPORT)
	$(VENV)/bin/elm-train --corpus openelm-sample --model tiny --out $(DEMO_RUN) --resume
