"""Run ``kegpackd run`` as a real process and read its JSON log lines."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kegpackd.packaging.jobs import JobState

Record = dict[str, Any]
ENDED = tuple(str(state) for state in JobState if state.finished)
# The daemon is on loopback: an http_proxy in the environment must not see the token.
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(
    path: Path,
    *,
    concurrency: int = 4,
    grace: str = "30s",
    port: int | None = None,
    repository: str = "kegpack-test/{name}",
    level: str = "debug",
    extra: str = "",
    packaging: str = "",
) -> Path:
    """A daemon config; ``packaging`` adds lines to [packaging], ``extra`` adds tables."""
    path.write_text(
        "[packaging]\n"
        f'repository = "{repository}"\n'
        'tags = ["{date}-{time}-{id}"]\n'
        f"concurrency = {concurrency}\n" + packaging + "\n"
        "[daemon]\n"
        f'shutdown_grace = "{grace}"\n'
        f'state_dir = "{path.parent / "state"}"\n'
        "[log]\n"
        'format = "json"\n'
        f'level = "{level}"\n'
        "[http]\n"
        f'listen = "127.0.0.1:{port or free_port()}"\n' + extra
    )
    return path


@dataclass
class DaemonProcess:
    config: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    offset: int = 0
    records: list[Record] = field(default_factory=list)

    def start(
        self,
        env: dict[str, str] | None = None,
        *,
        wait_ready: bool = True,
        wrapper: tuple[str, ...] = (),
    ) -> None:
        """Start ``kegpackd run``, under ``wrapper`` (``prlimit …``) when given."""
        handle = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "kegpackd", "run", "-c", str(self.config)],
            stdout=handle,
            stderr=handle,
            env={**os.environ, **(env or {})},
        )
        handle.close()
        if wait_ready:
            self.wait_for(lambda r: r["message"].startswith("ready"), 60)

    def read(self) -> list[Record]:
        with self.log_path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            try:
                self.records.append(json.loads(line))
            except json.JSONDecodeError:
                self.records.append({"message": line, "level": "raw"})
        return self.records

    def wait_for(self, predicate: Callable[[Record], bool], timeout: float) -> Record:
        """The first record (old or new) matching ``predicate``; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            for record in self.read():
                if predicate(record):
                    return record
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"kegpackd exited ({self.process.returncode}): {self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching log line within {timeout}s: {self.tail()}")
            time.sleep(0.05)

    def jobs(self, message: str, container: str | None = None) -> list[Record]:
        return [
            r
            for r in self.read()
            if r.get("message") == message
            and (container is None or r.get("container") == container[:12])
        ]

    @property
    def url(self) -> str:
        match = re.search(r'listen = "[^:]+:(\d+)"', self.config.read_text())
        assert match is not None
        return f"http://127.0.0.1:{match.group(1)}"

    @property
    def local_token(self) -> str:
        """The token the daemon made in its state_dir (the right of the engine socket)."""
        match = re.search(r'state_dir = "([^"]+)"', self.config.read_text())
        assert match is not None
        return (Path(match.group(1)) / "api.token").read_text().strip()

    def http(
        self,
        method: str,
        path: str,
        body: object = None,
        token: str | None = None,
        *,
        auth: bool = True,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """One request to the daemon's HTTP API: (status, decoded JSON or text).

        A /v1 request carries ``token``, else the daemon's local token, unless ``auth`` is
        False; a body is sent as JSON."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if token is None and auth and path.startswith("/v1"):
            token = self.local_token
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with NO_PROXY.open(request, timeout=30) as resp:
                status, raw, kind = resp.status, resp.read(), resp.headers.get_content_type()
        except urllib.error.HTTPError as exc:
            status, raw, kind = exc.code, exc.read(), exc.headers.get_content_type()
        text = raw.decode()
        return status, json.loads(text) if kind == "application/json" else text

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        """One sample from the daemon's /metrics (0 when the series does not exist yet)."""
        status, text = self.http("GET", "/metrics")
        assert status == 200, text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == (labels or {}):
                    return float(sample.value)
        return 0.0

    def job_in(
        self, job_id: str, states: Collection[str] = ENDED, timeout: float = 120
    ) -> dict[str, Any]:
        """Job ``job_id`` as ``GET /v1/jobs/ID`` shows it once its state is one of
        ``states`` (by default: once it ended); fails after ``timeout`` seconds."""
        job: dict[str, Any] = {}

        def reached() -> bool:
            nonlocal job
            job = self.http("GET", f"/v1/jobs/{job_id}")[1]
            return job["state"] in states

        wait_until(reached, timeout, f"job {job_id} {'/'.join(states)}")
        return job

    def tail(self) -> str:
        return "\n".join(json.dumps(r) for r in self.read()[-15:])

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
        code = self.process.wait(timeout=timeout)
        self.read()
        return code


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, every: float = 0.2
) -> None:
    """Poll ``condition`` every ``every`` seconds until it holds; fail after ``timeout``
    seconds naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(every)


def finished(container: str) -> Callable[[Record], bool]:
    """Matches the end-of-job log line of ``container``'s job."""

    def match(record: Record) -> bool:
        return record.get("container") == container[:12] and record.get("message") in (
            "job succeeded",
            "job failed",
            "job cancelled",
        )

    return match


def succeeded(daemon: DaemonProcess, container: str, timeout: float = 30) -> Record:
    record = daemon.wait_for(finished(container), timeout)
    assert record["outcome"] == "succeeded", record
    return record


def big_volume(tmp_path: Path, mib: int) -> Path:
    """A directory holding one ``mib`` MiB file that does not compress."""
    data = tmp_path / f"big{mib}"
    data.mkdir()
    chunk = os.urandom(1024 * 1024)
    with (data / "blob").open("wb") as out:
        for _ in range(mib):
            out.write(chunk)
    return data
