"""Tar archives made for tests of the scanner: with Python's tarfile where it writes what
is wanted, and by hand (headers, PAX records) where it will not write what a test needs."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One member to write: kind is file, dir, symlink, hardlink or fifo."""

    name: str
    kind: str = "file"
    data: bytes = b""
    link: str = ""


def build(
    entries: Iterable[Entry],
    fmt: int = tarfile.PAX_FORMAT,
    pax_headers: dict[str, str] | None = None,
) -> bytes:
    """An archive written by Python's tarfile (which pads it to a 10 KiB record)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax_headers) as tar:
        for entry in entries:
            info = tarfile.TarInfo(entry.name)
            info.mtime = 1_700_000_000
            info.type = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
            }[entry.kind]
            info.linkname = entry.link
            info.size = len(entry.data) if entry.kind == "file" else 0
            tar.addfile(info, io.BytesIO(entry.data) if entry.kind == "file" else None)
    return buf.getvalue()


def raw_header(
    name: bytes,
    *,
    typeflag: bytes = b"0",
    size: int = 0,
    size_field: bytes | None = None,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    checksum: str = "unsigned",
    extra: dict[int, int] | None = None,
) -> bytes:
    """A hand-made header block, for what tarfile will not write."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"0000644\x00"
    block[108:116] = b"0001750\x00"
    block[116:124] = b"0001750\x00"
    block[124:136] = size_field if size_field is not None else b"%011o\x00" % size
    block[136:148] = b"14545305400\x00"
    block[156:157] = typeflag
    block[157 : 157 + len(linkname)] = linkname
    block[257 : 257 + len(magic)] = magic
    block[345 : 345 + len(prefix)] = prefix
    for index, value in (extra or {}).items():
        block[index] = value
    block[148:156] = b" " * 8
    unsigned = sum(block)
    signed = sum(b - 256 if b > 127 else b for b in block)
    value = {"unsigned": unsigned, "signed": signed, "wrong": unsigned + 1}[checksum]
    block[148:156] = b"%06o\x00 " % value
    return bytes(block)


def raw_member(
    name: bytes,
    data: bytes = b"",
    *,
    typeflag: bytes = b"0",
    size_field: bytes | None = None,
    linkname: bytes = b"",
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
    checksum: str = "unsigned",
) -> bytes:
    """A hand-made header plus its padded data."""
    header = raw_header(
        name,
        typeflag=typeflag,
        size=len(data),
        size_field=size_field,
        linkname=linkname,
        magic=magic,
        prefix=prefix,
        checksum=checksum,
    )
    return header + data + bytes(-len(data) % 512)


def pax_record(key: bytes, value: bytes) -> bytes:
    """One '%d key=value\\n' PAX record, its length counting its own digits."""
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length).encode() + body
