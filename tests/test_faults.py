"""Faults on the real engine: registry down, engine killed, source gone, disk full, kegpackd killed.

Each test asserts the outcome, the metrics where the daemon is involved, and that no
helper container or temporary image is left behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from kegpackd.config import parse_config
from kegpackd.daemon.watcher import sweep
from kegpackd.engine.client import Engine
from kegpackd.errors import KegpackError
from kegpackd.packaging.jobs import JobRequest
from kegpackd.packaging.pipeline import package
from tests.daemontools import (
    DaemonProcess,
    Record,
    big_volume,
    finished,
    free_port,
    succeeded,
    wait_until,
    write_config,
)
from tests.dockertools import (
    TESTENV_SCRIPT,
    Docker,
    PrivateRegistry,
    RunWhenStreaming,
    TestEnv,
    kill_engine,
    parse_testenv,
    registry_tags,
)
from tests.owners import comment_of, dead_token, pending_tag

pytestmark = pytest.mark.engine

LABEL = ("-l", "kegpack.package=true")


def push_labels(registry: str) -> tuple[str, ...]:
    return (
        *LABEL,
        "-l", "kegpack.push=true",
        "-l", f"kegpack.repository={registry}/kegpack-test/{{name}}",
        "-l", "kegpack.tags=v1",
    )  # fmt: skip


def start_push_job(
    docker: Docker, daemon: DaemonProcess, registry: PrivateRegistry, data: Path, retries: int
) -> str:
    """A daemon allowed to push to ``registry``, and a labelled container that pushes there."""
    write_config(
        daemon.config,
        packaging=f"push_retries = {retries}",
        extra=f'[registries]\nallowed = ["{registry.address}"]\n',
    )
    (data / "f").write_text("x")
    daemon.start()
    return docker.container(*push_labels(registry.address), "-v", f"{data}:/keg")


def test_push_retries_while_the_registry_is_down_then_fails_keeping_the_tagged_image(
    docker: Docker, daemon: DaemonProcess, private_registry: PrivateRegistry, tmp_path: Path
) -> None:
    """Registry down: the push is retried push_retries times, the job fails, the image stays."""
    cid = start_push_job(docker, daemon, private_registry, tmp_path, retries=2)
    record = daemon.wait_for(finished(cid), 60)
    assert record["outcome"] == "failed", record
    assert private_registry.address in record["error"]
    assert daemon.metric("kegpack_push_retries_total") == 2
    assert daemon.metric("kegpack_jobs_total", {"outcome": "failed"}) == 1
    [image] = docker.packaged(cid)
    name = docker.inspect(cid)["Name"].lstrip("/")
    assert docker.inspect(image)["RepoTags"] == [
        f"{private_registry.address}/kegpack-test/{name}:v1"
    ]
    assert docker.leftovers() == ([], [])


def test_push_succeeds_once_the_registry_comes_back(
    docker: Docker, daemon: DaemonProcess, private_registry: PrivateRegistry, tmp_path: Path
) -> None:
    """A registry that comes back during the backoff gets the push; the retries are counted."""
    cid = start_push_job(docker, daemon, private_registry, tmp_path, retries=6)
    daemon.wait_for(lambda r: "retry 1 in" in r.get("message", ""), 60)
    private_registry.start()
    succeeded(daemon, cid, timeout=120)
    _, jobs = daemon.http("GET", "/v1/jobs")
    [job] = [j for j in jobs["jobs"] if j["container"] == cid]
    retries_logged = [r for r in daemon.read() if "; retry " in r.get("message", "")]
    assert job["push_retries"] == len(retries_logged) > 0
    assert daemon.metric("kegpack_push_retries_total") == job["push_retries"]
    name = docker.inspect(cid)["Name"].lstrip("/")
    assert registry_tags(private_registry.address, f"kegpack-test/{name}") == ["v1"]
    assert docker.leftovers() == ([], [])


def test_engine_killed_mid_stream_fails_the_job_and_leftovers_go_once_it_is_back(
    docker: Docker, daemon: DaemonProcess, testenv: TestEnv, tmp_path: Path
) -> None:
    """dockerd SIGKILLed mid-stream: the job fails; the restarted engine is swept."""
    data = big_volume(tmp_path, 600)
    daemon.start()
    cid = docker.container(*LABEL, "-v", f"{data}:/keg")

    def streaming() -> bool:
        jobs = daemon.http("GET", "/v1/jobs")[1]["jobs"]
        return any(j["container"] == cid and j["bytes"] > 0 for j in jobs)

    wait_until(streaming, 60, "the job streams")
    kill_engine(testenv)
    record = daemon.wait_for(finished(cid), 60)
    assert record["outcome"] == "failed", record
    subprocess.run([str(TESTENV_SCRIPT), "up"], check=True, capture_output=True, timeout=300)
    wait_until(lambda: daemon.http("GET", "/readyz")[0] == 200, 60, "the daemon is ready again")
    daemon.wait_for(lambda r: "leftover" in r.get("message", ""), 60)
    assert docker.leftovers() == ([], [])
    assert daemon.metric("kegpack_jobs_total", {"outcome": "failed"}) == 1
    assert docker.packaged(cid) == []


async def test_mount_source_deleted_mid_stream_fails_cleanly_or_packages_what_was_read(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """The bind mount's directory vanishing mid-stream never leaves a helper or temporary image."""
    data = tmp_path / "vanishing"
    data.mkdir()
    chunk = os.urandom(1024 * 1024)
    for index in range(200):
        (data / f"file{index:03}").write_bytes(chunk)
    cid = docker.container("-v", f"{data}:/keg")
    images, containers = docker.image_ids(), docker.container_ids()
    config = parse_config({"packaging": {"repository": "kegpack-test/vanishing"}})
    deleter = RunWhenStreaming(["rm", "-rf", str(data)], 16 * 1024 * 1024)
    try:
        with anyio.fail_after(300):
            result = await package(engine, config, JobRequest(container=cid), deleter)
    except KegpackError:
        assert docker.image_ids() == images
    else:
        docker.track_image(result.image_id)
        assert docker.image_ids() - images <= {
            result.image_id,
            docker.inspect(result.image_id)["Parent"],
        }
    finally:
        deleted = deleter.wait()
    assert deleted == 0, "rm ran, and succeeded, while the job streamed"
    # The directory itself may stay where the engine holds it as a mount point in a mount
    # namespace of its own (the namespaced flavours): what was in it is gone.
    assert not data.exists() or not any(data.iterdir())
    assert docker.container_ids() == containers
    assert docker.leftovers() == ([], [])


