"""kegpackd against an engine over TCP with TLS, configured as the docker CLI is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dockertools import Docker, TestEnv

pytestmark = pytest.mark.engine


def package_over_tls(
    testenv: TestEnv, container: str, certs: Path, repository: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DOCKER_HOST": testenv.tls_host,
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(certs),
    }
    return subprocess.run(
        [sys.executable, "-m", "kegpackd", "package", container, "--repository", repository],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_packaging_works_over_tls(docker: Docker, testenv: TestEnv, tmp_path: Path) -> None:
    """DOCKER_HOST=tcp://…, DOCKER_TLS_VERIFY=1, DOCKER_CERT_PATH: the job succeeds."""
    (tmp_path / "f.txt").write_text("over tls\n")
    cid = docker.container("-v", f"{tmp_path}:/keg")
    done = package_over_tls(testenv, cid, testenv.tls_certs, "kegpack-test/tls")
    assert done.returncode == 0, done.stderr
    reference = done.stdout.split()[0]
    docker.track_image(reference)
    assert docker.run("run", "--rm", "--network", "none", reference, "cat", "/keg/f.txt") == (
        "over tls\n"
    )


def test_wrong_ca_fails_with_a_clear_error(
    docker: Docker, testenv: TestEnv, tmp_path: Path
) -> None:
    """A CA that did not sign the engine's certificate: exit 1 and a TLS verification error."""
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=not the engine's CA", "-keyout", str(wrong / "ca-key.pem"),
         "-out", str(wrong / "ca.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    for name in ("cert.pem", "key.pem"):
        shutil.copy(testenv.tls_certs / name, wrong / name)
    cid = docker.container("-v", f"{tmp_path}:/keg")
    before = docker.image_ids()
    done = package_over_tls(testenv, cid, wrong, "kegpack-test/tls-wrong")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("kegpackd: ")
    assert "TLS" in last
    assert "certificate verify failed" in last
    assert docker.image_ids() == before
