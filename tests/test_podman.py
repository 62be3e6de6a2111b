"""kegpackd on Podman's Docker-compatible API (``make test-podman``: Debian sid's Podman 5.8).

Each difference from Docker that kegpackd meets or hides has a test here; README.md's
"Podman" table names them. These tests run only on the podman flavour of the test env
(tests/conftest.py leaves them out elsewhere).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kegpackd.engine.client import Engine
from tests.daemontools import DaemonProcess, succeeded
from tests.dockertools import Docker, TestEnv, registry_tags

pytestmark = [pytest.mark.engine, pytest.mark.podman]

LABEL = ("-l", "kegpack.package=true")
ALLOW = ("-l", "kegpack.allow-forced-owners=true")


def tree(root: Path) -> Path:
    """A small mount source with a file owned by 1234:5678 (which Podman reports as 0:0)."""
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("a\n")
    (root / "sub" / "b.txt").write_text("b\n")
    os.chown(root / "a.txt", 1234, 5678)
    return root


def package(
    docker: Docker, cid: str, tmp_path: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """The one-shot CLI on ``cid``, into this test's own repository."""
    config = tmp_path / "kegpackd.toml"
    config.write_text(
        f'[packaging]\nrepository = "kegpack-test/{docker.prefix}"\n'
        f"[registries]\nallowed = [{json.dumps(docker.env.registry)}]\n"
    )
    return docker.kegpackd("package", "-c", str(config), cid, *args)


def made_reference(done: subprocess.CompletedProcess[str]) -> str:
    """The image reference the CLI printed on stdout."""
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[0]


