"""A whole Compose project packaged on the real engine, and its file run by real Compose.

Compose is v2 (the ``docker compose`` plugin, as people run it today); one test keeps
Debian 12's docker-compose 1.29 while Debian ships it. Every service has network_mode
none, so no project makes a network (checked); nothing is ever pulled (``--pull never``
on v2; the images are local).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from kegpackd.compose.file import service_key
from kegpackd.compose.project import ProjectResult, package_project
from kegpackd.config import Config, parse_config
from kegpackd.engine.client import Engine
from kegpackd.errors import PackagingError
from kegpackd.labels import ORIGINAL_SERVICE_LABEL
from tests.dockertools import Docker, TestEnv

pytestmark = pytest.mark.engine

COMPOSE_TIMEOUT = 300
PACKAGE_TIMEOUT = 300
# The Compose CLIs, without their colours: v2 as a docker CLI plugin, v1 as its own program.
COMPOSE_V2 = ("docker", "compose", "--ansi", "never")
COMPOSE_V1 = ("docker-compose", "--ansi", "never")


@dataclass
class ComposeProjects:
    """Compose on the private engine; every project it brought up is taken down."""

    testenv: TestEnv
    docker: Docker
    workdir: Path
    command: tuple[str, ...] = COMPOSE_V2
    projects: list[tuple[Path, str]] = field(default_factory=list)
    prefix: str = field(default_factory=lambda: f"kp-{uuid.uuid4().hex[:8]}")

    def run(self, file: Path, project: str, *args: str, check: bool = True) -> str:
        return self.call(file, project, *args, check=check).stdout

    def call(
        self, file: Path, project: str, *args: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DOCKER_HOST": self.testenv.docker_host}
        done = subprocess.run(
            [*self.command, "-f", str(file), "-p", project, *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.workdir,
            timeout=COMPOSE_TIMEOUT,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(self.command)} {' '.join(args)} failed: {done.stderr}")
        return done

    def config_in_both_versions(self, file: Path, project: str) -> None:
        """``config -q`` of Compose v2 and of docker-compose 1.29 both accept ``file``."""
        for command in (COMPOSE_V2, COMPOSE_V1):
            ComposeProjects(self.testenv, self.docker, self.workdir, command).run(
                file, project, "config", "-q"
            )

    def run_one_off(self, file: Path, project: str, service: str) -> str:
        """``run -d`` of ``service`` (a one-off container, removed after the test); its id."""
        self.projects.append((file, project))
        never_pull = ("--pull", "never") if self.command == COMPOSE_V2 else ()
        cid = self.run(file, project, "run", "-d", "--no-deps", *never_pull, service).strip()
        self.docker.containers.append(cid)
        return cid

    def write(self, name: str, document: dict[str, Any]) -> Path:
        path = self.workdir / name
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def up(self, file: Path, project: str) -> dict[str, str]:
        """``up -d`` the project; its containers by service (the fixture removes them)."""
        self.projects.append((file, project))
        never_pull = ("--pull", "never") if self.command == COMPOSE_V2 else ()
        output = self.call(file, project, "up", "-d", *never_pull).stderr
        assert "Pulling" not in output, output
        containers = {}
        for service in self.run(file, project, "config", "--services").split():
            (cid,) = self.run(file, project, "ps", "-q", service).split()
            containers[service] = cid
            self.docker.containers.append(cid)
        return containers

    def down_all(self) -> None:
        for file, project in reversed(self.projects):
            self.run(file, project, "down", "-v", "-t", "0", "--remove-orphans", check=False)


def compose_projects(
    docker: Docker, testenv: TestEnv, command: tuple[str, ...]
) -> Iterator[ComposeProjects]:
    """Compose projects of the test's own, in a short temp dir (a socket lives there)."""
    workdir = Path(tempfile.mkdtemp(prefix="kpc"))
    projects = ComposeProjects(testenv, docker, workdir, command)
    try:
        yield projects
    finally:
        projects.down_all()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def compose(docker: Docker, testenv: TestEnv) -> Iterator[ComposeProjects]:
    """Compose v2's projects, taken down after the test."""
    yield from compose_projects(docker, testenv, COMPOSE_V2)


