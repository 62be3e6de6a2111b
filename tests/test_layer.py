"""The mounts' layer on the real engine: what the image hides, parents, reuse, changing mounts."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from kegpackd.engine.client import Engine
from kegpackd.errors import PackagingError
from kegpackd.packaging import layersource, load
from tests.dockertools import TESTENV_SCRIPT, Docker, TestEnv
from tests.test_package import run_job

pytestmark = pytest.mark.engine


def image_with(docker: Docker, script: str) -> str:
    """An image: the base image after ``sh -c script`` ran in it (as root)."""
    cid = docker.container(command=["sh", "-c", script], start=True)
    docker.run("wait", cid)
    image = f"kegpack-test/{docker.name('-base')}:{len(docker.images)}"
    docker.run("commit", cid, image)
    docker.track_image(image)
    return image


def listing(docker: Docker, cid: str, path: str) -> list[str]:
    return sorted(docker.run("exec", cid, "find", path).split())


def image_listing(docker: Docker, image: str, path: str) -> list[str]:
    output = docker.run_image(image, "find", path)
    return sorted(output.split())


async def test_the_image_hides_what_its_base_has_under_the_mount_point(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """Files the source's image has under a mount point are hidden, as the mount hides them."""
    image = image_with(
        docker, "mkdir -p /keg/old && echo s >/keg/stale.txt && echo o >/keg/shared.txt"
    )
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "new.txt").write_text("new\n")
    (tree / "shared.txt").write_text("mine\n")
    cid = docker.container("-v", f"{tree}:/keg", image=image)
    seen = listing(docker, cid, "/keg")
    result = await run_job(engine, docker, cid)
    assert image_listing(docker, result.references[0], "/keg") == seen
    assert seen == ["/keg", "/keg/new.txt", "/keg/shared.txt"]
    shown = docker.run_image(result.references[0], "cat", "/keg/shared.txt")
    assert shown == "mine\n"


