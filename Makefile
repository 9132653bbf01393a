# The README's two set-up commands: `make demo` and `make test`.
# Each creates .venv and installs the project when missing; a second run installs nothing.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

DEMO_RUN := runs/demo
DEMO_MLX := exports/demo-mlx
DEMO_REPORT := reports/openelm-sample
DEMO_PROMPT := And God said
# Debian's OpenBLAS, when installed, makes MLX's CPU matmul several times faster (docs/export.md); optional.
OPENBLAS := /usr/lib/x86_64-linux-gnu/libopenblas.so.0
MLX_CPU := $(if $(wildcard $(OPENBLAS)),LD_PRELOAD=$(OPENBLAS))

.PHONY: install test demo clean-demo

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# pip before 23.3 does not normalise extras (PEP 685): jusText's lxml[html_clean] then sends it backtracking
	@# over lxml versions with a warning for each, and lxml_html_clean is left out.
	$(PY) -m pip install -q --upgrade 'pip>=24.0'
	@# -qq: errors only (setuptools' notes on every editable install are not the user's concern). The bytecode is
	@# compiled afterwards on every core (pip compiles file by file); without it each Ray worker and subprocess
	@# of the tests would compile what it imports.
	$(PY) -m pip install -qq --no-compile -e '.[dev]'
	@# Packages' own test folders and pip are never imported here: 4,350 of the 25,100 files, 9 s of 46.
	$(PY) -m compileall -q -j 0 -x '/(tests|pip)/' $(VENV)/lib > /dev/null || true  # as pip, skip non-Python-3 files
	@touch $(STAMP)

test: $(STAMP)
	@bash tests/setup_chromium.sh
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/elm-corpus build manifests/openelm.yaml --sample
	$(VENV)/bin/elm-corpus stats openelm-sample --report $(DEMO_REPORT)
	$(VENV)/bin/elm-train --corpus openelm-sample --model tiny --out $(DEMO_RUN) --resume
	$(VENV)/bin/elm-train export $(DEMO_RUN) --format mlx --out $(DEMO_MLX) --force
	@echo "mlx-lm continues \"$(DEMO_PROMPT)\" from $(DEMO_MLX):"
	@$(MLX_CPU) TRANSFORMERS_VERBOSITY=error $(PY) -m mlx_lm generate --model $(DEMO_MLX) \
		--ignore-chat-template --prompt "$(DEMO_PROMPT)" --max-tokens 40 --temp 0.7 --top-p 0.9 --seed 0 --verbose False
