"""One member's header group: the names Go's reader resolves from it, whether they stay
inside the root, excluded directories held back, and the group renamed into an image layer.

The scanner in :mod:`kegpackd.archive.tarscan` frames the stream and decides what to keep;
this module holds what changes with the layer format (the renaming, the opaque whiteout)
and with the reader's naming rules (ustar prefix, PAX, GNU long names, ``GNU.sparse.name``),
apart from that framing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from kegpackd.archive.gopath import clean
from kegpackd.archive.tarheader import (
    BLOCK,
    DECIMAL,
    DIR,
    GNU_MAGIC,
    GNU_VERSION,
    HEADER_ONLY_TYPES,
    INT64_MAX,
    LINK,
    LONG_LINK,
    LONG_NAME,
    PAX_GLOBAL,
    PAX_SPARSE_NAME,
    REGA,
    SPARSE,
    STAR_TRAILER,
    USTAR_MAGIC,
    cstr,
    decode,
    numeric,
    parse_pax,
    pax_header,
    pax_sparse_name,
    set_checksum,
)
from kegpackd.errors import InvalidValueError, TarFormatError

OPAQUE_WHITEOUT: Final = ".wh..wh..opq"


@dataclass(slots=True)
class Member:
    """The member whose header group the scanner is reading, and what it decided about it.

    ``raw_name``, ``link`` and the ``alt_`` lists (names other readers could pick) only matter
    until the containment check; ``rel``, ``link_rel`` and ``keep`` are filled in after it.
    """

    name: str
    raw_name: bytes
    link: bytes
    typeflag: int
    is_dir: bool
    data_size: int
    pax: dict[bytes, bytes] | None
    alt_names: list[bytes]
    alt_links: list[bytes]
    rel: str = ""
    link_rel: str | None = None
    keep: bool = True


class NameRecords:
    """What the meta headers before a member (PAX 'x', GNU 'L' and 'K') say about it, and the
    names and link targets in them that another reader could pick instead of Go's."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.pax: dict[bytes, bytes] | None = None
        self.long_name = b""
        self.long_link = b""
        self.alt_names: list[bytes] = []
        self.alt_links: list[bytes] = []

    def add(self, typeflag: int, payload: bytes) -> list[bytes] | None:
        """Take one meta header's payload. For a PAX global header, which applies to no member
        here, the names it carries (to be checked all the same); else None.

        Raises ValueError where Go's reader reports the header malformed.
        """
        if typeflag == LONG_NAME:
            self.long_name = cstr(payload)
            self.alt_names.append(self.long_name)
            return None
        if typeflag == LONG_LINK:
            self.long_link = cstr(payload)
            self.alt_links.append(self.long_link)
            return None
        try:
            records = parse_pax(payload)
        except ValueError:
            raise ValueError("malformed PAX extended header") from None
        # Present but empty still counts: Go then keeps the header's name, Python uses "".
        names = [records[key] for key in (b"path", PAX_SPARSE_NAME) if key in records]
        links = [records[b"linkpath"]] if b"linkpath" in records else []
        if typeflag == PAX_GLOBAL:
            return names + links
        self.pax = records
        self.alt_names += names
        self.alt_links += links
        return None

    def member(self, block: bytes, typeflag: int) -> Member:
        """The member that ``block`` and these records make, as Go's reader resolves it.

        Consumes the records, so the next member starts afresh; raises ValueError if the
        member's size is invalid.
        """
        pax = self.pax or {}
        name, link, typeflag, size = resolve_names(
            block, typeflag, pax, self.long_name, self.long_link
        )
        alt_names, alt_links = self.alt_names, self.alt_links
        self._reset()
        shown = decode(name)
        if size is None or size < 0:
            raise ValueError(f"invalid size for entry {shown!r}")
        data_size = 0 if typeflag in HEADER_ONLY_TYPES else size
        return Member(
            shown, name, link, typeflag, typeflag == DIR, data_size, pax, alt_names, alt_links
        )


