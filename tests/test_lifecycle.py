"""Running for months, on the real engine: retention, skip-unchanged, notifications, history."""

from __future__ import annotations

import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from kegpackd.config import Config, parse_config
from kegpackd.engine.client import Engine
from kegpackd.packaging.jobs import JobRequest, JobResult
from kegpackd.packaging.options import Overrides
from kegpackd.packaging.pipeline import package
from tests.daemontools import DaemonProcess, succeeded, wait_until, write_config
from tests.dockertools import Docker, TestEnv

pytestmark = pytest.mark.engine

LABEL = ("-l", "kegpack.package=true")
SECRET = "webhook-secret-not-for-logs"


def config(**tables: Any) -> Config:
    packaging = {"repository": "kegpack-test/{name}", **tables.pop("packaging", {})}
    return parse_config({"packaging": packaging, **tables})


async def run(engine: Engine, docker: Docker, cid: str, conf: Config, tag: str) -> JobResult:
    with anyio.fail_after(300):
        result = await package(
            engine, conf, JobRequest(container=cid, overrides=Overrides(tags=(tag,)))
        )
    for reference in result.references:
        docker.track_image(reference)
    return result


def tags_of(docker: Docker, cid: str) -> set[str]:
    out = docker.run("images", "--format", "{{.Tag}}", "--filter", f"label=kegpack.source.id={cid}")
    return set(out.split())


