"""What a label, a request's container field or a container's name cannot make kegpackd do
to the engine: reach another endpoint, move a tag, push elsewhere, remove a user's container.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from kegpackd.config import parse_config
from kegpackd.engine.client import Engine
from kegpackd.errors import InvalidValueError
from kegpackd.packaging.jobs import JobRequest
from kegpackd.packaging.pipeline import package
from tests.daemontools import DaemonProcess, write_config
from tests.dockertools import Docker, TestEnv, registry_tags

pytestmark = pytest.mark.engine

JOB_LIMIT = 120


class RecordingProxy:
    """A unix socket in front of the engine's that keeps every byte sent to the engine."""

    def __init__(self, path: Path, engine_socket: str) -> None:
        self.path, self.engine_socket = path, engine_socket
        self.sent = bytearray()
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(str(path))
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def requests(self) -> bytes:
        with self._lock:
            return bytes(self.sent)

    def close(self) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.engine_socket)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, source: socket.socket, dest: socket.socket, record: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if record:
                    with self._lock:
                        self.sent += data
                dest.sendall(data)
        with contextlib.suppress(OSError):
            dest.shutdown(socket.SHUT_WR)


@pytest.fixture
def proxy(testenv: TestEnv, tmp_path: Path) -> Iterator[RecordingProxy]:
    recorder = RecordingProxy(tmp_path / "engine.sock", testenv.docker_host.removeprefix("unix://"))
    try:
        yield recorder
    finally:
        recorder.close()


def run_cli(host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kegpackd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={"PATH": "/usr/bin:/bin", "DOCKER_HOST": host, "PYTHONPATH": str(Path.cwd())},
    )


def made_by_job(docker: Docker, job_id: str) -> list[str]:
    """The temporary commit and the pending tag of one job, if any is left."""
    temporary = docker.run("images", "-a", "-q", "--filter", f"label=kegpack.temporary={job_id}")
    pending = docker.run("images", "-q", "--filter", f"reference=kegpack-pending/{job_id}")
    return temporary.split() + pending.split()


# --- F3: the container field reaches no other endpoint ------------------------------------


@pytest.mark.parametrize(
    ("ref", "endpoint"),
    [
        ("../containers/{victim}/archive?path=/&x=", b"/archive"),
        ("../events?x=", b"/events"),
    ],
)
def test_a_container_ref_that_is_a_path_is_refused_before_the_engine_sees_it(
    docker: Docker, proxy: RecordingProxy, tmp_path: Path, ref: str, endpoint: bytes
) -> None:
    """A container ref naming another endpoint fails as an invalid value; no such request."""
    victim = docker.name("-victim")
    docker.container(name=victim)
    ref = ref.format(victim=victim)
    config = tmp_path / "kegpackd.toml"
    config.write_text("")
    done = run_cli(proxy.host, "package", "-c", str(config), ref, timeout=30)
    assert done.returncode == 1, done.stderr
    assert "invalid value" in done.stderr
    assert repr(ref) in done.stderr
    assert endpoint not in proxy.requests()


async def test_the_engine_boundary_refuses_an_image_ref_that_is_a_path(engine: Engine) -> None:
    """An image ref with '..' or a query is refused by name, not sent."""
    with anyio.fail_after(10), pytest.raises(InvalidValueError, match=r"invalid value '\.\./ev"):
        await engine.inspect_image("../events?x=")


# --- F6: a label cannot re-point a tag -------------------------------------------------


async def test_a_label_cannot_move_a_tag_off_an_image_kegpackd_did_not_make(
    engine: Engine, docker: Docker, testenv: TestEnv, tmp_path: Path
) -> None:
    """kegpack.repository/tags naming a user's tag fail the job; the tag keeps its image."""
    victim = f"{docker.prefix}victim2/db"
    docker.run("tag", testenv.base_image, f"{victim}:15")
    docker.track_image(f"{victim}:15")
    before = docker.inspect(f"{victim}:15")["Id"]
    labels = ("-l", f"kegpack.repository={victim}", "-l", "kegpack.tags=15")
    cid = docker.container(*labels, "-v", f"{tmp_path}:/keg")
    request = JobRequest(container=cid)
    with anyio.fail_after(JOB_LIMIT), pytest.raises(InvalidValueError) as caught:
        await package(engine, parse_config({}), request)
    assert f"{victim}:15" in str(caught.value)
    assert "label kegpack.repository" in str(caught.value)
    assert docker.inspect(f"{victim}:15")["Id"] == before
    assert docker.packaged(cid) == []
    assert made_by_job(docker, request.job_id) == []


