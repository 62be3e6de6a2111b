"""Stop mode on the real engine: the source is stopped for the copy and started again
after, only if it was running, in every outcome, and even when kegpackd is SIGKILLed in
between (the next kegpackd starts it); its restart policy is left as it was."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import anyio
import pytest

from kegpackd.archive.ignore import MAX_PATTERN_CHARS
from kegpackd.config import Config, parse_config
from kegpackd.engine.client import Engine
from kegpackd.errors import InvalidValueError
from kegpackd.packaging.jobs import JobRequest, JobResult
from kegpackd.packaging.options import Overrides
from kegpackd.packaging.pipeline import package
from kegpackd.packaging.stoprecord import StopRecord, read_records, records_dir
from tests.daemontools import DaemonProcess, wait_until
from tests.dockertools import Docker

pytestmark = pytest.mark.engine

# PID 1 of busybox ignores SIGTERM unless it traps it: this one stops within 0.2 s.
TERM_EXITS = ("sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done")
STOP = Overrides(quiesce="stop", origin="--")


def stop_config(tmp_path: Path) -> Config:
    return parse_config(
        {
            "packaging": {"repository": "kegpack-test/{name}", "tags": ["t1"]},
            "daemon": {"state_dir": str(tmp_path / "state")},
        }
    )


async def run_job(
    engine: Engine, docker: Docker, cid: str, config: Config, result: JobResult | None = None
) -> JobResult:
    request = JobRequest(container=cid, overrides=STOP)
    with anyio.fail_after(120):
        done = await package(engine, config, request, result=result)
    for reference in done.references:
        docker.track_image(reference)
    return done


def state(docker: Docker, cid: str) -> dict[str, Any]:
    return dict(docker.inspect(cid)["State"])


async def test_stop_mode_starts_a_running_source_again_after_the_copy(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """The source was stopped (a new StartedAt), runs again, the image has the mount."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("kept\n")
    cid = docker.container("-v", f"{tmp_path / 'data'}:/keg", command=TERM_EXITS)
    before = state(docker, cid)
    result = await run_job(engine, docker, cid, stop_config(tmp_path))
    after = state(docker, cid)
    assert after["Running"]
    assert after["StartedAt"] != before["StartedAt"]
    assert (result.quiesce, (result.quiesced_seconds or 0) > 0) == ("stop", True)
    assert docker.run_image(result.references[0], "cat", "/keg/a.txt") == "kept\n"
    assert read_records(tmp_path / "state") == []


