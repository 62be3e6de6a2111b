"""Metrics, the HTTP API and sd_notify, on a running daemon and with the real tools."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from kegpackd.daemon.metrics import Metrics
from tests.daemontools import DaemonProcess, free_port, wait_until, write_config
from tests.dockertools import Docker, TestEnv

LABEL = ("-l", "kegpack.package=true")
TOKEN = "api-token-that-must-never-leak"


def test_metrics_count_outcomes_on_a_fresh_registry() -> None:
    """job_finished moves the counters, histograms and gauges it should."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, process=False)
    metrics.job_started("a")
    assert registry.get_sample_value("kegpack_jobs_in_progress") == 1
    assert (registry.get_sample_value("kegpack_job_oldest_running_seconds") or 0) > 0
    metrics.job_finished("a", "succeeded", 2.0, {"commit": 0.5, "stream": 1.0})
    assert registry.get_sample_value("kegpack_jobs_total", {"outcome": "succeeded"}) == 1
    assert registry.get_sample_value("kegpack_jobs_total", {"outcome": "failed"}) == 0
    assert registry.get_sample_value("kegpack_jobs_in_progress") == 0
    assert registry.get_sample_value("kegpack_job_oldest_running_seconds") == 0
    assert registry.get_sample_value("kegpack_job_duration_seconds_count") == 1
    assert (
        registry.get_sample_value("kegpack_stage_duration_seconds_count", {"stage": "stream"}) == 1
    )
    assert (registry.get_sample_value("kegpack_last_success_timestamp_seconds") or 0) > 0


