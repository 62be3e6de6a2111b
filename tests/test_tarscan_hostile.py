"""Hostile tar streams: no entry that any reader would place outside the root ever gets through.

The engine extracts with Go's archive/tar, which the scanner follows; Python's tarfile resolves
some header groups differently (first PAX path or GNU long name wins, GNU.sparse.name always
applies), so it serves as a second reader: whatever the scanner passes must stay inside the
root for it too. Archives go through the layer mode the pipeline runs (see test_tarscan.py).
"""

from __future__ import annotations

import io
import itertools
import posixpath
import tarfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kegpackd.archive.ignore import ExcludeRules
from kegpackd.errors import TarFormatError
from tests.tartools import Entry, build, pax_record, raw_member
from tests.test_tarscan import END, PREFIX, described, make_scanner, read, scan

ROOT = "app"
GNU_MAGIC = b"ustar  \x00"
SPARSE_01 = {
    b"GNU.sparse.major": b"0",
    b"GNU.sparse.minor": b"1",
    b"GNU.sparse.numblocks": b"0",
    b"GNU.sparse.map": b"",
}
ROOT_DIR = raw_member(b"app", typeflag=b"5")
FILE = raw_member(b"app/f", b"data")


def pax_header(records: dict[bytes, bytes], typeflag: bytes = b"x") -> bytes:
    """A PAX extended (or, with typeflag g, global) header with its records."""
    payload = b"".join(pax_record(key, value) for key, value in records.items())
    return raw_member(b"PaxHeaders/x", payload, typeflag=typeflag)


def gnu_long(name: bytes, typeflag: bytes = b"L") -> bytes:
    """A GNU long-name ('L') or long-link ('K') header with its NUL-terminated payload."""
    return raw_member(b"././@LongLink", name + b"\x00", typeflag=typeflag, magic=GNU_MAGIC)


def refusal(data: bytes, rules: ExcludeRules | None = None) -> str:
    """The TarFormatError message the scanner raises for ``data``."""
    with pytest.raises(TarFormatError) as info:
        scan(data, ROOT, rules)
    return str(info.value)


def inside(name: str, root: str = ROOT) -> bool:
    """Whether ``name`` normalises to ``root`` or below it, as a relative name."""
    if name.startswith("/"):
        return False
    clean = posixpath.normpath(name)
    return clean == root or clean.startswith(root + "/")


def python_names(layer: bytes) -> list[tuple[str, str]]:
    """(name, hard-link target or '') of every member, as Python's tarfile reads them."""
    with tarfile.open(fileobj=io.BytesIO(layer + END), mode="r:") as tar:
        return [(m.name, m.linkname if m.islnk() else "") for m in tar]


def assert_all_inside(layer: bytes) -> None:
    """Every member and hard-link target Python's tarfile reads lies inside the root's place
    in the layer."""
    for name, link in python_names(layer):
        assert inside(name, PREFIX + ROOT), name
        assert not link or inside(link, PREFIX + ROOT), link


# --- long names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("length", [101, 256, 4000])
def test_long_names_and_link_targets_pass_unchanged(fmt: int, length: int) -> None:
    """Names, hard-link and symlink targets longer than 100 and 255 bytes reach the layer whole."""
    long_name = "app/" + "n" * (length - 4)
    archive = build(
        [
            Entry("app", "dir"),
            Entry(long_name, data=b"x"),
            Entry("app/" + "h" * (length - 4), "hardlink", link=long_name),
            Entry("app/s", "symlink", link="t" * length),
        ],
        fmt,
    )
    out, scanner = scan(archive, chunks=[97])
    assert described(out) == described(archive, prefix="")
    assert scanner.entries == 4


def test_ustar_prefix_split_name_over_100_passes() -> None:
    """A ustar name split into prefix and name (over 100 bytes, no extension) passes."""
    name = "app/" + "p" * 120 + "/" + "q" * 90
    archive = build([Entry("app", "dir"), Entry(name, data=b"x")], tarfile.USTAR_FORMAT)
    out, _ = scan(archive, chunks=[512])
    assert read(out)[1] == (name, b"x")


