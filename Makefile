# The whole set-up: `make run` and `make test`. Everything installs into .venv.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# The venv first on PATH, so Ray workers and `ray job submit` entrypoints find its python.
export PATH := $(CURDIR)/$(BIN):$(PATH)
export HNSWLIB_NO_NATIVE := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install browser run test test-unit test-integration test-cluster bench bench-core \
        bench-hooks bench-locomo bench-locomo-dev bench-coding bench-planner bench-dedup \
        bench-security bench-audit bench-replication bench-agent bench-reindex bench-reshard \
        bench-scale bench-peer bench-hnsw bench-startup bench-gc prometheus reindex backup restore reshard lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip wheel setuptools
	# torch first, pinned to the CPU build, so sentence-transformers does not pull a CUDA build.
	$(BIN)/pip install torch==2.13.0
	# compat: a .pth path entry, not an import-hook finder that costs every `memoray hook` 12 ms
	$(BIN)/pip install -e '.[dev]' --config-settings editable_mode=compat
	# bytecode now, read even with PYTHONDONTWRITEBYTECODE (set on these machines): hooks, and each Ray
	# worker, which otherwise compiles actors/ and serve/ from source at every start
	$(BIN)/python -m compileall -q memoray actors serve cluster
	# MiniLM's ONNX export (memoray/onnx_minilm.py), made now from the bundled weights rather
	# than by the first server to start (about 10 s, once per machine's model cache)
	$(BIN)/python -m memoray.onnx_minilm
	touch $(STAMP)

# Headless Chromium for the viewer tests (Debian's chromium + chromium-driver), when missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	@if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends \
	    chromium chromium-driver; \
	fi

# Prometheus and promtool for the monitoring tests (Debian's prometheus package), when missing.
prometheus:
	@if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then \
	  $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends \
	    prometheus; \
	fi

# `make run ARGS="--port 8100 --data-dir /tmp/m"` passes flags to `memoray serve`.
ARGS ?=
run: install
	$(BIN)/memoray serve $(ARGS)

test: install browser prometheus
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=30 tests

test-unit: install
	$(BIN)/python -m pytest -q -m "not integration" tests

test-integration: install browser prometheus
	$(BIN)/python -m pytest -q -m integration tests

# The multi-node tests alone (also part of `make test`): a 3-node Ray cluster on this machine,
# every node in its own mount namespace with its own disk (needs root: unshare, mount).
test-cluster: install
	$(BIN)/python -m pytest -q -m cluster tests

# Every benchmark, one after the other; each prints its table and saves JSON (+ PNG) under
# benchmarks/results/. Run them one by one with the targets below.
bench: install
	$(BIN)/python -m benchmarks

bench-core: install
	$(BIN)/python -m benchmarks.bench_core

bench-hooks: install
	$(BIN)/python -m benchmarks.bench_hooks_server

# LoCoMo: baselines, the default settings and every feature variant, on the development and
# held-out halves (issue 15); `bench-locomo-dev` is the tuning run (development half only).
bench-locomo: install
	$(BIN)/python -m benchmarks.locomo

bench-locomo-dev: install
	$(BIN)/python -m benchmarks.locomo --splits dev --no-modes --out locomo_dev

bench-coding: install
	$(BIN)/python -m benchmarks.coding_memories

bench-planner: install
	$(BIN)/python -m benchmarks.bench_planner

bench-dedup: install
	$(BIN)/python -m benchmarks.bench_dedup

# Agent replay (issue 12): scripted multi-session scenarios in real git repositories through the
# real hooks and server, each in its own repository, then all in one; and the classifier's figures.
bench-agent: install
	$(BIN)/python -m benchmarks.bench_agent
	$(BIN)/python -m benchmarks.bench_agent --shared

# Scale (issue 14): 10K, 100K and 1M memories through /mcp with the hash embedder, then 100K
# with MiniLM: load rate, RAM per memory per actor, disk, latency, recall, recovery. Heavy: the
# 1M run loads for a long while and wants several GiB free.
bench-scale: install
	$(BIN)/python -m benchmarks.bench_scale --sizes 10000 100000 1000000
	$(BIN)/python -m benchmarks.bench_scale --sizes 100000 --embedder minilm

