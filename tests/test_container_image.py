"""kegpackd as a container (deploy/Dockerfile), built and run on the real engine, no pull.

The base is a debootstrapped Debian 12 with python3 (``scripts/testenv.sh python-image``,
cached); the context comes from ``scripts/image-context.sh``, as ``make image`` makes it;
the build runs with ``--network none``. The daemon container watches the private engine
through its mounted socket, with a mounted config file and its HTTP token as a mounted
secret file, as deploy/INSTALL.md tells users to run it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from kegpackd.config import load_config
from tests.daemontools import big_volume, wait_until
from tests.dockertools import TESTENV_SCRIPT, Docker, TestEnv

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "kegpack-test/python:3.11"
CONFIG_IN = "/etc/kegpackd/config.toml"
TOKEN_IN = "/run/secrets/kegpackd_token"
STATE_IN = "/var/lib/kegpackd"
IMAGE_UID = 10001
LABEL = ("--label", "kegpack.package=true")
CONFIG = f"""\
[daemon]
state_dir = "{STATE_IN}"
shutdown_grace = "60s"

[http]
listen = "0.0.0.0:9477"
token_file = "{TOKEN_IN}"
"""


def run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    """A command's stdout; its stderr in the failure when it fails."""
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Built:
    image: str
    # Every image the build made (both stages' steps), removed at the end.
    layers: list[str] = field(default_factory=list)


def build_image(testenv: TestEnv, context: Path) -> Built:
    """The base (made once, cached), the context, then a build with no network."""
    env = {"KEGPACK_TESTENV_DIR": str(testenv.state_dir), "DOCKER_HOST": testenv.docker_host}
    run(TESTENV_SCRIPT, "python-image", env=env)
    run(REPO / "scripts" / "image-context.sh", context, sys.executable)
    base = run("docker", "image", "inspect", "-f", "{{.Id}}", BASE_IMAGE).strip()
    built = Built(f"kegpackd-test:{uuid.uuid4().hex[:8]}")
    # The classic builder (as on a stock 20.10 engine), whose output names every step's image.
    output = run(
        "docker", "build", "--force-rm", "--network", "none",
        "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", built.image,
        "-f", REPO / "deploy" / "Dockerfile", context,
        env={"DOCKER_BUILDKIT": "0"},
    )  # fmt: skip
    steps = re.findall(r"^ ---> ([0-9a-f]{12})$", output, re.MULTILINE)
    built.layers = [step for step in dict.fromkeys(steps) if not base.startswith(f"sha256:{step}")]
    return built


@pytest.fixture(scope="module")
def image(testenv: TestEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """deploy/Dockerfile built on the local base; removed with every step's image after."""
    context = tmp_path_factory.mktemp("image-context")
    built = build_image(testenv, context)
    try:
        yield built.image
    finally:
        for ref in [built.image, *reversed(built.layers)]:
            subprocess.run(["docker", "rmi", ref], capture_output=True, check=False)


@dataclass
class Daemons:
    """Daemon containers of one test, on one state volume, all removed afterwards."""

    image: str
    testenv: TestEnv
    config: Path
    token: Path
    volume: str = field(default_factory=lambda: f"kegpackd-state-{uuid.uuid4().hex[:8]}")
    names: list[str] = field(default_factory=list)

    def start(self, *extra: str) -> str:
        """A daemon container as deploy/INSTALL.md runs it (with network mode none here)."""
        socket = self.testenv.docker_host.removeprefix("unix://")
        name = f"kegpackd-test-{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        run(
            "docker", "run", "-d", "--pull", "never", "--network", "none", "--name", name,
            "--group-add", str(os.stat(socket).st_gid),
            "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "-v", f"{socket}:/var/run/docker.sock",
            "-v", f"{self.volume}:{STATE_IN}",
            "-v", f"{self.config}:{CONFIG_IN}:ro",
            "-v", f"{self.token}:{TOKEN_IN}:ro",
            *extra, self.image,
        )  # fmt: skip
        wait_until(lambda: "ready: watching" in self.logs(name), 60, f"{name} ready")
        return name

    def logs(self, name: str) -> str:
        done = subprocess.run(["docker", "logs", name], capture_output=True, text=True, check=False)
        return done.stdout + done.stderr

    def jobs(self, name: str) -> list[dict[str, Any]]:
        """``kegpackd jobs --json`` in the daemon's container (the local token in its state)."""
        answer = json.loads(
            run("docker", "exec", name, "kegpackd", "jobs", "--json", "-c", CONFIG_IN)
        )
        jobs: list[dict[str, Any]] = answer["jobs"]
        return jobs

    def inspect(self, name: str, template: str) -> str:
        return run("docker", "inspect", "-f", template, name).strip()

    def cleanup(self) -> None:
        for name in self.names:
            subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
        subprocess.run(["docker", "volume", "rm", self.volume], capture_output=True, check=False)


@pytest.fixture
def daemons(image: str, testenv: TestEnv, tmp_path: Path) -> Iterator[Daemons]:
    """A config file (readable by the image's user) and a token file owned by that user."""
    config = tmp_path / "config.toml"
    config.write_text(CONFIG)
    config.chmod(0o644)
    token = tmp_path / "token"
    token.write_text(secrets.token_urlsafe(32) + "\n")
    token.chmod(0o600)
    os.chown(token, IMAGE_UID, IMAGE_UID)
    made = Daemons(image, testenv, config, token)
    try:
        yield made
    finally:
        made.cleanup()


def job_of(daemons: Daemons, name: str, cid: str) -> Callable[[], dict[str, Any] | None]:
    def find() -> dict[str, Any] | None:
        return next((j for j in daemons.jobs(name) if cid.startswith(j["container"])), None)

    return find


