"""``kegpackd run`` against the real engine: triggers, concurrency, restarts, signals."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.daemontools import (
    DaemonProcess,
    big_volume,
    finished,
    succeeded,
    wait_until,
    write_config,
)
from tests.dockertools import TESTENV_SCRIPT, Docker, TestEnv

pytestmark = pytest.mark.engine

LABEL = ("-l", "kegpack.package=true")


def events_handled(docker: Docker, daemon: DaemonProcess, tmp_path: Path) -> None:
    """Return once the daemon has handled every engine event so far: it handles them in
    order, so the job of a labelled container started now starts only after them."""
    later = docker.container(*LABEL, "-v", f"{tmp_path}:/keg")
    daemon.wait_for(
        lambda r: r.get("message") == "job started" and r.get("container") == later[:12], 30
    )


def test_labelled_container_is_packaged_and_others_are_ignored(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """Labelled: packaged within seconds. Unlabelled, no boolean, or a packaged image: ignored."""
    (tmp_path / "app.txt").write_text("app\n")
    daemon.start()
    plain = docker.container("-v", f"{tmp_path}:/keg")
    other = docker.container("-v", f"{tmp_path}:/keg", "-l", "kegpack.package=maybe")
    labelled = docker.container(*LABEL, "-v", f"{tmp_path}:/keg")
    record = succeeded(daemon, labelled, timeout=15)
    image = record["images"].split(",")[0]
    child = docker.container(image=image)
    events_handled(docker, daemon, tmp_path)
    assert daemon.jobs("job started", child) == []
    assert daemon.jobs("job started", plain) == []
    assert daemon.jobs("job started", other) == []
    assert docker.run("run", "--rm", "--network", "none", image, "cat", "/keg/app.txt") == "app\n"
    [ignored] = [r for r in daemon.read() if other[:12] in r.get("message", "")]
    assert "'maybe'" in ignored["message"]
    assert docker.inspect(other)["Name"].lstrip("/") in ignored["message"]


def test_package_label_takes_yes_like_every_boolean_label(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """kegpack.package=yes opts in, as kegpack.pause=yes does."""
    daemon.start()
    cid = docker.container("-v", f"{tmp_path}:/keg", "-l", "kegpack.package=yes")
    succeeded(daemon, cid, timeout=30)


def test_restarted_daemon_packages_each_run_exactly_once(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A run packaged before a daemon restart is not packaged again; the next run is."""
    daemon.start()
    cid = docker.container(*LABEL, "-v", f"{tmp_path}:/keg")
    succeeded(daemon, cid)
    assert daemon.stop() == 0
    daemon.start()
    daemon.wait_for(lambda r: r.get("message", "").startswith("job skipped"), 15)
    assert len(docker.packaged(cid)) == 1
    docker.run("restart", "-t", "0", cid)
    daemon.wait_for(lambda r: len(daemon.jobs("job succeeded", cid)) >= 2, 30)
    assert len(docker.packaged(cid)) == 2


