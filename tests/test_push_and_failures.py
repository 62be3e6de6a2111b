"""Pushing to real registries, and failures that must leave nothing behind."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from kegpackd.config import Config, parse_config
from kegpackd.engine.client import Engine
from kegpackd.errors import EngineError, InvalidValueError, KegpackError, RegistryError
from kegpackd.packaging.jobs import JobRequest, Progress
from kegpackd.packaging.options import Overrides
from kegpackd.packaging.pipeline import package
from tests.dockertools import Docker, RunWhenStreaming, TestEnv, registry_tags

pytestmark = pytest.mark.engine


def auth_config(testenv: TestEnv, password_file: Path, repository: str) -> Config:
    return parse_config(
        {
            "packaging": {"repository": repository, "tags": ["v1"], "push": True},
            "registries": {
                "allowed": [testenv.auth_registry, testenv.registry],
                "auth": {
                    testenv.auth_registry: {
                        "username": testenv.auth_user,
                        "password_file": str(password_file),
                    }
                },
            },
        }
    )


def assert_nothing_left(docker: Docker, images: set[str], containers: set[str]) -> None:
    assert docker.container_ids() == containers
    assert docker.image_ids() == images


async def test_push_to_auth_registry_and_pull_back(
    engine: Engine, docker: Docker, testenv: TestEnv, tmp_path: Path
) -> None:
    """Pushed with configured credentials, deleted locally, pulled back: the files are there."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "file.txt").write_text("round trip\n")
    cid = docker.container("-v", f"{data}:/data")
    path = f"kegpack-test/{docker.name('-push')}"
    repository = f"{testenv.auth_registry}/{path}"
    config = auth_config(testenv, testenv.auth_password_file, repository)
    with anyio.fail_after(300):
        result = await package(engine, config, JobRequest(container=cid))
    reference = f"{repository}:v1"
    docker.track_image(reference)
    assert result.digests[reference].startswith("sha256:")
    assert registry_tags(
        testenv.auth_registry, path, (testenv.auth_user, testenv.auth_password)
    ) == ["v1"]
    docker.run("rmi", reference)
    dockercfg = tmp_path / "dockercfg"
    subprocess.run(
        ["docker", "--config", str(dockercfg), "-H", testenv.docker_host, "login",
         "-u", testenv.auth_user, "--password-stdin", testenv.auth_registry],
        input=testenv.auth_password.encode(), check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    subprocess.run(
        ["docker", "--config", str(dockercfg), "-H", testenv.docker_host, "pull", reference],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    out = docker.run("run", "--rm", "--network", "none", reference, "cat", "/data/file.txt")
    assert out == "round trip\n"


async def test_wrong_password_fails_clearly_and_pushes_nothing(
    engine: Engine, docker: Docker, testenv: TestEnv, tmp_path: Path
) -> None:
    """A wrong password fails at once, not retried; the registry has no tag; no secret leaks."""
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password")
    cid = docker.container("-v", f"{tmp_path}:/data")
    path = f"kegpack-test/{docker.name('-wrong')}"
    repository = f"{testenv.auth_registry}/{path}"
    images, containers = docker.image_ids(), docker.container_ids()
    with anyio.fail_after(300), pytest.raises(RegistryError) as caught:
        await package(engine, auth_config(testenv, wrong, repository), JobRequest(container=cid))
    docker.track_image(f"{repository}:v1")
    assert "not-the-password" not in str(caught.value)
    assert not caught.value.retryable, f"a refused password is not retried: {caught.value}"
    assert (
        registry_tags(testenv.auth_registry, path, (testenv.auth_user, testenv.auth_password)) == []
    )
    kept = docker.image_ids() - images
    assert docker.container_ids() == containers
    assert len(kept) <= 2, "only the complete, tagged image and its parent are kept"
    assert docker.inspect(f"{repository}:v1")["Id"] in kept


async def test_registry_not_allowed_is_refused_before_any_work(
    engine: Engine, docker: Docker, testenv: TestEnv, tmp_path: Path
) -> None:
    """A push to a registry outside registries.allowed fails at once and creates nothing."""
    cid = docker.container("-v", f"{tmp_path}:/data")
    config = parse_config(
        {
            "packaging": {"repository": f"{testenv.registry}/x", "push": True},
            "registries": {"allowed": [testenv.auth_registry]},
        }
    )
    images, containers = docker.image_ids(), docker.container_ids()
    with pytest.raises(InvalidValueError, match=r"not in registries\.allowed"):
        await package(engine, config, JobRequest(container=cid))
    assert_nothing_left(docker, images, containers)


async def test_source_removed_while_streaming_leaves_nothing(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """Removing the source mid-stream either fails the job cleanly or yields a complete image."""
    volume = docker.name("-big")
    cid = docker.container(
        "-v", f"{volume}:/big",
        command=["sh", "-c", "dd if=/dev/zero of=/big/blob bs=1M count=200 && sleep 3600"],
    )  # fmt: skip
    docker.run("exec", cid, "sh", "-c", "while [ ! -s /big/blob ]; do sleep 0.1; done")
    for _ in range(100):
        if "200" in docker.run("exec", cid, "sh", "-c", "du -m /big/blob"):
            break
        await anyio.sleep(0.1)
    else:
        raise AssertionError("the 200 MiB blob was not written within 10 s")
    images, containers = docker.image_ids(), docker.container_ids() - {cid}
    config = parse_config({"packaging": {"repository": "kegpack-test/removed"}})
    remove = ["docker", "-H", docker.env.docker_host, "rm", "-f", "-v", cid]
    remover = RunWhenStreaming(remove, 20 * 1024 * 1024)
    progress: Progress = remover
    try:
        with anyio.fail_after(300):
            result = await package(engine, config, JobRequest(container=cid), progress)
    except KegpackError:
        assert_nothing_left(docker, images, containers)
    else:
        for reference in result.references:
            docker.track_image(reference)
        tar = docker.export(result.image_id, tmp_path / "x.tar")
        assert tar.getmember("big/blob").size == 200 * 1024 * 1024
    finally:
        removed = remover.wait()
        docker.run("volume", "rm", "-f", volume, check=False)
    assert removed == 0, "docker rm ran, and succeeded, while the job streamed"
    assert cid not in docker.container_ids()


async def test_cancelled_job_leaves_nothing(engine: Engine, docker: Docker, tmp_path: Path) -> None:
    """A job cancelled mid-stream removes its helper and intermediate images."""
    (tmp_path / "blob").write_bytes(os.urandom(1024) * 100 * 1024)
    cid = docker.container("-v", f"{tmp_path}:/data")
    images, containers = docker.image_ids(), docker.container_ids()
    config = parse_config({"packaging": {"repository": "kegpack-test/cancelled"}})

    class CancelMidStream:
        def __init__(self, scope: anyio.CancelScope) -> None:
            self.scope = scope

        def stage(self, name: str, detail: str = "") -> None:
            pass

        def streamed(self, count: int) -> None:
            self.scope.cancel()

    with anyio.fail_after(120):
        with anyio.CancelScope() as scope:
            await package(engine, config, JobRequest(container=cid), CancelMidStream(scope))
    assert scope.cancelled_caught
    assert_nothing_left(docker, images, containers)


@pytest.mark.parametrize(
    ("stage", "fail_on"),
    [("commit", 1), ("inspect_image", 1), ("load_archive", 1), ("inspect_image", 2), ("tag", 1)],
)
async def test_failure_at_each_stage_leaves_nothing(
    engine: Engine,
    docker: Docker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stage: str,
    fail_on: int,
) -> None:
    """An engine failure injected at each step (the 2nd inspect: after the load) leaves nothing."""
    (tmp_path / "f").write_text("x")
    cid = docker.container("-v", f"{tmp_path}:/data")
    images, containers = docker.image_ids(), docker.container_ids()
    original = getattr(Engine, stage)
    calls = {"n": 0}

    async def failing(self: Engine, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise EngineError(f"injected failure in {stage}")
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(Engine, stage, failing)
    config = parse_config({"packaging": {"repository": "kegpack-test/fail", "tags": ["a"]}})
    with anyio.fail_after(120), pytest.raises(EngineError, match="injected"):
        await package(engine, config, JobRequest(container=cid, overrides=Overrides()))
    assert_nothing_left(docker, images, containers)


async def test_failure_to_add_a_further_tag_keeps_the_image_under_the_tags_it_got(
    engine: Engine, docker: Docker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second tag failing leaves the complete image under the first, and no pending tag."""
    (tmp_path / "f").write_text("x")
    cid = docker.container("-v", f"{tmp_path}:/data")
    containers = docker.container_ids()
    original = Engine.tag
    calls = {"n": 0}

    async def failing(self: Engine, *args: str) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise EngineError("injected failure in tag")
        await original(self, *args)

    monkeypatch.setattr(Engine, "tag", failing)
    config = parse_config({"packaging": {"repository": "kegpack-test/tagfail", "tags": ["a", "b"]}})
    with anyio.fail_after(120), pytest.raises(EngineError, match="injected"):
        await package(engine, config, JobRequest(container=cid))
    assert docker.container_ids() == containers
    [image] = docker.packaged(cid)
    assert docker.inspect(image)["RepoTags"] == ["kegpack-test/tagfail:a"]
    assert docker.leftovers() == ([], [])


def high_water_mib(pid: int) -> float:
    """The process's peak RSS so far (VmHWM), 0 once it is gone.

    Not ``wait4``'s ru_maxrss: that one starts from the forking parent's size.
    """
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


def test_peak_memory_stays_flat_on_a_large_volume(docker: Docker, tmp_path: Path) -> None:
    """Packaging a 600 MiB volume keeps the CLI's peak RSS under 100 MiB (figure printed)."""
    data = tmp_path / "big"
    data.mkdir()
    chunk = os.urandom(1024 * 1024)
    with (data / "blob").open("wb") as out:
        for _ in range(600):
            out.write(chunk)
    cid = docker.container("-v", f"{data}:/big")
    repo = f"kegpack-test/{docker.name('-rss')}"
    docker.track_image(f"{repo}:rss")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kegpackd", "package", cid, "--repository", repo, "--tag", "rss"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    peak_mib = 0.0
    while proc.poll() is None:
        peak_mib = max(peak_mib, high_water_mib(proc.pid))
        time.sleep(0.02)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.returncode == 0, stderr
    print(f"\npeak RSS packaging 600 MiB: {peak_mib:.1f} MiB")
    assert peak_mib < 100
