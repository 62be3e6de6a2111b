"""The streaming tar scanner (kegpackd/archive/tarscan.py) in the layer mode the pipeline runs.

Every archive goes through ``TarScanner(root, rules, layer_prefix=PREFIX)`` as a mount at
/srv/app does, and is read back with the prefix taken off: Go's reader rules (PAX, GNU long
names, sparse, base-256, limits), the root check and exclusion with exceptions.
"""

from __future__ import annotations

import io
import itertools
import random
import tarfile
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kegpackd.archive.ignore import ExcludeRules
from kegpackd.archive.tarscan import DEFAULT_MAX_HEADER_BYTES, TarScanner
from kegpackd.errors import InvalidValueError, TarFormatError
from tests.ignoretools import excluded
from tests.tartools import Entry, build, pax_record, raw_header, raw_member

FORMATS = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}
SRC = "label kegpack.exclude"
PREFIX = "srv/"
WHITEOUT = "app/.wh..wh..opq"
END = bytes(1024)
BIG = bytes(range(256)) * 23


# --- building archives --------------------------------------------------------------------------


def tree(fmt: str) -> list[Entry]:
    """A tree under 'app' with every member kind, long and odd names, as far as fmt allows."""
    entries = [
        Entry("app", "dir"),
        Entry("app/empty"),
        Entry("app/small.txt", data=b"hello\n"),
        Entry("app/sub", "dir"),
        Entry("app/sub/big.bin", data=BIG),
        Entry("app/sub/deeper", "dir"),
        Entry("app/sub/deeper/x.log", data=b"log line\n"),
        Entry("app/ünïcødé.txt", data="ü".encode()),
        Entry("app/line\nbreak", data=b"newline in name"),
        Entry("app/" + "d" * 90 + "/" + "e" * 90 + ".txt", data=b"over 100"),
        Entry("app/rel-link", "symlink", link="small.txt"),
        Entry("app/abs-link", "symlink", link="/etc/passwd"),
        Entry("app/hard", "hardlink", link="app/small.txt"),
        Entry("app/fifo", "fifo"),
        Entry("app/node_modules", "dir"),
        Entry("app/node_modules/pkg.js", data=b"js"),
    ]
    if fmt != "ustar":
        long_dir = "app/" + "L" * 150
        entries += [
            Entry(long_dir, "dir"),
            Entry(long_dir + "/" + "n" * 150, data=b"over 255"),
            Entry("app/long-link", "symlink", link="t" * 300),
            Entry("app/long-hard", "hardlink", link=long_dir + "/" + "n" * 150),
        ]
    return entries


