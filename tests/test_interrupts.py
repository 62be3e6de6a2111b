"""One-shot runs interrupted by signals, and the sweep of a killed run's leftovers."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.daemontools import big_volume, wait_until
from tests.dockertools import Docker

pytestmark = pytest.mark.engine


def test_sigterm_mid_job_cleans_up_and_exits_143(docker: Docker, tmp_path: Path) -> None:
    """SIGTERM gets the same shielded cleanup as Ctrl-C; nothing is left, status 143."""
    cid = docker.container("-v", f"{big_volume(tmp_path, 600)}:/keg")
    images = docker.image_ids()
    process = docker.package_mid_job(cid, "kegpack-test/interrupt", "term", subprocess.PIPE)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    assert process.stderr is not None
    assert "temporary objects were removed" in process.stderr.read().decode()
    assert docker.leftovers() == ([], [])
    assert docker.image_ids() <= images


def test_two_quick_ctrl_c_do_not_cut_the_cleanup_short(docker: Docker, tmp_path: Path) -> None:
    """SIGINT twice 0.1 s apart: the cleanup finishes before the exit, and the message is true."""
    cid = docker.container("-v", f"{big_volume(tmp_path, 600)}:/keg")
    process = docker.package_mid_job(cid, "kegpack-test/interrupt", "int", subprocess.PIPE)
    process.send_signal(signal.SIGINT)
    time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=120) == 130
    assert process.stderr is not None
    assert "temporary objects were removed" in process.stderr.read().decode()
    assert docker.leftovers() == ([], [])


def test_sweep_lists_then_removes_a_killed_runs_leftovers(docker: Docker, tmp_path: Path) -> None:
    """After a SIGKILL, ``sweep --dry-run`` lists the temporary image and ``sweep`` removes it."""
    cid = docker.container("-v", f"{big_volume(tmp_path, 600)}:/keg")
    process = docker.package_mid_job(cid, "kegpack-test/interrupt", "kill", subprocess.PIPE)
    process.kill()
    process.wait()
    wait_until(lambda: bool(docker.leftovers()[1]), 30, "the killed run's image stays")
    listed = docker.kegpackd("sweep", "--dry-run")
    assert listed.returncode == 0, listed.stderr
    assert "would remove temporary image" in listed.stdout
    assert docker.leftovers()[1], "a dry run removes nothing"
    swept = docker.kegpackd("sweep")
    assert swept.returncode == 0, swept.stderr
    assert "removed temporary image" in swept.stdout
    assert docker.leftovers() == ([], [])


def test_a_package_run_first_sweeps_what_a_killed_run_left(docker: Docker, tmp_path: Path) -> None:
    """The next ``kegpackd package`` removes a killed run's temporary image before its own job."""
    cid = docker.container("-v", f"{big_volume(tmp_path, 600)}:/keg")
    process = docker.package_mid_job(cid, "kegpack-test/interrupt", "killed", subprocess.PIPE)
    process.kill()
    process.wait()
    small = tmp_path / "small"
    small.mkdir()
    (small / "f").write_text("x")
    other = docker.container("-v", f"{small}:/keg")
    done = docker.kegpackd(
        "package", other, "--repository", "kegpack-test/interrupt", "--tag", "next", "--no-push"
    )
    docker.track_image("kegpack-test/interrupt:next")
    assert done.returncode == 0, done.stderr
    assert docker.leftovers() == ([], [])
