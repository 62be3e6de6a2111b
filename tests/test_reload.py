"""SIGHUP on a running daemon: the listener keeps its guard, concurrency takes effect."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
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
    assert daemon.http("POST", "/v1/jobs", {"container": "x"}, auth=False)[0] == 401
    unguarded = re.sub(r'token_file = ".*"\n', "", daemon.config.read_text())
    daemon.config.write_text(unguarded.replace("0.0.0.0:", "127.0.0.1:"))
    daemon.process.send_signal(signal.SIGHUP)
    warning = daemon.wait_for(lambda r: "[http] changed" in r.get("message", ""), 15)
    assert "until a restart" in warning["message"]
    daemon.wait_for(lambda r: "config reloaded" in r.get("message", ""), 15)
    assert daemon.http("POST", "/v1/jobs", {"container": "x"}, auth=False)[0] == 401


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


def test_manual_requests_with_other_options_are_never_folded_away(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """While a job runs: x2 waits after it, x3 (other options than x2) gets 409; none vanish."""
    daemon.start()
    cid = docker.container(
        *LABEL, "-l", "kegpack.trigger=manual", "-v", f"{big_volume(tmp_path, 300)}:/keg:ro"
    )
    first = daemon.http("POST", "/v1/jobs", {"container": cid, "tags": ["x1"]})
    assert first[0] == 202, first
    daemon.job_in(first[1]["id"], ("running", "succeeded", "failed"))
    second = daemon.http("POST", "/v1/jobs", {"container": cid, "tags": ["x2"]})
    third = daemon.http("POST", "/v1/jobs", {"container": cid, "tags": ["x3"]})
    same = daemon.http("POST", "/v1/jobs", {"container": cid, "tags": ["x2"]})
    pushed = daemon.http("POST", "/v1/jobs", {"container": cid, "tags": ["x2"], "push": True})
    assert second[0] == 202, second
    assert third[0] == 409, third
    assert "waiting with other options" in third[1]["error"]
    assert same[0] == 202
    assert same[1]["id"] == second[1]["id"], "the same options merge"
    assert pushed[0] in (400, 409), pushed
    for job in (first, second):
        assert daemon.job_in(job[1]["id"])["state"] == "succeeded"


def test_a_bad_manual_request_is_refused_before_it_is_accepted(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """tags ["bad tag"] gets 400 with the message the CLI gives, and no job is queued."""
    daemon.start()
    cid = docker.container(*LABEL, "-l", "kegpack.trigger=manual", "-v", f"{tmp_path}:/keg")
    status, body = daemon.http("POST", "/v1/jobs", {"container": cid, "tags": ["bad tag"]})
    assert status == 400, body
    assert "'bad tag'" in body["error"]
    cli = subprocess.run(
        [sys.executable, "-m", "kegpackd", "package", cid, "--tag", "bad tag", "--no-push"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "DOCKER_HOST": docker.env.docker_host},
    )  # fmt: skip
    assert cli.returncode == 1
    assert body["error"].split(": ", 1)[1] in cli.stderr
    assert daemon.http("GET", "/v1/jobs")[1]["jobs"] == []