async def test_keep_2_over_four_changed_runs_leaves_the_newest_two(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """Four runs with a changed mount and keep = 2: two images stay, the newest ones, and
    the pruned one's own layer is freed (the classic layout: with incremental packaging the
    newer images share the older ones' mount layers, see test_incremental_engine)."""
    (tmp_path / "f.txt").write_text("0")
    cid = docker.container("-v", f"{tmp_path}:/keg")
    conf = config(retention={"keep": 2}, packaging={"incremental": False})
    results = []
    for run_number in range(1, 5):
        (tmp_path / "f.txt").write_text("x" * 100_000 * run_number)
        results.append(await run(engine, docker, cid, conf, f"r{run_number}"))
    assert len(docker.packaged(cid)) == 2
    assert tags_of(docker, cid) == {"r3", "r4"}
    assert [len(r.pruned) for r in results] == [0, 0, 1, 1]
    assert results[2].pruned == [results[0].image_id]
    assert results[2].pruned_bytes >= 100_000


async def test_an_image_a_container_uses_survives_pruning(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """keep = 1, but the old image runs a (stopped) container: it keeps its tag and stays."""
    (tmp_path / "f.txt").write_text("one")
    cid = docker.container("-v", f"{tmp_path}:/keg")
    conf = config(retention={"keep": 1})
    first = await run(engine, docker, cid, conf, "one")
    docker.container(image=first.references[0], start=False, command=["true"])
    (tmp_path / "f.txt").write_text("two")
    second = await run(engine, docker, cid, conf, "two")
    assert second.pruned == []
    assert tags_of(docker, cid) == {"one", "two"}


async def test_skip_unchanged_over_two_identical_runs_leaves_one_image(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """The second run finds the same layers and config: no new image, its tag on the old one."""
    (tmp_path / "f.txt").write_text("same")
    cid = docker.container("-v", f"{tmp_path}:/keg", "-e", "A=1")
    conf = config(packaging={"skip_unchanged": True})
    first = await run(engine, docker, cid, conf, "a")
    second = await run(engine, docker, cid, conf, "b")
    assert not first.unchanged
    assert second.unchanged
    assert second.image_id == first.image_id
    assert set(docker.packaged(cid)) == {first.image_id}
    assert tags_of(docker, cid) == {"a", "b"}


async def test_skip_unchanged_makes_a_new_image_when_a_file_changed(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """One changed byte in the mount: a new image, not "unchanged"."""
    (tmp_path / "f.txt").write_text("same")
    cid = docker.container("-v", f"{tmp_path}:/keg")
    conf = config(packaging={"skip_unchanged": True})
    first = await run(engine, docker, cid, conf, "a")
    (tmp_path / "f.txt").write_text("samf")
    second = await run(engine, docker, cid, conf, "b")
    assert not second.unchanged
    assert second.image_id != first.image_id


def test_the_cli_says_unchanged_on_stdout(docker: Docker, tmp_path: Path) -> None:
    """`kegpackd package` ends its reference line with "unchanged" the second time."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.txt").write_text("same")
    cid = docker.container("-v", f"{tmp_path / 'data'}:/keg")
    conf = tmp_path / "k.toml"
    conf.write_text('[packaging]\nrepository = "kegpack-test/{name}"\nskip_unchanged = true\n')
    outputs = []
    for tag in ("a", "b"):
        done = docker.kegpackd("package", cid, "-c", str(conf), "--tag", tag)
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout.split())
    for reference in (o[0] for o in outputs):
        docker.track_image(reference)
    assert outputs[0][-1] != "unchanged"
    assert outputs[1][-1] == "unchanged"
    assert "unchanged" in done.stderr


@dataclass
class Hook:
    """A webhook receiver on loopback: the first ``failures`` POSTs get a 500."""

    failures: int = 0
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def hook() -> Iterator[Hook]:
    found = Hook()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            found.posts.append((dict(self.headers), body))
            failing = len(found.posts) <= found.failures
            self.send_response(500 if failing else 204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    found.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/kegpack"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_a_webhook_gets_one_signed_post_per_job(docker: Docker, hook: Hook, tmp_path: Path) -> None:
    """Two packaged containers, the first POST answered 500: one verified POST per job, and
    the secret in no log line."""
    hook.failures = 1
    (tmp_path / "secret").write_text(SECRET + "\n")
    conf = write_config(
        tmp_path / "k.toml",
        extra=f'[notify]\nwebhook_url = "{hook.url}"\nsecret_file = "{tmp_path / "secret"}"\n',
    )
    daemon = DaemonProcess(conf, tmp_path / "kegpackd.log")
    try:
        daemon.start()
        (tmp_path / "keg").mkdir()
        first = docker.container(*LABEL, "-v", f"{tmp_path / 'keg'}:/keg")
        succeeded(daemon, first, 60)
        second = docker.container(*LABEL, "-v", f"{tmp_path / 'keg'}:/keg")
        succeeded(daemon, second, 60)
        wait_until(lambda: len(hook.posts) == 3, 30, "three POSTs (one retried)")
        assert daemon.metric("kegpack_notifications_total", {"result": "sent"}) == 2
        assert daemon.stop() == 0
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
    bodies = [body for _headers, body in hook.posts]
    assert bodies[0] == bodies[1]
    for headers, body in hook.posts:
        signed = headers["X-Kegpack-Timestamp"].encode() + b"." + body
        expected = "sha256=" + hmac.new(SECRET.encode(), signed, "sha256").hexdigest()
        assert hmac.compare_digest(headers["X-Kegpack-Signature"], expected)
    jobs = [json.loads(body) for body in bodies[1:]]
    assert [job["container"] for job in jobs] == [first, second]
    assert {job["state"] for job in jobs} == {"succeeded"}
    assert SECRET not in (tmp_path / "kegpackd.log").read_text()
    assert SECRET not in (tmp_path / "state" / "jobs.jsonl").read_text()


def test_a_daemon_restart_keeps_the_job_history(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A job from before a restart is in /v1/jobs and `kegpackd jobs`, marked as such."""
    daemon.start()
    (tmp_path / "keg").mkdir()
    cid = docker.container(*LABEL, "-v", f"{tmp_path / 'keg'}:/keg")
    job_id = succeeded(daemon, cid, 60)["job"]
    assert daemon.stop() == 0
    daemon.records.clear()  # wait for this start's "ready", not the last one's
    daemon.start()
    status, body = daemon.http("GET", "/v1/jobs")
    assert status == 200
    restored = [job for job in body["jobs"] if job["id"] == job_id]
    assert len(restored) == 1
    assert restored[0]["restored"] is True
    assert restored[0]["state"] == "succeeded"
    assert daemon.http("GET", f"/v1/jobs/{job_id}")[1]["restored"] is True
    table = docker.kegpackd("jobs", "-c", str(daemon.config), timeout=60)
    assert table.returncode == 0, table.stderr
    line = next(line for line in table.stdout.splitlines() if line.startswith(job_id))
    assert "succeeded*" in line
    assert "before the daemon's last restart" in table.stdout
    assert daemon.stop() == 0
    mode = (tmp_path / "state" / "jobs.jsonl").stat().st_mode & 0o777
    assert mode == 0o600


class Stages:
    """A Progress that keeps every stage line (name and detail)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def stage(self, name: str, detail: str = "") -> None:
        self.lines.append((name, detail))

    def streamed(self, count: int) -> None:
        pass


async def test_an_unchanged_image_is_not_pushed_again_under_a_tag_the_registry_has(
    engine: Engine, docker: Docker, testenv: TestEnv, tmp_path: Path
) -> None:
    """Pushed as "latest", then unchanged: the same digest, and no second push of that tag."""
    (tmp_path / "f.txt").write_text("pushed once")
    cid = docker.container("-v", f"{tmp_path}:/keg")
    repository = f"{testenv.registry}/{docker.prefix}/unchanged"
    conf = parse_config(
        {
            "packaging": {"repository": repository, "push": True, "skip_unchanged": True},
            "registries": {"allowed": [testenv.registry]},
        }
    )
    results, stages = [], []
    for _run in range(2):
        progress = Stages()
        with anyio.fail_after(300):
            results.append(
                await package(
                    engine,
                    conf,
                    JobRequest(container=cid, overrides=Overrides(tags=("latest",))),
                    progress,
                )
            )
        docker.track_image(results[-1].references[0])
        stages.append(progress.lines)
    first, second = results
    assert second.unchanged
    assert second.digests == first.digests
    assert ("push", f"{repository}:latest: the registry has it") in stages[1]
    assert ("push", f"{repository}:latest") not in stages[1]


def test_prune_dry_run_lists_and_prune_removes(docker: Docker, tmp_path: Path) -> None:
    """`kegpackd prune --dry-run` names the old image and keeps it; `prune` removes it."""
    (tmp_path / "data").mkdir()
    cid = docker.container("-v", f"{tmp_path / 'data'}:/keg")
    plain = tmp_path / "plain.toml"
    plain.write_text('[packaging]\nrepository = "kegpack-test/{name}"\n')
    for tag in ("old", "new"):
        (tmp_path / "data" / "f.txt").write_text(tag)
        done = docker.kegpackd("package", cid, "-c", str(plain), "--tag", tag)
        assert done.returncode == 0, done.stderr
        docker.track_image(done.stdout.split()[0])
    kept = tmp_path / "keep1.toml"
    kept.write_text(plain.read_text() + "[retention]\nkeep = 1\n")
    name = docker.inspect(cid)["Name"].lstrip("/")
    # Only this test's container: other images on the engine are not this test's to prune.
    command = ["prune", "-c", str(kept), "--container", name]
    dry = docker.kegpackd(*command, "--dry-run", timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would remove sha256:")
    assert ":old)" in dry.stdout
    assert tags_of(docker, cid) == {"old", "new"}
    real = docker.kegpackd(*command, timeout=120)
    assert real.returncode == 0, real.stderr
    assert real.stdout.startswith("removed sha256:")
    assert tags_of(docker, cid) == {"new"}
