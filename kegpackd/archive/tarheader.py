"""Tar header fields as Go's ``archive/tar`` reader parses them, and the headers layer mode writes.

The engine that extracts the stream reads it with Go, so each field is parsed with Go's rules
(NUL/space padding, base-256 numbers, both checksum sums, PAX record framing) rather than
Python's ``tarfile``'s; the scanner in :mod:`kegpackd.archive.tarscan` builds on these.
"""

from __future__ import annotations

import re
from typing import Final

BLOCK: Final = 512

ZERO_BLOCK: Final = bytes(BLOCK)
_HIGH_BYTES: Final = bytes(range(0x80, 0x100))
_OCTAL: Final = re.compile(rb"[0-7]+")
DECIMAL: Final = re.compile(rb"[+-]?[0-9]+")
INT64_MAX: Final = (1 << 63) - 1

USTAR_MAGIC: Final = b"ustar\x00"
GNU_MAGIC: Final = b"ustar "
GNU_VERSION: Final = b" \x00"
STAR_TRAILER: Final = b"tar\x00"

REGA: Final = 0
LINK: Final = ord("1")
DIR: Final = ord("5")
SPARSE: Final = ord("S")
PAX_GLOBAL: Final = ord("g")
LONG_NAME: Final = ord("L")
LONG_LINK: Final = ord("K")
META_TYPES: Final = frozenset(b"xXgLK")
HEADER_ONLY_TYPES: Final = frozenset(b"123456")


def cstr(field: bytes) -> bytes:
    """Go's ``parseString``: a field ends at its first NUL."""
    end = field.find(0)
    return field if end < 0 else field[:end]


def octal(field: bytes) -> int | None:
    """Go's ``parseOctal``: NUL/space padding on either side; None when it is not a number."""
    digits = cstr(field.strip(b" \x00"))
    if not digits:
        return 0
    if _OCTAL.fullmatch(digits) is None:
        return None
    return int(digits, 8)


def numeric(field: bytes) -> int | None:
    """Go's ``parseNumeric``: octal, or GNU base-256 when the top bit is set; None if invalid."""
    if field and field[0] & 0x80:
        if field[0] & 0x40:
            inverted = bytes(0xFF ^ b for b in field)
            value = -int.from_bytes(bytes([inverted[0] & 0x7F]) + inverted[1:], "big") - 1
            return value if value >= -INT64_MAX - 1 else None
        value = int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
        return value if value <= INT64_MAX else None
    return octal(field)


def checksum_ok(block: bytes) -> bool:
    """Go's check: the stored sum equals the unsigned or the signed byte sum (field as spaces)."""
    field = block[148:156]
    stored = octal(field)
    if stored is None:
        return False
    unsigned = sum(block) - sum(field) + 8 * 0x20
    if stored == unsigned:
        return True
    high = (BLOCK - len(block.translate(None, _HIGH_BYTES))) - (
        8 - len(field.translate(None, _HIGH_BYTES))
    )
    return stored == unsigned - 0x100 * high


_PAX_NO_NUL_VALUES: Final = frozenset((b"path", b"linkpath", b"uname", b"gname"))
_PAX_SPARSE_OFFSET: Final = b"GNU.sparse.offset"
_PAX_SPARSE_NUMBYTES: Final = b"GNU.sparse.numbytes"
_PAX_SPARSE_MAP: Final = b"GNU.sparse.map"
PAX_SPARSE_NAME: Final = b"GNU.sparse.name"
_PAX_SPARSE_VERSIONS: Final = frozenset(((b"0", b"0"), (b"0", b"1"), (b"1", b"0")))


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Go's ``parsePAX``: the records, or ValueError where Go reports ErrHeader."""
    records: dict[bytes, bytes] = {}
    sparse: list[bytes] = []
    pos, n = 0, len(data)
    while pos < n:
        space = data.find(b" ", pos)
        length_text = data[pos:space] if space >= 0 else b""
        if DECIMAL.fullmatch(length_text) is None:
            raise ValueError("bad record length")
        length = int(length_text)
        end = pos + length
        if length < 5 or length > n - pos or end <= space + 1 or data[end - 1] != 0x0A:
            raise ValueError("bad record framing")
        key, eq, value = data[space + 1 : end - 1].partition(b"=")
        if not eq or not key or b"\x00" in (value if key in _PAX_NO_NUL_VALUES else key):
            raise ValueError("bad record")
        if key in (_PAX_SPARSE_OFFSET, _PAX_SPARSE_NUMBYTES):
            expected = _PAX_SPARSE_OFFSET if len(sparse) % 2 == 0 else _PAX_SPARSE_NUMBYTES
            if key != expected or b"," in value:
                raise ValueError("bad GNU sparse record")
            sparse.append(value)
        else:
            records[key] = value
        pos = end
    if sparse:
        records[_PAX_SPARSE_MAP] = b",".join(sparse)
    return records


def pax_sparse_name(records: dict[bytes, bytes]) -> bytes:
    """Go's ``readGNUSparsePAXHeaders``: the GNU.sparse.name that renames the member, or b""."""
    major = records.get(b"GNU.sparse.major", b"")
    minor = records.get(b"GNU.sparse.minor", b"")
    if major or minor:
        sparse = (major, minor) in _PAX_SPARSE_VERSIONS
    else:
        sparse = bool(records.get(_PAX_SPARSE_MAP))
    return records.get(PAX_SPARSE_NAME, b"") if sparse else b""


def set_checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


def _pax_records(records: dict[bytes, bytes]) -> bytes:
    out = []
    for key, value in records.items():
        body = b" " + key + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length = len(str(length)) + len(body)
        out.append(str(length).encode() + body)
    return b"".join(out)


def pax_header(records: dict[bytes, bytes]) -> bytes:
    """A PAX extended header ('x') carrying ``records``, with its padded payload."""
    payload = _pax_records(records)
    header = bytearray(BLOCK)
    header[0:100] = b"././@PaxHeader".ljust(100, b"\0")
    for start, width in ((100, 8), (108, 8), (116, 8), (136, 12)):
        header[start : start + width] = b"0" * (width - 1) + b"\0"
    header[124:136] = b"%011o\0" % len(payload)
    header[156] = ord("x")
    header[257:265] = USTAR_MAGIC + b"00"
    set_checksum(header)
    return bytes(header) + payload + bytes(padded(len(payload)) - len(payload))


def padded(size: int) -> int:
    return (size + BLOCK - 1) & ~(BLOCK - 1)


def decode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")