@pytest.fixture
def compose_v1(docker: Docker, testenv: TestEnv) -> Iterator[ComposeProjects]:
    """docker-compose 1.29's projects, taken down after the test."""
    yield from compose_projects(docker, testenv, COMPOSE_V1)


def networks(docker: Docker) -> set[str]:
    return set(docker.run("network", "ls", "-q", "--no-trunc").split())


def project_config(docker: Docker, repository: str = "{name}") -> Config:
    return parse_config(
        {"packaging": {"repository": f"kegpack-test/{docker.prefix}-{repository}", "tags": ["t1"]}}
    )


async def package(
    engine: Engine, docker: Docker, config: Config, project: str, *, partial: bool = False
) -> ProjectResult:
    """Package ``project``; the images it made are removed after the test."""
    with anyio.fail_after(PACKAGE_TIMEOUT):
        result = await package_project(engine, config, project, partial=partial)
    for job in result.results.values():
        for reference in job.references:
            docker.track_image(reference)
    return result


def service(image: str, *command: str, **more: Any) -> dict[str, Any]:
    return {"image": image, "command": list(command), "network_mode": "none", **more}


def mounts(docker: Docker, cid: str) -> set[str]:
    """Destinations of all of a container's mounts (binds and volumes, anonymous ones too).

    docker-compose 1.x lists every mount in the source's Config.Volumes; the packaged image
    drops those it carries the content of, so the copy has no volume over its files.
    """
    return {m["Destination"] for m in docker.inspect(cid)["Mounts"]}


def make_tree(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def project_file(compose: ComposeProjects, base: str, services: dict[str, Any]) -> Path:
    return compose.write(f"{base}.yaml", {"services": services})


def failing_project(compose: ComposeProjects, base: str) -> tuple[Path, str]:
    """web packages; bad has a kegpack.repository no repository may have."""
    app = make_tree(compose.workdir / f"{base}-app", {"hello.txt": "hello\n"})
    other = make_tree(compose.workdir / f"{base}-other", {"x.txt": "x\n"})
    image = compose.testenv.base_image
    file = project_file(
        compose,
        base,
        {
            "web": service(image, "sleep", "3600", volumes=[f"{app}:/srv/app"]),
            "bad": service(
                image,
                "sleep",
                "3600",
                volumes=[f"{other}:/srv/other"],
                labels={"kegpack.repository": "Not A Repository!"},
            ),
        },
    )
    return file, f"{compose.prefix}-{base}"


async def test_a_packaged_project_runs_from_its_compose_file_without_bind_mounts(
    engine: Engine, docker: Docker, compose: ComposeProjects
) -> None:
    """Three services packaged; the file passes config, up runs each on the copied files."""
    before = networks(docker)
    work = compose.workdir
    app = make_tree(work / "app", {"hello.txt": "hello from web\n", "index.html": "<p>hi</p>\n"})
    data = make_tree(work / "data", {"jobs.txt": "job-1\njob-2\n"})
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(work / "agent.sock"))
    image = compose.testenv.base_image
    services = {
        "web": service(
            image,
            "sleep",
            "3600",
            working_dir="/srv/app",
            environment={"GREETING": "hi there", "PRICE": "$$5"},
            labels={"team": "web"},
            healthcheck={"test": ["CMD", "true"], "interval": "1s500ms", "retries": 2},
            stop_signal="SIGKILL",
            volumes=[f"{app}:/srv/app", f"{work / 'agent.sock'}:/run/agent.sock"],
        ),
        "worker": service(
            image,
            "sh",
            "-c",
            "sleep 3600",
            user="1000:1000",
            volumes=[f"{data}:/data:ro"],
            depends_on=["web"],
        ),
        "db": service(image, "sleep", "3600", volumes=["dbdata:/var/lib/db"]),
    }
    source = compose.write("source.yaml", {"services": services, "volumes": {"dbdata": {}}})
    original = f"{compose.prefix}-src"
    sources = compose.up(source, original)
    docker.run("exec", sources["db"], "sh", "-c", "echo stored > /var/lib/db/value")

    result = await package(engine, docker, project_config(docker), original)
    listener.close()

    assert result.errors == {}
    assert sorted(result.results) == ["db", "web", "worker"]
    assert result.compose is not None
    packaged_file = work / "packaged.yaml"
    packaged_file.write_text(result.compose)
    copy = f"{compose.prefix}-copy"
    compose.config_in_both_versions(packaged_file, copy)
    written = yaml.safe_load(result.compose)
    assert "volumes" not in written
    assert written["services"]["worker"]["depends_on"] == {"web": {"condition": "service_started"}}
    assert "# not packaged: bind mount of " in result.compose

    copies = compose.up(packaged_file, copy)
    assert networks(docker) == before
    assert sorted(copies) == ["db", "web", "worker"]
    web, worker, db = copies["web"], copies["worker"], copies["db"]
    assert mounts(docker, web) == {"/run/agent.sock"}
    assert mounts(docker, worker) == set()
    assert "dbdata" not in str(docker.inspect(db)["Mounts"])
    assert docker.run("exec", web, "cat", "hello.txt") == "hello from web\n"
    assert docker.run("exec", worker, "cat", "/data/jobs.txt") == "job-1\njob-2\n"
    assert docker.run("exec", db, "cat", "/var/lib/db/value") == "stored\n"
    for name in copies:
        assert docker.inspect(copies[name])["State"]["Running"], name
    source_web, copy_web = docker.inspect(sources["web"]), docker.inspect(web)
    for key in ("Healthcheck", "WorkingDir", "StopSignal", "Cmd"):
        assert copy_web["Config"][key] == source_web["Config"][key], key
    # Compose v2 passes a service's environment in no fixed order; the entries are the same.
    assert sorted(copy_web["Config"]["Env"]) == sorted(source_web["Config"]["Env"])
    assert docker.inspect(worker)["Config"]["User"] == "1000:1000"


