"""The tree comparison the incremental engine tests rest on (tests/treetools.py): it sees
every field it promises, hard links and xattrs included, and it can fail."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from tests.treetools import assert_equal_trees, differences, read_tree


@dataclass(frozen=True)
class Member:
    """One archive member, written with every field set (tarfile's defaults hide nothing)."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000
    link: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)


TREE = (
    Member("srv", tarfile.DIRTYPE, mode=0o755),
    Member("srv/data", tarfile.DIRTYPE, mode=0o750, uid=1000, gid=1000),
    Member("srv/data/a.txt", data=b"a\n"),
    Member("srv/data/run.sh", data=b"#!/bin/sh\n", mode=0o755),
    Member("srv/data/run-link", tarfile.LNKTYPE, link="srv/data/run.sh"),
    Member("srv/data/link", tarfile.SYMTYPE, link="a.txt"),
    Member("srv/data/fifo", tarfile.FIFOTYPE),
    Member("srv/data/tool", data=b"\x7fELF", xattrs={"SCHILY.xattr.security.capability": "c"}),
    Member("etc", tarfile.DIRTYPE),
)


def archive(members: tuple[Member, ...]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.mode, info.uid, info.gid = m.kind, m.mode, m.uid, m.gid
            info.mtime, info.linkname, info.pax_headers = m.mtime, m.link, m.xattrs
            info.size = len(m.data) if m.kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(m.data) if m.kind == tarfile.REGTYPE else None)
    buf.seek(0)
    return buf


def changed(name: str, **values: Any) -> tuple[Member, ...]:
    """TREE with the member ``name`` changed."""
    return tuple(replace(m, **values) if m.name == name else m for m in TREE)


def test_one_archive_read_twice_is_the_same_tree() -> None:
    """Two reads of one archive compare equal: no field depends on the read."""
    assert differences(read_tree(archive(TREE)), read_tree(archive(TREE))) == []


def test_the_order_of_the_archive_does_not_matter() -> None:
    """The same entries in another order (a hard link still after its target) are the same tree."""
    backwards = [m for m in TREE[::-1] if m.kind != tarfile.LNKTYPE]
    reordered = (*backwards, TREE[4])
    assert differences(read_tree(archive(TREE)), read_tree(archive(reordered))) == []


CHANGES: dict[str, tuple[tuple[Member, ...], str]] = {
    "content": (changed("srv/data/a.txt", data=b"b\n"), "srv/data/a.txt: sha256"),
    "size": (changed("srv/data/a.txt", data=b"a\n\n"), "srv/data/a.txt: size 2 in first, 3"),
    "mode": (changed("srv/data/a.txt", mode=0o600), "srv/data/a.txt: mode 0o644 in first, 0o600"),
    "uid": (changed("srv/data", uid=0), "srv/data: uid 1000 in first, 0"),
    "gid": (changed("srv/data", gid=7), "srv/data: gid 1000 in first, 7"),
    "mtime": (changed("srv/data/a.txt", mtime=1), "srv/data/a.txt: mtime 1700000000 in first, 1"),
    "symlink target": (changed("srv/data/link", link="run.sh"), "srv/data/link: link 'a.txt'"),
    "type": (changed("srv/data/fifo", kind=tarfile.DIRTYPE), "srv/data/fifo: kind 'fifo'"),
    "xattr": (
        changed("srv/data/tool", xattrs={"SCHILY.xattr.security.capability": "d"}),
        "srv/data/tool: xattrs",
    ),
    "xattr gone": (changed("srv/data/tool", xattrs={}), "srv/data/tool: xattrs"),
    "missing": (TREE[:2] + TREE[3:], "srv/data/a.txt: only in first"),
    "extra": ((*TREE, Member("srv/data/new")), "srv/data/new: only in second"),
    "hard link undone": (
        changed("srv/data/run-link", kind=tarfile.REGTYPE, data=b"#!/bin/sh\n", mode=0o755),
        "hard links ['srv/data/run-link', 'srv/data/run.sh']: only in first",
    ),
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_changed_field_is_a_difference_named_by_entry_and_field(change: str) -> None:
    """Each field, entry and hard link the engine tests compare makes a difference line."""
    members, expected = CHANGES[change]
    found = differences(read_tree(archive(TREE)), read_tree(archive(members)))
    assert any(line.startswith(expected) for line in found), found
    entry = expected.split(":")[0]
    assert all(line.startswith(entry) for line in found), found


def test_a_hard_link_has_its_targets_content_and_fields() -> None:
    """A hard-link member (no data of its own) describes as the file it links to."""
    tree = read_tree(archive(TREE))
    assert tree.nodes["srv/data/run-link"] == tree.nodes["srv/data/run.sh"]
    assert tree.hard_links == {frozenset({"srv/data/run.sh", "srv/data/run-link"})}


def test_an_init_layer_entry_is_compared_but_for_its_mtime() -> None:
    """The engine's per-container entries (etc/) may differ in mtime only."""
    volatile = frozenset({"etc"})
    first = read_tree(archive(TREE), volatile)
    assert differences(first, read_tree(archive(changed("etc", mtime=5)), volatile)) == []
    other_mode = read_tree(archive(changed("etc", mode=0o700)), volatile)
    assert differences(first, other_mode) == ["etc: mode 0o644 in first, 0o700 in second"]


def test_a_subtree_keeps_its_entries_and_its_hard_links() -> None:
    """``under`` keeps the names at and below a prefix, and the hard-link groups inside it."""
    part = read_tree(archive(TREE)).under("srv/data")
    assert "srv" not in part.nodes
    assert "srv/data" in part.nodes
    assert "etc" not in part.nodes
    assert len(part.hard_links) == 1


def test_assert_equal_trees_fails_naming_the_differences() -> None:
    """The assertion the engine tests use raises with the entries that differ."""
    same = read_tree(archive(TREE))
    assert_equal_trees(same, read_tree(archive(TREE)), "equal")
    other = read_tree(archive(changed("srv/data/a.txt", data=b"b\n")))
    with pytest.raises(AssertionError, match=r"delta: 1 differences\n  srv/data/a.txt: sha256"):
        assert_equal_trees(same, other, "delta")
