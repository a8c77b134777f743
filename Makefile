# The whole set-up: `make run` and `make test`. Everything installs into .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HNSWLIB_NO_NATIVE := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install run test test-unit test-integration bench bench-quick lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip wheel setuptools
	# torch first, pinned to the CPU build, so sentence-transformers does not pull a CUDA build.
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

run: install
	$(BIN)/memoray serve

test: install
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: install
	$(BIN)/python -m pytest -q -m "not integration" tests

test-integration: install
	$(BIN)/python -m pytest -q -m integration tests

bench: install
	$(BIN)/python -m benchmarks

lint: install
	$(BIN)/ruff check memoray actors serve benchmarks tests

clean:
	rm -rf $(VENV) build *.egg-info
