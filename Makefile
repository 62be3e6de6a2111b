# The two commands the README promises: `make demo` and `make test` (after `make install`).
# PYTHON is the interpreter whose environment holds kegpackd; .ci/run points it at a venv.
PYTHON ?= python3

.PHONY: install test lint demo env down bench

install:
	scripts/testenv.sh install
	$(PYTHON) -m pip install -q -e '.[test]'

lint:
	$(PYTHON) -m ruff check kegpackd tests bench
	$(PYTHON) -m ruff format --check kegpackd tests bench
	$(PYTHON) -m mypy

test: lint
	$(PYTHON) -m pytest -ra

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
