"""deploy/compose.yaml tried as its header writes it, with Compose v2, on the real engine.

Compose v2 is the docker CLI plugin ``scripts/sid-binary.sh`` installs (Debian sid's 2.40;
Debian 12 has only v1, which cannot read inline configs). The file's setup lines (the
token) run as written, in a copy of ``deploy/``. Only the kegpackd service comes up: the
Prometheus and Grafana images would have to be pulled. It runs the image that
tests/test_container_image.py builds, given through ``KEGPACKD_IMAGE``, with an override
that only keeps it off every network (``network_mode: none``, no ``ports:``), mounts the
private engine's socket instead of the host's, and runs its own HEALTHCHECK every second.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemontools import wait_until
from tests.dockertools import TestEnv
from tests.test_container_image import REPO, image  # noqa: F401  (image: a fixture)

DOCKER = "/usr/local/bin/docker"  # the current CLI (28.x) that finds the Compose v2 plugin
# The override: what this sandbox needs, and nothing else of the file changed.
OVERRIDE = """\
services:
  kegpackd:
    network_mode: none
    ports: !reset []
    volumes:
      - {socket}:/var/run/docker.sock
    healthcheck:
      interval: 1s
      start_period: 0s
"""


def setup_lines() -> list[str]:
    """The header's commands that make the files the project reads (not the build or up)."""
    header = (REPO / "deploy" / "compose.yaml").read_text().split("\nname:")[0]
    commands = [line.removeprefix("#   ").split(" #")[0] for line in header.splitlines()]
    made = [c for c in commands if c.startswith(("install ", "openssl "))]
    assert made, f"no setup lines in the header of deploy/compose.yaml:\n{header}"
    return made


@dataclass
class Project:
    """A Compose project of deploy/compose.yaml (a copy), on the private engine."""

    directory: Path
    name: str
    env: dict[str, str]
    files: tuple[Path, ...]

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``docker compose -p NAME -f … ARGS`` with the project's environment."""
        files = [arg for path in self.files for arg in ("-f", str(path))]
        done = subprocess.run(
            [DOCKER, "compose", "-p", self.name, *files, *args], capture_output=True,
            text=True, timeout=120, check=False, env={**os.environ, **self.env},
        )  # fmt: skip
        if check:
            assert done.returncode == 0, f"compose {args} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def left(self) -> dict[str, list[str]]:
        """The project's containers, volumes and networks still on the engine."""
        label = f"label=com.docker.compose.project={self.name}"
        kinds = {"containers": ["ps", "-a"], "volumes": ["volume", "ls"],
                 "networks": ["network", "ls"]}  # fmt: skip
        return {kind: docker(*cmd, "-q", "--filter", label).split() for kind, cmd in kinds.items()}


def docker(*args: str) -> str:
    """A docker command's stdout on the private engine (DOCKER_HOST from the testenv fixture)."""
    done = subprocess.run([DOCKER, *args], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"docker {args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture
def written(testenv: TestEnv, tmp_path: Path) -> Project:
    """A copy of deploy/ after the header's setup lines, the file alone (no override)."""
    shutil.copytree(REPO / "deploy", tmp_path / "deploy")
    for line in setup_lines():
        subprocess.run(["bash", "-euc", line], cwd=tmp_path, check=True, timeout=30)
    socket = testenv.docker_host.removeprefix("unix://")
    env = {"DOCKER_GID": str(os.stat(socket).st_gid), "DOCKER_HOST": testenv.docker_host}
    name = f"kegpackd-test-{uuid.uuid4().hex[:8]}"
    return Project(tmp_path / "deploy", name, env, (tmp_path / "deploy" / "compose.yaml",))


@pytest.fixture
def project(written: Project, image: str, testenv: TestEnv) -> Iterator[Project]:  # noqa: F811
    """The file with the sandbox's override and the built image; down -v afterwards."""
    override = written.directory / "override.yaml"
    socket = testenv.docker_host.removeprefix("unix://")
    override.write_text(OVERRIDE.format(socket=socket))
    made = Project(written.directory, written.name, {**written.env, "KEGPACKD_IMAGE": image},
                   (*written.files, override))  # fmt: skip
    try:
        yield made
    finally:
        made.compose("down", "-v", "--timeout", "30", check=False)


def up(project: Project) -> str:
    """``up -d`` of the kegpackd service alone, no pull; its container's id."""
    project.compose("up", "-d", "--pull", "never", "kegpackd")
    return project.compose("ps", "-q", "kegpackd").stdout.strip()


def health(container: str) -> str:
    return docker("inspect", "-f", "{{.State.Health.Status}}", container).strip()


@pytest.mark.engine
def test_compose_config_accepts_the_file_as_its_header_writes_it(written: Project) -> None:
    """``docker compose config`` exits 0 on the file after the header's setup lines."""
    services = written.compose("config", "--services").stdout.split()
    assert sorted(services) == ["grafana", "kegpackd", "prometheus"]


@pytest.mark.engine
def test_the_kegpackd_service_becomes_healthy_without_a_new_network(project: Project) -> None:
    """Up of kegpackd alone creates no Docker network and its HEALTHCHECK turns healthy."""
    networks = docker("network", "ls", "-q").split()
    container = up(project)
    wait_until(lambda: health(container) == "healthy", 60, "a healthy kegpackd service")
    assert docker("network", "ls", "-q").split() == networks


@pytest.mark.engine
def test_compose_exec_of_kegpackd_jobs_answers_in_the_service(project: Project) -> None:
    """``docker compose exec kegpackd kegpackd jobs --json`` reads the daemon's job list."""
    container = up(project)
    wait_until(lambda: health(container) == "healthy", 60, "a healthy kegpackd service")
    done = project.compose("exec", "kegpackd", "kegpackd", "jobs", "--json")
    assert isinstance(json.loads(done.stdout)["jobs"], list), done.stdout


@pytest.mark.engine
def test_compose_down_v_leaves_no_container_volume_or_network(project: Project) -> None:
    """``docker compose down -v`` removes the service's container and its state volume."""
    up(project)
    assert project.left()["volumes"], "the project's state volume was never made"
    project.compose("down", "-v")
    assert project.left() == {"containers": [], "volumes": [], "networks": []}
