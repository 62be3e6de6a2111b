"""Scan and filter a tar stream on its way from one container to another.

The bytes of ``GET /containers/{src}/archive`` flow through a :class:`TarScanner`
before they reach ``PUT /containers/{helper}/archive``. The scanner checks that
every member stays inside the archived path, counts what it sees and, given
:class:`~kegpackd.archive.ignore.ExcludeRules`, drops members, all in memory that does not grow
with the archive: member data is never held, only header groups (bounded) and the tail of
one input chunk.

Framing follows Go's ``archive/tar`` reader, because the engine that extracts the
stream is written with it: what this module calls a member is what the engine
will create.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from kegpackd.archive.gopath import clean
from kegpackd.archive.ignore import ExcludeRules
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
    META_TYPES,
    PAX_GLOBAL,
    PAX_SPARSE_NAME,
    REGA,
    SPARSE,
    STAR_TRAILER,
    USTAR_MAGIC,
    ZERO_BLOCK,
    checksum_ok,
    cstr,
    decode,
    numeric,
    padded,
    parse_pax,
    pax_header,
    pax_sparse_name,
    set_checksum,
)
from kegpackd.errors import InvalidValueError, TarFormatError

DEFAULT_MAX_HEADER_BYTES: Final = 1 << 20

_OPAQUE_WHITEOUT: Final = ".wh..wh..opq"


class _State(enum.IntEnum):
    """What the scanner expects next; an IntEnum so the hot loop compares plain ints."""

    HEADER = 0  # a header block (or the first zero block of the end marker)
    META = 1  # the payload of a PAX or GNU long-name header
    SPARSE = 2  # a GNU sparse extension block
    DATA = 3  # member data and its padding
    END = 4  # the second zero block of the end marker
    TRAILER = 5  # after the end marker: only zeros may follow


# Per-unit code compares with these: an enum attribute lookup costs ~8 times a global's
# on Python 3.11, which shows on archives of many small files.
_HEADER: Final = _State.HEADER
_META: Final = _State.META
_SPARSE_EXT: Final = _State.SPARSE
_DATA: Final = _State.DATA
_END: Final = _State.END
_TRAILER: Final = _State.TRAILER


@dataclass(slots=True)
class _Member:
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


class TarScanner:
    """Feed it chunks of a tar stream; it returns the bytes to pass on.

    Every member's name (after PAX ``path``, GNU long names, ``GNU.sparse.name`` and the ustar
    prefix, resolved the way Go's reader does) must clean to ``root`` or lie below ``root/``;
    so must hard-link targets, and so must every other name or link target that the member's
    header group (or a PAX global header) carries, which another reader could pick instead.
    Symlink targets are content and are not checked; PAX global headers are passed on as they
    are (Go's reader hands them back apart and the engine ignores them). Anything else
    malformed, and input that ends before the two zero blocks of the end-of-archive
    marker, raise TarFormatError; once raised the scanner keeps raising it.

    With ``exclude``, a member whose path relative to ``root`` is excluded is dropped with
    its whole header group, data and padding. Two consequences are handled here:

    * A hard link whose target is excluded is dropped too (and counted as excluded): the
      engine would fail to create a link to a file that is not there, and the data cannot
      be recovered from a stream that has already dropped it.
    * When the rules have '!' exceptions, an excluded directory is held back (header only,
      within ``max_header_bytes`` in all) instead of dropped, and written after all if a
      member below it is kept: the re-included member then keeps its directory's owner and
      mode, as BuildKit keeps parents of re-included files. It is dropped once the stream
      leaves it; if the held-back headers outgrow the limit the outermost is dropped, and the
      engine creates that directory with default ownership.

    Zero bytes after the end-of-archive marker are passed on; anything else there is an error.
    When nothing is excluded the output is byte-for-byte the input.

    With ``layer_prefix`` the output is instead a run of image-layer entries, ready to be
    concatenated with others: every kept member is renamed ``layer_prefix + name`` (hard-link
    targets too), a directory root is followed by its opaque whiteout (so the layer hides what
    lower layers hold below it, as the mount does), and the end-of-archive marker, any zeros
    after it and PAX global headers are dropped.
    """

    def __init__(
        self,
        root: str,
        exclude: ExcludeRules | None = None,
        *,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        layer_prefix: str | None = None,
    ) -> None:
        clean_root = clean(root)
        if clean_root in (".", "..") or clean_root.startswith(("/", "../")):
            raise InvalidValueError(
                "tar stream root", root, "must be a relative name inside the archive"
            )
        if max_header_bytes < 3 * BLOCK:
            raise InvalidValueError(
                "tar header limit", max_header_bytes, f"must be at least {3 * BLOCK} bytes"
            )
        self.root = clean_root
        self._root_prefix = clean_root + "/"
        # Whether the stream names its root "/" (Podman, for a stopped container's path:
        # "/", "/a.txt") instead of by its base name ("keg/", "keg/a.txt"): the first entry
        # decides, and every later name must follow it.
        self._absolute: bool | None = None
        self._rules = exclude if exclude else None
        self._hold_dirs = self._rules is not None and self._rules.has_exceptions
        self._max_header_bytes = max_header_bytes
        if layer_prefix and not layer_prefix.endswith("/"):
            raise InvalidValueError("layer prefix", layer_prefix, "must end with '/'")
        self._layer_prefix = layer_prefix

        self.entries = 0
        self.excluded = 0
        self.content_bytes = 0
        self.input_bytes = 0
        self.output_bytes = 0

        self._state: _State = _HEADER
        self._need = BLOCK
        self._carry = bytearray()
        self._remaining = 0
        self._keep = True
        self._member: _Member | None = None

        self._saved: list[bytes] = []
        self._group_start = -1
        self._group_end = -1
        self._group_size = 0
        self._pax: dict[bytes, bytes] | None = None
        self._long_name = b""
        self._long_link = b""
        self._alt_names: list[bytes] = []
        self._alt_links: list[bytes] = []
        self._meta_type = 0
        self._meta_size = 0

        self._held: list[tuple[str, bytes]] = []
        self._held_bytes = 0

        self._error: TarFormatError | None = None
        self._finished = False

        self._view = memoryview(b"")
        self._base = 0
        self._out: list[bytes | memoryview] = []
        self._run_start = -1
        self._run_end = -1

    @property
    def buffered_bytes(self) -> int:
        """Bytes held between calls: a partial unit, an unfinished header group, held-back dirs."""
        return len(self._carry) + sum(map(len, self._saved)) + self._held_bytes

    def feed(self, data: bytes) -> bytes:
        """Scan the next chunk; returns the bytes to pass on now (possibly ``b""``)."""
        self._check_usable()
        view = memoryview(data).cast("B")
        size = view.nbytes
        if not size:
            return b""
        self._view = view
        self._base = self.input_bytes
        self.input_bytes += size
        self._out = []
        self._run_start = self._run_end = -1
        try:
            self._scan(view, size)
            self._save_group_tail()
            if self._run_start == 0 and self._run_end == size and not self._out:
                result = data if type(data) is bytes else view.tobytes()
            else:
                self._flush_run()
                result = b"".join(self._out)
        except TarFormatError as exc:
            self._error = exc
            raise
        finally:
            self._out = []
            self._view = memoryview(b"")
            view.release()
        self.output_bytes += len(result)
        return result

    def finish(self) -> bytes:
        """Declare the end of input; raises TarFormatError unless the archive ended properly."""
        self._check_usable()
        self._finished = True
        state = self._state
        if state == _TRAILER:
            return b""
        if state == _END:
            problem = "ends after a single zero block; the end-of-archive marker needs two"
        elif state == _DATA and self._member is not None:
            problem = (
                f"ends inside the data of entry {self._member.name!r} "
                f"({self._remaining} more bytes expected)"
            )
        elif self._carry or self._group_size:
            problem = "ends inside a header"
        else:
            problem = "ends without the end-of-archive marker (two zero blocks)"
        self._error = TarFormatError(f"tar stream of {self.root!r} {problem}.")
        raise self._error

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._finished:
            raise RuntimeError("TarScanner used after finish()")

    def _fail(self, problem: str, offset: int) -> TarFormatError:
        return TarFormatError(f"tar stream of {self.root!r}: {problem} (at byte {offset}).")

    # --- the scan loop ---------------------------------------------------------------------

    def _scan(self, view: memoryview, size: int) -> None:
        pos = 0
        carry = self._carry
        data, header, trailer = _DATA, _HEADER, _TRAILER  # locals: the loop runs per unit
        while pos < size:
            state = self._state
            if state == data:
                take = min(self._remaining, size - pos)
                if self._keep:
                    self._pass(pos, pos + take)
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = header
                    self._need = BLOCK
                continue
            if state == trailer:
                tail = view[pos:size]
                if tail.tobytes().count(0) != size - pos:
                    raise self._fail(
                        "non-zero data after the end-of-archive marker", self._base + pos
                    )
                if self._layer_prefix is None:
                    self._pass(pos, size)
                return
            need = self._need
            if carry:
                take = min(need - len(carry), size - pos)
                carry += view[pos : pos + take]
                pos += take
                if len(carry) < need:
                    return
                unit = bytes(carry)
                carry.clear()
                start = -1
            elif size - pos >= need:
                start = pos
                pos += need
                unit = view[start:pos].tobytes()
            else:
                carry += view[pos:size]
                return
            self._unit(unit, start, pos)

    def _unit(self, unit: bytes, start: int, end: int) -> None:
        """Handle one whole header block or meta-header payload (``start`` < 0: from carry)."""
        state = self._state
        offset = self._base + end - len(unit)
        if state == _HEADER:
            self._header(unit, start, end, offset)
        elif state == _META:
            self._group_add(unit, start, end)
            self._meta_payload(unit[: self._meta_size], end, offset)
        elif state == _SPARSE_EXT:
            self._sparse_extension(unit, start, end, offset)
        else:
            if unit != ZERO_BLOCK:
                raise self._fail(
                    "a lone zero block is followed by data; the end-of-archive marker "
                    "needs two zero blocks",
                    offset,
                )
            if self._layer_prefix is None:
                self._pass_unit(unit, start, end)
            self._state = _TRAILER

    def _header(self, block: bytes, start: int, end: int, offset: int) -> None:
        if block == ZERO_BLOCK:
            if self._group_size:
                raise self._fail(
                    "a PAX or GNU long-name header is not followed by a member", offset
                )
            self._drop_held(len(self._held))
            if self._layer_prefix is None:
                self._pass_unit(block, start, end)
            self._state = _END
            return
        if not checksum_ok(block):
            raise self._fail("header checksum mismatch", offset)
        typeflag = block[156]
        if typeflag in META_TYPES:
            self._meta_header(block, typeflag, start, end, offset)
            return
        self._group_add(block, start, end)
        member = self._resolve_names(block, typeflag, offset)
        member.rel, member.link_rel = self._check_contained(member, offset)
        member.keep = self._keeps(member.rel, member.link_rel)
        self.entries += 1
        self._member = member
        if typeflag == SPARSE and block[482]:
            if block[257:263] != GNU_MAGIC or block[263:265] != GNU_VERSION:
                raise self._fail(f"sparse entry {member.name!r} is not in GNU format", offset)
            self._state = _SPARSE_EXT
            self._need = BLOCK
            return
        self._settle(end)

    def _meta_header(self, block: bytes, typeflag: int, start: int, end: int, offset: int) -> None:
        size = numeric(block[124:136])
        if size is None or size < 0:
            raise self._fail("invalid size field in a PAX or GNU long-name header", offset)
        if typeflag == PAX_GLOBAL and self._group_size:
            raise self._fail("a PAX global header interrupts the headers of a member", offset)
        member_block = 0 if typeflag == PAX_GLOBAL else BLOCK
        if self._group_size + BLOCK + padded(size) + member_block > self._max_header_bytes:
            raise self._fail(
                f"a PAX or GNU long-name header of {size} bytes exceeds the "
                f"{self._max_header_bytes}-byte limit for one member's headers",
                offset,
            )
        self._group_add(block, start, end)
        self._meta_type = typeflag
        self._meta_size = size
        if size:
            self._state = _META
            self._need = padded(size)
        else:
            self._meta_payload(b"", end, offset)

    def _meta_payload(self, payload: bytes, end: int, offset: int) -> None:
        typeflag = self._meta_type
        self._state = _HEADER
        self._need = BLOCK
        if typeflag == LONG_NAME:
            self._long_name = cstr(payload)
            self._alt_names.append(self._long_name)
        elif typeflag == LONG_LINK:
            self._long_link = cstr(payload)
            self._alt_links.append(self._long_link)
        else:
            try:
                records = parse_pax(payload)
            except ValueError:
                raise self._fail("malformed PAX extended header", offset) from None
            # Present but empty still counts: Go then keeps the header's name, Python uses "".
            names = [records[key] for key in (b"path", PAX_SPARSE_NAME) if key in records]
            links = [records[b"linkpath"]] if b"linkpath" in records else []
            if typeflag == PAX_GLOBAL:
                # Go and the engine ignore a global header; other readers apply its names to
                # later members, so they must not lead outside the root either.
                for name in names + links:
                    self._relative(decode(name), f"PAX global header name {decode(name)!r}", offset)
                if self._layer_prefix is None:
                    self._emit_group(end)
                else:
                    self._drop_group()
            else:
                self._pax = records
                self._alt_names += names
                self._alt_links += links

    def _sparse_extension(self, block: bytes, start: int, end: int, offset: int) -> None:
        if self._group_size + BLOCK > self._max_header_bytes:
            raise self._fail(
                f"GNU sparse headers exceed the {self._max_header_bytes}-byte limit", offset
            )
        self._group_add(block, start, end)
        if not block[504]:
            self._settle(end)

    def _resolve_names(self, block: bytes, typeflag: int, offset: int) -> _Member:
        """Name, link target, size and type as Go's reader resolves the member's header group.

        Consumes the group's PAX records and long names, so the next member starts afresh.
        """
        name = cstr(block[0:100])
        magic = block[257:263]
        if magic == USTAR_MAGIC:
            prefix = cstr(block[345:476] if block[508:512] == STAR_TRAILER else block[345:500])
            if prefix:
                name = prefix + b"/" + name
        elif magic == GNU_MAGIC and block[263:265] == GNU_VERSION:
            name = self._gnu_prefix(block, name)
        link = cstr(block[157:257])
        size = numeric(block[124:136])
        pax = self._pax or {}
        if pax.get(b"path"):
            name = pax[b"path"]
        if pax.get(b"linkpath"):
            link = pax[b"linkpath"]
        if pax.get(b"size"):
            text = pax[b"size"]
            size = int(text) if DECIMAL.fullmatch(text) else None
            if size is not None and size > INT64_MAX:
                size = None
        if self._long_name:
            name = self._long_name
        if self._long_link:
            link = self._long_link
        if typeflag == REGA and name.endswith(b"/"):
            typeflag = DIR
        name = pax_sparse_name(pax) or name
        alt_names, alt_links = self._alt_names, self._alt_links
        self._pax = None
        self._long_name = self._long_link = b""
        self._alt_names, self._alt_links = [], []
        shown = decode(name)
        if size is None or size < 0:
            raise self._fail(f"invalid size for entry {shown!r}", offset)
        data_size = 0 if typeflag in HEADER_ONLY_TYPES else size
        return _Member(
            shown, name, link, typeflag, typeflag == DIR, data_size, pax, alt_names, alt_links
        )

    def _check_contained(self, member: _Member, offset: int) -> tuple[str, str | None]:
        """Paths relative to the root of the member and its hard-link target; raise if outside.

        Readers disagree on which of several names in one header group wins (Python's tarfile
        takes the first PAX path or GNU long name, and GNU.sparse.name always; Go the last, and
        GNU.sparse.name only for sparse files): every one must stay inside.
        """
        shown = member.name
        if self._absolute is None:
            self._absolute = clean(shown) == "/"
        rel = self._relative(shown, f"entry {shown!r}", offset)
        for alt in member.alt_names:
            if alt != member.raw_name:
                also = f"entry {shown!r}, also named {decode(alt)!r},"
                self._relative(decode(alt), also, offset)
        if member.typeflag != LINK:
            return rel, None
        target = decode(member.link)
        target_rel = self._relative(target, f"hard link {shown!r} -> {target!r}", offset)
        for alt in member.alt_links:
            if alt != member.link:
                also = f"hard link {shown!r} -> {target!r}, also to {decode(alt)!r},"
                self._relative(decode(alt), also, offset)
        return rel, target_rel

    def _keeps(self, rel: str, target_rel: str | None) -> bool:
        """Whether the rules keep the member: neither it nor its hard-link target is excluded."""
        rules = self._rules
        if rules is None or not rel:
            return True
        if rules.matches_clean(rel):
            return False
        return not (target_rel and rules.matches_clean(target_rel))

    @staticmethod
    def _gnu_prefix(block: bytes, name: bytes) -> bytes:
        """Go reads old Go-written GNU headers whose atime/ctime hold a ustar prefix; so do we."""
        atime, ctime = block[345:357], block[357:369]
        if (atime[0] and numeric(atime) is None) or (ctime[0] and numeric(ctime) is None):
            prefix = cstr(block[345:500])
            if prefix and prefix.isascii():
                return prefix + b"/" + name
        return name

    def _relative(self, name: str, what: str, offset: int) -> str:
        cleaned = clean(name)
        if self._absolute:
            if cleaned.startswith("/"):
                return cleaned[1:]
        elif cleaned == self.root:
            return ""
        elif cleaned.startswith(self._root_prefix):
            return cleaned[len(self._root_prefix) :]
        root = "/" if self._absolute else self.root
        raise self._fail(f"{what} lies outside {root!r}", offset)

    def _settle(self, end: int) -> None:
        """The member's header group is complete: pass it on, hold it back or drop it."""
        member = self._member
        assert member is not None
        if self._held:
            self._release_held(member.rel, member.keep)
        if member.keep and self._layer_prefix is not None:
            self._emit_bytes(self._layer_group(member, self._take_group(end)))
            if member.is_dir and not member.rel:
                self._emit_bytes(self._opaque_whiteout())
            self.content_bytes += member.data_size
        elif member.keep:
            self._emit_group(end)
            self.content_bytes += member.data_size
        elif member.is_dir and self._hold_dirs:
            group = self._take_group(end)
            if self._layer_prefix is not None:
                group = self._layer_group(member, group)
            self._hold(member.rel, group)
        else:
            self._drop_group()
            self.excluded += 1
        self._keep = member.keep
        self._remaining = padded(member.data_size)
        self._state = _DATA if self._remaining else _HEADER
        self._need = BLOCK

    # --- layer entries -----------------------------------------------------------------------

    def _layer_name(self, rel: str, is_dir: bool) -> bytes:
        assert self._layer_prefix is not None
        name = self._layer_prefix + self.root + ("/" + rel if rel else "")
        return (name + "/" if is_dir else name).encode("utf-8", "surrogateescape")

    def _layer_group(self, member: _Member, group: bytes) -> bytes:
        """The member's header group renamed into the layer: one PAX header (when needed) + ustar.

        Long names (GNU 'L'/'K') are dropped, since Go lets them override PAX; the name and link
        go into the ustar fields when they fit, else into PAX ``path``/``linkpath``.
        """
        if member.typeflag == SPARSE or any(
            key.startswith(b"GNU.sparse.") for key in member.pax or ()
        ):
            raise TarFormatError(
                f"tar stream of {self.root!r}: sparse entry {member.name!r} cannot go in a layer."
            )
        main = bytearray(group[-BLOCK:])
        records = {k: v for k, v in (member.pax or {}).items() if k not in (b"path", b"linkpath")}
        ustar = main[257:263] == USTAR_MAGIC
        name = self._layer_name(member.rel, member.is_dir)
        if len(name) > 100 or not name.isascii() or not ustar:
            records[b"path"] = name
        main[0:100] = name[:100].ljust(100, b"\0")
        if ustar:
            main[345:500] = bytes(155)
        if member.link_rel is not None:
            link = self._layer_name(member.link_rel, False)
            if len(link) > 100 or not link.isascii() or not ustar:
                records[b"linkpath"] = link
            main[157:257] = link[:100].ljust(100, b"\0")
        set_checksum(main)
        return (pax_header(records) if records else b"") + bytes(main)

    def _opaque_whiteout(self) -> bytes:
        name = self._layer_name(_OPAQUE_WHITEOUT, False)
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

    # --- held-back directories -------------------------------------------------------------

    def _release_held(self, rel: str, keep: bool) -> None:
        held = self._held
        keep_count = len(held)
        while keep_count and not rel.startswith(held[keep_count - 1][0] + "/"):
            keep_count -= 1
        self._drop_held(len(held) - keep_count)
        if keep and held:
            for _, group in held:
                self._emit_bytes(group)
            held.clear()
            self._held_bytes = 0

    def _hold(self, rel: str, group: bytes) -> None:
        self._held.append((rel, group))
        self._held_bytes += len(group)
        while self._held_bytes > self._max_header_bytes:
            self._held_bytes -= len(self._held.pop(0)[1])
            self.excluded += 1

    def _drop_held(self, count: int) -> None:
        for _ in range(count):
            self._held_bytes -= len(self._held.pop()[1])
            self.excluded += 1

    # --- header groups and output ------------------------------------------------------------

    def _group_add(self, unit: bytes, start: int, end: int) -> None:
        if start < 0:
            self._saved.append(unit)
        else:
            if self._group_start < 0:
                self._group_start = start
            self._group_end = end
        self._group_size += len(unit)

    def _save_group_tail(self) -> None:
        """At the end of a chunk, copy the unfinished group's part of it: the chunk is gone next."""
        if self._group_start >= 0:
            self._saved.append(self._view[self._group_start : self._group_end].tobytes())
            self._group_start = self._group_end = -1

    def _emit_group(self, end: int) -> None:
        for piece in self._saved:
            self._emit_bytes(piece)
        if self._group_start >= 0:
            self._pass(self._group_start, end)
        self._drop_group()

    def _take_group(self, end: int) -> bytes:
        pieces = list(self._saved)
        if self._group_start >= 0:
            pieces.append(self._view[self._group_start : end].tobytes())
        self._drop_group()
        return b"".join(pieces)

    def _drop_group(self) -> None:
        self._saved = []
        self._group_start = self._group_end = -1
        self._group_size = 0

    def _pass_unit(self, unit: bytes, start: int, end: int) -> None:
        if start < 0:
            self._emit_bytes(unit)
        else:
            self._pass(start, end)

    def _pass(self, start: int, end: int) -> None:
        """Forward ``view[start:end]``; adjacent ranges merge so kept input leaves as one slice."""
        if self._run_end == start and self._run_start >= 0:
            self._run_end = end
            return
        self._flush_run()
        self._run_start = start
        self._run_end = end

    def _emit_bytes(self, data: bytes) -> None:
        self._flush_run()
        self._out.append(data)

    def _flush_run(self) -> None:
        if self._run_start >= 0:
            self._out.append(self._view[self._run_start : self._run_end])
            self._run_start = self._run_end = -1
