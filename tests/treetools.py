"""An image's whole file system as a tree of entries, and the differences between two trees.

The yardstick of incremental packaging: an image made of deltas must flatten to exactly
the tree a full package of the same state flattens to. ``flatten`` reads an image through
the engine (``docker create``, then ``docker export`` of that container: the engine applies
the layers, whiteouts and opaque directories itself), ``differences`` names every entry and
field on which two trees disagree.
"""

from __future__ import annotations

import hashlib
import stat
import subprocess
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import IO

from tests.dockertools import Docker

# What the engine makes in each container's init layer, with that container's creation time
# as mtime: two containers of one image differ there and nowhere else (measured on dockerd
# 20.10 and 26). Every other field of these entries is compared.
INIT_LAYER = frozenset(
    {
        ".dockerenv",
        "dev",
        "dev/console",
        "dev/pts",
        "dev/shm",
        "etc",
        "etc/hostname",
        "etc/hosts",
        "etc/mtab",
        "etc/resolv.conf",
        "proc",
        "sys",
    }
)
XATTR_PREFIX = "SCHILY.xattr."
KINDS = {
    tarfile.REGTYPE: "file",
    tarfile.AREGTYPE: "file",
    tarfile.CONTTYPE: "file",
    tarfile.DIRTYPE: "dir",
    tarfile.SYMTYPE: "symlink",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CHRTYPE: "char",
    tarfile.BLKTYPE: "block",
}


@dataclass(frozen=True)
class Node:
    """One entry as the image shows it; a hard link's node is its target's."""

    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    sha256: str
    link: str
    device: str
    # None where the engine sets it per container (INIT_LAYER).
    mtime: int | None
    xattrs: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Tree:
    nodes: Mapping[str, Node]
    # Names that share one inode, each group of two or more.
    hard_links: frozenset[frozenset[str]]

    def under(self, prefix: str) -> Tree:
        """The part of the tree at and below ``prefix`` (names kept whole)."""
        inside = {n: v for n, v in self.nodes.items() if n == prefix or n.startswith(prefix + "/")}
        groups = (frozenset(n for n in g if n in inside) for g in self.hard_links)
        return Tree(inside, frozenset(g for g in groups if len(g) > 1))


def _node(member: tarfile.TarInfo, content: IO[bytes] | None, volatile: bool) -> Node:
    kind = KINDS.get(member.type, f"type {member.type!r}")
    digest = hashlib.sha256(content.read() if content is not None else b"").hexdigest()
    return Node(
        kind=kind,
        mode=stat.S_IMODE(member.mode),
        uid=member.uid,
        gid=member.gid,
        size=member.size if kind == "file" else 0,
        sha256=digest if kind == "file" else "",
        link=member.linkname if kind == "symlink" else "",
        device=f"{member.devmajor},{member.devminor}" if kind in ("char", "block") else "",
        mtime=None if volatile else int(member.mtime),
        xattrs=tuple(
            sorted(
                (key.removeprefix(XATTR_PREFIX), value)
                for key, value in member.pax_headers.items()
                if key.startswith(XATTR_PREFIX)
            )
        ),
    )


def read_tree(stream: IO[bytes], volatile: frozenset[str] = frozenset()) -> Tree:
    """The tree a tar stream describes, read once from start to end; the mtimes of the
    ``volatile`` names are left out."""
    nodes: dict[str, Node] = {}
    # Each hard-link group by the name that holds the data (the archive's first name).
    groups: dict[str, set[str]] = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            name = member.name.removeprefix("./").rstrip("/") or "."
            if member.islnk():
                target = member.linkname.removeprefix("./").rstrip("/")
                if target not in nodes:
                    raise AssertionError(f"hard link {name!r} to {target!r}, not seen before it")
                nodes[name] = nodes[target]
                groups.setdefault(target, {target}).add(name)
                continue
            content = tar.extractfile(member) if member.isreg() else None
            nodes[name] = _node(member, content, name in volatile)
    return Tree(nodes, frozenset(frozenset(g) for g in groups.values()))


def flatten(docker: Docker, image: str) -> Tree:
    """``image``'s file system as the engine exports a container created from it (never
    started, removed again)."""
    cid = docker.run("create", "--pull", "never", "--network", "none", image, "true").strip()
    try:
        with subprocess.Popen(
            ["docker", "-H", docker.env.docker_host, "export", cid],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as export:
            assert export.stdout is not None
            tree = read_tree(export.stdout, INIT_LAYER)
            export.stdout.read()
            _, stderr = export.communicate(timeout=600)
        assert export.returncode == 0, f"docker export {cid} failed: {stderr.decode()}"
    finally:
        docker.run("rm", "-f", cid, check=False)
    return tree


def _shown(field: str, value: object) -> str:
    if field == "mode" and isinstance(value, int):
        return oct(value)
    return repr(value)


def differences(
    first: Tree, second: Tree, names: tuple[str, str] = ("first", "second")
) -> list[str]:
    """One line per entry missing from one tree, field that differs, and hard-link group
    that only one tree has; empty when the trees are the same."""
    found: list[str] = []
    for name in sorted(first.nodes.keys() | second.nodes.keys()):
        a, b = first.nodes.get(name), second.nodes.get(name)
        if a is None or b is None:
            found.append(f"{name}: only in {names[0] if b is None else names[1]}")
            continue
        for field in fields(Node):
            va, vb = getattr(a, field.name), getattr(b, field.name)
            if va != vb:
                found.append(
                    f"{name}: {field.name} {_shown(field.name, va)} in {names[0]}, "
                    f"{_shown(field.name, vb)} in {names[1]}"
                )
    for group, where in (
        *((g, names[0]) for g in first.hard_links - second.hard_links),
        *((g, names[1]) for g in second.hard_links - first.hard_links),
    ):
        found.append(f"hard links {sorted(group)}: only in {where}")
    return found


def assert_equal_trees(expected: Tree, actual: Tree, what: str = "") -> None:
    """Fail naming (up to 40 of) the differences between the two trees."""
    found = differences(expected, actual, ("expected", "actual"))
    if found:
        shown = "\n  ".join(found[:40])
        more = f"\n  … and {len(found) - 40} more" if len(found) > 40 else ""
        raise AssertionError(f"{what}: {len(found)} differences\n  {shown}{more}")
