# Quick start: `make demo`, then `make test`. Both create .venv on first use: `make demo`
# installs the package alone, `make test` adds the dev tools (pytest, ruff, mypy, dask, moto).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
DEV := $(VENV)/.dev-installed

.PHONY: demo test lint bench clean

$(BIN)/prebake: pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (set PYTHON=...)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU wheel first: a bare torch requirement would pull a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	@touch $@

$(DEV): $(BIN)/prebake
	$(BIN)/pip install --quiet -e '.[dev]'
	# Pillow 12 beside the pinned 13, for tests of the Pillow-12 pass-order rule (tests/reference/pillow12.py).
	$(BIN)/pip install --quiet --no-deps --target $(VENV)/pillow12 'pillow==12.3.*'
	@touch $@

demo: $(BIN)/prebake
	$(BIN)/prebake demo --out demo-out

lint: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy src/prebake

test: lint
	# Two processes, a test file each at a time (a file's session stores built once per process):
	# 8 minutes instead of 12 on 2 cores.
	$(BIN)/pytest -q -n 2 --dist loadfile

bench: $(BIN)/prebake
	$(BIN)/prebake demo --out demo-out >/dev/null
	$(BIN)/prebake bench demo-out/store.zarr --src demo-out/sample --build-src demo-out/sample

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
