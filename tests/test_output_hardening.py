"""Outside text in output, and files kegpackd writes or reads, under attack (issue 18).

F9 (control characters), F10 (huge values), F13 (the journal's directory), F14 (secret
files), F15 (service names on stdout), F16 (--compose-out). The engine decides what a
container may carry (mount paths with ESC, 4 MB labels), so those run on the real engine.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from kegpackd.cli import jobs_table
from kegpackd.cli.commands import write_file
from kegpackd.config import load_config
from kegpackd.daemon.journal import JOURNAL_FILE, Journal
from kegpackd.errors import InvalidValueError, KegpackError
from kegpackd.logs import TextFormatter
from kegpackd.packaging.jobs import EventKind, JobEvent, JobRecord, JobRequest, JobState, job_json
from tests.daemontools import wait_until, write_config
from tests.dockertools import Docker

HOSTILE_PATH = "/d\nx\x1b[31m"
HUGE = 4 * 1024 * 1024
LINE_START = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def create_container(docker: Docker, labels: dict[str, str], mounts: list[dict[str, str]]) -> str:
    """Create and start a container through the engine API (the docker CLI cannot send a
    newline in a mount's destination); network mode none, never pulled."""
    body = {
        "Image": docker.env.base_image,
        "Cmd": ["sleep", "3600"],
        "Labels": labels,
        "HostConfig": {"NetworkMode": "none", "Mounts": mounts},
    }

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(60)
            self.sock.connect(docker.env.docker_host.removeprefix("unix://"))

    connection = UnixConnection("localhost")
    try:
        connection.request(
            "POST",
            f"/containers/create?name={docker.name(f'-{len(docker.containers)}')}",
            json.dumps(body),
            {"Content-Type": "application/json"},
        )
        response = connection.getresponse()
        answer = response.read()
    finally:
        connection.close()
    assert response.status == 201, answer
    cid: str = json.loads(answer)["Id"]
    docker.containers.append(cid)
    docker.run("start", cid)
    return cid


def bind(source: Path, target: str) -> dict[str, str]:
    source.mkdir(exist_ok=True)
    (source / "file").write_text("content\n")
    return {"Type": "bind", "Source": str(source), "Target": target}


def no_control_characters(text: str) -> bool:
    return all(c.isprintable() or c == "\n" for c in text)


# F9: control characters from outside are escaped wherever they are logged or printed.


@pytest.mark.engine
def test_a_hostile_mount_path_stays_on_the_error_line_of_kegpackd_package(
    docker: Docker, tmp_path: Path
) -> None:
    """A mount destination with a newline and ESC, named in the job's error, stays escaped."""
    cid = create_container(docker, {}, [bind(tmp_path / "src", HOSTILE_PATH)])
    done = docker.kegpackd("package", "--path", "/nope", cid)
    assert done.returncode == 1
    assert no_control_characters(done.stderr)
    [error] = [line for line in done.stderr.splitlines() if line.startswith("kegpackd: ")]
    assert "/d\\nx\\x1b[31m" in error
    assert all(
        LINE_START.match(line) or line.startswith("kegpackd: ") for line in done.stderr.splitlines()
    )


@pytest.mark.engine
def test_a_hostile_mount_path_is_escaped_in_the_daemon_log_and_kegpackd_jobs(
    docker: Docker, tmp_path: Path
) -> None:
    """The daemon's text log and `kegpackd jobs` show the failed job's error on one line."""
    config = write_config(tmp_path / "kegpackd.toml")
    config.write_text(config.read_text().replace('format = "json"', 'format = "text"'))
    log_path = tmp_path / "kegpackd.log"
    labels = {"kegpack.package": "true", "kegpack.trigger": "manual", "kegpack.paths": "/nope"}
    cid = create_container(docker, labels, [bind(tmp_path / "src", HOSTILE_PATH)])
    command = [sys.executable, "-m", "kegpackd"]
    with log_path.open("wb") as log_file:
        daemon = subprocess.Popen(
            [*command, "run", "-c", str(config)], stdout=log_file, stderr=log_file
        )
    try:
        wait_until(lambda: " ready" in log_path.read_text(), 60, "the daemon is ready")
        trigger = subprocess.run(
            [*command, "trigger", cid, "-c", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert trigger.returncode == 0, trigger.stderr
        job_id = trigger.stdout.strip()
        wait_until(lambda: f"job={job_id}" in log_path.read_text(), 60, "the job's log line")
        jobs = subprocess.run(
            [*command, "jobs", "-c", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
    log_text = log_path.read_text()
    assert no_control_characters(log_text)
    assert all(LINE_START.match(line) for line in log_text.splitlines()), log_text
    assert "/d\\nx\\x1b[31m" in log_text
    assert jobs.returncode == 0, jobs.stderr
    assert no_control_characters(jobs.stdout)
    [row] = [line for line in jobs.stdout.splitlines() if line.startswith(job_id)]
    assert "failed" in row


def test_the_jobs_table_escapes_control_characters_in_every_cell() -> None:
    """A name and an error holding a newline and ESC give one row each, escaped."""
    job = {"id": "j1", "name": "a\x1b]0;x\x07", "state": "failed", "error": "at /d\nx\x1b[31m"}
    lines = jobs_table([job], 200)
    assert len(lines) == 2
    assert no_control_characters("\n".join(lines))
    assert "\\x1b[31m" in lines[1]


def test_a_text_log_line_cannot_forge_another_line() -> None:
    """A message and a field holding a newline and ESC give one escaped line."""
    record = logging.LogRecord("kegpackd", logging.INFO, "", 0, "mount %s", (HOSTILE_PATH,), None)
    record.fields = {"error": "x\n2026-01-01 00:00:00,000 INFO kegpackd: job succeeded"}
    line = TextFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert "\n" not in line
    assert "\x1b" not in line
    assert "mount /d\\nx\\x1b[31m" in line


# F10: echoed values are cut.


def test_an_invalid_value_is_echoed_cut_with_its_length() -> None:
    """A 4 MB label value appears as its first 200 characters and its length."""
    message = str(InvalidValueError("label kegpack.repository", "A" * HUGE, "must be lowercase"))
    assert len(message) < 400
    assert f"({HUGE} characters)" in message
    assert message.endswith(": must be lowercase")


def test_a_huge_error_message_keeps_its_head_and_reason() -> None:
    """Any error naming a huge value is cut to about 1000 characters, its end kept."""
    message = str(KegpackError(f"mount {'x' * HUGE} of container c cannot be read"))
    assert len(message) < 1100
    assert message.startswith("mount xxx")
    assert message.endswith("of container c cannot be read")


def test_a_job_record_cuts_a_huge_error_and_container() -> None:
    """What /v1/jobs, the journal and the webhook carry stays small whatever the job said."""
    record = JobRecord(request=JobRequest(container="c" * HUGE), state=JobState.FAILED)
    record.error = "internal error: " + "e" * HUGE
    assert len(json.dumps(job_json(record))) < 4000


def test_a_huge_log_message_is_cut() -> None:
    """A log line naming a 4 MB value stays a few KB."""
    record = logging.LogRecord("kegpackd", logging.INFO, "", 0, "%s", ("v" * HUGE,), None)
    assert len(TextFormatter("%(message)s").format(record)) < 5000


@pytest.mark.engine
def test_a_4_mb_label_gives_a_short_error(docker: Docker) -> None:
    """kegpackd package of a container with a 4 MB invalid label prints one short line."""
    cid = create_container(docker, {"kegpack.repository": "A" * HUGE}, [])
    done = docker.kegpackd("package", cid)
    assert done.returncode == 1
    assert len(done.stderr) < 5000
    assert "kegpack.repository" in done.stderr


# F13: the journal neither follows symlinks nor uses a directory others can write.


def victim(tmp_path: Path) -> Path:
    target = tmp_path / "victim"
    target.write_text("victim\n")
    target.chmod(0o644)
    return target


def test_a_world_writable_state_dir_is_refused(tmp_path: Path) -> None:
    """A 0777 state_dir with a planted jobs.jsonl symlink: refused, the target untouched."""
    target = victim(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    (state / JOURNAL_FILE).symlink_to(target)
    with pytest.raises(KegpackError, match="writable by other users"):
        Journal(state).prepare()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_journal_symlink_is_not_followed_at_start(tmp_path: Path) -> None:
    """A jobs.jsonl symlink in a private state_dir is refused, never chmodded through."""
    target = victim(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / JOURNAL_FILE).symlink_to(target)
    with pytest.raises(KegpackError, match="symlink"):
        Journal(state).prepare()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


async def test_a_journal_symlink_planted_later_is_not_written_through(tmp_path: Path) -> None:
    """A symlink planted after start gets no line appended to its target."""
    target = victim(tmp_path)
    state = tmp_path / "state"
    journal = Journal(state)
    journal.prepare()
    (state / JOURNAL_FILE).symlink_to(target)
    record = JobRecord(request=JobRequest(container="c"), state=JobState.SUCCEEDED)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(journal.run)
            journal.on_job_event(JobEvent(EventKind.FINISHED, record))
            journal.close()
    assert target.read_text() == "victim\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


# F14: secret files.


def auth_config(tmp_path: Path, password_file: Path) -> Path:
    config = tmp_path / "kegpackd.toml"
    config.write_text(
        '[registries]\nallowed = ["registry.example:5000"]\n'
        '[registries.auth."registry.example:5000"]\n'
        f'username = "ci"\npassword_file = "{password_file}"\n'
    )
    return config


def test_a_fifo_as_password_file_is_refused_without_blocking(tmp_path: Path) -> None:
    """A FIFO with no writer is refused at once (it used to hold the loader in open())."""
    fifo = tmp_path / "password"
    os.mkfifo(fifo, 0o600)
    done = subprocess.run(
        [sys.executable, "-m", "kegpackd", "sweep", "-c", str(auth_config(tmp_path, fifo))],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "is not a regular file" in done.stderr


def test_a_password_file_others_can_read_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 0644 password file still loads, and a warning names its key and mode."""
    secret = tmp_path / "password"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        config = load_config(auth_config(tmp_path, secret))
    assert config.registries.auth
    assert "password_file" in caplog.text
    assert "0644" in caplog.text
    assert "hunter2" not in caplog.text


def test_a_private_password_file_behind_a_symlink_loads_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Docker and Kubernetes secrets are symlinks to 0600/0400 files: no warning."""
    secret = tmp_path / "password.real"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    (tmp_path / "password").symlink_to(secret)
    with caplog.at_level(logging.WARNING):
        load_config(auth_config(tmp_path, tmp_path / "password"))
    assert caplog.text == ""


# F15: one stdout line per reference, whatever the service is called.


@pytest.mark.engine
def test_a_newline_in_a_service_name_cannot_forge_a_reference_line(
    docker: Docker, tmp_path: Path
) -> None:
    """A service label holding a newline and a fake `<service> <reference>` stays one line."""
    project = docker.name("p")
    forged = "web\nweb kegpack-test/forged:t1"
    labels = {
        "com.docker.compose.project": project,
        "com.docker.compose.service": forged,
        "com.docker.compose.container-number": "1",
    }
    create_container(docker, labels, [bind(tmp_path / "src", "/keg")])
    conf = tmp_path / "k.toml"
    conf.write_text(
        f'[packaging]\nrepository = "kegpack-test/{docker.prefix}-f15"\ntags = ["t1"]\n'
    )
    out = tmp_path / "packaged.yaml"
    done = docker.kegpackd(
        "package", "--project", project, "-c", str(conf), "--compose-out", str(out), "--partial"
    )
    docker.track_image(f"kegpack-test/{docker.prefix}-f15:t1")
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout + done.stderr
    assert lines[0].split() == [
        "web\\nweb\\x20kegpack-test/forged:t1",
        f"kegpack-test/{docker.prefix}-f15:t1",
    ]
    assert no_control_characters(done.stderr)


# F16: --compose-out.


def test_the_compose_file_is_written_0600(tmp_path: Path) -> None:
    """The Compose file holds the services' environment: only its owner may read it."""
    out = tmp_path / "packaged.yaml"
    write_file(out, "services: {}\n", "--compose-out")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text() == "services: {}\n"


def test_the_compose_files_temporary_name_does_not_follow_a_planted_symlink(
    tmp_path: Path,
) -> None:
    """A symlink planted at the old guessable temporary name leads nowhere."""
    target = victim(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / f".packaged.yaml.kegpackd-{os.getpid()}").symlink_to(target)
    out = shared / "packaged.yaml"
    write_file(out, "services: {}\n", "--compose-out")
    assert target.read_text() == "victim\n"
    assert not out.is_symlink()
    assert out.read_text() == "services: {}\n"