async def test_an_unless_stopped_source_keeps_its_restart_policy_after_stop_mode(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """After the job, the policy is as it was and live: the source restarts when it exits."""
    cid = docker.container("--restart", "unless-stopped", "-v", f"{tmp_path}:/keg",
                           command=TERM_EXITS)  # fmt: skip
    policy = docker.inspect(cid)["HostConfig"]["RestartPolicy"]
    await run_job(engine, docker, cid, stop_config(tmp_path / "k"))
    assert docker.inspect(cid)["HostConfig"]["RestartPolicy"] == policy
    count = docker.inspect(cid)["RestartCount"]
    docker.run("exec", cid, "kill", "-TERM", "1")
    wait_until(
        lambda: docker.inspect(cid)["RestartCount"] > count and state(docker, cid)["Running"],
        60,
        "restarted by its policy",
    )


async def test_stop_mode_starts_the_source_again_after_a_failing_job(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """A job that fails once the source is stopped (a bad .kegpackignore) starts it again."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / ".kegpackignore").write_text("x" * (MAX_PATTERN_CHARS + 1) + "\n")
    cid = docker.container("-v", f"{tmp_path / 'data'}:/keg", command=TERM_EXITS)
    before = state(docker, cid)
    result = JobResult(job_id="")
    with pytest.raises(InvalidValueError, match="kegpackignore"):
        await run_job(engine, docker, cid, stop_config(tmp_path), result)
    after = state(docker, cid)
    assert after["Running"]
    assert after["StartedAt"] != before["StartedAt"]
    assert result.quiesced_seconds is not None
    assert read_records(tmp_path / "state") == []


async def test_stop_mode_does_not_start_a_source_that_was_stopped(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """A source that was not running is packaged and left as it was: not started."""
    cid = docker.container("-v", f"{tmp_path}:/keg", command=TERM_EXITS)
    docker.run("stop", cid)
    before = state(docker, cid)
    result = await run_job(engine, docker, cid, stop_config(tmp_path / "k"))
    after = state(docker, cid)
    assert (after["Running"], after["StartedAt"]) == (False, before["StartedAt"])
    assert result.references
    assert result.quiesced_seconds is None


async def test_a_job_cancelled_during_the_stop_starts_the_source_again(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """Cancelled while the engine is still stopping the source: a new run of it is up after."""
    slow_stop = ("sh", "-c", "trap 'sleep 2; exit 0' TERM; while true; do sleep 0.2; done")
    label = f"kegpack-test.slow-stop={tmp_path.name}"
    cid = docker.container("-l", label, "-v", f"{tmp_path}:/keg", command=slow_stop)
    before = state(docker, cid)
    request = JobRequest(container=cid, overrides=STOP)
    async with engine.events(await engine.system_time_ns(), label) as events:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:

                async def job() -> None:
                    await package(engine, stop_config(tmp_path / "k"), request)

                group.start_soon(job)
                async for event in events:
                    if event.id == cid and event.action == "kill":  # the stop is under way
                        group.cancel_scope.cancel()
                        break
    after = state(docker, cid)
    assert after["Running"]
    assert after["StartedAt"] != before["StartedAt"]
    assert read_records(tmp_path / "k" / "state") == []


def test_a_source_left_stopped_by_a_killed_kegpackd_is_started_by_the_next_one(
    docker: Docker, tmp_path: Path
) -> None:
    """SIGKILL mid-copy leaves an unless-stopped source down; the next run starts it."""
    data = tmp_path / "data"
    data.mkdir()
    with (data / "big").open("wb") as out:  # long enough a copy to be caught in the middle
        out.write(os.urandom(1 << 20) * 96)
    config = tmp_path / "kegpackd.toml"
    config.write_text(
        '[packaging]\nrepository = "kegpack-test/{name}"\ntags = ["t1"]\n'
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
    )
    cid = docker.container("--restart", "unless-stopped", "-v", f"{data}:/keg",
                           command=TERM_EXITS)  # fmt: skip
    (tmp_path / "other").mkdir()
    other = docker.container("-v", f"{tmp_path / 'other'}:/keg", command=TERM_EXITS)
    env = {**os.environ, "DOCKER_HOST": docker.env.docker_host}
    run = subprocess.Popen(
        [sys.executable, "-m", "kegpackd", "package", cid, "-c", str(config), "--quiesce", "stop"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Polled often: kegpackd is killed inside the short window while the source is stopped.
        wait_until(lambda: not state(docker, cid)["Running"], 60, "stopped by kegpackd", 0.02)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait(timeout=30)
    assert not state(docker, cid)["Running"], "the engine woke it: nothing left to prove"
    assert len(read_records(tmp_path / "state")) == 1
    done = docker.kegpackd("package", other, "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert state(docker, cid)["Running"]
    assert "started again" in done.stderr
    assert read_records(tmp_path / "state") == []
    assert docker.leftovers() == ([], [])


def test_a_daemon_at_start_starts_a_source_a_dead_kegpackd_left_stopped(
    docker: Docker, daemon: DaemonProcess, dead: str
) -> None:
    """A record of a dead maker in the state dir: the daemon starts that source, drops it."""
    cid = docker.container(command=TERM_EXITS)
    docker.run("stop", cid)
    state_dir = daemon.config.parent / "state"
    records_dir(state_dir).mkdir(mode=0o700, parents=True)
    state_dir.chmod(0o700)
    record = StopRecord(cid, "web", "job1", dead, 4242, "2026-01-02T03:04:05+00:00")
    (records_dir(state_dir) / f"{cid}.job1.json").write_text(json.dumps(asdict(record)))
    daemon.start()
    daemon.wait_for(lambda r: "started again" in r.get("message", ""), 30)
    assert state(docker, cid)["Running"]
    assert read_records(state_dir) == []


def test_a_daemon_packages_a_stop_mode_source_once_not_on_its_own_restart(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The start that a stop-mode job causes is no start trigger: one job, then quiet."""
    daemon.start()
    labels = ("-l", "kegpack.package=true", "-l", "kegpack.quiesce=stop")
    cid = docker.container(*labels, "-v", f"{tmp_path}:/keg", command=TERM_EXITS)
    record = daemon.wait_for(lambda r: r.get("container") == cid[:12] and "outcome" in r, 60)
    assert record["outcome"] == "succeeded", record
    assert state(docker, cid)["Running"]
    # Events come in order: once a later container's job has ended, a job that the
    # restart's start event would have queued would have started.
    sentinel = docker.container("-l", "kegpack.package=true", "-v", f"{tmp_path}:/keg")
    daemon.wait_for(lambda r: r.get("container") == sentinel[:12] and "outcome" in r, 60)
    assert len(daemon.jobs("job started", cid)) == 1
