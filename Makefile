# The two commands the README promises: `make demo` and `make test`.
PYTHON ?= python3

.PHONY: install test lint unit demo bench env down

install:
	scripts/testenv.sh install
	$(PYTHON) -m pip install -q -e '.[test]'

lint:
	ruff check kegpackd tests bench
	ruff format --check kegpackd tests bench
	mypy

test: lint
	$(PYTHON) -m pytest -ra

demo:
	scripts/demo.sh

env:
	scripts/testenv.sh up

down:
	scripts/testenv.sh down
