"""The packaging pipeline on the real engine: fidelity, config, mounts, cleanup."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from kegpackd.config import Config, parse_config
from kegpackd.engine.client import Engine
from kegpackd.errors import InvalidValueError, PackagingError
from kegpackd.packaging.base import COPIED_CONFIG_KEYS
from kegpackd.packaging.jobs import JobRequest, JobResult
from kegpackd.packaging.options import Overrides
from kegpackd.packaging.pipeline import package
from tests.dockertools import Docker
from tests.treebuilder import build_awkward_tree, describe_dir, describe_tar, hard_link_groups

pytestmark = pytest.mark.engine


def local_config(**packaging: Any) -> Config:
    return parse_config({"packaging": {"repository": "kegpack-test/{name}", **packaging}})


async def run_job(
    engine: Engine, docker: Docker, container: str, config: Config | None = None, **over: Any
) -> JobResult:
    """Package ``container`` and register the resulting image for removal."""
    with anyio.fail_after(300):
        result = await package(
            engine,
            config or local_config(tags=["t1"]),
            JobRequest(container=container, overrides=Overrides(**over)),
        )
    for reference in result.references:
        docker.track_image(reference)
    return result


def exported(docker: Docker, image: str, tmp: Path) -> Any:
    return docker.export(image, tmp / f"export-{len(docker.containers)}.tar")


async def test_fidelity_of_an_awkward_tree(engine: Engine, docker: Docker, tmp_path: Path) -> None:
    """Each entry of a bind mount arrives with type, mode, owner, size, hash, link and mtime."""
    tree = tmp_path / "tree"
    build_awkward_tree(tree)
    cid = docker.container("-v", f"{tree}:/srv/data")
    result = await run_job(engine, docker, cid)
    tar = exported(docker, result.references[0], tmp_path)
    entries, links = describe_tar(tar, "srv/data")
    assert entries == describe_dir(tree)
    assert links == hard_link_groups(tree)


async def test_packaged_image_runs_with_the_files_and_the_source_config(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """Run without mounts, the image sees the files; its config equals the source's."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "hello.txt").write_text("hello from the volume\n")
    cid = docker.container(
        "-v",
        f"{app}:/keg",
        "-e",
        "GREETING=hi",
        "-w",
        "/keg",
        "-u",
        "1000:1000",
        "--expose",
        "8080",
        "--stop-signal",
        "SIGINT",
        "--health-cmd",
        "true",
        "--entrypoint",
        "/bin/sh",
        "-l",
        "team=web",
        "-l",
        "kegpack.package=true",
        "-l",
        "kegpack.tags=ignored-{id}",
        command=["-c", "sleep 3600"],
    )
    result = await run_job(engine, docker, cid, tags=("runs",))
    image = docker.inspect(result.references[0])["Config"]
    source = docker.inspect(cid)["Config"]
    for key in COPIED_CONFIG_KEYS:
        assert image.get(key) == source.get(key), key
    labels = image["Labels"]
    assert labels["team"] == "web"
    assert {k for k in labels if k.startswith("kegpack.")} == {
        "kegpack.source.id",
        "kegpack.source.name",
        "kegpack.source.image",
        "kegpack.source.started_at",
        "kegpack.job",
    }
    assert labels["kegpack.source.id"] == cid
    assert labels["kegpack.source.started_at"] == docker.inspect(cid)["State"]["StartedAt"]
    assert "org.opencontainers.image.created" in labels
    out = docker.run(
        "run", "--rm", "--network", "none", "--entrypoint", "cat", result.references[0], "hello.txt"
    )
    assert out == "hello from the volume\n"


