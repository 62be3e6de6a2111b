"""Contexts made by the docker CLI itself find the private engine, with no DOCKER_HOST set.

The docker CLI (``/usr/local/bin/docker`` where installed, else Debian's) writes the
context store in a temporary DOCKER_CONFIG; kegpackd must read what it wrote.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.daemontools import free_port, wait_until
from tests.dockertools import Docker, TestEnv

pytestmark = pytest.mark.engine


def docker_cli() -> str:
    """The newest docker CLI here: the one the brief names, else the one on PATH."""
    preferred = Path("/usr/local/bin/docker")
    found = str(preferred) if preferred.exists() else shutil.which("docker")
    assert found, "no docker CLI"
    return found


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No DOCKER_HOST nor DOCKER_* of the caller: only a private DOCKER_CONFIG and HOME."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("DOCKER_", "SSH_"))
    }
    return {**env, "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "dockercfg"), **extra}


def cli(tmp_path: Path, *args: str) -> None:
    """The docker CLI on the private config directory."""
    subprocess.run(
        [docker_cli(), *args], env=clean_env(tmp_path), check=True, capture_output=True, timeout=60
    )


def kegpackd(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kegpackd", *args],
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def source_container(docker: Docker, tmp_path: Path, text: str) -> str:
    """A container with a bind mount at /keg holding f.txt = ``text``."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "f.txt").write_text(text)
    return docker.container("-v", f"{source}:/keg")


def file_in_image(docker: Docker, done: subprocess.CompletedProcess[str]) -> str:
    """The file the packaged image carries, after checking the job succeeded."""
    assert done.returncode == 0, done.stderr
    reference = done.stdout.split()[0]
    docker.track_image(reference)
    return docker.run_image(reference, "cat", "/keg/f.txt")


def test_a_unix_socket_context_in_use_is_found(
    docker: Docker, testenv: TestEnv, tmp_path: Path
) -> None:
    """`docker context create` + `docker context use`: kegpackd packages on that engine."""
    cid = source_container(docker, tmp_path, "via currentContext\n")
    cli(tmp_path, "context", "create", "private", "--docker", f"host={testenv.docker_host}")
    cli(tmp_path, "context", "use", "private")
    done = kegpackd(tmp_path, "package", cid, "--repository", "kegpack-test/ctx-current")
    assert file_in_image(docker, done) == "via currentContext\n"


def test_a_tls_context_named_by_docker_context_is_found(
    docker: Docker, testenv: TestEnv, tmp_path: Path
) -> None:
    """A TCP context with the CA, client cert and key: kegpackd packages over verified TLS."""
    cid = source_container(docker, tmp_path, "via DOCKER_CONTEXT over TLS\n")
    certs = testenv.tls_certs
    endpoint = (
        f"host={testenv.tls_host},ca={certs / 'ca.pem'},"
        f"cert={certs / 'cert.pem'},key={certs / 'key.pem'}"
    )
    cli(tmp_path, "context", "create", "secure", "--docker", endpoint)
    done = kegpackd(
        tmp_path, "package", cid, "--repository", "kegpack-test/ctx-tls", DOCKER_CONTEXT="secure"
    )
    assert file_in_image(docker, done) == "via DOCKER_CONTEXT over TLS\n"


def test_docker_host_wins_over_the_current_context(
    docker: Docker, testenv: TestEnv, tmp_path: Path
) -> None:
    """As with the docker CLI (and unlike aiodocker), DOCKER_HOST outranks currentContext."""
    cid = source_container(docker, tmp_path, "via DOCKER_HOST\n")
    cli(tmp_path, "context", "create", "dead", "--docker", f"host=unix://{tmp_path}/none.sock")
    cli(tmp_path, "context", "use", "dead")
    done = kegpackd(
        tmp_path,
        "package",
        cid,
        "--repository",
        "kegpack-test/ctx-host",
        DOCKER_HOST=testenv.docker_host,
    )
    assert file_in_image(docker, done) == "via DOCKER_HOST\n"


def test_a_missing_context_is_named_with_its_source(tmp_path: Path) -> None:
    """DOCKER_CONTEXT naming no context of the store: exit 1, the name and its source."""
    cli(tmp_path, "context", "create", "other", "--docker", f"host=unix://{tmp_path}/x.sock")
    done = kegpackd(tmp_path, "package", "web", DOCKER_CONTEXT="nope")
    assert done.returncode == 1
    assert done.stderr.startswith('kegpackd: context "nope" from DOCKER_CONTEXT: no such context')


@dataclass(frozen=True)
class SSHServer:
    port: int
    # A directory whose `ssh` runs the system's ssh with this test's client config.
    bin_dir: Path
    client_config: Path