# --- escaping names: one way in each -----------------------------------------------------------


@pytest.mark.parametrize(
    "name", [b"../../etc/passwd", b"/etc/passwd", b"app/../../etc/passwd", b"app/../etc", b""]
)
def test_pax_path_over_a_harmless_ustar_name_is_refused(name: bytes) -> None:
    """A PAX path record replaces the ustar name 'app/f'; an escaping one is refused."""
    message = refusal(ROOT_DIR + pax_header({b"path": name}) + FILE + END)
    assert "lies outside 'app'" in message


def test_pax_linkpath_of_a_hard_link_outside_the_root_is_refused() -> None:
    """A PAX linkpath record is the hard link's target and is checked."""
    link = raw_member(b"app/h", typeflag=b"1", linkname=b"app/f")
    data = ROOT_DIR + FILE + pax_header({b"linkpath": b"../../etc/shadow"}) + link + END
    assert "'../../etc/shadow'" in refusal(data)


def test_gnu_long_name_with_dotdot_in_the_middle_is_refused() -> None:
    """A GNU long name that climbs out after a long harmless prefix is refused."""
    name = b"app/" + b"a" * 150 + b"/../../../etc/passwd"
    message = refusal(ROOT_DIR + gnu_long(name) + FILE + END)
    assert "etc/passwd" in message


def test_gnu_long_link_of_a_hard_link_outside_the_root_is_refused() -> None:
    """A GNU long-link ('K') target of a hard link must stay inside the root."""
    link = raw_member(b"app/h", typeflag=b"1", linkname=b"app/f", magic=GNU_MAGIC)
    data = ROOT_DIR + FILE + gnu_long(b"/" + b"e" * 200, b"K") + link + END
    assert "lies outside 'app'" in refusal(data)


def test_gnu_long_link_of_a_symlink_is_content() -> None:
    """A long symlink target may point anywhere, like a short one."""
    link = raw_member(b"app/s", typeflag=b"2", magic=GNU_MAGIC)
    data = ROOT_DIR + gnu_long(b"/" + b"e" * 200, b"K") + link + END
    assert read(scan(data)[0]) == [("app/", b""), ("app/s", b"/" + b"e" * 200)]


# --- header groups that readers resolve differently --------------------------------------------


@pytest.mark.parametrize(
    "group",
    [
        pax_header({b"path": b"../../etc/passwd"}) + gnu_long(b"app/ok"),
        pax_header({b"path": b"../../etc/passwd"}) + pax_header({b"path": b"app/ok"}),
        gnu_long(b"../../etc/passwd") + gnu_long(b"app/ok"),
        gnu_long(b"") + pax_header({b"path": b"app/ok"}),
        pax_header({b"path": b"app/ok", b"GNU.sparse.name": b"../../etc/passwd"}),
    ],
    ids=["pax-then-long", "pax-then-pax", "long-then-long", "empty-long-name", "sparse-name"],
)
def test_every_name_in_a_header_group_must_stay_inside(group: bytes) -> None:
    """Where Go and Python pick different names from one group, both must lie inside."""
    data = ROOT_DIR + group + FILE + END
    message = refusal(data)
    assert "lies outside 'app'" in message
    assert "also named" in message


def test_every_hard_link_target_in_a_header_group_must_stay_inside() -> None:
    """Two GNU long links: the first (Python's choice) may not escape either."""
    link = raw_member(b"app/h", typeflag=b"1", magic=GNU_MAGIC)
    group = gnu_long(b"/etc/shadow", b"K") + gnu_long(b"app/f", b"K")
    assert "also to '/etc/shadow'" in refusal(ROOT_DIR + FILE + group + link + END)


