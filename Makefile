# The two commands the README promises: `make demo` and `make test` (after `make install`).
# PYTHON is the interpreter whose environment holds kegpackd; .ci/run points it at a venv.
PYTHON ?= python3

.PHONY: install test test-containerd lint demo env down bench

install:
	scripts/testenv.sh install
	$(PYTHON) -m pip install -q -e '.[test]'

lint:
	$(PYTHON) -m ruff check kegpackd tests bench
	$(PYTHON) -m ruff format --check kegpackd tests bench
	$(PYTHON) -m mypy

test: lint
	$(PYTHON) -m pytest -ra

# The engine tests again on Debian 13's dockerd 26 with the containerd image store
# (scripts/testenv.sh, KEGPACK_ENGINE=containerd), in a state dir of its own (short path:
# sockets) and on registry ports 5010/5011, TLS 2386; torn down afterwards, pass or fail.
CONTAINERD_TESTS ?= tests/test_package.py tests/test_layer.py tests/test_faults.py
CONTAINERD_TESTENV_DIR ?= /tmp/kegpack-ctr
test-containerd: export KEGPACK_ENGINE = containerd
test-containerd: export KEGPACK_TESTENV_DIR = $(CONTAINERD_TESTENV_DIR)
test-containerd:
	eval "$$(scripts/testenv.sh up)" && status=0 && \
		$(PYTHON) -m pytest -ra -m engine $(CONTAINERD_TESTS) || status=$$?; \
		scripts/testenv.sh down; exit $$status

demo:
	PYTHON=$(PYTHON) scripts/demo.sh

env:
	scripts/testenv.sh up

down:
	scripts/testenv.sh down

# End-to-end benchmark on the private engine (20+ min with the defaults); writes
# BENCHMARKS.md and bench/results.png. Options: make bench BENCH_ARGS='--size 128M --rounds 1'
BENCH_ARGS ?=
bench:
	eval "$$(scripts/testenv.sh up)" && $(PYTHON) bench/run.py $(BENCH_ARGS)