# HNSW build parameters (M, ef_construction) against insert cost and recall@10.
bench-hnsw: install
	$(BIN)/python -m benchmarks.bench_hnsw

# A server's start, stop and idle CPU, with Ray's defaults and with memoray's (issue 14).
bench-startup: install
	$(BIN)/python -m benchmarks.bench_startup

# A full garbage collection in a shard-sized process, before and after gcpause's freeze.
bench-gc: install
	$(BIN)/python -m benchmarks.bench_gc

# The peer side by side (issue 14): mcp-memory-service, pinned, in its own venv. Its sqlite-vec
# backend needs a Python whose sqlite3 loads extensions (Debian's does; pyenv builds often do
# not). The venv sees memoray's site-packages through a .pth line, so torch and
# sentence-transformers are the same build (no second torch download, no CUDA wheels).
PEER_VERSION := 12.4.0
PEER_PY ?= /usr/bin/python3.11
PEER_VENV := benchmarks/.peer/venv
$(PEER_VENV)/.installed-$(PEER_VERSION): | install
	$(PEER_PY) -m venv $(PEER_VENV)
	$(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
	  > $(PEER_VENV)/lib/python3.11/site-packages/memoray_shared.pth
	$(PEER_VENV)/bin/pip install mcp-memory-service==$(PEER_VERSION)
	touch $@

# 10,000 memories each: the peer's capture is timed through its memory_store on a 300-memory
# sample; the rest of its store is filled through its own storage API in process
# (benchmarks/peer_fill.py, store_batch), said so in the JSON. 30-60 min on the busy machine.
bench-peer: install $(PEER_VENV)/.installed-$(PEER_VERSION)
	$(BIN)/python -m benchmarks.bench_peer

bench-security: install
	$(BIN)/python -m benchmarks.bench_security

bench-audit: install
	$(BIN)/python -m benchmarks.bench_audit

bench-replication: install
	$(BIN)/python -m benchmarks.bench_replication

# Reindex rate with 1 and 2 embedding workers, retrieve p95 during each against normal.
bench-reindex: install
	$(BIN)/python -m benchmarks.bench_reindex

bench-reshard: install
	$(BIN)/python -m benchmarks.bench_reshard

# Batch jobs against the running server (`make run` in another terminal): its dashboard (the
# job API) is read from DATA_DIR/run.json, since it is not always on 8265.
DATA_DIR ?= $(HOME)/.memoray
DASHBOARD = $$($(BIN)/python -m memoray.serve.startup $(DATA_DIR))
reindex: install
	@dash=$(DASHBOARD) && echo "job API at $$dash" && \
	RAY_AUTH_MODE=token $(BIN)/ray job submit --address $$dash --working-dir . \
	  -- python -m memoray.cluster.jobs.reindex --data-dir $(DATA_DIR)

backup: install
	@dash=$(DASHBOARD) && echo "job API at $$dash" && \
	RAY_AUTH_MODE=token $(BIN)/ray job submit --address $$dash --working-dir . \
	  -- python -m memoray.cluster.jobs.backup --data-dir $(DATA_DIR) --dest $(DEST)

# `make restore BACKUP=/backups/2026-11-21 DATA_DIR=/new/dir` (with the server stopped).
restore: install
	$(BIN)/memoray restore $(BACKUP) --data-dir $(DATA_DIR)

# `make reshard SHARDS=3`: change the running store's shard count online (resumable: rerun it).
reshard: install
	@test -n "$(SHARDS)" || { echo "usage: make reshard SHARDS=N [DATA_DIR=...]"; exit 2; }
	@dash=$(DASHBOARD) && echo "job API at $$dash" && \
	RAY_AUTH_MODE=token $(BIN)/ray job submit --address $$dash --working-dir . \
	  -- python -m memoray.cluster.jobs.reshard --data-dir $(DATA_DIR) --shards $(SHARDS)

lint: install
	$(BIN)/ruff check memoray actors serve cluster benchmarks tests

clean:
	rm -rf $(VENV) build *.egg-info