def test_agreeing_names_in_a_header_group_pass() -> None:
    """A PAX path and a GNU long name that both lie inside the root pass; Go's (the last) wins."""
    data = ROOT_DIR + pax_header({b"path": b"app/a"}) + gnu_long(b"app/b") + FILE + END
    assert read(scan(data)[0]) == [("app/", b""), ("app/b", b"data")]


def test_gnu_sparse_name_renames_a_pax_sparse_file_as_go_does() -> None:
    """With GNU sparse 0.1 records, Go names the member GNU.sparse.name; that name is checked."""
    records = {b"path": b"app/ok", **SPARSE_01, b"GNU.sparse.name": b"etc/passwd"}
    message = refusal(ROOT_DIR + pax_header(records) + FILE + END)
    assert "entry 'etc/passwd' lies outside 'app'" in message


def test_gnu_sparse_name_decides_exclusion_as_go_does() -> None:
    """The sparse file is excluded or kept under the name Go gives it."""
    records = {b"path": b"app/keep", **SPARSE_01, b"GNU.sparse.name": b"app/x.log"}
    data = ROOT_DIR + pax_header(records) + FILE + END
    out, scanner = scan(data, rules=ExcludeRules.parse(["*.log"], "label kegpack.exclude"))
    assert scanner.excluded == 1
    assert read(out) == [("app/", b"")]


def test_gnu_sparse_00_offset_records_make_a_sparse_file() -> None:
    """Sparse 0.0 (offset/numbytes records, no version) also renames, as in Go."""
    records = b"".join(
        [
            pax_record(b"GNU.sparse.offset", b"0"),
            pax_record(b"GNU.sparse.numbytes", b"4"),
            pax_record(b"GNU.sparse.name", b"app/x.log"),
            pax_record(b"path", b"app/keep"),
        ]
    )
    header = raw_member(b"PaxHeaders/x", records, typeflag=b"x")
    data = ROOT_DIR + header + FILE + END
    _, scanner = scan(data, rules=ExcludeRules.parse(["*.log"], "label kegpack.exclude"))
    assert scanner.excluded == 1


def test_gnu_sparse_name_of_an_unknown_version_does_not_rename() -> None:
    """Go ignores GNU.sparse.name for an unknown sparse version; the member keeps its path."""
    records = {b"path": b"app/keep", b"GNU.sparse.major": b"2", b"GNU.sparse.minor": b"0"}
    records[b"GNU.sparse.name"] = b"app/x.log"
    data = ROOT_DIR + pax_header(records) + FILE + END
    out, scanner = scan(data, rules=ExcludeRules.parse(["keep"], "label kegpack.exclude"))
    assert scanner.excluded == 1
    assert read(out) == [("app/", b"")]
    # Kept, it is refused (its GNU.sparse records cannot go in a layer) under that same name.
    assert "sparse entry 'app/keep' cannot go in a layer" in refusal(data)


@pytest.mark.parametrize("key", [b"path", b"linkpath", b"GNU.sparse.name"])
def test_pax_global_header_with_a_name_outside_the_root_is_refused(key: bytes) -> None:
    """Python applies a global header's names to later members; they must lie inside too."""
    data = ROOT_DIR + pax_header({key: b"../../etc/passwd"}, b"g") + FILE + END
    assert "PAX global header name '../../etc/passwd' lies outside 'app'" in refusal(data)


def test_pax_global_header_with_a_name_inside_the_root_passes() -> None:
    """A global header naming something below the root is accepted (and left out)."""
    data = ROOT_DIR + pax_header({b"path": b"app/g"}, b"g") + FILE + END
    assert read(scan(data)[0]) == [("app/", b""), ("app/f", b"data")]


# --- property tests ------------------------------------------------------------------------------

