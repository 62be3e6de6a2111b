"""A local user holding the daemon's port (the daemon down) never receives our CLI's token.

Issue 18, F2's remaining hole: any local user may listen on the daemon's loopback port
while it is down, and wait for ``kegpackd trigger``/``jobs`` to send the API token.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.daemontools import DaemonProcess, free_port, wait_until, write_config

NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
CONFIGURED = "configured-token-for-ci-0123456789abcdef"

# Listens where the daemon would, takes one connection, prints the request head it got (hex).
SQUATTER = r"""
import socket, sys
server = socket.socket()
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen()
print("listening", flush=True)
server.settimeout(30)
peer, _ = server.accept()
peer.settimeout(10)
received = b""
with peer:
    while b"\r\n\r\n" not in received and (chunk := peer.recv(65536)):
        received += chunk
print(received.hex(), flush=True)
"""


def _kegpackd(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy")}
    return subprocess.run(
        [sys.executable, "-m", "kegpackd", *args],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def _config(tmp_path: Path, port: int) -> Path:
    """A config for ``port`` with a configured token, and the daemon's local token made."""
    token_file = tmp_path / "http.token"
    token_file.write_text(CONFIGURED + "\n")
    token_file.chmod(0o600)
    config = write_config(tmp_path / "k.toml", port=port, extra=f'token_file = "{token_file}"\n')
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    # As the daemon's first start makes it: the daemon's user's, 0600.
    local = state / "api.token"
    local.write_text("local-token-of-the-daemon-0123456789abcdef\n")
    local.chmod(0o600)
    return config


@contextlib.contextmanager
def _squatter(port: int) -> Iterator[subprocess.Popen[str]]:
    """The squatting listener, run as uid 65534, ready on 127.0.0.1:``port``."""
    process = subprocess.Popen(
        [*NOBODY, sys.executable, "-c", SQUATTER, str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "listening"
        yield process
    finally:
        process.kill()
        process.wait(timeout=30)


def _healthz(daemon: DaemonProcess) -> int:
    try:
        return daemon.http("GET", "/healthz")[0]
    except OSError:
        return 0


def test_the_cli_sends_no_token_to_a_port_another_user_listens_on(tmp_path: Path) -> None:
    """uid 65534 on the daemon's port: `kegpackd jobs` exits 1 naming port and uid; no token."""
    port = free_port()
    config = _config(tmp_path, port)
    local = (tmp_path / "state" / "api.token").read_text().strip()
    with _squatter(port) as squatter:
        done = _kegpackd("jobs", "-c", str(config))
        received, _ = squatter.communicate(timeout=30)
    sent = bytes.fromhex(received.strip()).decode("latin-1")
    assert local not in sent
    assert CONFIGURED not in sent
    assert "Authorization" not in sent
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"kegpackd: refusing to send the API token to port {port}: it is held by uid 65534,"
        " not by the daemon's user (uid 0) or root"
    ]


def test_the_cli_still_reaches_a_daemon_of_the_token_owner(tmp_path: Path) -> None:
    """A real `kegpackd run` of the token file's owner on the port: `kegpackd jobs` answers."""
    config = write_config(tmp_path / "k.toml")
    config.write_text(f'[docker]\nhost = "unix://{tmp_path}/no-engine.sock"\n' + config.read_text())
    daemon = DaemonProcess(config, tmp_path / "kegpackd.log")
    daemon.start(wait_ready=False)
    try:
        wait_until(lambda: _healthz(daemon) == 200, 30, "the daemon answers /healthz")
        done = _kegpackd("jobs", "--json", "-c", str(config))
    finally:
        daemon.stop()
    assert done.returncode == 0, done.stderr
    assert '"jobs"' in done.stdout
