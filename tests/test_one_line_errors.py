"""Start-up and client errors are one line, never a traceback; needs no engine."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from tests.daemontools import free_port, write_config


def kegpackd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kegpackd", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_a_busy_http_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """``kegpackd run`` on a taken port prints the reason alone, no ExceptionGroup."""
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        config = write_config(tmp_path / "k.toml", port=port)
        done = kegpackd("run", "-c", str(config), env={"DOCKER_HOST": f"unix://{tmp_path}/n.sock"})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"kegpackd: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_an_unreachable_engine_from_docker_host_says_so_plainly(tmp_path: Path) -> None:
    """The socket's absence is named with where the address came from, without aiohttp's noise."""
    done = kegpackd("package", "x", env={"DOCKER_HOST": f"unix://{tmp_path}/nope.sock"})
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"kegpackd: cannot reach the Docker engine at unix://{tmp_path}/nope.sock "
        "(from DOCKER_HOST): No such file or directory"
    )


JOBS = {
    "jobs": [
        {"id": f"job{i:04d}", "container": "c" * 64, "name": f"web-{i}", "trigger": "start",
         "state": "succeeded", "started": 1_700_000_000.0 + i, "finished": 1_700_000_002.5 + i,
         "images": [f"kegpack/web-{i}:t"], "error": None}
        for i in range(3000)
    ]
    + [{"id": "jobfail", "container": "d" * 64, "name": "", "trigger": "manual",
        "state": "failed", "started": 1_700_000_000.0, "finished": None, "images": [],
        "error": "nothing to package: container d has no bind mount or volume with content"}]
}  # fmt: skip


@contextlib.contextmanager
def fake_daemon(tmp_path: Path) -> Iterator[Path]:
    """An HTTP server answering GET /v1/jobs like a daemon; yields a config pointing at it."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(JOBS).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "api.token").write_text("t" * 43 + "\n")
    try:
        yield write_config(tmp_path / "k.toml", port=server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_jobs_is_a_table_with_a_header_times_and_durations(tmp_path: Path) -> None:
    """Header first; a row has the name, local start time, duration and the image or error."""
    with fake_daemon(tmp_path) as config:
        done = kegpackd("jobs", "-c", str(config), env={"COLUMNS": "150"})
    assert done.returncode == 0, done.stderr
    header, first, *rest = done.stdout.splitlines()
    assert header.split() == ["JOB", "CONTAINER", "TRIGGER", "STATE", "STARTED", "DURATION",
                              "IMAGES", "/", "ERROR"]  # fmt: skip
    assert "web-0" in first
    assert "2.5s" in first
    assert "kegpack/web-0:t" in first
    assert all(len(line) <= 150 for line in rest)
    assert "error: nothing to package" in rest[-1]
    assert "dddddddddddd" in rest[-1], "a job without a name shows its container id"


def test_jobs_json_is_the_apis_json(tmp_path: Path) -> None:
    """``kegpackd jobs --json`` prints what the API answered."""
    with fake_daemon(tmp_path) as config:
        done = kegpackd("jobs", "--json", "-c", str(config))
    assert json.loads(done.stdout) == JOBS


def test_a_closed_pipe_is_no_traceback(tmp_path: Path) -> None:
    """``kegpackd jobs | head -1``: the reader leaving early prints no traceback."""
    with fake_daemon(tmp_path) as config:
        done = subprocess.run(
            f"{sys.executable} -m kegpackd jobs -c {config} | head -1",
            shell=True, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.stdout.startswith("JOB")
    assert "Traceback" not in done.stderr
    assert "BrokenPipe" not in done.stderr