async def test_a_service_on_another_services_network_runs_under_both_compose_versions(
    engine: Engine, docker: Docker, compose: ComposeProjects
) -> None:
    """network_mode service:web: v2's implied dependency is not written, so v1 reads it too."""
    before = networks(docker)
    app = make_tree(compose.workdir / "shared-app", {"hello.txt": "shared\n"})
    image = compose.testenv.base_image
    side = service(image, "sleep", "3600", volumes=[f"{app}:/srv/app"])
    side["network_mode"] = "service:web"
    web = service(image, "sleep", "3600", volumes=[f"{app}:/srv/app"])
    source = project_file(compose, "shared", {"web": web, "side": side})
    sources = compose.up(source, f"{compose.prefix}-shared")
    label = docker.inspect(sources["side"])["Config"]["Labels"]["com.docker.compose.depends_on"]
    assert label == "web:service_started:true"
    result = await package(engine, docker, project_config(docker), f"{compose.prefix}-shared")
    assert result.compose is not None
    packaged_file = compose.workdir / "shared-packaged.yaml"
    packaged_file.write_text(result.compose)
    copy = f"{compose.prefix}-shared-copy"
    compose.config_in_both_versions(packaged_file, copy)
    copies = compose.up(packaged_file, copy)
    network_mode = docker.inspect(copies["side"])["HostConfig"]["NetworkMode"]
    assert network_mode == f"container:{docker.inspect(copies['web'])['Id']}"
    assert docker.run("exec", copies["side"], "cat", "/srv/app/hello.txt") == "shared\n"
    assert networks(docker) == before


async def test_a_one_off_run_container_is_not_packaged_as_a_service(
    engine: Engine, docker: Docker, compose: ComposeProjects
) -> None:
    """`docker compose run` makes project-tool-run-<slug> (oneoff=True): not in the file."""
    app = make_tree(compose.workdir / "oneoff-app", {"hello.txt": "hello\n"})
    web = service(compose.testenv.base_image, "sleep", "3600", volumes=[f"{app}:/srv/app"])
    file = project_file(compose, "oneoff", {"web": web, "tool": web})
    project = f"{compose.prefix}-oneoff"
    compose.up(file, project)
    compose.run(file, project, "stop", "-t", "0", "tool")
    compose.run(file, project, "rm", "-f", "tool")
    one_off = compose.run_one_off(file, project, "tool")
    assert docker.inspect(one_off)["Name"].startswith(f"/{project}-tool-run-")
    result = await package(engine, docker, project_config(docker), project)
    assert result.errors == {}
    assert sorted(result.results) == ["web"]
    assert result.compose is not None
    assert list(yaml.safe_load(result.compose)["services"]) == ["web"]


