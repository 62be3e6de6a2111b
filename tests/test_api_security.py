"""Who may use the daemon's HTTP API, and what a hostile client cannot make it do.

Each test replays one attack of the security review (issue 18: F2, F4, F5, F8, F9, F11)
against a real ``kegpackd run`` process or our real CLI.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import resource
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemontools import DaemonProcess, wait_until, write_config
from tests.dockertools import Docker

TOKEN = "configured-token-for-ci-0123456789abcdef"
NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
LABEL = ("-l", "kegpack.package=true", "-l", "kegpack.trigger=manual")


def _no_engine_daemon(tmp_path: Path, extra: str = "", *, text_log: bool = False) -> DaemonProcess:
    """A daemon whose engine is absent: its HTTP side runs all the same (fast tier)."""
    config = write_config(tmp_path / "kegpackd.toml", extra=extra)
    body = config.read_text()
    if text_log:
        body = body.replace('format = "json"', 'format = "text"')
    config.write_text(f'[docker]\nhost = "unix://{tmp_path}/no-engine.sock"\n' + body)
    return DaemonProcess(config, tmp_path / "kegpackd.log")


@contextlib.contextmanager
def running(daemon: DaemonProcess, wrapper: tuple[str, ...] = ()) -> Iterator[DaemonProcess]:
    """``daemon`` started (its /healthz answering), killed afterwards."""
    try:
        daemon.start(wait_ready=False, wrapper=wrapper)
        wait_until(lambda: _healthz(daemon) == 200, 30, "the daemon answers /healthz")
        yield daemon
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=30)


def _healthz(daemon: DaemonProcess) -> int:
    try:
        return daemon.http("GET", "/healthz")[0]
    except OSError:
        return 0


def _token_file(tmp_path: Path) -> str:
    path = tmp_path / "http.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return f'token_file = "{path}"\n'


def _raw(daemon: DaemonProcess, request: bytes) -> bytes:
    """Send ``request`` as bytes (headers urllib would refuse to write); the whole answer."""
    port = int(daemon.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _jobs_started(daemon: DaemonProcess) -> list[str]:
    return [r["message"] for r in daemon.read() if r.get("job")]


# F2: an unprivileged local user and a web page


@pytest.mark.engine
def test_an_unprivileged_local_user_cannot_start_a_job(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """uid 65534 (no docker group) POSTing a JSON job for any container with curl gets 401."""
    secret = tmp_path / "vol"
    secret.mkdir()
    (secret / "root-only").write_text("secret")
    (secret / "root-only").chmod(0o600)
    cid = docker.container("-v", f"{secret}:/data")
    daemon.start()
    done = subprocess.run(
        [*NOBODY, "curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
         "-H", "Content-Type: application/json", "-d", json.dumps({"container": cid}),
         f"{daemon.url}/v1/jobs"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.stdout == "401", done.stderr
    assert not _jobs_started(daemon)


@pytest.mark.engine
def test_the_local_token_is_made_0600_and_unreadable_to_other_users(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """state_dir/api.token is 0600, the daemon user's, and uid 65534 cannot read it."""
    daemon.start()
    token = tmp_path / "state" / "api.token"
    info = token.lstat()
    assert stat.S_ISREG(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    done = subprocess.run(
        [*NOBODY, "cat", str(token)], capture_output=True, timeout=30, check=False
    )
    assert done.returncode != 0
    assert daemon.local_token.encode() not in done.stdout


@pytest.mark.engine
def test_a_cross_origin_simple_post_from_a_web_page_is_refused(
    docker: Docker, daemon: DaemonProcess
) -> None:
    """text/plain with Origin: http://evil.example (what a page can send) starts no job."""
    cid = docker.container()
    daemon.start()
    headers = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    status, body = daemon.http("POST", "/v1/jobs", {"container": cid}, auth=False, headers=headers)
    assert status in (401, 403), body
    assert not _jobs_started(daemon)


@pytest.mark.engine
def test_a_request_with_an_origin_is_refused_even_with_the_token(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """Our CLI never sends Origin; any /v1 request that does is a browser's: 403."""
    write_config(daemon.config, extra=_token_file(tmp_path))
    cid = docker.container(*LABEL)
    daemon.start()
    headers = {"Origin": "http://evil.example"}
    status, body = daemon.http("POST", "/v1/jobs", {"container": cid}, token=TOKEN, headers=headers)
    assert status == 403, body
    assert not _jobs_started(daemon)


@pytest.mark.engine
def test_a_foreign_host_header_is_refused(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """Host: evil.example (DNS rebinding) gets 403 on /v1, even carrying the token."""
    write_config(daemon.config, extra=_token_file(tmp_path))
    daemon.start()
    headers = {"Host": "evil.example:9477"}
    status, body = daemon.http("GET", "/v1/jobs", token=TOKEN, headers=headers)
    assert status == 403, body


def test_a_host_in_allowed_hosts_is_served(tmp_path: Path) -> None:
    """A name listed in http.allowed_hosts is accepted as the Host."""
    daemon = _no_engine_daemon(tmp_path, 'allowed_hosts = ["Kegpack.Example"]\n')
    with running(daemon):
        status, body = daemon.http("GET", "/v1/jobs", headers={"Host": "kegpack.example:9477"})
    assert status == 200, body


@pytest.mark.engine
def test_a_post_that_is_not_json_is_refused(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A POST with the token but Content-Type text/plain gets 415 and starts no job."""
    write_config(daemon.config, extra=_token_file(tmp_path))
    cid = docker.container(*LABEL)
    daemon.start()
    headers = {"Content-Type": "text/plain"}
    status, body = daemon.http("POST", "/v1/jobs", {"container": cid}, token=TOKEN, headers=headers)
    assert status == 415, body
    assert not _jobs_started(daemon)


@pytest.mark.engine
def test_the_configured_token_cannot_package_an_unlabelled_container(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """http.token (handed to CI) naming a container without kegpack.package=true: 403."""
    write_config(daemon.config, extra=_token_file(tmp_path))
    cid = docker.container()
    daemon.start()
    status, body = daemon.http("POST", "/v1/jobs", {"container": cid}, token=TOKEN)
    assert status == 403, body
    assert "kegpack.package=true" in body["error"]


@pytest.mark.engine
def test_the_local_token_may_package_an_unlabelled_container(
    docker: Docker, daemon: DaemonProcess
) -> None:
    """The local token is the engine socket's right: any container, labelled or not."""
    cid = docker.container()
    daemon.start()
    status, body = daemon.http("POST", "/v1/jobs", {"container": cid})
    assert status == 202, body


# F4: every /v1 route needs the token


def test_the_compose_file_of_a_project_needs_the_token(tmp_path: Path) -> None:
    """GET /v1/projects/{id}/compose.yaml without a token is 401 (it holds environments)."""
    with running(_no_engine_daemon(tmp_path, _token_file(tmp_path))) as daemon:
        status, body = daemon.http("GET", "/v1/projects/0123456789abcdef/compose.yaml", auth=False)
    assert status == 401, body


def test_the_job_list_needs_the_token(tmp_path: Path) -> None:
    """GET /v1/jobs (which lists project ids and job details) without a token is 401."""
    with running(_no_engine_daemon(tmp_path)) as daemon:
        status, body = daemon.http("GET", "/v1/jobs", auth=False)
        assert daemon.http("GET", "/metrics", auth=False)[0] == 200
    assert status == 401, body


# F5: idle connections


def test_a_connection_that_never_finishes_its_headers_is_closed(tmp_path: Path) -> None:
    """Half a request line, one byte a second: the daemon hangs up within seconds."""
    with running(_no_engine_daemon(tmp_path)) as daemon:
        port = int(daemon.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            deadline = time.monotonic() + 20
            closed = False
            while not closed and time.monotonic() < deadline:
                try:
                    sock.sendall(b"X")
                    closed = sock.recv(1) == b""
                except TimeoutError:
                    continue
                except OSError:
                    closed = True
    assert closed


def test_more_idle_connections_than_open_files_leave_health_and_the_log_alone(
    tmp_path: Path,
) -> None:
    """1,100 idle connections under a 1024-file limit: /healthz answers, the log stays small."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), max(hard, 4096)))
    daemon = _no_engine_daemon(tmp_path)
    idle: list[socket.socket] = []
    try:
        with running(daemon, wrapper=("prlimit", "--nofile=1024:1024", "--")):
            port = int(daemon.url.rsplit(":", 1)[1])
            for _ in range(1100):
                sock = socket.socket()
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                idle.append(sock)
            wait_until(lambda: "refused" in daemon.log_path.read_text(), 30, "the cap refuses some")
            wait_until(lambda: _healthz(daemon) == 200, 30, "/healthz answers again")
            assert daemon.process is not None
            assert daemon.process.poll() is None
        assert daemon.log_path.stat().st_size < 64 * 1024
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# F11: hostile headers and bodies


def test_a_non_ascii_bearer_token_is_400_without_a_traceback(tmp_path: Path) -> None:
    """Authorization: Bearer \\xff\\xfe gets 400 and one log line, no traceback."""
    with running(_no_engine_daemon(tmp_path, _token_file(tmp_path))) as daemon:
        answer = _raw(
            daemon,
            b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer \xff\xfe\r\n"
            b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n"
            b"\r\n{}",
        )
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert "Traceback" not in daemon.log_path.read_text()


def test_json_nested_30000_deep_is_400_without_a_traceback(tmp_path: Path) -> None:
    """A body of 30,000 nested lists with the token gets 400 and no traceback."""
    with running(_no_engine_daemon(tmp_path, _token_file(tmp_path))) as daemon:
        body = "[" * 30000 + "]" * 30000
        status, answer = _post_text(daemon, body, TOKEN)
    assert status == 400, answer
    assert "Traceback" not in daemon.log_path.read_text()


def _post_text(daemon: DaemonProcess, body: str, token: str) -> tuple[int, str]:
    raw = _raw(
        daemon,
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body.encode(),
    )
    status = int(raw.split(b" ", 2)[1])
    return status, raw.decode(errors="replace")


# F9: log forging through a request path


def test_a_newline_in_a_refused_path_forges_no_log_line(tmp_path: Path) -> None:
    """POST /x%0a2031-01-01 … job succeeded: the refusal is one escaped log line."""
    forged = "2031-01-01 00:00:00,000 INFO kegpackd.daemon.scheduler job succeeded"
    path = "/x%0a" + forged.replace(" ", "%20")
    with running(_no_engine_daemon(tmp_path, _token_file(tmp_path), text_log=True)) as daemon:
        daemon.http("POST", path, {"container": "x"}, auth=False)
        wait_until(lambda: "refused" in daemon.log_path.read_text(), 10, "the refusal is logged")
    lines = daemon.log_path.read_text().splitlines()
    assert not any(line.startswith("2031-01-01") for line in lines), lines


# F8: our CLI talks to our daemon directly


@contextlib.contextmanager
def _http_server(answer: bytes, content_type: str, seen: list[str]) -> Iterator[int]:
    """A one-answer HTTP server (a fake daemon or a proxy); records each request's line."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(f"{self.requestline} {self.headers.get('Authorization', '')}")
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy")}
    return subprocess.run(
        [sys.executable, "-m", "kegpackd", *args],
        capture_output=True, text=True, timeout=60, check=False, env={**base, **env},
    )  # fmt: skip


def test_the_cli_never_sends_the_token_through_an_http_proxy(tmp_path: Path) -> None:
    """With http_proxy set, `kegpackd jobs` still asks the daemon itself; the proxy sees nothing."""
    daemon_seen: list[str] = []
    proxy_seen: list[str] = []
    jobs = json.dumps({"jobs": [], "projects": []}).encode()
    with (
        _http_server(jobs, "application/json", daemon_seen) as port,
        _http_server(jobs, "application/json", proxy_seen) as proxy,
    ):
        config = write_config(tmp_path / "k.toml", port=port, extra=_token_file(tmp_path))
        done = _cli("jobs", "-c", str(config), env={"http_proxy": f"http://127.0.0.1:{proxy}"})
    assert done.returncode == 0, done.stderr
    assert proxy_seen == []
    assert daemon_seen
    assert all(TOKEN in line for line in daemon_seen)


def test_a_non_json_answer_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A 200 with an HTML page instead of JSON: one `kegpackd:` line, exit 1, no traceback."""
    with _http_server(b"<html>hello</html>", "text/html", []) as port:
        config = write_config(tmp_path / "k.toml", port=port, extra=_token_file(tmp_path))
        done = _cli("jobs", "-c", str(config), env={})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("kegpackd: the daemon at http://127.0.0.1:")


def test_the_cli_without_a_readable_token_names_the_file(tmp_path: Path) -> None:
    """No api.token and no http.token: one line naming the token file, exit 1."""
    with _http_server(b"{}", "application/json", []) as port:
        config = write_config(tmp_path / "k.toml", port=port)
        done = _cli("jobs", "-c", str(config), env={})
    assert done.returncode == 1
    assert done.stderr.strip().startswith(
        f"kegpackd: cannot read the daemon's API token {tmp_path / 'state' / 'api.token'}:"
    )