def libpod(env: TestEnv, method: str, path: str) -> bytes:
    """A request to Podman's own (libpod) API, which the docker CLI cannot make."""
    socket = env.docker_host.removeprefix("unix://")
    done = subprocess.run(
        [
            "curl",
            "-sf",
            "-X",
            method,
            "--unix-socket",
            socket,
            f"http://podman/v5.0.0/libpod/{path}",
        ],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return done.stdout


async def test_the_boundary_detects_podman(engine: Engine) -> None:
    """``/version`` names the Podman Engine component: the boundary adapts to it."""
    assert await engine.product() == "podman"


def test_a_mount_whose_owners_podman_forces_is_refused_by_default(
    docker: Docker, tmp_path: Path
) -> None:
    """Podman reports every owner as the container user's: refused, naming why and the override."""
    cid = docker.container(*LABEL, "-v", f"{tree(tmp_path / 'src')}:/keg")
    done = package(docker, cid, tmp_path, "--no-push")
    assert done.returncode != 0
    assert "Podman" in done.stderr
    assert "kegpack.allow-forced-owners=true" in done.stderr
    assert "packaging.allow_forced_owners" in done.stderr
    assert docker.packaged(cid) == []


def test_with_the_override_the_image_holds_the_files_with_the_owners_podman_reported(
    docker: Docker, tmp_path: Path
) -> None:
    """Allowed: the content comes through, owners are 0:0, and the image says they were forced."""
    cid = docker.container(*LABEL, *ALLOW, "-v", f"{tree(tmp_path / 'src')}:/keg")
    reference = made_reference(package(docker, cid, tmp_path, "--no-push"))
    docker.track_image(reference)
    listing = docker.run_image(
        reference, "sh", "-c", "cat /keg/a.txt /keg/sub/b.txt; stat -c '%u:%g %n' /keg/a.txt"
    )
    assert listing == "a\nb\n0:0 /keg/a.txt\n"
    labels = docker.inspect(reference)["Config"]["Labels"]
    assert labels["kegpack.owners"] == "forced-by-engine"


def test_a_stopped_containers_mount_is_packaged_though_podman_names_its_entries_from_slash(
    docker: Docker, tmp_path: Path
) -> None:
    """Podman's archive of a stopped container names entries ``/``, ``/a.txt``: still read whole."""
    cid = docker.container(*LABEL, *ALLOW, "-v", f"{tree(tmp_path / 'src')}:/keg")
    docker.run("stop", "-t", "0", cid)
    socket = docker.env.docker_host.removeprefix("unix://")
    names = subprocess.run(
        f"curl -sf --unix-socket {socket} 'http://podman/containers/{cid}/archive?path=/keg'"
        " | tar -tf -",
        shell=True, capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    assert names[0] == "/"
    reference = made_reference(package(docker, cid, tmp_path, "--no-push"))
    docker.track_image(reference)
    assert docker.run_image(reference, "cat", "/keg/a.txt", "/keg/sub/b.txt") == "a\nb\n"


def test_a_packaged_image_is_pushed_to_the_registry(docker: Docker, tmp_path: Path) -> None:
    """Podman's push through the compat API reaches the loopback registry (registries.conf)."""
    cid = docker.container(*LABEL, *ALLOW, "-v", f"{tree(tmp_path / 'src')}:/keg")
    repository = f"{docker.env.registry}/kegpack-test/{docker.prefix}-pushed"
    reference = made_reference(package(docker, cid, tmp_path, "--push", "--repository", repository))
    docker.track_image(reference)
    tag = reference.rsplit(":", 1)[1]
    assert tag in registry_tags(docker.env.registry, f"kegpack-test/{docker.prefix}-pushed")


async def test_image_names_read_from_podman_are_spelled_as_docker_spells_them(
    engine: Engine, docker: Docker
) -> None:
    """Podman reports ``docker.io/library/x:1``; the boundary gives ``x:1``, as Docker would."""
    name = f"{docker.prefix}-named:1"
    docker.run("tag", docker.env.base_image, name)
    docker.track_image(name)
    info = await engine.inspect_image(name)
    assert name in info.repo_tags
    raw = json.loads(docker.run("image", "inspect", name))[0]["RepoTags"]
    assert f"docker.io/library/{name}" in raw


async def test_the_reference_filter_podman_ignores_is_applied_by_the_boundary(
    engine: Engine, docker: Docker
) -> None:
    """Podman answers every image to ``reference=kegpack-pending/*``; our listing does not."""
    pending = f"kegpack-pending/{docker.prefix}:0.1.2"
    docker.run("tag", docker.env.base_image, pending)
    docker.track_image(pending)
    filters = {"reference": ["kegpack-pending/*"]}
    socket = docker.env.docker_host.removeprefix("unix://")
    raw = json.loads(
        subprocess.run(
            ["curl", "-sf", "-G", "--unix-socket", socket, "http://podman/images/json",
             "--data-urlencode", f"filters={json.dumps(filters)}"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    )  # fmt: skip
    assert any("kegpack-test/busybox" in " ".join(i.get("RepoTags") or ()) for i in raw)
    listed = await engine.list_images(filters)
    tags = [t for entry in listed for t in entry.repo_tags]
    assert pending in tags
    assert all(t.startswith("kegpack-pending/") for t in tags)


def test_the_daemon_packages_a_labelled_container_when_it_starts(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The start trigger, from Podman's event stream."""
    daemon.start()
    cid = docker.container(*LABEL, *ALLOW, "-v", f"{tree(tmp_path / 'src')}:/keg")
    record = succeeded(daemon, cid, timeout=60)
    assert record["trigger"] == "start"


def test_the_daemon_packages_a_container_when_it_stops(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The stop trigger: Podman's ``die`` event."""
    daemon.start()
    cid = docker.container(
        *LABEL, *ALLOW, "-l", "kegpack.trigger=stop", "-v", f"{tree(tmp_path / 'src')}:/keg",
        command=["sleep", "1"],
    )  # fmt: skip
    record = succeeded(daemon, cid, timeout=60)
    assert record["trigger"] == "stop"


def test_the_daemon_packages_a_container_once_healthy(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The healthy trigger: Podman's ``health_status`` event, its state in ``HealthStatus``.

    Podman runs health checks from systemd timers, which this sandbox has not; the test runs
    the check through libpod's API, as the timer would.
    """
    daemon.start()
    cid = docker.container(
        *LABEL, *ALLOW, "-l", "kegpack.trigger=healthy", "--health-cmd", "test -f /tmp/ok",
        "--health-interval", "1h", "-v", f"{tree(tmp_path / 'src')}:/keg",
    )  # fmt: skip
    assert daemon.jobs("job started", cid) == []
    docker.run("exec", cid, "touch", "/tmp/ok")
    answer = json.loads(libpod(docker.env, "GET", f"containers/{cid}/healthcheck"))
    assert answer["Status"] == "healthy"
    record = succeeded(daemon, cid, timeout=60)
    assert record["trigger"] == "healthy"
