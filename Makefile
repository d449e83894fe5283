# Two commands do all set-up on a fresh machine: `make demo` (the whole pipeline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SITE_DIR ?= /usr/share/doc/python3.11/html
TORCH_VERSION ?= 2.13.0
CONFIG ?= configs/demo.yaml
PYTEST_ARGS ?=
# Two pytest workers, a test file each at a time: the suite waits on servers, subprocesses and sockets
# about half the time, so one worker leaves a core idle (measured: 1.0 core busy on average over 2).
TEST_WORKERS ?= 2

.PHONY: install demo test site browser ui up down deploy bench bench-data clean-runs

$(BIN)/memlm: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first and pinned, so that this machine's CPU wheel is used rather than a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==$(TORCH_VERSION)
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(BIN)/memlm

site:
	@if [ -d "$(SITE_DIR)" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Installing the offline default site (python3.11-doc) ..."; \
		(apt-get install -y -qq python3.11-doc >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq python3.11-doc >/dev/null)) || \
		echo "Could not install python3.11-doc."; \
	fi
	@test -d "$(SITE_DIR)" || { echo "No site at $(SITE_DIR): set crawl.site_dir in $(CONFIG) to any folder of HTML, or crawl.start_urls to a live site."; exit 1; }

# Debian's chromium, for the test that looks at the Prefect and MLflow UIs (skipped without it).
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "Installing chromium for the UI check ..."; \
		(apt-get install -y -qq chromium >/dev/null 2>&1 || \
		 (apt-get update -qq && apt-get install -y -qq chromium >/dev/null 2>&1)) || \
		echo "Could not install chromium: the UI check will be skipped."; \
	else echo "No chromium and no root apt-get: the UI check will be skipped."; fi

demo: install site
	$(BIN)/memlm run --config $(CONFIG)

test: install browser
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

ui: install
	$(BIN)/memlm ui --config $(CONFIG)

up: install
	$(BIN)/memlm up --config $(CONFIG)

down: install
	$(BIN)/memlm down --config $(CONFIG)

deploy: install
	$(BIN)/memlm deploy --config $(CONFIG)

bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python bench/memory.py --json runs/bench/memory.json

bench-data: install site
	$(BIN)/python bench/data.py --json runs/bench/data.json

clean-runs:
	rm -rf runs mlflow/mlflow.db mlflow/artifacts .memlm
