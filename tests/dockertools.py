"""Test-side access to the engine through the docker CLI, independent of kegpackd's code.

Every container and image a test creates is recorded and removed afterwards;
nothing else on the engine is ever touched.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.daemontools import wait_until


@dataclass(frozen=True)
class TestEnv:
    __test__ = False

    docker_host: str
    registry: str
    auth_registry: str
    auth_user: str
    auth_password_file: Path
    base_image: str
    tls_host: str
    tls_certs: Path
    state_dir: Path

    @property
    def auth_password(self) -> str:
        return self.auth_password_file.read_text()


TESTENV_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "testenv.sh"


def kill_engine(testenv: TestEnv) -> None:
    """SIGKILL the private dockerd (``scripts/testenv.sh up`` brings it back)."""
    pid = int((testenv.state_dir / "dockerd.pid").read_text())
    os.kill(pid, signal.SIGKILL)


def parse_testenv(output: str) -> TestEnv:
    """The addresses that ``scripts/testenv.sh up`` prints as export lines."""
    values = dict(re.findall(r"^export (\w+)=['\"]?(.*?)['\"]?$", output, re.MULTILINE))
    return TestEnv(
        docker_host=values["DOCKER_HOST"],
        registry=values["KEGPACK_TEST_REGISTRY"],
        auth_registry=values["KEGPACK_TEST_AUTH_REGISTRY"],
        auth_user=values["KEGPACK_TEST_AUTH_USER"],
        auth_password_file=Path(values["KEGPACK_TEST_AUTH_PASSWORD_FILE"]),
        base_image=values["KEGPACK_TEST_BASE_IMAGE"],
        tls_host=values["KEGPACK_TEST_TLS_HOST"],
        tls_certs=Path(values["KEGPACK_TEST_TLS_CERTS"]),
        state_dir=Path(values["KEGPACK_TESTENV_DIR"]),
    )


@dataclass
class Docker:
    env: TestEnv
    tmp: Path
    containers: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    prefix: str = field(default_factory=lambda: f"kt{uuid.uuid4().hex[:8]}")

    def run(self, *args: str, input: bytes | None = None, check: bool = True) -> str:
        done = subprocess.run(
            ["docker", "-H", self.env.docker_host, *args],
            input=input,
            capture_output=True,
            timeout=600,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed: {done.stderr.decode()}")
        return done.stdout.decode()

    def name(self, suffix: str = "") -> str:
        return f"{self.prefix}{suffix}"

    def container(
        self,
        *run_args: str,
        command: Sequence[str] = ("sleep", "3600"),
        image: str | None = None,
        start: bool = True,
        name: str | None = None,
    ) -> str:
        """Start (or just create) a container with network mode none."""
        verb = ["run", "-d"] if start else ["create"]
        cid = self.run(
            *verb,
            "--pull",
            "never",
            "--network",
            "none",
            "--name",
            name or self.name(f"-{len(self.containers)}"),
            *run_args,
            image or self.env.base_image,
            *command,
        ).strip()
        self.containers.append(cid)
        return cid

    def kegpackd(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``kegpackd ARGS`` on this engine, its output captured as text."""
        return subprocess.run(
            [sys.executable, "-m", "kegpackd", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "DOCKER_HOST": self.env.docker_host},
        )

    def package_mid_job(
        self, cid: str, repository: str, tag: str, stderr: int = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes]:
        """A ``kegpackd package CID --no-push`` process, once its temporary image exists
        (mid-job); its image is removed after the test."""
        process = subprocess.Popen(
            [sys.executable, "-m", "kegpackd", "package", cid,
             "--repository", repository, "--tag", tag, "--no-push"],
            stdout=subprocess.DEVNULL, stderr=stderr,
            env={**os.environ, "DOCKER_HOST": self.env.docker_host},
        )  # fmt: skip
        self.track_image(f"{repository}:{tag}")
        wait_until(lambda: bool(self.leftovers()[1]), 60, "the temporary image exists")
        return process

    def run_image(self, image: str, *command: str) -> str:
        """The output of ``command`` in a throw-away container of ``image``, with no network."""
        return self.run("run", "--rm", "--pull", "never", "--network", "none", image, *command)

    def track_image(self, ref: str) -> None:
        self.images.append(ref)

    def inspect(self, ref: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self.run("inspect", ref))
        return data[0]

    def image_ids(self) -> set[str]:
        return set(self.run("images", "-a", "-q", "--no-trunc").split())

    def container_ids(self) -> set[str]:
        return set(self.run("ps", "-a", "-q", "--no-trunc").split())

    def export(self, image: str, dest: Path) -> tarfile.TarFile:
        """The filesystem of ``image``, read through ``docker export`` of a created container."""
        cid = self.container(image=image, start=False, command=["true"])
        with dest.open("wb") as out:
            subprocess.run(
                ["docker", "-H", self.env.docker_host, "export", cid],
                stdout=out,
                check=True,
                timeout=600,
            )
        return tarfile.open(dest)

    def packaged(self, cid: str) -> list[str]:
        """Images that kegpackd made from container ``cid``."""
        return self.run(
            "images", "-q", "--no-trunc", "--filter", f"label=kegpack.source.id={cid}"
        ).split()

    def leftovers(self) -> tuple[list[str], list[str]]:
        """Helper containers, and temporary images and pending tags, that a job left behind."""
        helpers = self.run("ps", "-a", "-q", "--filter", "name=kegpack-helper-").split()
        dangling = self.run("images", "-q", "--no-trunc", "--filter", "dangling=true").split()
        comments = {
            image: self.run("image", "inspect", "-f", "{{.Comment}}", image, check=False)
            for image in dangling
        }
        temporary = [i for i, c in comments.items() if c.startswith("kegpackd temporary")]
        pending = self.run("images", "--format", "{{.Repository}}:{{.Tag}}",
                           "--filter", "reference=kegpack-pending/*").split()  # fmt: skip
        return helpers, temporary + pending

    def cleanup(self) -> None:
        made = [image for cid in self.containers for image in self.packaged(cid)]
        for cid in reversed(self.containers):
            self.run("rm", "-f", "-v", cid, check=False)
        for ref in [*reversed(self.images), *dict.fromkeys(made)]:
            self.run("rmi", "-f", ref, check=False)