def test_stop_trigger_packages_on_exit(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """kegpack.trigger=stop: nothing at start, a job when the container exits."""
    daemon.start()
    cid = docker.container(
        *LABEL, "-l", "kegpack.trigger=stop", "-v", f"{tmp_path}:/keg", command=["sleep", "1"]
    )
    record = succeeded(daemon, cid, timeout=30)
    assert record["trigger"] == "stop"
    assert docker.inspect(cid)["State"]["Running"] is False


def test_healthy_trigger_waits_for_health(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """kegpack.trigger=healthy: packaged once the health check passes."""
    daemon.start()
    cid = docker.container(
        *LABEL,
        "-l",
        "kegpack.trigger=healthy",
        "--health-cmd",
        "test -f /tmp/ok",
        "--health-interval",
        "1s",
        "-v",
        f"{tmp_path}:/keg",
    )
    wait_until(
        lambda: docker.inspect(cid)["State"]["Health"]["FailingStreak"] > 0,
        15,
        "a failed health check",
    )
    events_handled(docker, daemon, tmp_path)
    assert daemon.jobs("job started", cid) == []
    docker.run("exec", cid, "touch", "/tmp/ok")
    assert succeeded(daemon, cid, timeout=30)["trigger"] == "healthy"


def test_manual_trigger_is_not_packaged_automatically(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """kegpack.trigger=manual: no job on start."""
    daemon.start()
    cid = docker.container(*LABEL, "-l", "kegpack.trigger=manual", "-v", f"{tmp_path}:/keg")
    events_handled(docker, daemon, tmp_path)
    assert daemon.jobs("job started", cid) == []


def test_delay_waits_and_is_cancelled_by_a_stop(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """kegpack.delay postpones the job; a container that stops during the delay is not packaged."""
    daemon.start()
    started = time.monotonic()
    waits = docker.container(*LABEL, "-l", "kegpack.delay=2s", "-v", f"{tmp_path}:/keg")
    stops = docker.container(*LABEL, "-l", "kegpack.delay=3s", "-v", f"{tmp_path}:/keg")
    docker.run("kill", stops)
    succeeded(daemon, waits, timeout=20)
    assert time.monotonic() - started >= 2.0
    cancelled = f"delayed job for {stops[:12]} cancelled: the container stopped"
    daemon.wait_for(lambda r: r.get("message") == cancelled, 5)
    assert daemon.jobs("job started", stops) == []


def test_bad_trigger_label_is_logged_once_and_daemon_keeps_running(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """An unknown trigger is one error line naming the value; other containers still work."""
    daemon.start()
    bad = docker.container(*LABEL, "-l", "kegpack.trigger=sometimes", "-v", f"{tmp_path}:/k")
    good = docker.container(*LABEL, "-v", f"{tmp_path}:/k")
    succeeded(daemon, good)
    errors = [r for r in daemon.read() if "sometimes" in r.get("message", "")]
    assert len(errors) == 1
    assert bad[:12] in errors[0]["message"]


def test_exclude_label_and_kegpackignore(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """kegpack.exclude and a .kegpackignore at the mount root keep files out of the image."""
    for name in ("keep.txt", "debug.log", "cache/x", "node_modules/m/index.js"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(name)
    (tmp_path / ".kegpackignore").write_text("cache\n")
    daemon.start()
    cid = docker.container(
        *LABEL, "-l", "kegpack.exclude=node_modules,*.log", "-v", f"{tmp_path}:/keg"
    )
    image = succeeded(daemon, cid)["images"].split(",")[0]
    names = set(docker.export(image, tmp_path.parent / "x.tar").getnames())
    assert "keg/keep.txt" in names
    assert not {"keg/debug.log", "keg/cache/x", "keg/node_modules/m/index.js"} & names


def test_pause_label_unpauses_the_source_afterwards(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """kegpack.pause=true: the source is paused for the snapshot and running again after."""
    daemon.start()
    events = subprocess.Popen(
        ["docker", "-H", docker.env.docker_host, "events", "--format", "{{.Action}} {{.ID}}"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        cid = docker.container(*LABEL, "-l", "kegpack.pause=true", "-v", f"{tmp_path}:/keg")
        succeeded(daemon, cid)
    finally:
        events.terminate()
        seen = events.communicate(timeout=10)[0]
    actions = [line.split()[0] for line in seen.splitlines() if cid in line]
    assert "pause" in actions
    assert actions.index("unpause") > actions.index("pause")
    state = docker.inspect(cid)["State"]
    assert state["Running"]
    assert not state["Paused"]


def test_concurrency_limit_is_respected_and_each_is_packaged_once(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """8 labelled containers, concurrency 2: never more than 2 jobs at once; 8 images."""
    write_config(daemon.config, concurrency=2)
    data = big_volume(tmp_path, 48)
    daemon.start()
    cids = [docker.container(*LABEL, "-v", f"{data}:/keg") for _ in range(8)]
    for cid in cids:
        succeeded(daemon, cid, timeout=120)
    spans = []
    for cid in cids:
        (start,) = daemon.jobs("job started", cid)
        (end,) = daemon.jobs("job succeeded", cid)
        spans.append((datetime.fromisoformat(start["time"]), datetime.fromisoformat(end["time"])))
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    running = peak = 0
    for _, step in points:
        running += step
        peak = max(peak, running)
    assert peak == 2
    assert all(len(docker.packaged(cid)) == 1 for cid in cids)


def test_sigterm_mid_job_exits_zero_and_leaves_nothing(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """SIGTERM during a job: the job ends within the grace period or is cancelled; exit 0."""
    write_config(daemon.config, grace="1s")
    data = big_volume(tmp_path, 600)
    daemon.start()
    cid = docker.container(*LABEL, "-v", f"{data}:/keg")
    daemon.wait_for(lambda r: r.get("message") == "job started", 30)
    started = time.monotonic()
    assert daemon.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 30
    outcome = daemon.wait_for(finished(cid), 1)
    assert outcome["outcome"] in ("succeeded", "cancelled")
    assert docker.leftovers() == ([], [])


def test_sigkill_mid_job_then_restart_cleans_up_and_packages(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """SIGKILL mid-job leaves leftovers; the next start removes them and packages that run."""
    data = big_volume(tmp_path, 600)
    daemon.start()
    cid = docker.container(*LABEL, "-v", f"{data}:/keg")
    daemon.wait_for(lambda r: r.get("message") == "job started", 30)
    wait_until(lambda: any(docker.leftovers()), 30, "the job's temporary image or helper")
    daemon.stop(signal.SIGKILL)
    daemon.start()
    daemon.wait_for(lambda r: "leftover" in r.get("message", ""), 30)
    succeeded(daemon, cid, timeout=120)
    assert len(docker.packaged(cid)) == 1
    assert docker.leftovers() == ([], [])


def test_engine_restart_reconnects_and_packages_new_containers(
    docker: Docker, daemon: DaemonProcess, testenv: TestEnv, tmp_path: Path
) -> None:
    """After the engine restarts, the daemon is ready again and packages what starts next."""
    daemon.start()
    subprocess.run(
        [str(TESTENV_SCRIPT), "restart-engine"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    daemon.wait_for(lambda r: r.get("message", "").startswith("engine connection lost"), 30)
    cid = docker.container(*LABEL, "-v", f"{tmp_path}:/keg")
    succeeded(daemon, cid, timeout=60)
    ready = [r for r in daemon.read() if r.get("message", "").startswith("ready")]
    assert len(ready) >= 2


def test_sighup_reloads_the_config_and_keeps_the_old_one_when_bad(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """SIGHUP with a bad file keeps the old config; with a good one, new jobs use it."""
    daemon.start()
    assert daemon.process is not None
    good = daemon.config.read_text()
    daemon.config.write_text(good + "\n[packaging.oops]\n")
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda r: "config not reloaded" in r.get("message", ""), 15)
    daemon.config.write_text(good.replace("kegpack-test/{name}", "kegpack-test/reloaded-{name}"))
    daemon.process.send_signal(signal.SIGHUP)
    daemon.wait_for(lambda r: "config reloaded" in r.get("message", ""), 15)
    cid = docker.container(*LABEL, "-v", f"{tmp_path}:/keg")
    assert succeeded(daemon, cid)["images"].startswith("kegpack-test/reloaded-")