def resolve_names(
    block: bytes,
    typeflag: int,
    pax: dict[bytes, bytes],
    long_name: bytes,
    long_link: bytes,
) -> tuple[bytes, bytes, int, int | None]:
    """Name, link target, type and size as Go's reader resolves a member's header group.

    The size is None where Go would report it invalid.
    """
    name = cstr(block[0:100])
    magic = block[257:263]
    if magic == USTAR_MAGIC:
        prefix = cstr(block[345:476] if block[508:512] == STAR_TRAILER else block[345:500])
        if prefix:
            name = prefix + b"/" + name
    elif magic == GNU_MAGIC and block[263:265] == GNU_VERSION:
        name = _gnu_prefix(block, name)
    link = cstr(block[157:257])
    size = numeric(block[124:136])
    if pax.get(b"path"):
        name = pax[b"path"]
    if pax.get(b"linkpath"):
        link = pax[b"linkpath"]
    if pax.get(b"size"):
        text = pax[b"size"]
        size = int(text) if DECIMAL.fullmatch(text) else None
        if size is not None and size > INT64_MAX:
            size = None
    if long_name:
        name = long_name
    if long_link:
        link = long_link
    if typeflag == REGA and name.endswith(b"/"):
        typeflag = DIR
    return pax_sparse_name(pax) or name, link, typeflag, size


def _gnu_prefix(block: bytes, name: bytes) -> bytes:
    """Go reads old Go-written GNU headers whose atime/ctime hold a ustar prefix; so do we."""
    atime, ctime = block[345:357], block[357:369]
    if (atime[0] and numeric(atime) is None) or (ctime[0] and numeric(ctime) is None):
        prefix = cstr(block[345:500])
        if prefix and prefix.isascii():
            return prefix + b"/" + name
    return name


def layer_name(prefix: str, root: str, rel: str, is_dir: bool) -> bytes:
    """A member's name in the layer: the mount's parent, the archive's root, the member."""
    name = prefix + root + ("/" + rel if rel else "")
    return (name + "/" if is_dir else name).encode("utf-8", "surrogateescape")


def layer_group(member: Member, group: bytes, prefix: str, root: str) -> bytes:
    """The member's header group renamed into the layer: one PAX header (when needed) + ustar.

    Long names (GNU 'L'/'K') are dropped, since Go lets them override PAX; the name and link
    target go into the ustar fields when they fit, else into PAX ``path``/``linkpath`` too.
    """
    if member.typeflag == SPARSE or any(key.startswith(b"GNU.sparse.") for key in member.pax or ()):
        raise TarFormatError(
            f"tar stream of {root!r}: sparse entry {member.name!r} cannot go in a layer."
        )
    main = bytearray(group[-BLOCK:])
    records = {k: v for k, v in (member.pax or {}).items() if k not in (b"path", b"linkpath")}
    ustar = main[257:263] == USTAR_MAGIC
    name = layer_name(prefix, root, member.rel, member.is_dir)
    if len(name) > 100 or not name.isascii() or not ustar:
        records[b"path"] = name
    main[0:100] = name[:100].ljust(100, b"\0")
    if ustar:
        main[345:500] = bytes(155)
    # A hard link's target is renamed; a symlink's is content and stays as it is, but may
    # have come in a PAX record or a GNU long link that the ustar field cannot hold.
    link = (
        member.link if member.link_rel is None else layer_name(prefix, root, member.link_rel, False)
    )
    if link:
        if len(link) > 100 or not link.isascii() or not ustar:
            records[b"linkpath"] = link
        main[157:257] = link[:100].ljust(100, b"\0")
    set_checksum(main)
    return (pax_header(records) if records else b"") + bytes(main)


def opaque_whiteout(prefix: str, root: str) -> bytes:
    """The entry that makes a directory mount's layer hide what lower layers hold below it."""
    return empty_entry(layer_name(prefix, root, OPAQUE_WHITEOUT, False))


def empty_entry(name: bytes) -> bytes:
    """An empty root-owned file entry named ``name``: what a whiteout is in a layer."""
    header = bytearray(BLOCK)
    records: dict[bytes, bytes] = {}
    if len(name) > 100 or not name.isascii():
        records[b"path"] = name
    header[0:100] = name[:100].ljust(100, b"\0")
    for start, width in ((100, 8), (108, 8), (116, 8), (124, 12), (136, 12)):
        header[start : start + width] = b"0" * (width - 1) + b"\0"
    header[156] = ord("0")
    header[257:265] = USTAR_MAGIC + b"00"
    set_checksum(header)
    return (pax_header(records) if records else b"") + bytes(header)