NAMES = [
    "app",
    "app/f",
    "app/d/",
    "app/x/../y",
    "app/../app/z",
    "app//v",
    "app/" + "a" * 120,
    "app/" + "b" * 150 + "/" + "c" * 150,
    "app/" + "q" * 110 + "/../../../etc",
    "app/\u00fc\u00f1\u00ee",
    "./app/w",
    "../x",
    "..",
    "/etc/passwd",
    "/app/f",
    "app/../../etc/passwd",
    "other/x",
    "appx",
    "",
]
NAME = st.one_of(
    st.sampled_from(NAMES),
    st.lists(st.sampled_from(["app", "..", ".", "", "a", "b" * 60]), max_size=6).map("/".join),
)
KINDS = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
}


def member_bytes(name: str, kind: str, link: str, fmt: int) -> bytes | None:
    """One member as tarfile writes it in ``fmt`` (headers and data), or None if it cannot."""
    buf = io.BytesIO()
    info = tarfile.TarInfo(name)
    info.type = KINDS[kind]
    info.linkname = link
    data = name.encode("utf-8", "surrogateescape")[:700] if kind == "file" else b""
    info.size = len(data)
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        try:
            tar.addfile(info, io.BytesIO(data))
        except ValueError:  # a name too long for the format
            return None
        return buf.getvalue()[: tar.offset]


@st.composite
def meta_groups(draw: st.DrawFn) -> bytes:
    """Extra header blocks that give the next member other names: PAX records, GNU L/K."""
    pieces = []
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        kind = draw(st.sampled_from(["pax", "L", "K", "global"]))
        value = draw(NAME).encode("utf-8", "surrogateescape")
        if kind in ("L", "K"):
            pieces.append(gnu_long(value, kind.encode()))
        else:
            key = draw(st.sampled_from([b"path", b"linkpath", b"GNU.sparse.name"]))
            pieces.append(pax_header({key: value}, b"g" if kind == "global" else b"x"))
    return b"".join(pieces)


@st.composite
def hostile_archives(draw: st.DrawFn) -> bytes:
    """An archive under 'app' whose members may carry escaping names in any form tar allows."""
    fmt = draw(st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
    parts = [ROOT_DIR]
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        kind = draw(st.sampled_from(list(KINDS)))
        member = member_bytes(draw(NAME), kind, draw(NAME) if "link" in kind else "", fmt)
        if member is not None:
            parts.append(draw(meta_groups()) + member)
    return b"".join(parts) + END


def feed_in_chunks(data: bytes, cuts: list[int], rules: ExcludeRules | None) -> bytes | None:
    """Feed ``data`` split at ``cuts``; the output, or None if a TarFormatError was raised."""
    scanner = make_scanner(ROOT, rules)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    try:
        out = [scanner.feed(data[start:stop]) for start, stop in itertools.pairwise(bounds)]
        out.append(scanner.finish())
    except TarFormatError:
        return None
    return b"".join(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    archive=hostile_archives(),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=10),
    exclude=st.booleans(),
)
def test_hostile_archives_pass_only_entries_inside_the_root(
    archive: bytes, cuts: list[int], exclude: bool
) -> None:
    """Any chunking of a hostile archive raises TarFormatError or passes only inside entries."""
    rules = (
        ExcludeRules.parse(["*.log", "b*", "!bb*"], "label kegpack.exclude") if exclude else None
    )
    out = feed_in_chunks(archive, cuts, rules)
    if out is not None:
        assert_all_inside(out)


@settings(max_examples=200, deadline=None)
@given(
    archive=hostile_archives(),
    flips=st.lists(
        st.tuples(st.integers(min_value=0, max_value=20_000), st.integers(0, 255)), max_size=4
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=6),
)
def test_corrupted_hostile_archives_raise_only_tar_format_errors(
    archive: bytes, flips: list[tuple[int, int]], cuts: list[int]
) -> None:
    """Hostile archives with corrupted bytes give output or TarFormatError, nothing else."""
    data = bytearray(archive)
    for index, value in flips:
        data[index % len(data)] = value
    feed_in_chunks(bytes(data), cuts, None)
