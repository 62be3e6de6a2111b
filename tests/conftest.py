"""Fixtures for tests that run against the private engine and registries.

The engine is never optional: ``scripts/testenv.sh up`` brings it up (or finds it
up) once per session, and a failure to do so fails the tests that need it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kegpackd.config import DEFAULT_STATE_DIR
from kegpackd.engine.client import Engine
from kegpackd.packaging.mountindex import INDEX_DIR
from tests.daemontools import DaemonProcess, write_config
from tests.dockertools import TESTENV_SCRIPT, Docker, PrivateRegistry, TestEnv, parse_testenv
from tests.fakeengine import Changes, FakeEngine, FakePackage
from tests.owners import dead_token, live_token


@pytest.fixture(scope="session", autouse=True)
def default_state_dir_left_as_found() -> Iterator[None]:
    """Jobs run with the default config write their mount indexes (and stop records) in
    the default state_dir: what a session adds there is removed at its end, the rest
    left alone."""
    index = DEFAULT_STATE_DIR / INDEX_DIR
    before = set(os.listdir(index)) if index.is_dir() else set()
    yield
    if index.is_dir():
        for name in set(os.listdir(index)) - before:
            shutil.rmtree(index / name, ignore_errors=True)


@pytest.fixture(scope="session")
def testenv() -> TestEnv:
    """Bring up (idempotently) the private engine and registries; read their addresses."""
    done = subprocess.run(
        [str(TESTENV_SCRIPT), "up"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"scripts/testenv.sh up failed:\n{done.stdout}\n{done.stderr}")
    env = parse_testenv(done.stdout)
    os.environ["DOCKER_HOST"] = env.docker_host
    return env


@pytest.fixture
def docker(testenv: TestEnv, tmp_path: Path) -> Iterator[Docker]:
    """The docker CLI on the private engine; removes what the test created."""
    client = Docker(testenv, tmp_path)
    try:
        yield client
    finally:
        client.cleanup()


@pytest.fixture
async def engine(testenv: TestEnv) -> AsyncIterator[Engine]:
    async with Engine.open(testenv.docker_host) as opened:
        yield opened


@pytest.fixture
def daemon(testenv: TestEnv, tmp_path: Path) -> Iterator[DaemonProcess]:
    """A ``kegpackd run`` process (not started yet); killed after the test if still alive."""
    process = DaemonProcess(write_config(tmp_path / "kegpackd.toml"), tmp_path / "kegpackd.log")
    try:
        yield process
    finally:
        if process.process is not None and process.process.poll() is None:
            process.process.kill()
            process.process.wait(timeout=30)


@pytest.fixture
def private_registry(tmp_path: Path) -> Iterator[PrivateRegistry]:
    """A registry on a port of its own, not started yet; stopped after the test."""
    registry = PrivateRegistry(tmp_path / "registry")
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def changes() -> Changes:
    """What the fake engine and fake package announce, for tests to await."""
    return Changes()


@pytest.fixture
def fake(changes: Changes) -> FakeEngine:
    """An in-memory engine (tests/fakeengine.py), for logic the real engine does not decide."""
    return FakeEngine(changes)


@pytest.fixture
def packaged(changes: Changes) -> FakePackage:
    """A stand-in for the pipeline's ``package`` that records each job and returns at once
    (a module that needs jobs held running overrides it with ``FakePackage(block=True)``)."""
    return FakePackage(changes)


@pytest.fixture(scope="module")
def dead() -> str:
    """The owner token of a process that has exited."""
    return dead_token()


@pytest.fixture
def live() -> Iterator[str]:
    """The owner token of another process that is running (a second kegpackd, say)."""
    with live_token() as token:
        yield token


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Podman's tests run only on the podman flavour (KEGPACK_ENGINE=podman), and there only
    they run: the rest of the suite assumes what Docker gives (exact owners, a TLS listener).
    Left out, not skipped: a skip in CI would be a failure."""
    on_podman = os.environ.get("KEGPACK_ENGINE") == "podman"
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        is_podman = item.get_closest_marker("podman") is not None
        engine = item.get_closest_marker("engine") is not None
        (keep if is_podman == on_podman or not engine else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
