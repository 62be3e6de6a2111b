"""SIGHUP on a running daemon: the listener keeps its guard, concurrency takes effect."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest

from tests.daemontools import DaemonProcess, big_volume, free_port, write_config
from tests.dockertools import Docker

pytestmark = pytest.mark.engine

LABEL = ("-l", "kegpack.package=true")


def test_a_reload_that_drops_the_token_keeps_the_listener_guarded(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """[http] without the token after SIGHUP: the open socket still refuses a tokenless POST."""
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    port = free_port()
    write_config(daemon.config, port=port, extra=f'token_file = "{token}"\n')
    daemon.config.write_text(daemon.config.read_text().replace("127.0.0.1:", "0.0.0.0:"))
    daemon.start()
    assert daemon.process is not None
    assert daemon.http("POST", "/v1/jobs", {"container": "x"})[0] == 401
    unguarded = re.sub(r'token_file = ".*"\n', "", daemon.config.read_text())
    daemon.config.write_text(unguarded.replace("0.0.0.0:", "127.0.0.1:"))
    daemon.process.send_signal(signal.SIGHUP)
    warning = daemon.wait_for(lambda r: "[http] changed" in r.get("message", ""), 15)
    assert "until a restart" in warning["message"]
    daemon.wait_for(lambda r: "config reloaded" in r.get("message", ""), 15)
    assert daemon.http("POST", "/v1/jobs", {"container": "x"})[0] == 401


def test_a_reloaded_concurrency_takes_effect(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """Concurrency 1 raised to 2 by SIGHUP: two jobs then run at the same time."""
    write_config(daemon.config, concurrency=1)
    daemon.start()
    assert daemon.process is not None
    daemon.config.write_text(
        daemon.config.read_text().replace("concurrency = 1", "concurrency = 2")
    )
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda r: "packaging.concurrency 1 -> 2" in r.get("message", ""), 15)
    data = big_volume(tmp_path, 300)
    first = docker.container(*LABEL, "-v", f"{data}:/keg:ro")
    second = docker.container(*LABEL, "-v", f"{data}:/keg:ro")

    def started_both(_record: dict[str, object]) -> bool:
        return bool(daemon.jobs("job started", first)) and bool(daemon.jobs("job started", second))

    daemon.wait_for(started_both, 60)
    ended = daemon.jobs("job succeeded", first) + daemon.jobs("job succeeded", second)
    assert not ended, "both jobs started before either ended"