async def test_a_project_compose_v1_started_runs_from_its_file_under_compose_v1(
    engine: Engine, docker: Docker, compose_v1: ComposeProjects
) -> None:
    """docker-compose 1.29 (Debian 12's): its project is packaged and its file runs there."""
    before = networks(docker)
    app = make_tree(compose_v1.workdir / "v1-app", {"hello.txt": "from v1\n"})
    image = compose_v1.testenv.base_image
    web = service(image, "sleep", "3600", volumes=[f"{app}:/srv/app"])
    worker = dict(web, depends_on=["web"], environment={"A": "$$1"})
    source = project_file(compose_v1, "v1", {"web": web, "worker": worker})
    project = f"{compose_v1.prefix}-v1"
    sources = compose_v1.up(source, project)
    assert docker.inspect(sources["web"])["Name"] == f"/{project}_web_1"
    result = await package(engine, docker, project_config(docker), project)
    assert result.errors == {}
    assert result.compose is not None
    packaged_file = compose_v1.workdir / "v1-packaged.yaml"
    packaged_file.write_text(result.compose)
    copy = f"{project}-copy"
    compose_v1.config_in_both_versions(packaged_file, copy)
    copies = compose_v1.up(packaged_file, copy)
    assert docker.run("exec", copies["web"], "cat", "/srv/app/hello.txt") == "from v1\n"
    assert "A=$1" in docker.inspect(copies["worker"])["Config"]["Env"]
    assert networks(docker) == before


async def test_one_failing_service_without_partial_writes_no_file(
    engine: Engine, docker: Docker, compose: ComposeProjects
) -> None:
    """The other services still finish; no file; the error names the failed service."""
    file, project = failing_project(compose, "strict")
    compose.up(file, project)
    result = await package(engine, docker, project_config(docker), project)
    assert result.compose is None
    assert list(result.errors) == ["bad"]
    assert "kegpack.repository" in result.errors["bad"]
    assert list(result.results) == ["web"]
    assert result.results["web"].references


async def test_one_failing_service_with_partial_writes_the_file_of_the_others(
    engine: Engine, docker: Docker, compose: ComposeProjects
) -> None:
    """With partial, the file runs the services that were packaged and names the one left out."""
    before = networks(docker)
    file, project = failing_project(compose, "partial")
    compose.up(file, project)
    result = await package(engine, docker, project_config(docker), project, partial=True)
    assert list(result.errors) == ["bad"]
    assert result.compose is not None
    assert "# Left out, as their packaging failed: bad." in result.compose.splitlines()
    assert list(yaml.safe_load(result.compose)["services"]) == ["web"]
    packaged_file = compose.workdir / "partial-packaged.yaml"
    packaged_file.write_text(result.compose)
    copies = compose.up(packaged_file, f"{project}-copy")
    assert list(copies) == ["web"]
    assert mounts(docker, copies["web"]) == set()
    assert docker.run("exec", copies["web"], "cat", "/srv/app/hello.txt") == "hello\n"
    assert networks(docker) == before


HOSTILE_ENV = [
    "COLON=a: b",
    "HASH=x #not a comment",
    "STAR=*alias",
    "AMP=&anchor",
    "NEWLINE=line one\nline two",
    "YES=yes",
    "NO=no",
    "DASH=- item",
    "NUMBERISH=1e3",
    "DOLLAR=$HOME and ${PATH:-x} and $$",
    "QUOTES=' \" \\",
    "EMPTY=",
    "UNICODE=é\u2028✓",
]


