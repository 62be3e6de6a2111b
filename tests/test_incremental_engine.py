"""Incremental packaging on the real engine: every image made of deltas shows, entry by entry,
the tree a full package (``incremental = false``) of the same state shows.

Each test packages one container again and again: incrementally into its repository, and,
for the yardstick, in full into another one, so that the full images never become the
"previous image" of the incremental chain. Trees are compared as the engine exports them
(tests/treetools.py), with the whole image's file system, not only the mounts.
"""

from __future__ import annotations

import os
import shutil
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kegpackd.config import Config, parse_config
from kegpackd.engine.client import Engine
from kegpackd.packaging.jobs import JobResult
from tests.dockertools import Docker, TestEnv
from tests.test_layer import image_with
from tests.test_package import run_job
from tests.test_second_opinion import assert_same_tree as assert_same_as_source
from tests.test_second_opinion import (  # noqa: F401  (pushed: a fixture)
    corpus,
    pushed,
    run_tool,
    skopeo_umoci_rootfs,
)
from tests.treebuilder import OLD_MTIME
from tests.treetools import Tree, assert_equal_trees, flatten

pytestmark = pytest.mark.engine

REPOSITORY = "kegpack-test/{name}"
# Where the yardstick's full packages go: a repository of their own.
FULL_REPOSITORY = "kegpack-test/{name}-full"
MOUNT = "srv/data"
# A file size well above what kegpackd keeps from its scan (64 KiB): such a changed file's
# bytes are fetched through the archive API, or the mounts are read again.
MEDIUM = 256 << 10


def config(state: Path, repository: str, tag: str, **sections: Any) -> Config:
    """A config for one job: ``[packaging]`` keys as keywords, other tables in ``sections``."""
    tables = {k: v for k, v in sections.items() if isinstance(v, dict)}
    packaging = {k: v for k, v in sections.items() if not isinstance(v, dict)}
    return parse_config(
        {
            "packaging": {"repository": repository, "tags": [tag], **packaging},
            "daemon": {"state_dir": str(state)},
            **tables,
        }
    )


def layers(docker: Docker, reference: str) -> list[str]:
    diff_ids: list[str] = docker.inspect(reference)["RootFS"]["Layers"]
    return diff_ids


def names_on_host(root: Path, prefix: str = MOUNT) -> set[str]:
    """The names a mount of ``root`` at ``/prefix`` shows, as an image's tree names them."""
    return {prefix} | {f"{prefix}/{p.relative_to(root)}" for p in root.rglob("*")}


@dataclass
class Chain:
    """One container packaged again and again, incrementally into ``repository`` with the
    extra ``[packaging]`` keys and tables of ``options``; ``compare`` also packages each state
    in full into FULL_REPOSITORY, the yardstick."""

    engine: Engine
    docker: Docker
    cid: str
    state: Path
    mount: Path
    options: dict[str, Any] = field(default_factory=dict)
    repository: str = REPOSITORY
    # Mounts inside the mount: their path below MOUNT, and their host directory.
    nested: dict[str, Path] = field(default_factory=dict)
    count: int = 0

    def names(self) -> set[str]:
        """What the image must show under MOUNT: the mounts' names as the host has them."""
        shown = names_on_host(self.mount)
        for below, root in self.nested.items():
            point = f"{MOUNT}/{below}"
            shown = {n for n in shown if not n.startswith(point + "/")}
            shown |= names_on_host(root, point)
        return shown

    async def step(self, expected: str, what: str) -> tuple[JobResult, Tree]:
        """Package incrementally, ``expected`` being its mounts_layer; the result and its
        image's tree, which shows the mount's names as the host has them."""
        self.count += 1
        made = config(self.state, self.repository, f"s{self.count}", **self.options)
        result = await run_job(self.engine, self.docker, self.cid, made)
        assert result.mounts_layer == expected, f"{what}: {result}"
        # The layout: the container's image's layers first, as they are.
        source = layers(self.docker, self.docker.inspect(self.cid)["Image"])
        assert layers(self.docker, result.references[0])[: len(source)] == source, what
        tree = flatten(self.docker, result.references[0])
        assert set(tree.under(MOUNT).nodes) == self.names(), what
        return result, tree

    async def full(self) -> Tree:
        """The tree of a full package (incremental = false) of the state as it is."""
        made = config(self.state, FULL_REPOSITORY, f"s{self.count}", incremental=False)
        result = await run_job(self.engine, self.docker, self.cid, made)
        # The classic layout, mounts' layer on top: the yardstick is no delta of anything.
        assert layers(self.docker, result.references[0])[-1] == result.layer_digest
        return flatten(self.docker, result.references[0])

    async def compare(self, expected: str, what: str) -> tuple[JobResult, Tree]:
        """``step``, and its tree is the tree of a full package of the same state."""
        result, tree = await self.step(expected, what)
        assert_equal_trees(await self.full(), tree, what)
        return result, tree


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """kegpackd's daemon.state_dir for the test (the packaged images' index lives there)."""
    path = tmp_path / "state"
    path.mkdir(mode=0o700)
    return path