def keygen(path: Path) -> str:
    """A new ed25519 key pair at ``path``; returns the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path.with_suffix(".pub").read_text().strip()


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    """Until sshd accepts connections (at most 30 s), or fail with what it said."""

    def listening() -> bool:
        if process.poll() is not None:
            pytest.fail(f"sshd exited: {process.communicate()[1].decode()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return False
        return True

    wait_until(listening, 30, "sshd listens")


@pytest.fixture
def sshd(testenv: TestEnv, tmp_path: Path) -> Iterator[SSHServer]:
    """A real sshd on a free loopback port whose one key may only run dial-stdio to the
    private engine; stopped, and /run/sshd removed if this fixture made it, afterwards."""
    base = tmp_path / "ssh"
    base.mkdir()
    port = free_port()
    host_key = keygen(base / "host_key")
    client_key = keygen(base / "client_key")
    forced = f"DOCKER_HOST={testenv.docker_host} {docker_cli()} system dial-stdio"
    (base / "authorized_keys").write_text(f'restrict,command="{forced}" {client_key}\n')
    (base / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {base / 'host_key'}\n"
        f"PidFile {base / 'sshd.pid'}\nAuthorizedKeysFile {base / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication yes\nKbdInteractiveAuthentication no\n"
    )
    (base / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key}\n")
    (base / "ssh_config").write_text(
        f"Host 127.0.0.1\n  IdentityFile {base / 'client_key'}\n  IdentitiesOnly yes\n"
        f"  IdentityAgent none\n  UserKnownHostsFile {base / 'known_hosts'}\n"
        "  StrictHostKeyChecking yes\n"
    )
    bin_dir = base / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "ssh"
    wrapper.write_text('#!/bin/sh\nexec /usr/bin/ssh -F "$KEGPACK_TEST_SSH_CONFIG" "$@"\n')
    wrapper.chmod(0o755)
    privsep = Path("/run/sshd")
    made = not privsep.exists()
    privsep.mkdir(mode=0o755, exist_ok=True)
    process = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(base / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, process)
        yield SSHServer(port, bin_dir, base / "ssh_config")
    finally:
        process.terminate()
        process.wait(timeout=30)
        if made:
            privsep.rmdir()


def over_ssh(server: SSHServer, config: Path | None = None) -> dict[str, str]:
    """The environment in which kegpackd's `ssh` is the test's (the real ssh, its config)."""
    return {
        "PATH": f"{server.bin_dir}:{os.environ['PATH']}",
        "KEGPACK_TEST_SSH_CONFIG": str(config or server.client_config),
    }


def test_an_ssh_context_reaches_the_engine_through_dial_stdio(
    docker: Docker, sshd: SSHServer, tmp_path: Path
) -> None:
    """`docker context create --docker host=ssh://…`: kegpackd packages through a real sshd."""
    cid = source_container(docker, tmp_path, "via ssh\n")
    cli(
        tmp_path,
        "context",
        "create",
        "remote",
        "--docker",
        f"host=ssh://root@127.0.0.1:{sshd.port}",
    )
    done = kegpackd(
        tmp_path,
        "package",
        cid,
        "--repository",
        "kegpack-test/ctx-ssh",
        DOCKER_CONTEXT="remote",
        **over_ssh(sshd),
    )
    assert file_in_image(docker, done) == "via ssh\n"


def test_ssh_wanting_a_password_fails_clearly_instead_of_prompting(
    sshd: SSHServer, tmp_path: Path
) -> None:
    """A key the server refuses: exit 1 naming the context, ssh's refusal and why no prompt."""
    stranger = tmp_path / "stranger_key"
    keygen(stranger)
    keyless = tmp_path / "keyless_config"
    config = sshd.client_config.read_text()
    keyless.write_text(config.replace(str(sshd.client_config.parent / "client_key"), str(stranger)))
    cli(
        tmp_path,
        "context",
        "create",
        "remote",
        "--docker",
        f"host=ssh://root@127.0.0.1:{sshd.port}",
    )
    done = kegpackd(tmp_path, "package", "web", DOCKER_CONTEXT="remote", **over_ssh(sshd, keyless))
    assert done.returncode == 1
    line = done.stderr.strip()
    assert line.startswith(
        f"kegpackd: cannot reach the Docker engine at ssh://root@127.0.0.1:{sshd.port} "
        '(context "remote" from DOCKER_CONTEXT): ssh failed (exit status 255): '
    )
    assert "Permission denied (publickey,password)" in line
    assert line.endswith("never asks for a password or passphrase: use a key ssh finds by "
                         "itself or ssh-agent")  # fmt: skip