def make_scanner(
    root: str = "app",
    rules: ExcludeRules | None = None,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> TarScanner:
    """A scanner as the pipeline makes one for a mount at ``/srv/<root>``."""
    return TarScanner(root, rules, layer_prefix=PREFIX, max_header_bytes=max_header_bytes)


def scan(
    data: bytes,
    root: str = "app",
    rules: ExcludeRules | None = None,
    chunks: Sequence[int] | None = None,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> tuple[bytes, TarScanner]:
    """Feed ``data`` split at ``chunks`` (sizes, cycled) or whole; return the output and scanner."""
    scanner = TarScanner(root, rules, layer_prefix=PREFIX, max_header_bytes=max_header_bytes)
    parts = []
    pos = 0
    sizes = list(chunks or [len(data) or 1])
    index = 0
    while pos < len(data):
        size = sizes[index % len(sizes)]
        parts.append(scanner.feed(data[pos : pos + size]))
        pos += size
        index += 1
    parts.append(scanner.finish())
    return b"".join(parts), scanner


def layer_members(layer: bytes, prefix: str = PREFIX) -> list[tarfile.TarInfo]:
    """The members of scanner output (or an input archive, with prefix ""), as tarfile reads
    them, the prefix taken off names and hard-link targets, the root's opaque whiteout left out.
    """
    with tarfile.open(fileobj=io.BytesIO(layer + END)) as tar:
        members = tar.getmembers()
        for member in members:
            assert member.name.startswith(prefix)
            member.name = member.name.removeprefix(prefix)
            if member.islnk():
                assert member.linkname.startswith(prefix)
                member.linkname = member.linkname.removeprefix(prefix)
            data = tar.extractfile(member) if member.isreg() else None
            member.pax_headers = {"data": (data.read() if data else b"").hex()}
    return [m for m in members if m.name != WHITEOUT]


def names(layer: bytes) -> list[str]:
    """Member names of scanner output as Python's tarfile reads them back."""
    return [m.name for m in layer_members(layer)]


def read(layer: bytes, prefix: str = PREFIX) -> list[tuple[str, bytes]]:
    """(name, data or link target) per member; a directory's name ends in '/'."""
    return [
        (
            m.name + ("/" if m.isdir() else ""),
            m.linkname.encode() if m.issym() or m.islnk() else bytes.fromhex(m.pax_headers["data"]),
        )
        for m in layer_members(layer, prefix)
    ]


def described(layer: bytes, prefix: str = PREFIX) -> list[tuple[object, ...]]:
    """Everything the engine creates from each member: name, kind, link, data, mode, owner, time."""
    return [
        (m.name, m.type, m.linkname, m.pax_headers["data"], m.mode, m.uid, m.gid, m.mtime)
        for m in layer_members(layer, prefix)
    ]


def rules(*patterns: str) -> ExcludeRules:
    return ExcludeRules.parse(patterns, SRC)


def format_error(data: bytes, root: str = "app", max_header_bytes: int = 1 << 20) -> TarFormatError:
    with pytest.raises(TarFormatError) as info:
        scan(data, root, max_header_bytes=max_header_bytes)
    return info.value


def end_of_marker(archive: bytes) -> int:
    """Offset just past the two zero blocks (tarfile pads the archive further with zeros)."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        last = tar.getmembers()[-1]
    data_end = (
        last.offset_data + (last.size + 511) // 512 * 512 if last.isreg() else last.offset_data
    )
    return data_end + 1024


# --- every member renamed into the layer, whatever the chunking ---------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_layer_keeps_every_member_with_its_metadata_and_data(fmt: str) -> None:
    """Without rules the layer holds every member as written, in every tar format."""
    archive = build(tree(fmt), FORMATS[fmt])
    assert described(scan(archive)[0]) == described(archive, prefix="")


@pytest.mark.parametrize("fmt", FORMATS)
def test_layer_puts_the_opaque_whiteout_right_after_the_root(fmt: str) -> None:
    """The root directory is followed by its opaque whiteout, under the prefix."""
    out = scan(build(tree(fmt), FORMATS[fmt]))[0]
    with tarfile.open(fileobj=io.BytesIO(out + END)) as tar:
        assert tar.getnames()[:3] == [PREFIX + "app", PREFIX + WHITEOUT, PREFIX + "app/empty"]


@pytest.mark.parametrize("chunk", [1, 511, 512, 513, 64 * 1024])
@pytest.mark.parametrize("fmt", FORMATS)
def test_layer_is_identical_for_fixed_chunk_sizes(fmt: str, chunk: int) -> None:
    """Splitting the input into fixed-size chunks never changes the output."""
    archive = build(tree(fmt), FORMATS[fmt])
    assert scan(archive, chunks=[chunk])[0] == scan(archive)[0]


@pytest.mark.parametrize("seed", range(8))
def test_layer_is_identical_for_random_splits(seed: int) -> None:
    """Random chunk boundaries never change the output."""
    rng = random.Random(seed)
    fmt = rng.choice(list(FORMATS))
    archive = build(tree(fmt), FORMATS[fmt])
    sizes = [rng.choice([1, 2, 100, 511, 512, 513, 1500, 4096]) for _ in range(50)]
    assert scan(archive, chunks=sizes)[0] == scan(archive)[0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_filtered_output_is_identical_across_chunkings(fmt: str) -> None:
    """With rules too, the output does not depend on how the input was split."""
    archive = build(tree(fmt), FORMATS[fmt])
    rule_set = rules("sub", "*.txt", "!small.txt")
    whole = scan(archive, rules=rule_set)[0]
    for sizes in ([1], [511], [513], [7, 1024, 3]):
        assert scan(archive, rules=rule_set, chunks=sizes)[0] == whole


def test_kept_data_chunks_are_returned_without_copying() -> None:
    """A chunk that is all kept member data comes back as the very same object."""
    archive = build([Entry("app", "dir"), Entry("app/big", data=bytes(300_000))])
    scanner = make_scanner()
    scanner.feed(archive[:1024])
    chunk = archive[1024 : 1024 + 65536]
    assert scanner.feed(chunk) is chunk


def test_memory_stays_flat_while_streaming_a_large_member() -> None:
    """Member data is forwarded as it arrives; nothing but a partial header is ever held."""
    size = 8 << 20
    head = raw_header(b"app/huge", size=size)
    scanner = make_scanner()
    assert scanner.feed(raw_member(b"app", typeflag=b"5")) != b""
    assert len(scanner.feed(head[:300])) == 0
    assert scanner.buffered_bytes == 300
    out = scanner.feed(head[300:])
    assert len(out) == 512
    chunk = bytes(65536)
    for _ in range(size // len(chunk)):
        assert len(scanner.feed(chunk)) == len(chunk)
        assert scanner.buffered_bytes == 0
    assert scanner.feed(END) == b""
    assert scanner.finish() == b""
    # Out: the input, and the root's whiteout, without the end-of-archive marker.
    assert scanner.output_bytes == scanner.input_bytes + 512 - len(END)


def test_buffer_stays_bounded_while_filtering_many_members() -> None:
    """With exclusions, what is held between feeds stays under one header group plus a chunk."""
    entries = [Entry("app", "dir")] + [
        Entry(f"app/{'y' * 120}{i:04d}.{'log' if i % 3 else 'dat'}", data=bytes(i % 700))
        for i in range(400)
    ]
    archive = build(entries, tarfile.PAX_FORMAT)
    scanner = make_scanner(rules=rules("*.log"))
    peak = 0
    for pos in range(0, len(archive), 4096):
        scanner.feed(archive[pos : pos + 4096])
        peak = max(peak, scanner.buffered_bytes)
    scanner.finish()
    assert scanner.excluded == 266
    assert peak <= 4096 + 3 * 512


# --- counting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_entries_count_each_member_once(fmt: str) -> None:
    """PAX and GNU long-name headers do not count as members of their own."""
    entries = tree(fmt)
    archive = build(entries, FORMATS[fmt])
    _, scanner = scan(archive)
    assert scanner.entries == len(entries)
    assert scanner.excluded == 0


def test_content_bytes_sum_member_data() -> None:
    """content_bytes is the data size of the members passed on, links and dirs adding none."""
    entries = tree("pax")
    _, scanner = scan(build(entries))
    assert scanner.content_bytes == sum(len(e.data) for e in entries)


def test_input_and_output_bytes_are_counted() -> None:
    """input_bytes and output_bytes count what went in and what came out."""
    archive = build(tree("gnu"), tarfile.GNU_FORMAT)
    out, scanner = scan(archive, rules=rules("sub"), chunks=[1000])
    assert scanner.input_bytes == len(archive)
    assert scanner.output_bytes == len(out) < len(archive)


def test_pax_global_header_is_left_out_and_uncounted() -> None:
    """A PAX global header, which the engine ignores, is not counted nor put in the layer."""
    archive = build(tree("pax"), pax_headers={"comment": "dropped"})
    out, scanner = scan(archive, rules=rules("*"))
    assert scanner.entries == len(tree("pax"))
    with tarfile.open(fileobj=io.BytesIO(out + END)) as tar:
        assert tar.pax_headers == {}
    assert names(out) == ["app"]


# --- excluding -----------------------------------------------------------------------------------


def test_excluded_directory_takes_its_subtree() -> None:
    """Excluding a directory drops everything below it."""
    out, scanner = scan(build(tree("pax")), rules=rules("node_modules"))
    assert "app/node_modules" not in names(out)
    assert "app/node_modules/pkg.js" not in names(out)
    assert scanner.excluded == 2


def test_double_star_matches_at_any_depth() -> None:
    """'**/*.log' reaches into subdirectories."""
    out, _ = scan(build(tree("pax")), rules=rules("**/*.log"))
    assert "app/sub/deeper/x.log" not in names(out)
    assert "app/sub/deeper" in names(out)


def test_single_star_stays_in_one_directory() -> None:
    """'*.log' matches only at the top of the mount: '*' does not cross '/'."""
    out, _ = scan(build(tree("pax")), rules=rules("*.log"))
    assert "app/sub/deeper/x.log" in names(out)


def test_exception_reincludes_a_member() -> None:
    """A later '!' pattern brings back a member an earlier pattern excluded."""
    out, _ = scan(build(tree("pax")), rules=rules("*.txt", "!small.txt"))
    assert "app/small.txt" in names(out)
    assert "app/ünïcødé.txt" not in names(out)


def test_last_matching_pattern_wins() -> None:
    """An exclude after an exception excludes again."""
    out, _ = scan(build(tree("pax")), rules=rules("*.txt", "!small.txt", "small*"))
    assert "app/small.txt" not in names(out)


def test_leading_slash_is_relative_to_the_mount() -> None:
    """'/sub' means the mount's sub, not a host path."""
    out, _ = scan(build(tree("pax")), rules=rules("/sub"))
    assert not any(n.startswith("app/sub") for n in names(out))


def test_root_entry_is_never_excluded() -> None:
    """Even '*' and '**' leave the root member itself."""
    for pattern in ("*", "**"):
        out, scanner = scan(build(tree("pax")), rules=rules(pattern))
        assert names(out) == ["app"]
        assert scanner.excluded == len(tree("pax")) - 1


def test_single_file_root_is_never_excluded() -> None:
    """For a single-file mount the one member is the root and always stays."""
    archive = build([Entry("my.conf", data=b"k=v\n")])
    out, scanner = scan(archive, root="my.conf", rules=rules("*", "my.conf"))
    assert read(out) == [("my.conf", b"k=v\n")]
    assert b".wh." not in out
    assert scanner.entries == 1


def test_filtered_output_reads_back_with_the_expected_members() -> None:
    """Python's tarfile reads the filtered stream, with exactly the kept members and data."""
    fmt = "gnu"
    out, _ = scan(build(tree(fmt), FORMATS[fmt]), rules=rules("sub", "*.txt", "!small.txt"))
    dropped = {"app/ünïcødé.txt", "app/sub", "app/sub/big.bin", "app/sub/deeper"}
    dropped.add("app/sub/deeper/x.log")
    assert names(out) == [e.name for e in tree(fmt) if e.name not in dropped]
    assert ("app/small.txt", b"hello\n") in read(out)


def test_hard_link_to_excluded_target_is_dropped() -> None:
    """A hard link whose target was excluded would dangle, so it goes too and counts as excluded."""
    out, scanner = scan(build(tree("pax")), rules=rules("small.txt"))
    assert "app/hard" not in names(out)
    assert "app/rel-link" in names(out)
    assert scanner.excluded == 2


def test_excluded_directory_is_kept_for_a_reincluded_member() -> None:
    """A '!'-re-included member keeps its excluded parent directory's own header."""
    archive = build(
        [
            Entry("app", "dir"),
            Entry("app/cache", "dir"),
            Entry("app/cache/junk", data=b"j"),
            Entry("app/cache/keep", data=b"k"),
            Entry("app/other", data=b"o"),
        ]
    )
    out, scanner = scan(archive, rules=rules("cache", "!cache/keep"))
    assert names(out) == ["app", "app/cache", "app/cache/keep", "app/other"]
    assert scanner.excluded == 1


def test_excluded_directory_is_dropped_when_nothing_below_is_kept() -> None:
    """A held-back directory is dropped once the stream leaves it without keeping anything."""
    archive = build(
        [
            Entry("app", "dir"),
            Entry("app/cache", "dir"),
            Entry("app/cache/junk", data=b"j"),
            Entry("app/other", data=b"o"),
        ]
    )
    out, scanner = scan(archive, rules=rules("cache", "!elsewhere"))
    assert names(out) == ["app", "app/other"]
    assert scanner.excluded == 2


def test_held_directories_past_the_limit_are_dropped_outermost_first() -> None:
    """Held-back directories never use more than max_header_bytes; the outermost goes first."""
    depth = 6
    entries = [Entry("app", "dir")]
    entries += [Entry("app/" + "/".join(["c"] * level), "dir") for level in range(1, depth + 1)]
    entries.append(Entry("app/" + "/".join(["c"] * depth) + "/keep", data=b"k"))
    out, scanner = scan(
        build(entries, tarfile.USTAR_FORMAT),
        rules=rules("c", "!**/keep"),
        max_header_bytes=4 * 512,
    )
    kept = names(out)
    assert kept[0] == "app"
    assert kept[-1].endswith("/keep")
    assert len(kept) == 2 + 4
    assert scanner.excluded == 2


# --- malformed input -----------------------------------------------------------------------------


def test_truncated_input_raises_from_finish() -> None:
    """Cutting the stream anywhere before the end of its end marker fails at finish()."""
    archive = build(tree("pax"))
    limit = end_of_marker(archive)
    cuts = sorted({*range(0, limit, 37), *range(0, limit, 512), *range(511, limit, 512), limit - 1})
    for cut in cuts:
        scanner = make_scanner()
        for pos in range(0, cut, 700):
            scanner.feed(archive[pos : min(pos + 700, cut)])
        with pytest.raises(TarFormatError):
            scanner.finish()


def test_end_marker_without_record_padding_is_accepted() -> None:
    """EOF right after the two zero blocks is a complete archive."""
    archive = build(tree("gnu"), tarfile.GNU_FORMAT)
    complete = archive[: end_of_marker(archive)]
    assert scan(complete)[0] == scan(archive)[0]


def test_missing_end_marker_raises() -> None:
    """Members with no zero blocks after them are an incomplete archive."""
    archive = raw_member(b"app", typeflag=b"5") + raw_member(b"app/x", b"data")
    error = format_error(archive)
    assert "end-of-archive marker" in str(error)


def test_single_zero_block_raises() -> None:
    """Half an end marker is not an end marker."""
    format_error(raw_member(b"app", typeflag=b"5") + bytes(512))


def test_lone_zero_block_followed_by_a_header_raises() -> None:
    """A zero block must be followed by a second one, not by more members."""
    data = raw_member(b"app", typeflag=b"5") + bytes(512) + raw_member(b"app/x") + END
    format_error(data)


def test_trailing_zero_padding_of_any_length_is_left_out() -> None:
    """Zeros after the marker, even an odd number, are tolerated and not put in the layer."""
    data = raw_member(b"app", typeflag=b"5") + END + bytes(3001)
    assert scan(data, chunks=[700])[0] == scan(raw_member(b"app", typeflag=b"5") + END)[0]


def test_non_zero_bytes_after_the_end_marker_raise() -> None:
    """Data after the end marker means the stream is not what it claims to be."""
    format_error(raw_member(b"app", typeflag=b"5") + END + bytes(100) + b"\x01")


def test_bad_checksum_raises() -> None:
    """A header whose checksum does not add up is rejected."""
    data = raw_member(b"app", typeflag=b"5") + raw_member(b"app/x", checksum="wrong") + END
    assert "checksum" in str(format_error(data))


def test_corrupted_header_byte_raises() -> None:
    """Flipping one byte of a tarfile-written header breaks its checksum."""
    archive = bytearray(build(tree("ustar"), tarfile.USTAR_FORMAT))
    archive[512 + 10] ^= 0x01
    format_error(bytes(archive))


def test_signed_checksum_is_accepted() -> None:
    """Old tars summed bytes as signed chars; Go and we accept that sum too."""
    data = (
        raw_member(b"app", typeflag=b"5")
        + raw_member("app/é".encode(), b"x", checksum="signed")
        + END
    )
    out, scanner = scan(data)
    assert read(out) == [("app/", b""), ("app/é", b"x")]
    assert scanner.entries == 2


def test_base256_size_field_is_read() -> None:
    """A GNU binary (base-256) size field frames the data correctly."""
    size_field = b"\x80" + (700).to_bytes(11, "big")
    data = (
        raw_member(b"app", typeflag=b"5")
        + raw_member(b"app/x", bytes(700), size_field=size_field)
        + END
    )
    out, scanner = scan(data)
    assert read(out) == [("app/", b""), ("app/x", bytes(700))]
    assert scanner.content_bytes == 700


def test_octal_fields_with_space_and_nul_padding_are_read() -> None:
    """Numbers padded with leading spaces and trailing space/NULs parse as Go parses them."""
    size_field = b"   1750 \x00\x00\x00\x00"
    member = raw_member(b"app/x", bytes(1000), size_field=size_field)
    data = raw_member(b"app", typeflag=b"5") + member + END
    _, scanner = scan(data)
    assert scanner.content_bytes == 1000


def test_non_octal_size_raises() -> None:
    """A size field that is not a number is a malformed header."""
    data = (
        raw_member(b"app", typeflag=b"5")
        + raw_header(b"app/x", size_field=b"12 34\x00      ")
        + END
    )
    format_error(data)


def test_ustar_prefix_field_is_joined_to_the_name() -> None:
    """The ustar prefix is part of the name, and is what the root check sees."""
    good = raw_member(b"x", b"data", prefix=b"app/dir")
    assert scan(raw_member(b"app", typeflag=b"5") + good + END)[1].entries == 2
    bad = raw_member(b"x", b"data", prefix=b"elsewhere")
    assert "'elsewhere/x'" in str(format_error(raw_member(b"app", typeflag=b"5") + bad + END))


def test_old_gnu_sparse_member_with_extension_block_is_framed() -> None:
    """A GNU 'S' member's sparse extension blocks belong to its header group and its 600 bytes
    of data follow them: excluded, the member after it is read right."""
    header = raw_header(
        b"app/sparse", typeflag=b"S", size=600, magic=b"ustar  \x00", extra={482: 1}
    )
    extension = bytes(512)
    after = raw_member(b"app/after", b"y")
    data = raw_member(b"app", typeflag=b"5") + header + extension + bytes(1024) + after + END
    out, scanner = scan(data, rules=rules("sparse"), chunks=[100])
    assert read(out) == [("app/", b""), ("app/after", b"y")]
    assert (scanner.entries, scanner.excluded, scanner.content_bytes) == (3, 1, 1)


def test_sparse_member_cannot_go_in_a_layer() -> None:
    """A kept sparse member is refused by name: a layer entry cannot carry its map."""
    header = raw_header(b"app/sparse", typeflag=b"S", size=600, magic=b"ustar  \x00")
    data = raw_member(b"app", typeflag=b"5") + header + bytes(1024) + END
    assert "sparse entry 'app/sparse' cannot go in a layer" in str(format_error(data))


def test_pax_header_without_a_member_raises() -> None:
    """A PAX header followed by the end marker has no member to describe."""
    with_member = build([Entry("app", "dir"), Entry("app/" + "p" * 200)])
    with tarfile.open(fileobj=io.BytesIO(with_member)) as tar:
        last = tar.getmembers()[-1]
    data = with_member[: last.offset_data - 512] + END
    assert "not followed by a member" in str(format_error(data))


APP_DIR = raw_member(b"app", typeflag=b"5")


@pytest.mark.parametrize(
    "payload",
    [
        b"99 path=app/x\n",
        b"13 pathapp/x\n",
        b"14 path=app/x!",
        b"15 path=app/\x00x\n",
        b"x path=app\n",
        pax_record(b"GNU.sparse.numbytes", b"1"),
        pax_record(b"GNU.sparse.offset", b"1,2"),
    ],
)
def test_malformed_pax_records_raise(payload: bytes) -> None:
    """Every way Go's parsePAX rejects a record is rejected here too."""
    pax = raw_member(b"PaxHeader", payload, typeflag=b"x")
    assert "PAX" in str(format_error(APP_DIR + pax + raw_member(b"app/x") + END))


def test_pax_size_record_overrides_the_header_size() -> None:
    """A PAX 'size' record frames the member's data instead of the ustar size field."""
    pax = raw_member(b"PaxHeader", pax_record(b"size", b"700"), typeflag=b"x")
    member = raw_header(b"app/x", size=0) + bytes(700) + bytes(-700 % 512)
    data = APP_DIR + pax + member + END
    out, scanner = scan(data, chunks=[333])
    assert read(out) == [("app/", b""), ("app/x", bytes(700))]
    assert scanner.content_bytes == 700
    assert read(scan(data, rules=rules("x"))[0]) == [("app/", b"")]


def test_pax_global_header_inside_a_header_group_raises() -> None:
    """A global header between a member's long name and the member itself is refused."""
    long_name = raw_member(b"././@LongLink", b"app/" + b"l" * 120 + b"\x00", typeflag=b"L")
    global_header = raw_member(b"PaxGlobal", pax_record(b"comment", b"x"), typeflag=b"g")
    data = APP_DIR + long_name + global_header + raw_member(b"app/x") + END
    assert "global" in str(format_error(data))


def test_negative_size_raises() -> None:
    """A base-256 size field holding a negative number is a malformed header."""
    data = APP_DIR + raw_header(b"app/x", size_field=b"\xff" * 12) + END
    assert "'app/x'" in str(format_error(data))


def test_v7_regular_file_with_trailing_slash_is_a_directory() -> None:
    """Typeflag NUL plus a trailing '/' is a directory to Go, so its size field frames no data."""
    legacy_dir = raw_header(b"app/d/", typeflag=b"\x00", size=100)
    data = APP_DIR + legacy_dir + raw_member(b"app/d/f", b"x") + END
    out, scanner = scan(data)
    assert read(out) == [("app/", b""), ("app/d/", b""), ("app/d/f", b"x")]
    assert scanner.entries == 3
    assert scanner.content_bytes == 1


def test_gnu_header_with_a_prefix_in_its_time_fields_uses_it() -> None:
    """Like Go, a GNU header whose atime/ctime are not numbers has a ustar prefix there."""
    gnu = b"ustar  \x00"
    good = raw_member(b"x", b"data", magic=gnu, prefix=b"app/sub")
    assert scan(APP_DIR + good + END)[1].entries == 2
    bad = raw_member(b"x", b"data", magic=gnu, prefix=b"evil")
    assert "'evil/x'" in str(format_error(APP_DIR + bad + END))


def test_extended_sparse_member_outside_gnu_format_raises() -> None:
    """Old-style sparse extension blocks only exist in GNU format, as Go insists."""
    header = raw_header(b"app/s", typeflag=b"S", size=0, extra={482: 1})
    format_error(APP_DIR + header + bytes(512) + END)


def test_empty_feed_returns_nothing() -> None:
    """Feeding an empty chunk is harmless."""
    scanner = make_scanner()
    assert scanner.feed(b"") == b""
    assert scanner.input_bytes == 0


def test_header_limit_below_one_group_is_refused() -> None:
    """A limit too small for a PAX header, its data and a member header makes no sense."""
    with pytest.raises(InvalidValueError):
        make_scanner(max_header_bytes=1024)


def test_scanner_keeps_raising_after_an_error() -> None:
    """Once the stream is known bad, every later call fails the same way."""
    scanner = make_scanner()
    with pytest.raises(TarFormatError) as first:
        scanner.feed(raw_member(b"../x") + END)
    with pytest.raises(TarFormatError) as again:
        scanner.feed(END)
    assert again.value is first.value


def test_feed_after_finish_is_a_programming_error() -> None:
    """feed() after finish() is a bug in the caller, not a bad archive."""
    scanner = make_scanner()
    scanner.feed(raw_member(b"app", typeflag=b"5") + END)
    scanner.finish()
    with pytest.raises(RuntimeError):
        scanner.feed(END)


# --- safety --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../x", "/etc/passwd", "other/x", "app/../../x", "appx/y", "app/../other", ".", ""]
)
def test_entry_outside_the_root_raises(name: str) -> None:
    """Every member must clean to the root or below it; the error names the entry."""
    data = raw_member(b"app", typeflag=b"5") + raw_member(name.encode(), b"x") + END
    assert repr(name) in str(format_error(data))


def test_entry_with_dotdot_that_stays_inside_is_accepted() -> None:
    """'..' that does not leave the root is only unusual spelling."""
    data = raw_member(b"app", typeflag=b"5") + raw_member(b"app/a/../b", b"x") + END
    assert read(scan(data)[0]) == [("app/", b""), ("app/b", b"x")]


def test_pax_path_outside_the_root_raises() -> None:
    """A PAX path record overrides the ustar name and is what gets checked."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("app/ok")
        info.pax_headers = {"path": "../evil"}
        tar.addfile(info, io.BytesIO(b""))
    assert "'../evil'" in str(format_error(buf.getvalue()))


def test_gnu_long_name_outside_the_root_raises() -> None:
    """A GNU long name is checked like any other name."""
    name = "../" + "x" * 200
    archive = build([Entry(name)], tarfile.GNU_FORMAT)
    assert repr(name) in str(format_error(archive))


def test_hard_link_target_outside_the_root_raises() -> None:
    """A hard link may only point at a member inside the root."""
    link = raw_member(b"app/h", typeflag=b"1", linkname=b"/etc/shadow")
    data = raw_member(b"app", typeflag=b"5") + link + END
    assert "'/etc/shadow'" in str(format_error(data))


def test_symlink_targets_are_not_checked() -> None:
    """A symlink's target is content: it may point anywhere."""
    archive = build(
        [
            Entry("app", "dir"),
            Entry("app/a", "symlink", link="/etc/passwd"),
            Entry("app/b", "symlink", link="../../x"),
        ]
    )
    assert read(scan(archive)[0]) == [
        ("app/", b""),
        ("app/a", b"/etc/passwd"),
        ("app/b", b"../../x"),
    ]


def test_root_must_be_a_relative_name() -> None:
    """The scanner refuses a root that could never be an archive member's name."""
    for root in ("", "/", "..", "../x"):
        with pytest.raises(InvalidValueError):
            make_scanner(root)


# --- header size limits --------------------------------------------------------------------------


def test_pax_header_over_the_limit_raises() -> None:
    """A PAX header larger than max_header_bytes is refused before it is buffered."""
    archive = build([Entry("app/" + "p" * 5000)])
    assert "limit" in str(format_error(archive, max_header_bytes=4096))


def test_pax_header_over_the_default_limit_raises() -> None:
    """The default limit is 1 MiB of headers per member."""
    archive = build([Entry("app/" + "p" * (1 << 20))])
    format_error(archive)


def test_gnu_long_name_over_the_limit_raises() -> None:
    """GNU long names count against the same limit."""
    archive = build([Entry("app/" + "g" * 5000)], tarfile.GNU_FORMAT)
    format_error(archive, max_header_bytes=4096)


def test_header_group_just_under_the_limit_is_accepted() -> None:
    """A PAX header that fits the limit passes."""
    archive = build([Entry("app", "dir"), Entry("app/" + "p" * 2000)])
    assert names(scan(archive, max_header_bytes=4096)[0]) == ["app", "app/" + "p" * 2000]


def test_empty_rules_pass_everything() -> None:
    """Empty rules behave like no rules: the same layer."""
    archive = build(tree("pax"))
    assert scan(archive, rules=ExcludeRules.parse([], SRC))[0] == scan(archive)[0]


def test_a_pattern_with_a_trailing_slash_excludes_a_file_too() -> None:
    """Docker cleans a trailing '/' away, so 'cache/' leaves out a file named cache too."""
    archive = build([Entry("app", "dir"), Entry("app/cache", data=b"c"), Entry("app/x")])
    assert names(scan(archive, rules=rules("cache/"))[0]) == ["app", "app/x"]


@pytest.mark.parametrize("spelling", ["app", "app/", "./app", "app/.", "app/x/.."])
def test_the_root_however_spelled_is_never_excluded(spelling: str) -> None:
    """The root member stays under '*' and '**' whatever spelling the archive gives it."""
    data = raw_member(spelling.encode(), typeflag=b"5") + raw_member(b"app/y", b"y") + END
    for pattern in ("*", "**"):
        assert names(scan(data, rules=rules(pattern))[0]) == ["app"]


# --- property tests ------------------------------------------------------------------------------


def feed_all(data: bytes, cuts: list[int], rule_set: ExcludeRules | None = None) -> None:
    """Feed ``data`` split at ``cuts``; only TarFormatError may escape."""
    scanner = make_scanner(rules=rule_set, max_header_bytes=8192)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    try:
        for start, stop in itertools.pairwise(bounds):
            scanner.feed(data[start:stop])
        scanner.finish()
    except TarFormatError:
        pass


@settings(max_examples=150, deadline=1000)
@given(data=st.binary(max_size=3000), cuts=st.lists(st.integers(min_value=0, max_value=3000)))
def test_arbitrary_bytes_yield_output_or_tar_format_error(data: bytes, cuts: list[int]) -> None:
    """Random bytes in random chunks never raise anything but TarFormatError."""
    feed_all(data, cuts)


def _fix_checksum(block: bytearray) -> bytes:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


HEADER_NAMES = [b"app", b"app/x", b"app/d/", b"app/d/y.log", b"../x", b"/abs", b"app/" + b"n" * 96]


@st.composite
def header_blocks(draw: st.DrawFn) -> bytes:
    """A header with a valid checksum and random, often odd, fields."""
    block = bytearray(
        draw(st.binary(min_size=512, max_size=512)) if draw(st.booleans()) else bytes(512)
    )
    name = draw(st.sampled_from(HEADER_NAMES))
    block[0:100] = name.ljust(100, b"\x00")
    block[156] = draw(st.sampled_from(b"0125 6xgLKSV\x00"))
    size_kind = draw(st.sampled_from(["octal", "base256", "raw"]))
    size = draw(st.integers(min_value=0, max_value=2000))
    if size_kind == "octal":
        block[124:136] = b"%011o\x00" % size
    elif size_kind == "base256":
        block[124:136] = b"\x80" + size.to_bytes(11, "big")
    block[257:265] = draw(st.sampled_from([b"ustar\x0000", b"ustar  \x00", block[257:265]]))
    block[157:257] = draw(st.sampled_from(HEADER_NAMES)).ljust(100, b"\x00")
    return _fix_checksum(block)


PAYLOADS = st.one_of(
    st.binary(max_size=1100),
    st.sampled_from([b"15 path=app/q\n", b"16 path=../out\n", b"13 size=100\n", b"app/long\x00"]),
)
PIECES = st.one_of(header_blocks(), PAYLOADS, st.just(bytes(512)))


@settings(max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(PIECES, max_size=10),
    cuts=st.lists(st.integers(min_value=0, max_value=20000), max_size=8),
    with_rules=st.booleans(),
)
def test_structured_garbage_yields_output_or_tar_format_error(
    pieces: list[bytes], cuts: list[int], with_rules: bool
) -> None:
    """Checksum-valid headers with random fields never raise anything but TarFormatError."""
    rule_set = rules("*.log", "!d/keep", "d") if with_rules else None
    feed_all(b"".join(pieces), cuts, rule_set)


NAME_PARTS = ["a", "b", "c.log", "d.txt", "node_modules", "keep"]
PATTERN_POOL = [
    "a",
    "b/",
    "*.log",
    "**/*.txt",
    "**/b",
    "a/**",
    "/c.log",
    "node_modules",
    "?",
    "[ab]",
    "*/keep",
    "!keep",
    "!**/keep",
    "!a/b",
    "!*.txt",
    "!a",
    "a/*/c.log",
]


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    """(rel path, kind, hard-link target) in depth-first order, parents before children."""
    paths = draw(
        st.sets(
            st.lists(st.sampled_from(NAME_PARTS), min_size=1, max_size=3).map(tuple),
            min_size=1,
            max_size=12,
        )
    )
    dirs = {p[:i] for p in paths for i in range(1, len(p))}
    members = sorted([(p, "dir") for p in dirs] + [(p, "file") for p in paths - dirs])
    out: list[tuple[str, str, str]] = []
    seen_files: list[str] = []
    for parts, kind in members:
        rel = "/".join(parts)
        out.append((rel, kind, ""))
        if kind == "file":
            seen_files.append(rel)
            if draw(st.booleans()) and len(seen_files) > 1:
                target = draw(st.sampled_from(seen_files[:-1]))
                out.append((rel + ".lnk", "hardlink", target))
    return out


@settings(max_examples=120, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    members=trees(),
    patterns=st.lists(st.sampled_from(PATTERN_POOL), max_size=5),
    fmt=st.sampled_from(list(FORMATS)),
)
def test_filtered_layer_keeps_exactly_what_the_rules_keep(
    members: list[tuple[str, str, str]], patterns: list[str], fmt: str
) -> None:
    """The layer holds the members the rules keep, plus excluded dirs above kept members."""
    rule_set = rules(*patterns)
    entries = [Entry("app", "dir")] + [
        Entry(
            "app/" + rel,
            kind,
            data=rel.encode() if kind == "file" else b"",
            link="app/" + target if target else "",
        )
        for rel, kind, target in members
    ]
    out, scanner = scan(build(entries, FORMATS[fmt]), rules=rule_set, chunks=[777])

    kept = {}
    for rel, kind, target in members:
        keep = not excluded(rule_set, rel)
        if keep and kind == "hardlink":
            keep = not excluded(rule_set, target)
        kept[rel] = keep
    expected = {rel for rel, keep in kept.items() if keep}
    expected |= {
        rel
        for rel, kind, _ in members
        if kind == "dir" and any(k.startswith(rel + "/") for k in kept if kept[k])
    }
    assert set(names(out)) == {"app"} | {"app/" + rel for rel in expected}
    assert scanner.entries == len(entries)
    assert scanner.excluded == len(members) - len(expected)
