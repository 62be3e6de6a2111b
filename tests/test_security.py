"""What an untrusted container (labels, files) cannot make kegpackd do; secrets stay secret."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import pytest

from kegpackd.config import parse_config
from kegpackd.engine.client import Engine
from kegpackd.errors import InvalidValueError
from kegpackd.packaging.jobs import JobRequest
from kegpackd.packaging.pipeline import package
from tests.daemontools import DaemonProcess, finished, write_config
from tests.dockertools import Docker, PrivateRegistry, TestEnv

pytestmark = pytest.mark.engine

LABEL = ("-l", "kegpack.package=true")
SECRET = "kegpack-wrong-secret-7f3a9c"


def test_a_refused_password_never_shows_in_logs_records_errors_or_metrics(
    docker: Docker, daemon: DaemonProcess, testenv: TestEnv, tmp_path: Path
) -> None:
    """A push with a wrong password fails; the password is in no log, record, error or metric."""
    password = tmp_path / "password"
    password.write_text(SECRET)
    registry = testenv.auth_registry
    auth = (
        f'[registries]\nallowed = ["{registry}"]\n'
        f'[registries.auth."{registry}"]\nusername = "{testenv.auth_user}"\n'
        f'password_file = "{password}"\n'
    )
    write_config(daemon.config, packaging="push = true", extra=auth)
    daemon.start()
    (tmp_path / "f").write_text("x")
    cid = docker.container(
        *LABEL,
        "-l",
        f"kegpack.repository={registry}/kegpack-test/{{name}}",
        "-v",
        f"{tmp_path}:/keg",
    )
    record = daemon.wait_for(finished(cid), 60)
    assert record["outcome"] == "failed", record
    seen = [repr(daemon.http("GET", "/v1/jobs")), repr(daemon.http("GET", "/metrics"))]
    cli = subprocess.run(
        [sys.executable, "-m", "kegpackd", "package", "-c", str(daemon.config), "--push", cid],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "DOCKER_HOST": testenv.docker_host},
    )
    assert cli.returncode == 1, cli.stderr
    daemon.stop()
    seen += [cli.stdout, cli.stderr, daemon.log_path.read_text()]
    assert all(SECRET not in text for text in seen)
    assert "unauthorized" in record["error"] or "authentication" in record["error"], record


def test_labels_cannot_push_outside_the_allowed_registries(
    docker: Docker, daemon: DaemonProcess, private_registry: PrivateRegistry, tmp_path: Path
) -> None:
    """A label naming a registry that is not allowed fails the job by name; nothing is made."""
    private_registry.start()
    write_config(daemon.config, packaging="push = true")
    daemon.start()
    target = f"{private_registry.address}/stolen/{{name}}"
    cid = docker.container(*LABEL, "-l", f"kegpack.repository={target}", "-v", f"{tmp_path}:/keg")
    record = daemon.wait_for(finished(cid), 60)
    assert record["outcome"] == "failed", record
    assert "label kegpack.repository" in record["error"]
    assert "not in registries.allowed" in record["error"]
    assert docker.packaged(cid) == []
    catalog = f"http://{private_registry.address}/v2/_catalog"
    with urllib.request.urlopen(catalog, timeout=10) as resp:
        assert json.load(resp)["repositories"] == []


def test_labels_cannot_make_another_containers_mount_packaged(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """kegpack.paths naming a mount of another container is refused; that container is untouched."""
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "key").write_text("private")
    own = tmp_path / "own"
    own.mkdir()
    other = docker.container("-v", f"{secret}:/secret")
    daemon.start()
    cid = docker.container(*LABEL, "-l", "kegpack.paths=/secret", "-v", f"{own}:/keg")
    record = daemon.wait_for(finished(cid), 60)
    assert record["outcome"] == "failed", record
    assert "label kegpack.paths" in record["error"]
    assert "/secret" in record["error"]
    assert docker.packaged(cid) == []
    assert docker.packaged(other) == []


@pytest.mark.parametrize("path", ["/etc", "/keg/../etc", "/proc/1/root", "keg"])
async def test_labelled_paths_outside_the_mounts_are_refused(
    engine: Engine, docker: Docker, tmp_path: Path, path: str
) -> None:
    """A kegpack.paths value that is not one of the container's mounts is refused by name."""
    cid = docker.container("-l", f"kegpack.paths={path}", "-v", f"{tmp_path}:/keg")
    images = docker.image_ids()
    config = parse_config({"packaging": {"repository": "kegpack-test/paths"}})
    with anyio.fail_after(60), pytest.raises(InvalidValueError) as caught:
        await package(engine, config, JobRequest(container=cid))
    assert "label kegpack.paths" in str(caught.value)
    assert path in str(caught.value)
    assert docker.image_ids() == images


async def test_symlinks_in_a_mount_are_packaged_as_links_not_followed(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """A symlink to a host file is copied as a link: the host file's content never travels."""
    host_file = tmp_path / "host-only"
    host_file.write_text("host secret")
    data = tmp_path / "data"
    data.mkdir()
    (data / "escape").symlink_to(host_file)
    (data / "up").symlink_to("../../../../etc")
    cid = docker.container("-v", f"{data}:/keg")
    config = parse_config({"packaging": {"repository": "kegpack-test/links"}})
    with anyio.fail_after(60):
        result = await package(engine, config, JobRequest(container=cid))
    tar = docker.export(result.image_id, tmp_path / "x.tar")
    escape, up = tar.getmember("keg/escape"), tar.getmember("keg/up")
    assert escape.issym()
    assert escape.linkname == str(host_file)
    assert up.issym()
    assert up.linkname == "../../../../etc"
    assert not any(m.name.startswith("keg/up/") for m in tar.getmembers())
    assert b"host secret" not in (tmp_path / "x.tar").read_bytes()