async def test_a_job_moves_its_own_tag_to_its_new_image(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """A tag on kegpackd's earlier image of the same container moves to the new one."""
    repository = f"{docker.prefix}own/web"
    cid = docker.container("-v", f"{tmp_path}:/keg")
    config = parse_config({"packaging": {"repository": repository, "tags": ["stable"]}})
    with anyio.fail_after(JOB_LIMIT):
        first = await package(engine, config, JobRequest(container=cid))
        (tmp_path / "new").write_text("changed")
        second = await package(engine, config, JobRequest(container=cid))
    assert first.image_id != second.image_id
    assert docker.inspect(f"{repository}:stable")["Id"] == second.image_id


async def test_a_repository_outside_allowed_repositories_is_refused_before_any_work(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """packaging.allowed_repositories refuses a labelled repository outside it, making nothing."""
    cid = docker.container("-l", "kegpack.repository=victim2/db", "-v", f"{tmp_path}:/keg")
    config = parse_config({"packaging": {"allowed_repositories": ["kegpack/"]}})
    request = JobRequest(container=cid)
    with anyio.fail_after(JOB_LIMIT), pytest.raises(InvalidValueError) as caught:
        await package(engine, config, request)
    assert "not in packaging.allowed_repositories" in str(caught.value)
    assert "label kegpack.repository" in str(caught.value)
    assert made_by_job(docker, request.job_id) == []


# --- F7: a repository prefix in registries.allowed -------------------------------------


def prefix_config(testenv: TestEnv, docker: Docker) -> dict[str, object]:
    return {
        "packaging": {"push": True, "tags": ["latest"]},
        "registries": {"allowed": [f"{testenv.registry}/{docker.prefix}-apps/"]},
    }


async def test_a_label_cannot_push_outside_an_allowed_repository_prefix(
    engine: Engine, docker: Docker, testenv: TestEnv, tmp_path: Path
) -> None:
    """With registry/apps/ allowed, a label pushing to registry/prod/… fails before any work."""
    target = f"{testenv.registry}/{docker.prefix}-prod/payments"
    cid = docker.container("-l", f"kegpack.repository={target}", "-v", f"{tmp_path}:/keg")
    request = JobRequest(container=cid)
    with anyio.fail_after(JOB_LIMIT), pytest.raises(InvalidValueError) as caught:
        await package(engine, parse_config(prefix_config(testenv, docker)), request)
    assert "not in registries.allowed" in str(caught.value)
    assert made_by_job(docker, request.job_id) == []
    assert docker.packaged(cid) == []
    assert registry_tags(testenv.registry, f"{docker.prefix}-prod/payments") == []


async def test_a_push_inside_an_allowed_repository_prefix_works(
    engine: Engine, docker: Docker, testenv: TestEnv, tmp_path: Path
) -> None:
    """With registry/apps/ allowed, a push to registry/apps/web goes through."""
    target = f"{testenv.registry}/{docker.prefix}-apps/web"
    cid = docker.container("-l", f"kegpack.repository={target}", "-v", f"{tmp_path}:/keg")
    with anyio.fail_after(JOB_LIMIT):
        result = await package(
            engine, parse_config(prefix_config(testenv, docker)), JobRequest(container=cid)
        )
    docker.track_image(f"{target}:latest")
    assert result.references == [f"{target}:latest"]
    assert registry_tags(testenv.registry, f"{docker.prefix}-apps/web") == ["latest"]


# --- F17: the sweep leaves a user's kegpack-helper-* container alone ---------------------


def user_helpers(docker: Docker) -> tuple[str, str]:
    """A running and a created container whose names start with kegpack-helper-."""
    running = docker.container(name=f"kegpack-helper-{docker.prefix}-run")
    created = docker.container(name=f"kegpack-helper-{docker.prefix}-new", start=False)
    return running, created


def assert_untouched(docker: Docker, running: str, created: str) -> None:
    states = docker.run("inspect", "-f", "{{.State.Status}}", running, created).split()
    assert states == ["running", "created"]


def test_a_users_kegpack_helper_container_survives_kegpackd_sweep(docker: Docker) -> None:
    """`kegpackd sweep` keeps a user's running or created container named kegpack-helper-*."""
    running, created = user_helpers(docker)
    done = docker.kegpackd("sweep", timeout=60)
    assert done.returncode == 0, done.stderr
    assert_untouched(docker, running, created)


def test_a_users_kegpack_helper_container_survives_a_daemon_start(
    docker: Docker, daemon: DaemonProcess
) -> None:
    """The daemon's start-up sweep keeps a user's container named kegpack-helper-*."""
    running, created = user_helpers(docker)
    write_config(daemon.config)
    daemon.start()
    daemon.stop()
    assert_untouched(docker, running, created)