def hand_labelled(docker: Docker, project: str, service_name: str, app: Path, *extra: str) -> str:
    return docker.container(
        "-l",
        f"com.docker.compose.project={project}",
        "-l",
        f"com.docker.compose.service={service_name}",
        "-v",
        f"{app}:/srv/app",
        *extra,
    )


async def test_hostile_labels_and_environment_run_exactly_as_the_container_had_them(
    engine: Engine, docker: Docker, compose: ComposeProjects
) -> None:
    """An invalid service name and YAML specials: the file is valid and the copy gets them."""
    project = f"{compose.prefix}-hostile"
    app = make_tree(compose.workdir / "hostile-app", {"hello.txt": "hello\n"})
    name = "my web: #1!"
    env_args = [arg for entry in HOSTILE_ENV for arg in ("-e", entry)]
    labels = {"note": "a: b #c\n- d", "yes": "no", "k:#&*": "*v"}
    label_args = [arg for key, value in labels.items() for arg in ("-l", f"{key}={value}")]
    source = hand_labelled(docker, project, name, app, *env_args, *label_args)
    result = await package(engine, docker, project_config(docker, "{id}"), project)
    assert result.errors == {}
    assert result.compose is not None
    packaged_file = compose.workdir / "hostile-packaged.yaml"
    packaged_file.write_text(result.compose)
    copy = f"{project}-copy"
    compose.run(packaged_file, copy, "config", "-q")
    copies = compose.up(packaged_file, copy)
    assert list(copies) == [service_key(name)]
    copied = docker.inspect(copies[service_key(name)])["Config"]
    # Compose v2 passes the environment in no fixed order; the entries are the same.
    assert sorted(copied["Env"]) == sorted(docker.inspect(source)["Config"]["Env"])
    for key, value in labels.items():
        assert copied["Labels"][key] == value, key
    assert copied["Labels"][ORIGINAL_SERVICE_LABEL] == name


async def test_a_pushed_service_runs_from_its_image_by_digest(
    engine: Engine, docker: Docker, compose: ComposeProjects, testenv: TestEnv
) -> None:
    """Pushed, a service's image is its reference with the digest, and Compose runs that."""
    project = f"{compose.prefix}-pushed"
    app = make_tree(compose.workdir / "pushed-app", {"hello.txt": "pushed\n"})
    hand_labelled(docker, project, "web", app)
    config = parse_config(
        {
            "packaging": {
                "repository": f"{testenv.registry}/kegpack-test/{docker.prefix}-{{id}}",
                "tags": ["t1"],
                "push": True,
            },
            "registries": {"allowed": [testenv.registry]},
        }
    )
    result = await package(engine, docker, config, project)
    assert result.errors == {}
    assert result.compose is not None
    (reference,) = result.results["web"].references
    image = yaml.safe_load(result.compose)["services"]["web"]["image"]
    assert image == f"{reference}@{result.results['web'].digests[reference]}"
    packaged_file = compose.workdir / "pushed-packaged.yaml"
    packaged_file.write_text(result.compose)
    copies = compose.up(packaged_file, f"{project}-copy")
    assert docker.run("exec", copies["web"], "cat", "/srv/app/hello.txt") == "pushed\n"


async def test_images_are_named_by_service(
    engine: Engine, docker: Docker, compose: ComposeProjects
) -> None:
    """{service} in the repository template is each container's Compose service."""
    project = f"{compose.prefix}-named"
    app = make_tree(compose.workdir / "named-app", {"hello.txt": "hello\n"})
    hand_labelled(docker, project, "Api", app)
    result = await package(engine, docker, project_config(docker, "{service}"), project)
    assert result.errors == {}
    assert result.results["Api"].references == [f"kegpack-test/{docker.prefix}-api:t1"]


async def test_a_project_without_containers_is_an_error_naming_it(engine: Engine) -> None:
    """Packaging a project no container belongs to fails with its name and where names are."""
    project = f"kp-{uuid.uuid4().hex[:8]}-absent"
    expected = f"Compose project '{project}' has no containers: .*`docker compose ls -a`"
    with pytest.raises(PackagingError, match=expected):
        await package_project(engine, Config(), project, partial=False)