class Containment:
    """Which names lie inside the archived path ``root``, the way the stream spells it.

    Methods raise ValueError naming what lies outside; the scanner adds where.
    """

    def __init__(self, root: str) -> None:
        clean_root = clean(root)
        if clean_root in (".", "..") or clean_root.startswith(("/", "../")):
            raise InvalidValueError(
                "tar stream root", root, "must be a relative name inside the archive"
            )
        self.root = clean_root
        self._root_prefix = clean_root + "/"
        # Whether the stream names its root "/" (Podman, for a stopped container's path:
        # "/", "/a.txt") instead of by its base name ("keg/", "keg/a.txt"): the first entry
        # decides, and every later name must follow it.
        self._absolute: bool | None = None

    def check(self, member: Member) -> tuple[str, str | None]:
        """Paths relative to the root of the member and its hard-link target.

        Readers disagree on which of several names in one header group wins (Python's tarfile
        takes the first PAX path or GNU long name, and GNU.sparse.name always; Go the last, and
        GNU.sparse.name only for sparse files): every one must stay inside.
        """
        shown = member.name
        if self._absolute is None:
            self._absolute = clean(shown) == "/"
        rel = self.relative(shown, f"entry {shown!r}")
        for alt in member.alt_names:
            if alt != member.raw_name:
                self.relative(decode(alt), f"entry {shown!r}, also named {decode(alt)!r},")
        if member.typeflag != LINK:
            return rel, None
        target = decode(member.link)
        target_rel = self.relative(target, f"hard link {shown!r} -> {target!r}")
        for alt in member.alt_links:
            if alt != member.link:
                also = f"hard link {shown!r} -> {target!r}, also to {decode(alt)!r},"
                self.relative(decode(alt), also)
        return rel, target_rel

    def relative(self, name: str, what: str) -> str:
        """``name`` relative to the root; ``what`` names it in the error if it lies outside."""
        cleaned = clean(name)
        if self._absolute:
            if cleaned.startswith("/"):
                return cleaned[1:]
        elif cleaned == self.root:
            return ""
        elif cleaned.startswith(self._root_prefix):
            return cleaned[len(self._root_prefix) :]
        root = "/" if self._absolute else self.root
        raise ValueError(f"{what} lies outside {root!r}")


class HeldDirs:
    """Excluded directories' headers held back, outermost first, while '!' exceptions may
    still bring back a member below them (which then keeps its directory's owner and mode).

    Each method returns how many held directories it dropped for good (they count as excluded).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.nbytes = 0
        self._held: list[tuple[str, bytes]] = []

    def __bool__(self) -> bool:
        return bool(self._held)

    def hold(self, rel: str, group: bytes) -> int:
        """Hold a directory back; past ``limit`` bytes the outermost is dropped."""
        self._held.append((rel, group))
        self.nbytes += len(group)
        dropped = 0
        while self.nbytes > self.limit:
            self.nbytes -= len(self._held.pop(0)[1])
            dropped += 1
        return dropped

    def release(self, rel: str, keep: bool) -> tuple[list[bytes], int]:
        """The stream reached ``rel``: drop the held directories it left; if the member is
        kept, the groups to write before it (the rest, all its parents)."""
        held = self._held
        keep_count = len(held)
        while keep_count and not rel.startswith(held[keep_count - 1][0] + "/"):
            keep_count -= 1
        dropped = self.drop(len(held) - keep_count)
        if not (keep and held):
            return [], dropped
        groups = [group for _, group in held]
        held.clear()
        self.nbytes = 0
        return groups, dropped

    def drop(self, count: int | None = None) -> int:
        """Drop the ``count`` innermost held directories (all by default)."""
        count = len(self._held) if count is None else count
        for _ in range(count):
            self.nbytes -= len(self._held.pop()[1])
        return count
