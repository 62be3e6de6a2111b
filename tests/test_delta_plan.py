"""What a delta holds: the entries that changed, whole hard-link groups, their parents, and
a whiteout for each topmost deletion (kegpackd.packaging.delta, on layer tars made here)."""

from __future__ import annotations

import io
import tarfile

from kegpackd.archive.entries import Entry
from kegpackd.packaging.delta import DeltaPlan, Scan, plan_delta
from kegpackd.packaging.mountindex import MountIndex

Tree = dict[str, bytes | tuple[str, str] | None]


def layer(tree: Tree) -> bytes:
    """A layer tar of ``tree``: bytes a file, None a directory, ("link", target) a hard
    link, ("sym", target) a symlink; mtimes fixed so equal trees give equal bytes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, value in tree.items():
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            data = None
            if value is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
            elif isinstance(value, tuple):
                info.type = tarfile.LNKTYPE if value[0] == "link" else tarfile.SYMTYPE
                info.linkname = value[1]
            else:
                info.size, data = len(value), io.BytesIO(value)
            tar.addfile(info, data)
    return out.getvalue()


def scan(tree: Tree, previous: MountIndex | None = None) -> Scan:
    result = Scan(previous)
    result.feed(layer(tree))
    result.finish()
    return result


def index_of(tree: Tree) -> MountIndex:
    return MountIndex((), 0, (("sha256:x", 1),), ("/srv/keg",), 0, scan(tree).index_entries())


BASE: Tree = {
    "srv": None,
    "srv/keg": None,
    "srv/keg/a.txt": b"alpha",
    "srv/keg/sub": None,
    "srv/keg/sub/b.txt": b"beta",
    "srv/keg/sub/deep": None,
    "srv/keg/sub/deep/c.txt": b"gamma",
    "srv/keg/other": None,
    "srv/keg/other/d.txt": b"delta",
}


def planned(before: Tree, after: Tree) -> DeltaPlan:
    """The delta from ``before`` to ``after``, scanned as a job scans (against the index)."""
    previous = index_of(before)
    return plan_delta(previous, scan(after, previous).entries)


def paths(entries: list[Entry]) -> list[str]:
    return [e.path for e in entries]


def test_an_unchanged_tree_plans_nothing() -> None:
    """The same tree again: no changed entry, no deletion."""
    plan = planned(BASE, BASE)
    assert (plan.changed, plan.deleted, plan.whiteouts) == (0, 0, [])


def test_a_changed_file_comes_with_its_parents_only() -> None:
    """One file's content changed: that file and the directories above it, in layer order."""
    tree = {**BASE, "srv/keg/sub/b.txt": b"BETA"}
    plan = planned(BASE, tree)
    assert paths(plan.include) == ["srv", "srv/keg", "srv/keg/sub", "srv/keg/sub/b.txt"]


def test_a_deleted_directory_gets_one_whiteout() -> None:
    """A whole directory deleted: one whiteout for it, none for what it held."""
    tree = {k: v for k, v in BASE.items() if not k.startswith("srv/keg/sub")}
    plan = planned(BASE, tree)
    assert plan.whiteouts == ["srv/keg/sub"]
    assert plan.deleted == 4


def test_a_file_replaced_by_a_directory_needs_no_whiteout_below_it() -> None:
    """A directory that became a file: the file, and no whiteouts under a non-directory."""
    tree = {k: v for k, v in BASE.items() if not k.startswith("srv/keg/other")}
    tree["srv/keg/other"] = b"now a file"
    plan = planned(BASE, tree)
    assert "srv/keg/other" in paths(plan.include)
    assert plan.whiteouts == []


def test_a_new_hard_link_brings_its_whole_group() -> None:
    """A new link to an unchanged file: the file travels too, so the link is in the layer."""
    base = {**BASE, "srv/keg/l1": ("link", "srv/keg/a.txt")}
    tree = {**base, "srv/keg/l2": ("link", "srv/keg/a.txt")}
    plan = planned(base, tree)
    assert {"srv/keg/a.txt", "srv/keg/l1", "srv/keg/l2"} <= set(paths(plan.include))
    assert "srv/keg/a.txt" in plan.missing


def test_the_planned_size_is_the_bytes_of_the_entries() -> None:
    """The size is every included entry's header and padded data, plus the end marker."""
    tree = {**BASE, "srv/keg/new.txt": b"x" * 1000}
    plan = planned(BASE, tree)
    sizes = sum(e.header_size + -(-e.size // 512) * 512 for e in plan.include)
    assert plan.size == sizes + 1024


def test_a_changed_symlink_target_is_a_change() -> None:
    """A symlink pointed elsewhere is in the delta (its target is in its header)."""
    base = {**BASE, "srv/keg/s": ("sym", "a.txt")}
    tree = {**BASE, "srv/keg/s": ("sym", "sub/b.txt")}
    plan = planned(base, tree)
    assert "srv/keg/s" in paths(plan.include)