@pytest.mark.engine
def test_manual_trigger_through_the_api_and_job_listing(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """POST /v1/jobs → 202 and an id; the job appears in GET /v1/jobs and succeeds."""
    daemon.start()
    cid = docker.container(*LABEL, "-l", "kegpack.trigger=manual", "-v", f"{tmp_path}:/keg")
    status, body = daemon.http("POST", "/v1/jobs", {"container": cid, "tags": ["manual"]})
    assert status == 202, body
    job_id = body["id"]
    job = daemon.job_in(job_id, timeout=60)
    assert job["state"] == "succeeded", job
    assert job["images"] == [f"kegpack-test/{docker.inspect(cid)['Name'].lstrip('/')}:manual"]
    assert set(job["stages"]) >= {"commit", "stream", "finalize", "cleanup"}
    status, listing = daemon.http("GET", "/v1/jobs")
    assert job_id in [j["id"] for j in listing["jobs"]]
    assert daemon.http("POST", "/v1/jobs", {"container": "no-such-thing"})[0] == 404
    assert daemon.http("GET", "/readyz")[0] == 200
    assert daemon.http("GET", "/healthz")[0] == 200


@pytest.mark.engine
def test_off_loopback_posts_need_the_token_and_no_secret_leaks(
    docker: Docker, daemon: DaemonProcess, testenv: TestEnv, tmp_path: Path
) -> None:
    """Listening on 0.0.0.0: 401 without token, 403 wrong, 202 right; no secret ever shows."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    port = free_port()
    registry = testenv.auth_registry
    write_config(
        daemon.config,
        port=port,
        extra=f'token_file = "{token_file}"\n'
        f'[registries]\nallowed = ["{registry}"]\n'
        f'[registries.auth."{registry}"]\nusername = "{testenv.auth_user}"\n'
        f'password_file = "{testenv.auth_password_file}"\n',
    )
    text = daemon.config.read_text().replace(f'127.0.0.1:{port}"', f'0.0.0.0:{port}"')
    daemon.config.write_text(text)
    daemon.start()
    cid = docker.container(*LABEL, "-l", "kegpack.trigger=manual", "-v", f"{tmp_path}:/keg")
    responses = [
        daemon.http("POST", "/v1/jobs", {"container": cid}, auth=False),
        daemon.http("POST", "/v1/jobs", {"container": cid}, token="wrong"),
    ]
    assert [r[0] for r in responses] == [401, 403]
    request = {"container": cid, "push": True, "repository": f"{registry}/kegpack-test/secret"}
    ok = daemon.http("POST", "/v1/jobs", request, token=TOKEN)
    assert ok[0] == 202
    daemon.wait_for(lambda r: r.get("message") == "job succeeded", 60)
    responses += [ok, daemon.http("GET", "/v1/jobs"), daemon.http("GET", "/metrics")]
    daemon.stop()
    for secret in (TOKEN, testenv.auth_password):
        assert secret not in repr(responses)
        assert secret not in daemon.log_path.read_text()
    assert any("refused" in r.get("message", "") for r in daemon.records)


@pytest.mark.engine
def test_promtool_accepts_the_metrics_after_a_packaging(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """`promtool check metrics` is clean on /metrics once a job has run."""
    daemon.start()
    cid = docker.container(*LABEL, "-v", f"{tmp_path}:/keg")
    daemon.wait_for(lambda r: r.get("message") == "job succeeded", 30)
    status, text = daemon.http("GET", "/metrics")
    assert status == 200
    assert 'kegpack_jobs_total{outcome="succeeded"} 1.0' in text
    assert "process_resident_memory_bytes" in text
    assert cid not in text
    checked = subprocess.run(
        ["promtool", "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.engine
def test_sd_notify_messages_arrive_in_order(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """READY, STATUS, WATCHDOG and STOPPING reach a real NOTIFY_SOCKET, in that order."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.2)
        daemon.start(env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"})
        messages: list[str] = []

        def pinged_since_ready() -> bool:
            with contextlib.suppress(TimeoutError):
                messages.append(sock.recv(4096).decode())
            ready = [i for i, m in enumerate(messages) if "READY=1" in m]
            return bool(ready) and any("WATCHDOG=1" in m for m in messages[ready[0] :])

        wait_until(pinged_since_ready, 10, "a watchdog ping after READY")
        daemon.stop()
        while True:
            try:
                messages.append(sock.recv(4096).decode())
            except TimeoutError:
                break
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m)
    stopping = next(i for i, m in enumerate(messages) if "STOPPING=1" in m)
    assert ready < stopping
    assert any("WATCHDOG=1" in m for m in messages[ready:stopping])
    assert any(m.startswith("STATUS=") for m in messages[ready:stopping])
    assert all("READY=1" not in m for m in messages[stopping:])


@pytest.mark.engine
def test_prometheus_scrapes_the_daemon_with_the_shipped_config(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A real Prometheus with deploy/prometheus.yml sees kegpack_jobs_total{succeeded} 1."""
    daemon.start()
    port = daemon.url.rsplit(":", 1)[1]
    deploy = Path(__file__).resolve().parent.parent / "deploy"
    config = (deploy / "prometheus.yml").read_text().replace("127.0.0.1:9477", f"127.0.0.1:{port}")
    config = re.sub(r"(scrape_interval|evaluation_interval): \S+", r"\1: 1s", config)
    config = re.sub(r"scrape_timeout: \S+", "scrape_timeout: 1s", config)
    (tmp_path / "prometheus.yml").write_text(config)
    (tmp_path / "alerts.yml").write_text((deploy / "alerts.yml").read_text())
    cid = docker.container(*LABEL, "-v", f"{tmp_path}:/keg")
    daemon.wait_for(
        lambda r: r.get("message") == "job succeeded" and r["container"] == cid[:12], 30
    )
    web = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={web}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    query = urllib.parse.urlencode({"query": 'kegpack_jobs_total{outcome="succeeded"}'})
    value = 0.0
    try:
        deadline = time.monotonic() + 60
        while value < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
            try:
                with urllib.request.urlopen(f"http://{web}/api/v1/query?{query}", timeout=5) as r:
                    result = json.load(r)["data"]["result"]
            except OSError:
                continue
            value = float(result[0]["value"][1]) if result else 0.0
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert value == 1


def test_unreachable_engine_is_not_fatal_and_not_ready(tmp_path: Path) -> None:
    """With no engine, the daemon keeps retrying: alive, /readyz 503 with the reason."""
    # Its own daemon, not the ``daemon`` fixture: that one needs ``testenv``, which boots the
    # private engine, and this test of the fast tier needs no engine.
    config = write_config(tmp_path / "kegpackd.toml")
    text = config.read_text()
    config.write_text(f'[docker]\nhost = "unix://{tmp_path}/no-engine.sock"\n' + text)
    daemon = DaemonProcess(config, tmp_path / "kegpackd.log")
    try:
        daemon.start(wait_ready=False)
        daemon.wait_for(lambda r: r.get("message", "").startswith("cannot watch the engine"), 30)
        status, body = daemon.http("GET", "/readyz")
        assert status == 503
        assert "cannot reach the Docker engine" in body["reason"]
        assert daemon.http("GET", "/healthz")[0] == 200
        assert "kegpack_docker_connected 0.0" in daemon.http("GET", "/metrics")[1]
        assert daemon.stop() == 0
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait(timeout=30)


@pytest.mark.engine
def test_cli_trigger_and_jobs_talk_to_the_daemon(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """`kegpackd trigger` prints a job id; `kegpackd jobs` then lists it."""
    daemon.start()
    cid = docker.container(*LABEL, "-l", "kegpack.trigger=manual", "-v", f"{tmp_path}:/keg")
    command = [sys.executable, "-m", "kegpackd"]
    trigger = subprocess.run(
        [*command, "trigger", cid, "-c", str(daemon.config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert trigger.returncode == 0, trigger.stderr
    job_id = trigger.stdout.strip()
    daemon.wait_for(lambda r: r.get("message") == "job succeeded" and r["job"] == job_id, 60)
    jobs = subprocess.run(
        [*command, "jobs", "-c", str(daemon.config)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert jobs.returncode == 0, jobs.stderr
    assert any(line.startswith(job_id) and "succeeded" in line for line in jobs.stdout.splitlines())