def ballast(root: Path) -> None:
    """Content that never changes, so that each step's change is a small part of the whole."""
    (root / "ballast").mkdir()
    (root / "ballast" / "big.bin").write_bytes(os.urandom(4 << 20))
    for n in range(100):
        (root / "ballast" / f"small-{n:03}").write_bytes(os.urandom(1024))


def mounted_corpus(root: Path) -> None:
    """The fidelity corpus (every entry kind, a hard-link pair, a file capability) and ballast."""
    corpus(root)
    ballast(root)


# The changes of the chain, applied to the host's side of the bind mount.


def add_entries(root: Path) -> None:
    (root / "added" / "inner").mkdir(parents=True)
    (root / "added" / "inner" / "new.txt").write_text("new\n")
    (root / "added.txt").write_text("added\n")
    (root / "a" / "b" / "sibling.txt").write_text("sibling\n")
    (root / "added-link").symlink_to("added.txt")
    long = root / ("g" * 60) / ("h" * 90 + ".txt")  # a name past ustar's 100 bytes
    long.parent.mkdir()
    long.write_text("long\n")
    # Bigger than what a scan keeps whole: its bytes are fetched or read again.
    (root / "added-medium.bin").write_bytes(os.urandom(MEDIUM))


def edit_contents(root: Path) -> None:
    (root / "a" / "b" / "c" / "deep.txt").write_text("deeper, and longer\n")
    # Same size and, restored, the same mtime: only the content tells the change.
    same = root / "added.txt"
    before = same.stat()
    same.write_text("ADDED\n")
    os.utime(same, ns=(before.st_atime_ns, before.st_mtime_ns))
    (root / ("g" * 60) / ("h" * 90 + ".txt")).write_text("longer\n")
    with (root / "added-medium.bin").open("r+b") as medium:
        medium.seek(MEDIUM // 2)
        medium.write(b"edited in the middle")


def change_metadata(root: Path) -> None:
    root.chmod(0o751)  # the mount's own directory (an opaque one in the full layer)
    (root / "secret").chmod(0o640)
    os.chown(root / "owned-by-1000", 2000, 2001)
    os.utime(root / "old-file", (OLD_MTIME + 86_400, OLD_MTIME + 86_400))
    (root / "sticky-dir").chmod(0o755)
    os.chown(root / "owned-by-4242", 0, 0)
    os.utime(root / "empty-dir", (OLD_MTIME + 60, OLD_MTIME + 60))
    os.chown(root / "rel-link", 1234, 1234, follow_symlinks=False)
    # Only an xattr changes (the file's mtime does not).
    run_tool("setcap", "cap_net_raw=+ep", str(root / "tool-with-capability"))


def delete_entries(root: Path) -> None:
    (root / "zero").unlink()
    (root / "dangling-link").unlink()
    (root / "fifo").unlink()
    shutil.rmtree(root / ("d" * 60))
    (root / "new\nline").unlink()
    (root / "ünïcødé-名前.txt").unlink()


def change_types(root: Path) -> None:
    spaces = root / "name with spaces.txt"  # file -> directory
    spaces.unlink()
    spaces.mkdir()
    (spaces / "inside.txt").write_text("inside\n")
    shutil.rmtree(root / "added")  # directory -> file
    (root / "added").write_text("now a file\n")
    (root / "old-file").unlink()  # file -> symlink
    (root / "old-file").symlink_to("secret")
    (root / "abs-link").unlink()  # symlink -> directory
    (root / "abs-link").mkdir()
    (root / "abs-link" / "passwd").write_text("not a link\n")
    shutil.rmtree(root / "a" / "b")  # directory -> another directory: its old entries go
    (root / "a" / "b").mkdir()
    (root / "a" / "b" / "other.txt").write_text("other\n")


def change_hard_links(root: Path) -> None:
    os.link(root / "secret", root / "secret-too")  # a new name for an unchanged file
    with (root / "run.sh").open("r+b") as linked:  # both names of hard-link-to-run.sh
        linked.write(b"#!/bin/sh\necho changed\n")
    os.link(root / "setuid-bin", root / "setuid-one")  # a group of three, then
    os.link(root / "setuid-bin", root / "setuid-two")


def unlink_hard_links(root: Path) -> None:
    (root / "hard-link-to-run.sh").unlink()  # the name the archive holds the data under
    (root / "setuid-one").unlink()  # one of three


CHAIN: tuple[tuple[str, Callable[[Path], None]], ...] = (
    ("add files and directories", add_entries),
    ("edit contents", edit_contents),
    ("chmod, chown, touch -m, setcap", change_metadata),
    ("delete files and a directory", delete_entries),
    ("change types", change_types),
    ("hard links added, a linked file changed", change_hard_links),
    ("hard-linked names deleted", unlink_hard_links),
)


async def packaged_once(
    engine: Engine, docker: Docker, tmp_path: Path, state: Path, **chain: Any
) -> tuple[Path, str, Chain, JobResult]:
    """The corpus mounted into a new container, packaged once (in full): its host tree,
    the container, the chain that goes on from there, and the first job's result."""
    tree = tmp_path / "tree"
    mounted_corpus(tree)
    cid = docker.container("-v", f"{tree}:/{MOUNT}")
    packaged = Chain(engine, docker, cid, state, tree, **chain)
    first, _ = await packaged.compare("full", "the first package")
    return tree, cid, packaged, first


async def test_a_chain_of_deltas_shows_the_tree_of_a_full_package_at_each_step(
    engine: Engine, docker: Docker, tmp_path: Path, state: Path
) -> None:
    """Adds, edits, metadata, deletes, type changes, hard links: each delta's image is a full's."""
    tree, _cid, chain, first = await packaged_once(engine, docker, tmp_path, state)
    assert first.delta_layers == 0
    for number, (what, change) in enumerate(CHAIN, 1):
        change(tree)
        result, _ = await chain.compare("delta", what)
        assert result.delta_layers == number, what
        assert 0 < result.mounts_layer_bytes < result.mounts_full_bytes, what


async def test_deltas_keep_hiding_what_the_image_has_at_the_mount_point(
    engine: Engine, docker: Docker, tmp_path: Path, state: Path
) -> None:
    """The image's own files under the mount point stay hidden, also where a delta deletes or
    adds a name the image has there."""
    image = image_with(
        docker,
        "mkdir -p /srv/data/old && echo hidden >/srv/data/old/hidden.txt "
        "&& echo s >/srv/data/stale.txt && echo o >/srv/data/shared.txt",
    )
    tree = tmp_path / "tree"
    mounted_corpus(tree)
    (tree / "shared.txt").write_text("mine\n")
    cid = docker.container("-v", f"{tree}:/{MOUNT}", image=image)
    chain = Chain(engine, docker, cid, state, tree)
    await chain.compare("full", "the first package")
    (tree / "shared.txt").unlink()
    tree.chmod(0o700)
    (tree / "old").mkdir()
    (tree / "old" / "mine.txt").write_text("mine\n")
    _, shown = await chain.compare("delta", "a name of the image's deleted, another added")
    assert not {f"{MOUNT}/shared.txt", f"{MOUNT}/old/hidden.txt"} & set(shown.nodes)
    shutil.rmtree(tree / "old")
    (tree / "stale.txt").write_text("mine now\n")
    _, shown = await chain.compare("delta", "the added directory deleted, a hidden name added")
    assert not {f"{MOUNT}/old", f"{MOUNT}/shared.txt"} & set(shown.nodes)
    assert shown.nodes[f"{MOUNT}/stale.txt"].size == len("mine now\n")


async def test_deltas_of_a_mount_inside_a_mount_show_both(
    engine: Engine, docker: Docker, tmp_path: Path, state: Path
) -> None:
    """A change in the inner mount only, then in both: each delta shows a full package's tree,
    and what the outer mount has under the inner one stays hidden."""
    outer, inner = tmp_path / "outer", tmp_path / "inner"
    mounted_corpus(outer)
    inner.mkdir()
    (inner / "inside.txt").write_text("inside\n")
    (outer / "sub").mkdir()
    (outer / "sub" / "under-the-mount.txt").write_text("hidden by the inner mount\n")
    cid = docker.container("-v", f"{outer}:/{MOUNT}", "-v", f"{inner}:/{MOUNT}/sub")
    chain = Chain(engine, docker, cid, state, outer, nested={"sub": inner})
    await chain.compare("full", "the first package")
    (outer / "sub" / "under-the-mount.txt").write_text("still hidden, changed\n")
    (inner / "inside.txt").write_text("inside, changed\n")
    (inner / "more").mkdir()
    (inner / "more" / "file").write_text("more\n")
    await chain.compare("delta", "the inner mount changed")
    shutil.rmtree(inner / "more")
    (outer / "added.txt").write_text("added\n")
    (outer / "zero").unlink()
    await chain.compare("delta", "both mounts changed")


async def test_a_change_of_most_of_the_mounts_gives_a_full_layer(
    engine: Engine, docker: Docker, tmp_path: Path, state: Path
) -> None:
    """The ballast (most of the bytes) rewritten: a full layer, and the next change a delta."""
    tree, _cid, chain, _first = await packaged_once(engine, docker, tmp_path, state)
    (tree / "added.txt").write_text("added\n")
    await chain.compare("delta", "a small change")
    (tree / "ballast" / "big.bin").write_bytes(os.urandom(4 << 20))
    (tree / "multi-mb.bin").write_bytes(os.urandom(3 << 20))
    result, _ = await chain.compare("full", "most bytes changed")
    assert result.delta_layers == 0
    (tree / "later.txt").write_text("later\n")
    await chain.compare("delta", "a small change after it")


async def test_a_write_outside_the_mounts_keeps_the_mount_layers_as_they_were(
    engine: Engine, docker: Docker, tmp_path: Path, state: Path
) -> None:
    """Only the container's own layer changes: same diff ids below it, mounts_layer "none"."""
    tree, cid, chain, _first = await packaged_once(engine, docker, tmp_path, state)
    (tree / "added.txt").write_text("added\n")
    before, _ = await chain.compare("delta", "a file added to the mount")
    docker.run("exec", cid, "sh", "-c", "echo outside >/root/outside.txt")
    after, shown = await chain.compare("none", "a write outside the mounts")
    old, new = layers(docker, before.references[0]), layers(docker, after.references[0])
    assert new[:-1] == old[:-1]
    assert new[-1] != old[-1]
    assert after.delta_layers == before.delta_layers == 1
    assert "root/outside.txt" in shown.nodes


async def test_the_delta_cap_writes_a_full_layer_again_and_bounds_the_layers(
    engine: Engine, docker: Docker, tmp_path: Path, state: Path
) -> None:
    """With max_delta_layers = 2, the third change gives a full layer; layers stay bounded."""
    options = {"max_delta_layers": 2}
    tree, _cid, chain, first = await packaged_once(engine, docker, tmp_path, state, options=options)
    base = len(layers(docker, docker.env.base_image))
    counts = [len(layers(docker, first.references[0]))]
    for number, (expected, stacked) in enumerate((("delta", 1), ("delta", 2), ("full", 0))):
        (tree / f"change-{number}.txt").write_text(f"change {number}\n")
        result, _ = await chain.compare(expected, f"change {number}")
        assert result.delta_layers == stacked
        counts.append(len(layers(docker, result.references[0])))
    assert counts[3] < counts[2]
    assert counts[3] == counts[0]
    assert max(counts) <= base + 2 + 2


async def test_a_missing_index_gives_a_full_layer(
    engine: Engine, docker: Docker, tmp_path: Path, state: Path
) -> None:
    """With <state_dir>/index/ deleted, the repackage is full and right; the next a delta."""
    tree, _cid, chain, _first = await packaged_once(engine, docker, tmp_path, state)
    assert (state / "index").is_dir()
    shutil.rmtree(state / "index")
    (tree / "added.txt").write_text("added\n")
    (tree / "zero").unlink()
    result, _ = await chain.compare("full", "the index deleted")
    assert result.delta_layers == 0
    (tree / "later.txt").write_text("later\n")
    await chain.compare("delta", "the index made again")


def delete_manifest(testenv: TestEnv, pushed_name: str) -> None:
    """DELETE ``repository@digest`` from the test registry (it has deletes enabled)."""
    repository, digest = pushed_name.split("@")
    path = repository.removeprefix(f"{testenv.registry}/")
    request = urllib.request.Request(
        f"http://{testenv.registry}/v2/{path}/manifests/{digest}", method="DELETE"
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 202


async def test_removing_older_images_and_manifests_leaves_the_newest_whole(
    engine: Engine,
    docker: Docker,
    testenv: TestEnv,
    pushed: list[str],  # noqa: F811
    tmp_path: Path,
    state: Path,
) -> None:
    """keep = 1 over full, delta, delta: the newest runs and has the full tree; with the older
    manifests deleted from the registry, skopeo still copies it out whole."""
    tree = tmp_path / "tree"
    mounted_corpus(tree)
    cid = docker.container("-v", f"{tree}:/{MOUNT}")
    options = {
        "push": True,
        "registries": {"allowed": [testenv.registry]},
        "retention": {"keep": 1},
    }
    repository = f"{testenv.registry}/kegpack-test/{docker.name('-kept')}"
    chain = Chain(engine, docker, cid, state, tree, options, repository)
    for expected, change in (("full", None), ("delta", add_entries), ("delta", delete_entries)):
        if change is not None:
            change(tree)
        result, _ = await chain.compare(expected, f"a {expected} package, pushed")
        reference = result.references[0]
        pushed.append(f"{reference.rsplit(':', 1)[0]}@{result.digests[reference]}")
    assert docker.run("images", "--format", "{{.Tag}}", reference.rsplit(":", 1)[0]).split() == [
        "s3"
    ]
    assert docker.run_image(reference, "cat", f"/{MOUNT}/added.txt") == "added\n"
    for older in pushed[:2]:
        delete_manifest(testenv, older)
    del pushed[:2]
    (tmp_path / "copy").mkdir()
    rootfs = skopeo_umoci_rootfs(reference, tmp_path / "copy")
    assert_same_as_source(rootfs / MOUNT, tree)


async def test_fetching_the_changes_and_reading_the_mounts_again_agree(
    engine: Engine, docker: Docker, tmp_path: Path, state: Path
) -> None:
    """delta_fetch_limit = 0 (read again, filtered) and the default (fetch) give one tree.

    Each step also rewrites a file too big for the scan to keep, so both sources are used."""
    tree = tmp_path / "tree"
    mounted_corpus(tree)
    cid = docker.container("-v", f"{tree}:/{MOUNT}")
    fetch = Chain(engine, docker, cid, state, tree)
    reread = Chain(engine, docker, cid, state, tree, {"delta_fetch_limit": 0})
    reread.repository = "kegpack-test/{name}-reread"
    await fetch.compare("full", "the first package")
    await reread.step("full", "the first package")
    for what, change in CHAIN:
        change(tree)
        (tree / "payload.bin").write_bytes(os.urandom(MEDIUM))
        fetched, by_fetch = await fetch.compare("delta", what)
        read_again, by_reread = await reread.step("delta", what)
        assert (fetched.delta_source, read_again.delta_source) == ("fetch", "reread"), what
        assert_equal_trees(by_fetch, by_reread, what)