@pytest.fixture
def small_engine() -> Iterator[TestEnv]:
    """A second private engine whose data root is a 512 MiB loop-mounted ext4 filesystem."""
    root = Path(subprocess.run(["mktemp", "-d", "/tmp/kp-small.XXXX"], capture_output=True,
                               text=True, check=True).stdout.strip())  # fmt: skip
    image, mount = root / "fs.img", root / "m"
    mount.mkdir()
    env = {
        **os.environ,
        "KEGPACK_TESTENV_DIR": str(mount / "s"),
        "KEGPACK_TLS_PORT": str(free_port()),
        "KEGPACK_REGISTRY_PORT": str(free_port()),
        "KEGPACK_AUTH_REGISTRY_PORT": str(free_port()),
    }
    subprocess.run(["truncate", "-s", "512M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mount)], check=True)
    try:
        done = subprocess.run(
            [str(TESTENV_SCRIPT), "up"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        yield parse_testenv(done.stdout)
    finally:
        subprocess.run(
            [str(TESTENV_SCRIPT), "down"], env=env, capture_output=True, timeout=300, check=False
        )
        subprocess.run(["umount", str(mount)], check=False)
        subprocess.run(["rm", "-rf", str(root)], check=False)


@pytest.mark.parametrize("mib", [700, 300])
def test_engine_disk_full_fails_clearly_tags_nothing_and_the_daemon_goes_on(
    small_engine: TestEnv, daemon: DaemonProcess, tmp_path: Path, mib: int
) -> None:
    """The engine's disk fills receiving the load (700 MiB) or applying its layer (300, twice over).

    The job fails with ENOSPC in the stream stage, nothing is tagged, and the next job succeeds.
    """
    docker = Docker(small_engine, tmp_path)
    try:
        big = big_volume(tmp_path, mib)
        daemon.start({"DOCKER_HOST": small_engine.docker_host})
        too_big = docker.container(*LABEL, "-v", f"{big}:/keg")
        record = daemon.wait_for(finished(too_big), 120)
        assert record["outcome"] == "failed", record
        assert "no space left on device" in record["error"]
        [job] = [j for j in daemon.http("GET", "/v1/jobs")[1]["jobs"] if j["container"] == too_big]
        assert [s for s in job["stages"] if s != "cleanup"][-1] == "stream", job
        assert docker.packaged(too_big) == []
        assert docker.leftovers() == ([], [])
        small = tmp_path / "small"
        small.mkdir()
        (small / "f").write_text("fits")
        fits = docker.container(*LABEL, "-v", f"{small}:/keg")
        succeeded(daemon, fits, timeout=60)
        assert daemon.metric("kegpack_jobs_total", {"outcome": "failed"}) == 1
        assert daemon.metric("kegpack_jobs_total", {"outcome": "succeeded"}) == 1
    finally:
        daemon.stop()
        docker.cleanup()


def outcome_of(container: str) -> Callable[[Record], bool]:
    """Matches the line that settles ``container``'s run: its job ended or was skipped."""

    def match(record: Record) -> bool:
        return finished(container)(record) or (
            record.get("container") == container[:12]
            and record.get("message", "").startswith("job skipped")
        )

    return match


@pytest.mark.slow
def test_sigkill_at_random_points_in_20_jobs_leaves_nothing_and_packages_each_run_once(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """kegpackd SIGKILLed at a random moment of each of 20 jobs; every run ends packaged once."""
    rng = random.Random(20261127)
    data = big_volume(tmp_path, 64)
    daemon.start()
    for round_ in range(20):
        cid = docker.container(*LABEL, "-v", f"{data}:/keg:ro")
        time.sleep(rng.uniform(0.0, 1.5))
        daemon.stop(signal.SIGKILL)
        daemon.start()
        record = daemon.wait_for(outcome_of(cid), 120)
        assert record.get("outcome", "skipped") in ("succeeded", "skipped"), (round_, record)
        # A load the engine finishes after the new start's sweep is swept at its event.
        wait_until(lambda: docker.leftovers() == ([], []), 60, f"round {round_} swept")
        assert len(docker.packaged(cid)) == 1, round_
    daemon.stop()
    sweeps = [r for r in daemon.records if "leftover" in r.get("message", "")]
    assert sweeps, "some kill landed mid-job and left something for the next start to sweep"


def test_a_dead_jobs_image_loaded_after_the_start_sweep_loses_its_pending_tag(
    docker: Docker, daemon: DaemonProcess, tmp_path: Path
) -> None:
    """A killed job's load that the engine ends after the daemon started: the daemon untags it."""
    pending = pending_tag(docker.name("late"), dead_token())
    archive = tmp_path / "pending.tar"
    docker.run("tag", docker.env.base_image, pending)
    docker.track_image(pending)
    docker.run("save", "-o", str(archive), pending)
    docker.run("rmi", pending)
    daemon.start()
    try:
        docker.run("load", "-i", str(archive))
        daemon.wait_for(lambda r: "its load ended late" in r.get("message", ""), 30)
        assert docker.leftovers() == ([], [])
        assert docker.run("image", "inspect", docker.env.base_image, check=False).strip()
    finally:
        daemon.stop()


def test_a_dead_jobs_commit_finished_after_the_start_sweep_is_removed(
    docker: Docker, daemon: DaemonProcess
) -> None:
    """A killed job's temporary commit that the engine ends after the daemon started: removed."""
    cid = docker.container(*LABEL, "--label", "kegpack.trigger=stop")
    daemon.start()
    try:
        image = docker.run("commit", "-m", comment_of(docker.name("late"), dead_token()), cid)
        daemon.wait_for(lambda r: "its commit ended late" in r.get("message", ""), 30)
        assert image.strip() not in docker.image_ids()
    finally:
        daemon.stop()


async def test_sweep_spares_a_live_package_run_and_takes_a_killed_ones(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """Another process's live job keeps its temporary image through a sweep; a killed one's goes."""
    data = big_volume(tmp_path, 600)
    cid = docker.container("-v", f"{data}:/keg")

    live = docker.package_mid_job(cid, "kegpack-test/sweep", "live")
    assert await sweep(engine, set()) == []
    assert docker.leftovers()[1], "the live run's temporary image is still there"
    assert live.wait(timeout=120) == 0
    killed = docker.package_mid_job(cid, "kegpack-test/sweep", "killed")
    killed.kill()
    killed.wait()
    removed = await sweep(engine, set())
    assert any(what.startswith("temporary image") for what in removed), removed
    assert docker.leftovers() == ([], [])


async def test_sweep_removes_a_dead_jobs_pending_image_and_only_untags_a_finished_one(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """A final image its dead maker never tagged goes; one it tagged loses just the pending tag."""
    dead = dead_token()
    cid = docker.container("-v", f"{tmp_path}:/keg")
    untagged = docker.run("commit", cid).strip()
    finished = docker.run("commit", cid).strip()
    final = f"kegpack-test/{docker.name('-final')}:v1"
    docker.track_image(final)
    docker.run("tag", finished, final)
    for job, image in (("jobuntagged", untagged), ("jobfinished", finished)):
        docker.run("tag", image, pending_tag(job, dead))
    assert len(await sweep(engine, set())) == 2
    assert untagged not in docker.image_ids()
    assert docker.inspect(final)["RepoTags"] == [final]
    assert docker.leftovers() == ([], [])