def finished(daemons: Daemons, name: str, cid: str, timeout: float = 60) -> dict[str, Any]:
    find = job_of(daemons, name, cid)
    wait_until(lambda: (job := find()) is not None and job["state"] != "running", timeout,
               f"a finished job of {cid[:12]}")  # fmt: skip
    job = find()
    assert job is not None
    return job


@pytest.mark.engine
def test_the_image_runs_the_daemon_under_tini_as_its_own_user(daemons: Daemons) -> None:
    """PID 1 is tini (it reaps orphans) and the daemon, its child, runs as uid 10001."""
    name = daemons.start()
    init = run("docker", "exec", name, "cat", "/proc/1/cmdline").split("\0")
    assert init[:2] == ["/usr/local/bin/tini", "--"]
    status = run(
        "docker",
        "exec",
        name,
        "sh",
        "-c",
        "read -r child rest </proc/1/task/1/children; cat /proc/$child/status",
    )
    assert re.search(rf"^Uid:\s+{IMAGE_UID}\s", status, re.MULTILINE), status


@pytest.mark.engine
def test_a_labelled_container_is_packaged_by_the_daemon_container(
    daemons: Daemons, docker: Docker, tmp_path: Path
) -> None:
    """A labelled busybox container with a bind mount is packaged through the mounted socket."""
    name = daemons.start()
    data = tmp_path / "data"
    data.mkdir()
    (data / "greeting").write_text("hello from the container image test\n")
    cid = docker.container(*LABEL, "-v", f"{data}:/keg")
    job = finished(daemons, name, cid)
    assert job["state"] == "succeeded", job
    (packaged,) = docker.packaged(cid)
    assert (
        docker.run_image(packaged, "cat", "/keg/greeting")
        == "hello from the container image test\n"
    )


@pytest.mark.engine
def test_docker_stop_drains_the_running_job_and_exits_zero(
    daemons: Daemons, docker: Docker, tmp_path: Path
) -> None:
    """``docker stop`` mid-job: the job finishes within the grace period and the exit is 0."""
    name = daemons.start()
    cid = docker.container(*LABEL, "-v", f"{big_volume(tmp_path, 300)}:/keg")
    wait_until(lambda: "job started" in daemons.logs(name), 60, "the job's start")
    run("docker", "stop", "-t", "90", name)
    assert daemons.inspect(name, "{{.State.ExitCode}}") == "0", daemons.logs(name)
    logs = daemons.logs(name)
    stopping = logs.index("SIGTERM: shutting down")
    assert re.search(r"job succeeded .*container=" + cid[:12], logs[stopping:]), logs
    assert len(docker.packaged(cid)) == 1


@pytest.mark.engine
def test_the_state_survives_docker_rm_and_a_new_daemon_container(
    daemons: Daemons, docker: Docker, tmp_path: Path
) -> None:
    """A new daemon container on the same volume lists the old one's job as restored."""
    first = daemons.start()
    data = tmp_path / "data"
    data.mkdir()
    (data / "file").write_text("kept\n")
    cid = docker.container(*LABEL, "-v", f"{data}:/keg")
    done = finished(daemons, first, cid)
    run("docker", "stop", first)
    run("docker", "rm", first)
    second = daemons.start()
    (restored,) = [job for job in daemons.jobs(second) if job["id"] == done["id"]]
    assert restored["restored"] is True, restored
    assert restored["state"] == "succeeded", restored


@pytest.mark.engine
def test_the_healthcheck_reports_healthy_from_healthz(daemons: Daemons) -> None:
    """The image's HEALTHCHECK (its own command, run every second here) turns healthy."""
    name = daemons.start("--health-interval", "1s", "--health-start-period", "0s")
    wait_until(lambda: daemons.inspect(name, "{{.State.Health.Status}}") == "healthy", 30,
               "a healthy status")  # fmt: skip
    command = daemons.inspect(name, "{{json .Config.Healthcheck.Test}}")
    assert "KEGPACKD_HEALTHZ_URL" in command
    env = daemons.inspect(name, "{{json .Config.Env}}")
    assert "KEGPACKD_HEALTHZ_URL=http://127.0.0.1:9477/healthz" in env


def compose_config(name: str) -> str:
    """A config's text from deploy/compose.yaml: inline, or the file it names beside it."""
    compose = yaml.safe_load((REPO / "deploy" / "compose.yaml").read_text())
    config: dict[str, str] = compose["configs"][name]
    if "file" in config:
        return (REPO / "deploy" / config["file"]).read_text()
    return config["content"]


def test_compose_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    """The Prometheus config inlined in compose.yaml, with deploy/alerts.yml, passes promtool."""
    (tmp_path / "prometheus.yml").write_text(compose_config("prometheus"))
    (tmp_path / "alerts.yml").write_bytes((REPO / "deploy" / "alerts.yml").read_bytes())
    run("promtool", "check", "config", tmp_path / "prometheus.yml")


def test_compose_kegpackd_config_loads_with_its_token_file(tmp_path: Path) -> None:
    """kegpackd's config inlined in compose.yaml loads, listening on all interfaces with a token."""
    token = tmp_path / "token"
    token.write_text(secrets.token_urlsafe(32) + "\n")
    token.chmod(0o600)
    text = compose_config("kegpackd").replace(TOKEN_IN, str(token))
    (tmp_path / "config.toml").write_text(text)
    config = load_config(tmp_path / "config.toml")
    assert config.http.listen == "0.0.0.0:9477"
    assert config.http.token is not None
    assert config.daemon.state_dir == Path(STATE_IN)