async def test_volume_declared_by_the_image_is_captured(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """A mount at a path the image declares as VOLUME still lands in the image's layer."""
    base = docker.name("-volimg")
    docker.run(
        "commit", "--change", "VOLUME /state", docker.container(start=False), f"{base}:latest"
    )
    docker.track_image(f"{base}:latest")
    cid = docker.container("-v", "/state", image=f"{base}:latest")
    docker.run("exec", cid, "sh", "-c", "echo kept > /state/value")
    result = await run_job(engine, docker, cid)
    tar = exported(docker, result.references[0], tmp_path)
    handle = tar.extractfile("state/value")
    assert handle is not None
    assert handle.read() == b"kept\n"
    assert docker.inspect(result.references[0])["Config"]["Volumes"] == {"/state": {}}


async def test_several_nested_and_single_file_mounts_of_a_stopped_container(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """Named volume, nested bind, single-file bind, read-only and spaced paths, source stopped."""
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    outer.mkdir()
    inner.mkdir()
    (outer / "o.txt").write_text("outer\n")
    (inner / "i.txt").write_text("inner\n")
    single = tmp_path / "app.conf"
    single.write_text("key=value\n")
    volume = docker.name("-vol")
    docker.run("volume", "create", volume)
    cid = docker.container(
        "-v",
        f"{outer}:/data",
        "-v",
        f"{inner}:/data/sub dir",
        "-v",
        f"{single}:/etc/app.conf:ro",
        "-v",
        f"{volume}:/var/lib/state",
        command=["sh", "-c", "echo vol > /var/lib/state/v.txt"],
    )
    docker.run("wait", cid)
    try:
        result = await run_job(engine, docker, cid)
        names = set(exported(docker, result.references[0], tmp_path).getnames())
    finally:
        docker.run("rm", "-f", cid)
        docker.run("volume", "rm", volume)
    assert {"data/o.txt", "data/sub dir/i.txt", "etc/app.conf", "var/lib/state/v.txt"} <= names


async def test_paths_narrow_the_selection(engine: Engine, docker: Docker, tmp_path: Path) -> None:
    """With --path only that mount is copied."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b" / "y").write_text("b")
    cid = docker.container("-v", f"{tmp_path / 'a'}:/a", "-v", f"{tmp_path / 'b'}:/b")
    result = await run_job(engine, docker, cid, paths=("/b",))
    names = set(exported(docker, result.references[0], tmp_path).getnames())
    assert "b/y" in names
    assert "a/x" not in names


async def test_path_that_is_not_a_mount_is_refused(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """A listed path that is no mount fails naming the path, and creates nothing."""
    cid = docker.container("-v", f"{tmp_path}:/a")
    before = docker.image_ids()
    with pytest.raises(InvalidValueError, match="'/nope'"):
        await run_job(engine, docker, cid, paths=("/nope",))
    assert docker.image_ids() == before


async def test_container_without_mounts_is_nothing_to_package(
    engine: Engine, docker: Docker
) -> None:
    """No bind mount or volume: a clear error, nothing created."""
    cid = docker.container("--tmpfs", "/scratch")
    before = docker.image_ids()
    with pytest.raises(PackagingError, match="nothing to package"):
        await run_job(engine, docker, cid)
    assert docker.image_ids() == before


async def test_invalid_tag_label_names_label_and_value(engine: Engine, docker: Docker) -> None:
    """An invalid reference from a label fails naming the label and the bad value."""
    cid = docker.container("-v", "/data", "-l", "kegpack.tags=bad tag!")
    with pytest.raises(InvalidValueError, match=r"label kegpack\.tags.*'bad tag!'"):
        await run_job(engine, docker, cid, config=local_config())


async def test_source_is_not_modified_paused_or_stopped(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """The source keeps running, unpaused, with the same config; its mount is untouched."""
    (tmp_path / "f").write_text("x")
    cid = docker.container("-v", f"{tmp_path}:/d")
    before = docker.inspect(cid)
    await run_job(engine, docker, cid)
    after = docker.inspect(cid)
    assert after["State"]["Running"]
    assert not after["State"]["Paused"]
    assert after["Config"] == before["Config"]
    assert after["State"]["StartedAt"] == before["State"]["StartedAt"]
    assert (tmp_path / "f").read_text() == "x"


async def test_success_leaves_only_the_final_image(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """After a job, the only new images are the tagged one and its untagged parent chain."""
    cid = docker.container("-v", f"{tmp_path}:/d")
    images, containers = docker.image_ids(), docker.container_ids()
    result = await run_job(engine, docker, cid)
    assert docker.container_ids() == containers
    new = docker.image_ids() - images
    parent = docker.inspect(result.image_id)["Parent"]
    assert new <= {result.image_id, parent}


def test_cli_prints_references_and_exits_zero(docker: Docker, tmp_path: Path) -> None:
    """``python -m kegpackd package`` prints each reference on stdout."""
    cid = docker.container("-v", f"{tmp_path}:/d")
    repo = f"kegpack-test/{docker.name('-cli')}"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kegpackd",
            "package",
            cid,
            "--repository",
            repo,
            "--tag",
            "a",
            "--tag",
            "b",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    docker.track_image(f"{repo}:a")
    docker.track_image(f"{repo}:b")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"{repo}:a", f"{repo}:b"]


def test_cli_unknown_container_is_one_line_and_nonzero(docker: Docker) -> None:
    """An unknown container gives exit 1 and one line naming it."""
    done = subprocess.run(
        [sys.executable, "-m", "kegpackd", "package", "no-such-container-kegpack"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith("kegpackd: ")
    assert "no-such-container-kegpack" in done.stderr.splitlines()[-1]


def test_cli_unreachable_engine(tmp_path: Path) -> None:
    """An engine that is not there gives exit 1 and says it cannot reach it."""
    done = subprocess.run(
        [sys.executable, "-m", "kegpackd", "package", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"DOCKER_HOST": f"unix://{tmp_path}/none.sock", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 1
    assert "cannot reach the Docker engine" in done.stderr


def test_cli_bad_config_exits_2(tmp_path: Path) -> None:
    """A config with an unknown key: exit 2 and one line naming the key."""
    config = tmp_path / "c.toml"
    config.write_text('[packaging]\nrepositry = "x"\n')
    done = subprocess.run(
        [sys.executable, "-m", "kegpackd", "package", "x", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "packaging.repositry" in done.stderr
    assert json.dumps(done.stderr.strip()).count("\\n") == 0