async def test_nested_mounts_hide_the_image_content_below_each(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """With a mount inside a mount, the packaged image lists exactly what the source listed."""
    image = image_with(
        docker, "mkdir -p /keg/sub/deep && echo s >/keg/sub/stale && echo t >/keg/top"
    )
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    (outer / "a.txt").write_text("a")
    (inner / "b.txt").write_text("b")
    cid = docker.container("-v", f"{outer}:/keg", "-v", f"{inner}:/keg/sub", image=image)
    seen = listing(docker, cid, "/keg")
    result = await run_job(engine, docker, cid)
    assert image_listing(docker, result.references[0], "/keg") == seen
    assert "/keg/sub/stale" not in seen


async def test_a_mount_keeps_its_parents_owner_and_mode(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """/home/node/app mounted: /home/node keeps its non-root owner, mode and mtime."""
    image = image_with(
        docker,
        "mkdir -p /home/node && chown 1000:1000 /home/node && chmod 0750 /home/node "
        "&& touch -d '2020-01-02 03:04:05' /home/node",
    )
    app = tmp_path / "app"
    app.mkdir()
    (app / "index.js").write_text("console.log(1)\n")
    cid = docker.container("-v", f"{app}:/home/node/app", image=image)
    stat = ["stat", "-c", "%u:%g %a %Y", "/home/node"]
    before = docker.run("exec", cid, *stat)
    result = await run_job(engine, docker, cid)
    after = docker.run_image(result.references[0], *stat)
    assert after == before
    assert before.startswith("1000:1000 750 ")


async def test_a_single_file_mount_replaces_the_file(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """A file mounted over one of the image's files is the file the image shows."""
    image = image_with(docker, "mkdir -p /etc/app && echo old >/etc/app/settings")
    settings = tmp_path / "settings"
    settings.write_text("new\n")
    cid = docker.container("-v", f"{settings}:/etc/app/settings", image=image)
    result = await run_job(engine, docker, cid)
    shown = docker.run_image(result.references[0], "cat", "/etc/app/settings")
    assert shown == "new\n"


async def test_an_unchanged_container_packaged_again_reuses_its_layer(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """The second job finds the same layer on the engine, says so, and sends no layer data."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "blob").write_bytes(b"x" * (4 << 20))
    cid = docker.container("-v", f"{data}:/data", command=["sleep", "3600"])
    first = await run_job(engine, docker, cid, tags=["one"])
    second = await run_job(engine, docker, cid, tags=["two"])
    assert (first.layer, second.layer) == ("new", "reused")
    assert second.layer_digest == first.layer_digest
    assert second.streamed_bytes == 0
    layers = [
        docker.inspect(r)["RootFS"]["Layers"] for r in (*first.references, *second.references)
    ]
    assert layers[0] == layers[1]


async def test_a_changed_mount_makes_a_new_layer(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """One byte changed in the mount: a new layer, not a reused one."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("one")
    cid = docker.container("-v", f"{data}:/data")
    first = await run_job(engine, docker, cid, tags=["one"])
    (data / "f").write_text("two")
    second = await run_job(engine, docker, cid, tags=["two"])
    assert (first.layer, second.layer) == ("new", "new")
    assert second.layer_digest != first.layer_digest


def grow_after_measuring(monkeypatch: pytest.MonkeyPatch, target: Path, times: int) -> list[int]:
    """Append 2 MiB to ``target`` after each of the first ``times`` measurements, no headroom."""
    measured: list[int] = []
    original = layersource.Layer.measure

    async def measure(self: layersource.Layer) -> tuple[int, str]:
        size, digest = await original(self)
        measured.append(size)
        if len(measured) <= times:
            with target.open("ab") as out:
                out.write(b"g" * (2 << 20))
        return size, digest

    monkeypatch.setattr(layersource.Layer, "measure", measure)
    # Where the size is measured and where it is declared: no headroom in either.
    monkeypatch.setattr(layersource, "declared_size", lambda size: size)
    monkeypatch.setattr(load, "declared_size", lambda size: size)
    return measured


async def test_a_mount_that_grows_once_while_copied_is_measured_again(
    engine: Engine, docker: Docker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream outgrows its declared size once; the retry packages the grown file."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "log").write_bytes(b"l" * 1024)
    cid = docker.container("-v", f"{data}:/data")
    measured = grow_after_measuring(monkeypatch, data / "log", times=1)
    result = await run_job(engine, docker, cid)
    assert len(measured) == 2
    size = docker.run_image(result.references[0], "stat", "-c", "%s", "/data/log")
    assert int(size) == 1024 + (2 << 20)


async def test_a_mount_that_keeps_changing_fails_clearly_and_leaves_nothing(
    engine: Engine, docker: Docker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the bounded retries the job fails, suggesting kegpack.pause=true; nothing is left."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "log").write_bytes(b"l" * 1024)
    cid = docker.container("-v", f"{data}:/data")
    images, containers = docker.image_ids(), docker.container_ids()
    grow_after_measuring(monkeypatch, data / "log", times=10)
    with pytest.raises(PackagingError, match=r"kept changing.*kegpack\.pause=true"):
        await run_job(engine, docker, cid)
    assert docker.image_ids() == images
    assert docker.container_ids() == containers
    assert docker.leftovers() == ([], [])


async def test_a_mount_written_during_the_copy_packages_or_fails_clearly(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """A writer appending inside the container during the job: a complete image, or the error."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "base").write_bytes(b"b" * (8 << 20))
    writer = "while true; do head -c 65536 /dev/zero >>/data/log; done"
    cid = docker.container("-v", f"{data}:/data", command=["sh", "-c", writer])
    images = docker.image_ids()
    try:
        result = await run_job(engine, docker, cid)
    except PackagingError as exc:
        failure = str(exc)
        assert docker.image_ids() == images
        assert "kept changing" in failure
    else:
        assert result.layer == "new"
        listed = image_listing(docker, result.references[0], "/data")
        assert "/data/base" in listed
    assert docker.leftovers() == ([], [])


async def test_leaving_an_archive_early_frees_the_container(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """After one chunk of a large archive, the container can be removed at once."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "big").write_bytes(b"z" * (64 << 20))
    cid = docker.container("-v", f"{data}:/data")
    async with engine.archive(cid, "/data") as chunks:
        async for _chunk in chunks:
            break
    with anyio.fail_after(20):
        await anyio.run_process(["docker", "-H", docker.env.docker_host, "rm", "-f", cid])


async def test_a_packaged_web_server_serves_its_mounted_site_without_the_mount(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """busybox httpd with its document root mounted: the image, run bare, serves the page."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>packaged</h1>\n")
    serve = ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/srv/www"]
    cid = docker.container("-v", f"{site}:/srv/www:ro", command=serve)
    result = await run_job(engine, docker, cid)
    copy = docker.container(image=result.references[0], command=serve)
    fetch = ["wget", "-q", "-O", "-", "http://127.0.0.1:8080/index.html"]
    deadline = time.monotonic() + 30
    while True:
        done = subprocess.run(
            ["docker", "-H", docker.env.docker_host, "exec", copy, *fetch],
            capture_output=True,
            timeout=30,
            check=False,
        )
        if done.returncode == 0 or time.monotonic() > deadline:
            break
        await anyio.sleep(0.2)
    assert done.stdout.decode() == "<h1>packaged</h1>\n", done.stderr
    assert docker.inspect(copy)["Mounts"] == []


async def test_file_capabilities_reach_the_image(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """A file's security.capability in the mount is on the file in the packaged image."""
    data = tmp_path / "data"
    data.mkdir()
    tool = data / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    subprocess.run(["setcap", "cap_net_bind_service=+ep", str(tool)], check=True)
    cid = docker.container("-v", f"{data}:/data")
    result = await run_job(engine, docker, cid)
    with docker.export(result.references[0], tmp_path / "export.tar") as tar:
        member = tar.getmember("data/tool")
    assert "SCHILY.xattr.security.capability" in member.pax_headers


@pytest.fixture(scope="module")
def redis_image(testenv: TestEnv) -> str:
    """Debian 12's redis-server as an image on the test engine (built once, then kept)."""
    done = subprocess.run(
        [str(TESTENV_SCRIPT), "app-image"], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    return "kegpack-test/redis:latest"


def redis_cli(docker: Docker, cid: str, *args: str) -> str:
    return docker.run("exec", cid, "redis-cli", *args).strip()


def wait_for_redis(docker: Docker, cid: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        done = subprocess.run(
            ["docker", "-H", docker.env.docker_host, "exec", cid, "redis-cli", "ping"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        if done.stdout.strip() == "PONG":
            return
        if time.monotonic() > deadline:
            logs = docker.run("logs", cid, check=False)
            raise AssertionError(f"redis in {cid[:12]} did not answer: {done.stderr} {logs}")
        time.sleep(0.2)


async def test_a_packaged_database_starts_and_serves_its_mounted_data(
    engine: Engine, docker: Docker, tmp_path: Path, redis_image: str
) -> None:
    """redis-server with its data directory bind-mounted: the image, run bare, has the keys."""
    uid, gid = docker.run_image(redis_image, "sh", "-c", "id -u; id -g").split()
    data = tmp_path / "redis"
    data.mkdir()
    os.chown(data, int(uid), int(gid))
    data.chmod(0o750)
    cid = docker.container(
        "-v", f"{data}:/var/lib/redis", "-l", "kegpack.pause=true", image=redis_image, command=[
        "redis-server", "--bind", "127.0.0.1", "--dir", "/var/lib/redis", "--appendonly", "yes",
    ])  # fmt: skip
    wait_for_redis(docker, cid)
    assert redis_cli(docker, cid, "SET", "greeting", "packaged with its data") == "OK"
    assert redis_cli(docker, cid, "SAVE") == "OK"
    result = await run_job(engine, docker, cid)
    copy = docker.container(image=result.references[0], command=())
    assert docker.inspect(copy)["Mounts"] == []
    wait_for_redis(docker, copy)
    assert redis_cli(docker, copy, "GET", "greeting") == "packaged with its data"
    assert redis_cli(docker, copy, "SET", "after", "writable") == "OK"
