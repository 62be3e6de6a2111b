# The two commands the README promises, each doing every set-up step it needs, idempotently:
#   make demo    the whole story against a private engine and registries
#   make test    lint, then the test suite on dockerd 20.10 (graph driver) and again, for the
#                packaging and fault tests, on dockerd 26 with the containerd image store
# With no virtualenv active, a .venv of the repository's own is created and used.

ifdef VIRTUAL_ENV
PYTHON ?= python
ENV_DIR = $(VIRTUAL_ENV)
else
PYTHON ?= .venv/bin/python
ENV_DIR = .venv
NEW_VENV = .venv/bin/python
endif

# The engine's sockets live under the state dir: keep its path short wherever we are cloned.
KEGPACK_TESTENV_DIR ?= $(shell [ $$(pwd | wc -c) -gt 50 ] && echo /tmp/kegpack-ci-testenv)
export KEGPACK_TESTENV_DIR
export PIP_DISABLE_PIP_VERSION_CHECK = 1

# The engine tests again on Debian 13's dockerd 26 with the containerd image store
# (scripts/testenv.sh, KEGPACK_ENGINE=containerd), in a state dir of its own (short path:
# sockets) and on registry ports 5010/5011, TLS 2386; torn down afterwards, pass or fail.
CONTAINERD_TESTS ?= tests/test_package.py tests/test_layer.py tests/test_push_and_failures.py \
	tests/test_interrupts.py tests/test_faults.py tests/test_lifecycle.py tests/test_compose_project.py
CONTAINERD_TESTENV_DIR ?= /tmp/kegpack-ctr

DEPS_STAMP = $(ENV_DIR)/.kegpack-deps

.PHONY: setup system test test-graph test-containerd lint demo env down bench

setup: system $(DEPS_STAMP)

# Debian packages the tests and the demo use (scripts/testenv.sh checks what is there first).
system:
	scripts/testenv.sh install

.venv/bin/python:
	python3 -m venv .venv 2>/dev/null || { \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv \
		&& python3 -m venv .venv; }

$(DEPS_STAMP): pyproject.toml | $(NEW_VENV)
	$(PYTHON) -m pip install -q -e '.[test]'
	mkdir -p $(dir $@) && touch $@

lint: setup
	$(PYTHON) -m ruff check kegpackd tests bench deploy/grafana
	$(PYTHON) -m ruff format --check kegpackd tests bench deploy/grafana
	$(PYTHON) -m mypy

test: lint test-graph test-containerd

test-graph: setup
	status=0; $(PYTHON) -m pytest -ra || status=$$?; \
		if [ -n "$$CI" ]; then scripts/testenv.sh down; fi; exit $$status

test-containerd: export KEGPACK_ENGINE = containerd
test-containerd: export KEGPACK_TESTENV_DIR = $(CONTAINERD_TESTENV_DIR)
test-containerd: setup
	eval "$$(scripts/testenv.sh up)" && status=0 && \
		$(PYTHON) -m pytest -ra -m engine $(CONTAINERD_TESTS) || status=$$?; \
		scripts/testenv.sh down; exit $$status

demo: setup
	PYTHON=$(PYTHON) scripts/demo.sh

env: setup
	scripts/testenv.sh up

down:
	scripts/testenv.sh down

# End-to-end benchmark on the private engine (20+ min with the defaults); writes
# BENCHMARKS.md and bench/results.png. Options: make bench BENCH_ARGS='--size 128M --rounds 1'
BENCH_ARGS ?=
bench: setup
	eval "$$(scripts/testenv.sh up)" && $(PYTHON) bench/run.py $(BENCH_ARGS)
