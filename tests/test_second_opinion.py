"""A second opinion on what kegpackd pushes: skopeo copies it, umoci unpacks it.

Both tools were written by others and read the image as a registry client does, so a
pass here does not rest on kegpackd's own reader. The yardstick is the source itself:
the mount's files read with ``os.lstat`` on the host.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kegpackd.config import Config, parse_config
from kegpackd.engine.client import Engine
from tests.dockertools import Docker, TestEnv
from tests.test_layer import image_with
from tests.test_package import run_job
from tests.treebuilder import build_awkward_tree, describe_dir, hard_link_groups

pytestmark = pytest.mark.engine

# skopeo refuses to copy without a signature policy; this one accepts any image.
POLICY = {"default": [{"type": "insecureAcceptAnything"}]}


@pytest.fixture
def pushed(testenv: TestEnv) -> Iterator[list[str]]:
    """Pushed manifests, as ``repository@digest``; deleted from the registry after the test."""
    made: list[str] = []
    try:
        yield made
    finally:
        for name in made:
            repository, digest = name.split("@")
            path = repository.removeprefix(f"{testenv.registry}/")
            request = urllib.request.Request(
                f"http://{testenv.registry}/v2/{path}/manifests/{digest}", method="DELETE"
            )
            with urllib.request.urlopen(request, timeout=30):
                pass


@pytest.fixture
def named_volume(docker: Docker, testenv: TestEnv) -> Iterator[tuple[str, Path]]:
    """A named volume and its directory as the host sees it; removed with its containers after."""
    name = docker.name("-vol")
    docker.run("volume", "create", name)
    try:
        mountpoint = Path(docker.run("volume", "inspect", "-f", "{{.Mountpoint}}", name).strip())
        root = Path(docker.run("info", "-f", "{{.DockerRootDir}}").strip())
        # The namespaced engines see the state dir under another path than the host does.
        yield name, testenv.state_dir / "data" / mountpoint.relative_to(root)
    finally:
        for cid in docker.run("ps", "-a", "-q", "--filter", f"volume={name}").split():
            docker.run("rm", "-f", "-v", cid, check=False)
        docker.run("volume", "rm", name, check=False)


def push_config(testenv: TestEnv, docker: Docker) -> Config:
    repository = f"{testenv.registry}/kegpack-test/{docker.name('-second')}"
    return parse_config(
        {
            "packaging": {"repository": repository, "tags": ["v1"], "push": True},
            "registries": {"allowed": [testenv.registry]},
        }
    )


async def push(
    engine: Engine, docker: Docker, testenv: TestEnv, pushed: list[str], cid: str
) -> str:
    """Package and push ``cid``; the pushed reference."""
    result = await run_job(engine, docker, cid, push_config(testenv, docker))
    reference = result.references[0]
    pushed.append(f"{reference.rsplit(':', 1)[0]}@{result.digests[reference]}")
    return reference


def skopeo_umoci_rootfs(reference: str, tmp: Path) -> Path:
    """``reference`` copied by skopeo into an OCI layout and unpacked there by umoci."""
    policy = tmp / "policy.json"
    policy.write_text(json.dumps(POLICY))
    layout, bundle = tmp / "oci", tmp / "bundle"
    tag = reference.rsplit(":", 1)[1]
    run_tool(
        "skopeo", "--policy", str(policy), "copy", "--src-tls-verify=false",
        f"docker://{reference}", f"oci:{layout}:{tag}",
    )  # fmt: skip
    run_tool("umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle))
    return bundle / "rootfs"


def run_tool(*command: str) -> None:
    """Run another project's tool; its stderr is the failure message."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed: {done.stderr}"


def xattrs(root: Path) -> dict[str, dict[str, bytes]]:
    """Every entry's extended attributes under ``root``, where it has any."""
    found: dict[str, dict[str, bytes]] = {}
    for path in [root, *root.rglob("*")]:
        names = os.listxattr(path, follow_symlinks=False)
        if names:
            found[str(path.relative_to(root))] = {
                name: os.getxattr(path, name, follow_symlinks=False) for name in names
            }
    return found


def corpus(root: Path) -> None:
    """The fidelity corpus, plus a file capability (an xattr the engine's archive carries)."""
    build_awkward_tree(root)
    tool = root / "tool-with-capability"
    tool.write_bytes(b"#!/bin/sh\n")
    run_tool("setcap", "cap_net_bind_service=+ep", str(tool))


def assert_same_tree(copy: Path, source: Path) -> None:
    """Type, mode, owner, size, content, link target, mtime, hard links and xattrs agree."""
    assert xattrs(source), "the corpus has an xattr to compare"
    assert describe_dir(copy) == describe_dir(source)
    assert hard_link_groups(copy) == hard_link_groups(source)
    assert xattrs(copy) == xattrs(source)


def assert_image_lacks(docker: Docker, path: str) -> None:
    """The mount point's parent is one the engine must create: the base image has no ``path``."""
    shown = docker.run_image(docker.env.base_image, "sh", "-c", f"test -e {path} || echo absent")
    assert shown == "absent\n", f"the base image already has {path}"


async def test_skopeo_and_umoci_show_a_bind_mount_exactly_as_the_source(
    engine: Engine, docker: Docker, testenv: TestEnv, pushed: list[str], tmp_path: Path
) -> None:
    """Pushed, copied by skopeo and unpacked by umoci: the bind mount's files are the source's."""
    tree = tmp_path / "tree"
    corpus(tree)
    assert_image_lacks(docker, "/srv")
    cid = docker.container("-v", f"{tree}:/srv/data")
    reference = await push(engine, docker, testenv, pushed, cid)
    rootfs = skopeo_umoci_rootfs(reference, tmp_path)
    assert_same_tree(rootfs / "srv" / "data", tree)


async def test_skopeo_and_umoci_show_a_named_volume_exactly_as_the_source(
    engine: Engine,
    docker: Docker,
    testenv: TestEnv,
    pushed: list[str],
    named_volume: tuple[str, Path],
    tmp_path: Path,
) -> None:
    """Pushed, copied by skopeo and unpacked by umoci: the named volume's files are its own."""
    name, source = named_volume
    corpus(source)
    assert_image_lacks(docker, "/opt")
    cid = docker.container("-v", f"{name}:/opt/state")
    reference = await push(engine, docker, testenv, pushed, cid)
    rootfs = skopeo_umoci_rootfs(reference, tmp_path)
    assert_same_tree(rootfs / "opt" / "state", source)


async def test_skopeo_and_umoci_do_not_find_what_the_mount_hid(
    engine: Engine, docker: Docker, testenv: TestEnv, pushed: list[str], tmp_path: Path
) -> None:
    """The image's own files under a mount point are gone as umoci unpacks it; the mount's stay."""
    image = image_with(docker, "mkdir -p /keg/old && echo s >/keg/stale.txt && echo o >/keg/secret")
    tree = tmp_path / "tree"
    corpus(tree)
    cid = docker.container("-v", f"{tree}:/keg", image=image)
    reference = await push(engine, docker, testenv, pushed, cid)
    rootfs = skopeo_umoci_rootfs(reference, tmp_path)
    assert not (rootfs / "keg" / "stale.txt").exists()
    assert not (rootfs / "keg" / "old").exists()
    assert_same_tree(rootfs / "keg", tree)
