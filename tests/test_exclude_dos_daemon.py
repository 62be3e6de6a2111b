"""F1 on a real daemon: a container owner's exclude pattern cannot freeze ``kegpackd run``."""

from __future__ import annotations

import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.daemontools import DaemonProcess, succeeded
from tests.dockertools import Docker

pytestmark = pytest.mark.engine

HOSTILE = "*a*a*a*a*a*a*a*a*c"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class HealthProbe(threading.Thread):
    """Polls /healthz until stopped; keeps the slowest answer (a timeout counts as infinite)."""

    def __init__(self, url: str, timeout: float) -> None:
        super().__init__(daemon=True)
        self.url, self.timeout = url, timeout
        self.slowest = 0.0
        self.answers = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.monotonic()
            try:
                with NO_PROXY.open(self.url + "/healthz", timeout=self.timeout) as resp:
                    ok = resp.status == 200
            except OSError:
                ok = False
            took = time.monotonic() - started
            self.slowest = max(self.slowest, took if ok else float("inf"))
            self.answers += ok
            self.done.wait(0.05)


def test_hostile_exclude_label_neither_slows_the_job_nor_stalls_healthz(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """kegpack.exclude='*a*a*a*a*a*a*a*a*c' over names of 40-50 'a's: quick job, prompt /healthz."""
    data = tmp_path / "data"
    data.mkdir()
    for length in (40, 44, 48, 50):
        (data / ("a" * length)).write_text("kept\n")
    (data / "aaaaaaaac").write_text("excluded\n")
    daemon.start()
    probe = HealthProbe(daemon.url, timeout=2.0)
    probe.start()
    try:
        started = time.monotonic()
        cid = docker.container(
            "-l", "kegpack.package=true", "-l", f"kegpack.exclude={HOSTILE}", "-v", f"{data}:/keg"
        )
        record = succeeded(daemon, cid, timeout=60)
        took = time.monotonic() - started
    finally:
        probe.done.set()
        probe.join(timeout=10)
    assert took < 15, f"the job took {took:.1f}s"
    assert probe.answers > 0
    assert probe.slowest < 1.0, f"/healthz took {probe.slowest:.1f}s at worst"
    image = record["images"].split(",")[0]
    names = set(docker.export(image, tmp_path / "x.tar").getnames())
    assert {f"keg/{'a' * n}" for n in (40, 44, 48, 50)} <= names
    assert "keg/aaaaaaaac" not in names


def test_hostile_kegpackignore_written_by_the_container_does_not_stall_healthz(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The container writes the same pattern into /keg/.kegpackignore and exits: same result."""
    data = tmp_path / "data"
    data.mkdir()
    for length in (44, 48, 50):
        (data / ("a" * length)).write_text("kept\n")
    daemon.start()
    probe = HealthProbe(daemon.url, timeout=2.0)
    probe.start()
    try:
        cid = docker.container(
            "-l", "kegpack.package=true", "-l", "kegpack.trigger=stop", "-v", f"{data}:/keg",
            command=["sh", "-c", f"echo '{HOSTILE}' > /keg/.kegpackignore; touch /keg/aaaaaaaac"],
        )  # fmt: skip
        record = succeeded(daemon, cid, timeout=60)
    finally:
        probe.done.set()
        probe.join(timeout=10)
    assert probe.answers > 0
    assert probe.slowest < 1.0, f"/healthz took {probe.slowest:.1f}s at worst"
    names = set(docker.export(record["images"].split(",")[0], tmp_path / "x.tar").getnames())
    assert "keg/" + "a" * 50 in names
    assert "keg/aaaaaaaac" not in names
