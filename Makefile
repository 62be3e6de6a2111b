# The two commands the README promises, each doing every set-up step it needs, idempotently:
#   make demo    the whole story against a private engine and registries
#   make test    lint, then the test suite on dockerd 20.10 (graph driver) and again, for the
#                packaging and fault tests, on dockerd 26 with the containerd image store, and
#                on dockerd 28.5 with the containerd image store and (fewer) with overlay2, and
#                Podman 5.8's differences on its Docker-compatible API
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
# Besides packaging, layers, push, interruptions, faults and Compose: the second opinion
# (skopeo + umoci read what was pushed: the store decides what a registry client gets), and
# the quiescing tests (stop/start, exec and real Redis and PostgreSQL: the store decides how
# a stopped source is committed and what the image holds), about 40 s more per engine.
# Incremental packaging (tests/test_incremental_engine.py): the store decides how the
# layers below the container's own are loaded and which chains it knows, about 70 s.
# And the engine contract (tests/test_engine_contract.py): the cases the fake engine of the
# fast tier must answer as every real engine does, so the fake cannot drift from any store.
CONTAINERD_TESTS ?= tests/test_package.py tests/test_layer.py tests/test_push_and_failures.py \
	tests/test_interrupts.py tests/test_faults.py tests/test_lifecycle.py tests/test_compose_project.py \
	tests/test_second_opinion.py tests/test_quiesce_engine.py tests/test_exec_engine.py \
	tests/test_real_apps.py tests/test_engine_contract.py tests/test_incremental_engine.py
CONTAINERD_TESTENV_DIR ?= /tmp/kegpack-ctr

# Docker 28.5 (Debian sid's docker.io 28.5.2; KEGPACK_ENGINE=docker28 and docker28-graph
# in scripts/testenv.sh: one debootstrapped sid root, cached in
# /var/cache/kegpack-testenv/sid-docker, run like the containerd flavour), each in a state dir
# of its own, registries on 5020/5021 (TLS 2396) and 5030/5031 (TLS 2406); torn down
# afterwards, pass or fail.
# - test-docker28, the containerd image store (the default of new Docker 29 installs and of
#   Docker Desktop): the same tests as test-containerd, because the store decides how
#   kegpackd loads and reads images (an OCI layout, the commit's layer descriptors) and
#   dockerd 28 is the newest engine people run with it. Measured on 2 shared cores: about
#   3.3 min, plus about 40 s once to debootstrap the sid root (530 MB).
# - test-docker28-graph, the overlay2 graph driver: only packaging, layers and push. The
#   graph store's load and push paths are the ones 20.10 runs the whole suite on; what 28.5
#   can change there is its archive, load and push answers, which these three files
#   exercise; interruption, fault and lifecycle behaviour is kegpackd's own, not the store's.
#   Measured: about 40 s (the root is already there).
DOCKER28_TESTS ?= $(CONTAINERD_TESTS)
# Left out on 28.5 with the containerd store, and reported (README, Engines tested): the
# disk-full test's 300 MiB case. dockerd 28.5.2 answers a POST /images/load whose unpack ran
# out of disk with no error (its log says "failed to extract layer … no space left on
# device") and tags the image, so the job succeeds with an image that cannot run on that
# disk; dockerd 26 reports the error. kegpackd does not yet verify the unpack.
DOCKER28_DESELECT ?= --deselect \
	'tests/test_faults.py::test_engine_disk_full_fails_clearly_tags_nothing_and_the_daemon_goes_on[300]'
DOCKER28_TESTENV_DIR ?= /tmp/kegpack-d28
DOCKER28_GRAPH_TESTS ?= tests/test_package.py tests/test_layer.py tests/test_push_and_failures.py \
	tests/test_engine_contract.py tests/test_incremental_engine.py
DOCKER28_GRAPH_TESTENV_DIR ?= /tmp/kegpack-d28g

# Podman 5.8 (Debian sid's podman, rootful, `podman system service`; KEGPACK_ENGINE=podman
# in scripts/testenv.sh: a sid root of its own, cached in /var/cache/kegpack-testenv/sid-podman,
# run like the namespaced dockerd flavours with runc and cgroupfs), registries on 5040/5041.
# Only the tests marked `podman` (tests/test_podman.py) run there, and they run nowhere else
# (tests/conftest.py): the rest of the suite asserts what Docker gives and Podman's API cannot
# (every owner in an archive is the container user's, so the fidelity tests would fail by
# design; there is no TLS listener). What they cover: each difference README's Podman table
# names, the one-shot CLI, push, and the daemon's start, stop and healthy triggers. Measured:
# about 70 s, plus about 60 s once to debootstrap the sid root (440 MB).
PODMAN_TESTENV_DIR ?= /tmp/kegpack-pod