def registry_tags(registry: str, repository: str, auth: tuple[str, str] | None = None) -> list[str]:
    """Tags of a repository, asked of the registry's HTTP API directly."""
    request = urllib.request.Request(f"http://{registry}/v2/{repository}/tags/list")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            body: dict[str, Any] = json.load(resp)
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return []
        raise
    return list(body.get("tags") or [])


class PrivateRegistry:
    """A registry of the test's own, on a fixed loopback port, that the test can stop and start.

    Stopping it is the real "registry down": the engine gets connection refused.
    """

    def __init__(self, root: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port: int = sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.config = root / "registry.yml"
        self.log = root / "registry.log"
        (root / "storage").mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {root / 'storage'}\n"
            f"http:\n  addr: {self.address}\n  secret: kegpack-private-registry\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["docker-registry", "serve", str(self.config)], stdout=log, stderr=log
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=2):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    output = self.log.read_text()
                    raise AssertionError(f"registry did not start: {output}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.process = None


class RunWhenStreaming:
    """A job's progress hook that runs ``command`` once ``after`` bytes have streamed.

    The command runs in its own process: the engine holds the source container's
    lock while its archive is read, so e.g. ``docker rm -f`` waits for the stream.
    """

    def __init__(self, command: Sequence[str], after: int) -> None:
        self.command, self.after, self.seen = list(command), after, 0
        self.process: subprocess.Popen[bytes] | None = None

    def stage(self, name: str, detail: str = "") -> None:
        pass

    def streamed(self, count: int) -> None:
        self.seen += count
        if self.seen > self.after and self.process is None:
            self.process = subprocess.Popen(
                self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )

    def wait(self) -> int | None:
        """The command's exit status once it ended; None if the stream never got that far."""
        return None if self.process is None else self.process.wait(timeout=120)
