"""Tar streams read entry by entry (kegpackd.archive.entries): fingerprints, a chosen set
kept, a container layer without what its mounts hide, one member of an export."""

from __future__ import annotations

import io
import tarfile

import pytest

from kegpackd.archive.entries import Entry, Fingerprinter, HiddenByMounts, MemberData, Selection

Spec = list[tuple[str, bytes | None]]


def tar_of(spec: Spec, mtime: int = 1_700_000_000) -> bytes:
    """A tar of ``spec``: (name, bytes) a file, (name, None) a directory."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in spec:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            if data is None:
                info.type = tarfile.DIRTYPE
            else:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def fed(reader: Fingerprinter | Selection | HiddenByMounts | MemberData, data: bytes) -> bytes:
    """The reader's output for ``data`` fed in awkward 333-byte chunks."""
    out = b"".join(reader.feed(data[i : i + 333]) for i in range(0, len(data), 333))
    return out + reader.finish()


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data + bytes(1024)), mode="r") as tar:
        return [m.name for m in tar]


def fingerprints(data: bytes) -> dict[str, bytes]:
    seen: list[Entry] = []
    fed(Fingerprinter("t", seen.append), data)
    return {e.path: e.fingerprint for e in seen}


SPEC: Spec = [("srv/", None), ("srv/web/", None), ("srv/web/a.txt", b"alpha" * 300)]


def test_every_entry_gets_a_fingerprint_named_as_in_a_layer() -> None:
    """Directories lose their trailing slash; each entry has a 32-byte fingerprint."""
    prints = fingerprints(tar_of(SPEC))
    assert sorted(prints) == ["srv", "srv/web", "srv/web/a.txt"]
    assert all(len(p) == 32 for p in prints.values())


def test_a_changed_mtime_changes_only_that_fingerprint() -> None:
    """The header is part of the fingerprint: metadata alone counts as a change."""
    before = fingerprints(tar_of(SPEC))
    after = fingerprints(tar_of(SPEC, mtime=1_700_000_001))
    assert all(before[p] != after[p] for p in before)
    assert fingerprints(tar_of(SPEC)) == before


def test_a_selection_keeps_the_wanted_entries_byte_for_byte() -> None:
    """Only the named entries pass, unchanged, and a matching fingerprint raises nothing."""
    data = tar_of(SPEC)
    wanted = {"srv/web/a.txt": fingerprints(data)["srv/web/a.txt"]}
    mismatches: list[str] = []
    selection = Selection("t", wanted, mismatches.append)
    assert names(fed(selection, data)) == ["srv/web/a.txt"]
    assert (mismatches, selection.seen) == ([], {"srv/web/a.txt"})


def test_a_selection_reports_an_entry_that_changed() -> None:
    """Another content than fingerprinted is reported by path."""
    wanted = {"srv/web/a.txt": fingerprints(tar_of(SPEC))["srv/web/a.txt"]}
    changed = tar_of([*SPEC[:2], ("srv/web/a.txt", b"other")])
    mismatches: list[str] = []
    fed(Selection("t", wanted, mismatches.append), changed)
    assert mismatches == ["srv/web/a.txt"]


def test_the_container_layer_loses_what_the_mounts_hide() -> None:
    """Entries at and under a mount point and a whiteout of it go; the rest stays."""
    layer = tar_of(
        [("srv/", None), ("srv/web/", None), ("srv/web/x", b"x"), ("srv/.wh.web", b""),
         ("srv/webby", b"kept"), ("tmp/", None), ("tmp/pid", b"1")]
    )  # fmt: skip
    hidden = HiddenByMounts("t", ["/srv/web"])
    assert names(fed(hidden, layer)) == ["srv", "srv/webby", "tmp", "tmp/pid"]
    assert (hidden.dropped, hidden.opaque_ancestors) == (3, [])


def test_an_opaque_directory_above_a_mount_point_is_reported() -> None:
    """An opaque mark on a mount's parent would hide the mounts' layers below it."""
    layer = tar_of([("srv/", None), ("srv/.wh..wh..opq", b"")])
    hidden = HiddenByMounts("t", ["/srv/web"])
    fed(hidden, layer)
    assert hidden.opaque_ancestors == ["srv"]


def test_one_member_of_an_outer_archive_is_its_data() -> None:
    """The wanted member's data comes out (padded to a block), nothing of the others."""
    inner = tar_of(SPEC)
    outer = tar_of([("a/layer.tar", b"not this"), ("b/layer.tar", inner)])
    member = MemberData("t", lambda e: e.path == "b/layer.tar")
    out = fed(member, outer)
    assert out[: len(inner)] == inner
    assert member.complete


@pytest.mark.parametrize("name", ["srv/web/" + "x" * 150, "srv/wéb/ü.txt"])
def test_long_and_unicode_names_are_read_from_their_pax_records(name: str) -> None:
    """A name only a PAX record can hold is the entry's path."""
    assert name in fingerprints(tar_of([(name, b"1")]))
