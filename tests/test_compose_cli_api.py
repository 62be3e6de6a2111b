"""`kegpackd package --project` and the daemon's project API, on the real engine and Compose."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.daemontools import DaemonProcess, write_config
from tests.dockertools import Docker
from tests.test_compose_project import (
    COMPOSE_V2,
    ComposeProjects,
    compose,
    failing_project,
    make_tree,
    service,
)

pytestmark = pytest.mark.engine
__all__ = ["compose"]  # the fixture, used by name


def config_file(docker: Docker, path: Path) -> Path:
    path.write_text(
        f'[packaging]\nrepository = "kegpack-test/{docker.prefix}-{{service}}"\ntags = ["t1"]\n'
    )
    return path


def track(docker: Docker, project: str) -> None:
    """The images the project's jobs made go after the test."""
    out = docker.run("images", "--format", "{{.Repository}}:{{.Tag}}")
    docker.images += [ref for ref in out.split() if ref.startswith(f"kegpack-test/{docker.prefix}")]


def test_package_project_writes_the_file_and_exits_1_naming_the_failed_service(
    docker: Docker, compose: ComposeProjects
) -> None:
    """One service fails: exit 1, no file without --partial; with it, a file of the other."""
    file, project = failing_project(compose, "cli")
    compose.up(file, project)
    conf = config_file(docker, compose.workdir / "k.toml")
    out = compose.workdir / "packaged.yaml"
    strict = docker.kegpackd(
        "package", "--project", project, "-c", str(conf), "--compose-out", str(out)
    )
    track(docker, project)
    assert strict.returncode == 1
    assert f"kegpackd: {project}/bad failed: " in strict.stderr
    assert "failed bad" in strict.stderr.splitlines()[-1]
    assert not out.exists()
    partial = docker.kegpackd(
        "package", "--project", project, "-c", str(conf), "--compose-out", str(out), "--partial"
    )
    track(docker, project)
    assert partial.returncode == 1
    assert list(yaml.safe_load(out.read_text())["services"]) == ["web"]
    assert partial.stdout.split()[:2] == ["web", f"kegpack-test/{docker.prefix}-web:t1"]


def test_package_project_to_stdout_is_the_compose_file(
    docker: Docker, compose: ComposeProjects
) -> None:
    """--compose-out - (the default) puts the YAML alone on stdout; the references go to stderr."""
    file, project = failing_project(compose, "stdout")
    compose.up(file, project)
    conf = config_file(docker, compose.workdir / "k.toml")
    done = docker.kegpackd("package", "--project", project, "-c", str(conf), "--partial")
    track(docker, project)
    assert done.returncode == 1
    assert "web" in yaml.safe_load(done.stdout)["services"]
    assert f"web kegpack-test/{docker.prefix}-web:t1" in done.stderr


def listed_project(compose: ComposeProjects, directory: Path) -> str:
    """``up`` of ``directory``'s compose.yaml with no -p; the name ``docker compose ls`` shows."""
    env = {**os.environ, "DOCKER_HOST": compose.testenv.docker_host}

    def call(*args: str) -> str:
        done = subprocess.run(
            [*COMPOSE_V2, *args], capture_output=True, text=True, env=env, cwd=directory,
            timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"compose {args} failed: {done.stderr}"
        return done.stdout

    call("up", "-d", "--pull", "never")
    files = str(directory / "compose.yaml")
    (name,) = [
        str(p["Name"])
        for p in json.loads(call("ls", "--format", "json"))
        if p["ConfigFiles"] == files
    ]
    compose.projects.append((directory / "compose.yaml", name))
    return name


def test_package_project_takes_the_name_docker_compose_ls_shows(
    docker: Docker, compose: ComposeProjects
) -> None:
    """A project named by its directory (Compose v2 lowercases it): ls's name packages it."""
    directory = compose.workdir / f"{compose.prefix.upper()} Shop"
    app = make_tree(directory / "app", {"hello.txt": "hello\n"})
    web = service(compose.testenv.base_image, "sleep", "3600", volumes=[f"{app}:/srv/app"])
    compose.write(f"{directory.name}/compose.yaml", {"services": {"web": web}})
    name = listed_project(compose, directory)
    assert name == f"{compose.prefix}shop"
    conf = config_file(docker, compose.workdir / "k.toml")
    out = compose.workdir / "packaged.yaml"
    done = docker.kegpackd("package", "--project", name, "-c", str(conf), "--compose-out", str(out))
    track(docker, name)
    assert done.returncode == 0, done.stderr
    assert list(yaml.safe_load(out.read_text())["services"]) == ["web"]


def test_package_needs_a_container_or_a_project(docker: Docker) -> None:
    """Neither, or both, is a usage error (exit 2) saying so."""
    for args in ((), ("c1", "--project", "p")):
        done = docker.kegpackd("package", *args)
        assert done.returncode == 2
        assert "give a CONTAINER or --project NAME" in done.stderr


def test_the_daemon_packages_a_project_and_serves_its_compose_file(
    docker: Docker, compose: ComposeProjects, tmp_path: Path
) -> None:
    """POST {"project"} groups the jobs under one id; compose.yaml comes once they ended."""
    file, project = failing_project(compose, "api")
    compose.up(file, project)
    conf = write_config(tmp_path / "k.toml", repository=f"kegpack-test/{docker.prefix}-{{service}}")
    daemon = DaemonProcess(conf, tmp_path / "kegpackd.log")
    try:
        daemon.start()
        status, run = daemon.http("POST", "/v1/jobs", {"project": project, "partial": True})
        assert status == 202, run
        assert sorted(run["jobs"]) == ["bad", "web"]
        deadline = time.monotonic() + 120
        while daemon.http("GET", f"/v1/projects/{run['id']}")[1]["state"] == "running":
            assert time.monotonic() < deadline, daemon.tail()
            time.sleep(0.2)
        status, text = daemon.http("GET", f"/v1/projects/{run['id']}/compose.yaml")
        track(docker, project)
        assert status == 200, text
        assert list(yaml.safe_load(text)["services"]) == ["web"]
        jobs = daemon.http("GET", "/v1/jobs")[1]
        grouped = {j["id"] for j in jobs["jobs"] if j["project"] == run["id"]}
        assert grouped == set(run["jobs"].values())
        assert jobs["projects"][0]["state"] == "partial"
        assert jobs["projects"][0]["failed"].keys() == {"bad"}
        missing = daemon.http("POST", "/v1/jobs", {"project": f"{project}-none"})
        assert missing[0] == 404
        assert "has no containers" in missing[1]["error"]
        assert daemon.stop() == 0
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