DEPS_STAMP = $(ENV_DIR)/.kegpack-deps

# The fast tier again on Debian 13's Python 3.13 (Debian 12's is 3.11, the oldest we
# support), chrooted into a debootstrapped trixie root with a venv of its own; see
# scripts/py313.sh. Measured on 2 shared cores: first run 2.5 min (debootstrap ~80 s, the
# venv ~20 s, the tests ~80 s), then 1.5 min; the root is cached in /var/cache/kegpack-testenv/trixie-python and the venv in
# /tmp/kegpack-py313 until pyproject.toml changes. It runs right after lint: it is the
# cheapest suite, and a failure of the fast tier shows in a minute, not after the engines'.

.PHONY: setup system test test-graph test-containerd test-docker28 test-docker28-graph test-podman \
	test-py313 lint demo env down bench image

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

test: lint test-py313 test-graph test-containerd test-docker28 test-docker28-graph test-podman

test-graph: setup
	status=0; $(PYTHON) -m pytest -ra || status=$$?; \
		if [ -n "$$CI" ]; then scripts/testenv.sh down; fi; exit $$status

test-containerd: export KEGPACK_ENGINE = containerd
test-containerd: export KEGPACK_TESTENV_DIR = $(CONTAINERD_TESTENV_DIR)
test-containerd: setup
	eval "$$(scripts/testenv.sh up)" && status=0 && \
		$(PYTHON) -m pytest -ra -m engine $(CONTAINERD_TESTS) || status=$$?; \
		scripts/testenv.sh down; exit $$status

test-docker28: export KEGPACK_ENGINE = docker28
test-docker28: export KEGPACK_TESTENV_DIR = $(DOCKER28_TESTENV_DIR)
test-docker28: setup
	eval "$$(scripts/testenv.sh up)" && status=0 && \
		$(PYTHON) -m pytest -ra -m engine $(DOCKER28_DESELECT) $(DOCKER28_TESTS) || status=$$?; \
		scripts/testenv.sh down; exit $$status

test-docker28-graph: export KEGPACK_ENGINE = docker28-graph
test-docker28-graph: export KEGPACK_TESTENV_DIR = $(DOCKER28_GRAPH_TESTENV_DIR)
test-docker28-graph: setup
	eval "$$(scripts/testenv.sh up)" && status=0 && \
		$(PYTHON) -m pytest -ra -m engine $(DOCKER28_GRAPH_TESTS) || status=$$?; \
		scripts/testenv.sh down; exit $$status

test-podman: export KEGPACK_ENGINE = podman
test-podman: export KEGPACK_TESTENV_DIR = $(PODMAN_TESTENV_DIR)
test-podman: setup
	eval "$$(scripts/testenv.sh up)" && status=0 && \
		$(PYTHON) -m pytest -ra -m podman tests/test_podman.py || status=$$?; \
		scripts/testenv.sh down; exit $$status

test-py313: system
	scripts/py313.sh -ra

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
	eval "$$(scripts/testenv.sh up)" && $(PYTHON) -m bench.run $(BENCH_ARGS)

# The container image (deploy/Dockerfile) on the engine DOCKER_HOST names, built with no
# network: scripts/image-context.sh first makes the context (wheels for $(PYTHON)'s Python,
# the only step that uses the package index, and Debian's static tini). BASE_IMAGE must
# have that Python version. make image BASE_IMAGE=python:3.11-slim-bookworm IMAGE=kegpackd:dev
IMAGE ?= kegpackd:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BASE_IMAGE ?= python:$(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo 3.11)-slim-bookworm
IMAGE_CONTEXT ?= .image-context
image: | $(NEW_VENV)
	rm -rf $(IMAGE_CONTEXT) && scripts/image-context.sh $(IMAGE_CONTEXT) $(PYTHON)
	status=0; docker build --network none --build-arg BASE_IMAGE=$(BASE_IMAGE) -t $(IMAGE) \
		-f deploy/Dockerfile $(IMAGE_CONTEXT) || status=$$?; rm -rf $(IMAGE_CONTEXT); exit $$status
