"""Scan, filter and rename a mount's tar stream into the entries of an image layer.

The bytes of ``GET /containers/{src}/archive`` flow through a :class:`TarScanner`
on their way into the layer kegpackd loads. The scanner checks that every member stays
inside the archived path, counts what it sees, drops what
:class:`~kegpackd.archive.ignore.ExcludeRules` exclude and renames the rest into place, all in
memory that does not grow with the archive: member data is never held, only header groups
(bounded) and the tail of one input chunk.

Framing follows Go's ``archive/tar`` reader, because the engine that extracts the
stream is written with it: what this module calls a member is what the engine
will create.

An excluded member is dropped with its whole header group, data and padding. Two
consequences are handled here:

* A hard link whose target is excluded is dropped too (and counted as excluded): the
  engine would fail to create a link to a file that is not there, and the data cannot
  be recovered from a stream that has already dropped it.
* When the rules have '!' exceptions, an excluded directory is held back (header only,
  within ``max_header_bytes`` in all) instead of dropped, and written after all if a
  member below it is kept: the re-included member then keeps its directory's owner and
  mode, as BuildKit keeps parents of re-included files. It is dropped once the stream
  leaves it; if the held-back headers outgrow the limit the outermost is dropped, and the
  engine creates that directory with default ownership.
"""

from __future__ import annotations

import abc
import enum
from typing import Final

from kegpackd.archive.ignore import ExcludeRules
from kegpackd.archive.tarheader import (
    BLOCK,
    GNU_MAGIC,
    GNU_VERSION,
    META_TYPES,
    PAX_GLOBAL,
    SPARSE,
    ZERO_BLOCK,
    checksum_ok,
    decode,
    numeric,
    padded,
)
from kegpackd.archive.tarmember import (
    Containment,
    HeldDirs,
    Member,
    NameRecords,
    layer_group,
    opaque_whiteout,
)
from kegpackd.errors import InvalidValueError, TarFormatError

DEFAULT_MAX_HEADER_BYTES: Final = 1 << 20


class FramingState(enum.IntEnum):
    """What the scanner expects next; an IntEnum so the hot loop compares plain ints."""

    HEADER = 0  # a header block (or the first zero block of the end marker)
    META = 1  # the payload of a PAX or GNU long-name header
    SPARSE = 2  # a GNU sparse extension block
    DATA = 3  # member data and its padding
    END = 4  # the second zero block of the end marker
    TRAILER = 5  # after the end marker: only zeros may follow


# Per-unit code compares with these: an enum attribute lookup costs ~8 times a global's
# on Python 3.11, which shows on archives of many small files.
_HEADER: Final = FramingState.HEADER
_META: Final = FramingState.META
_SPARSE_EXT: Final = FramingState.SPARSE
_DATA: Final = FramingState.DATA
_END: Final = FramingState.END
_TRAILER: Final = FramingState.TRAILER


class TarFraming(abc.ABC):
    """Go's framing of a tar stream: header blocks, meta-header payloads, sparse extension
    blocks, member data and the end-of-archive marker, in chunks cut anywhere. What a header
    means, and so what comes next, the subclass decides (``_header`` and the others)."""

    def __init__(self, root: str, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        self.root = root
        self._max_header_bytes = max_header_bytes
        self._meta_type = 0
        self.input_bytes = 0
        self.output_bytes = 0
        self._state: FramingState = _HEADER
        self._need = BLOCK
        self._carry = bytearray()
        self._remaining = 0
        self._keep = True
        self._member: Member | None = None
        self._meta_size = 0
        self._out = FramingOutput()
        self._base = 0
        self._error: TarFormatError | None = None
        self._finished = False

    def feed(self, data: bytes) -> bytes:
        """Scan the next chunk; returns the bytes to pass on now (possibly ``b""``)."""
        self._check_usable()
        view = memoryview(data).cast("B")
        size = view.nbytes
        if not size:
            return b""
        self._base = self.input_bytes
        self.input_bytes += size
        self._out.start(view)
        try:
            self._scan(view, size)
            result = self._out.result(data)
        except TarFormatError as exc:
            self._error = exc
            raise
        finally:
            self._out.end()
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
        elif self._carry or self._out.group_size:
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
        out = self._out
        while pos < size:
            state = self._state
            if state == data:
                take = min(self._remaining, size - pos)
                if self._keep:
                    out.pass_on(pos, pos + take)
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
            self._out.group_add(unit, start, end)
            self._meta_payload(unit[: self._meta_size], offset)
        elif state == _SPARSE_EXT:
            self._sparse_extension(unit, start, end, offset)
        else:
            if unit != ZERO_BLOCK:
                raise self._fail(
                    "a lone zero block is followed by data; the end-of-archive marker "
                    "needs two zero blocks",
                    offset,
                )
            self._state = _TRAILER

    def _header(self, block: bytes, start: int, end: int, offset: int) -> None:
        """A header block: the end-of-archive marker's first block, a meta header, or a
        member's own header (whose meaning the subclass decides)."""
        self._before_header()
        if block == ZERO_BLOCK:
            if self._out.group_size:
                raise self._fail(
                    "a PAX or GNU long-name header is not followed by a member", offset
                )
            self._at_end()
            self._state = _END
            return
        if not checksum_ok(block):
            raise self._fail("header checksum mismatch", offset)
        typeflag = block[156]
        if typeflag in META_TYPES:
            self._meta_header(block, typeflag, start, end, offset)
            return
        self._out.group_add(block, start, end)
        self._member_header(block, typeflag, end, offset)

    @abc.abstractmethod
    def _before_header(self) -> None:
        """Called before each header block (the previous member's data is all through)."""

    @abc.abstractmethod
    def _at_end(self) -> None:
        """Called at the end-of-archive marker."""

    def _meta_header(self, block: bytes, typeflag: int, start: int, end: int, offset: int) -> None:
        size = numeric(block[124:136])
        if size is None or size < 0:
            raise self._fail("invalid size field in a PAX or GNU long-name header", offset)
        group_size = self._out.group_size
        if typeflag == PAX_GLOBAL and group_size:
            raise self._fail("a PAX global header interrupts the headers of a member", offset)
        member_block = 0 if typeflag == PAX_GLOBAL else BLOCK
        if group_size + BLOCK + padded(size) + member_block > self._max_header_bytes:
            raise self._fail(
                f"a PAX or GNU long-name header of {size} bytes exceeds the "
                f"{self._max_header_bytes}-byte limit for one member's headers",
                offset,
            )
        self._out.group_add(block, start, end)
        self._meta_type = typeflag
        self._meta_size = size
        if size:
            self._state = _META
            self._need = padded(size)
        else:
            self._meta_payload(b"", offset)

    @abc.abstractmethod
    def _member_header(self, block: bytes, typeflag: int, end: int, offset: int) -> None:
        """A member's own header block, already added to its group."""

    @abc.abstractmethod
    def _meta_payload(self, payload: bytes, offset: int) -> None: ...

    @abc.abstractmethod
    def _sparse_extension(self, block: bytes, start: int, end: int, offset: int) -> None: ...


class TarScanner(TarFraming):
    """Feed it chunks of a tar stream; it returns the bytes to pass on.

    Every member's name (after PAX ``path``, GNU long names, ``GNU.sparse.name`` and the ustar
    prefix, resolved the way Go's reader does) must clean to ``root`` or lie below ``root/``;
    so must hard-link targets, and so must every other name or link target that the member's
    header group (or a PAX global header) carries, which another reader could pick instead.
    Symlink targets are content and are not checked. Anything else malformed, anything
    but zeros after the end-of-archive marker, and input that ends before its two zero
    blocks raise TarFormatError; once raised the scanner keeps raising it. With ``exclude``,
    excluded members are left out (see the module).

    The output is a run of image-layer entries, ready to be concatenated with other mounts':
    every kept member is renamed ``layer_prefix + name`` (hard-link targets too; "" for a
    mount at the top of the filesystem), a directory root is followed by its opaque whiteout
    (so the layer hides what lower layers hold below it, as the mount does), and the
    end-of-archive marker, any zeros after it and PAX global headers (Go's reader hands them
    back apart and the engine ignores them) are dropped.
    """

    def __init__(
        self,
        root: str,
        exclude: ExcludeRules | None = None,
        *,
        layer_prefix: str,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        self._names = Containment(root)
        if max_header_bytes < 3 * BLOCK:
            raise InvalidValueError(
                "tar header limit", max_header_bytes, f"must be at least {3 * BLOCK} bytes"
            )
        self._rules = exclude if exclude else None
        self._hold_dirs = self._rules is not None and self._rules.has_exceptions
        if layer_prefix and not layer_prefix.endswith("/"):
            raise InvalidValueError("layer prefix", layer_prefix, "must end with '/'")
        self._layer_prefix = layer_prefix
        self.root = self._names.root

        super().__init__(self.root, max_header_bytes)
        self.entries = 0
        self.excluded = 0
        self.content_bytes = 0
        self._records = NameRecords()
        self._held = HeldDirs(max_header_bytes)

    @property
    def buffered_bytes(self) -> int:
        """Bytes held between calls: a partial unit, an unfinished header group, held-back dirs."""
        return len(self._carry) + self._out.saved_bytes + self._held.nbytes

    def _before_header(self) -> None:
        pass

    def _at_end(self) -> None:
        self.excluded += self._held.drop()

    def _member_header(self, block: bytes, typeflag: int, end: int, offset: int) -> None:
        try:
            member = self._records.member(block, typeflag)
            member.rel, member.link_rel = self._names.check(member)
        except ValueError as exc:
            raise self._fail(str(exc), offset) from None
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

    def _meta_payload(self, payload: bytes, offset: int) -> None:
        self._state = _HEADER
        self._need = BLOCK
        try:
            global_names = self._records.add(self._meta_type, payload)
            # Go and the engine ignore a global header; other readers apply its names to
            # later members, so they must not lead outside the root either.
            for name in map(decode, global_names or ()):
                self._names.relative(name, f"PAX global header name {name!r}")
        except ValueError as exc:
            raise self._fail(str(exc), offset) from None
        if global_names is not None:
            self._out.drop_group()

    def _sparse_extension(self, block: bytes, start: int, end: int, offset: int) -> None:
        if self._out.group_size + BLOCK > self._max_header_bytes:
            raise self._fail(
                f"GNU sparse headers exceed the {self._max_header_bytes}-byte limit", offset
            )
        self._out.group_add(block, start, end)
        if not block[504]:
            self._settle(end)

    def _keeps(self, rel: str, target_rel: str | None) -> bool:
        """Whether the rules keep the member: neither it nor its hard-link target is excluded."""
        rules = self._rules
        if rules is None or not rel:
            return True
        if rules.matches_clean(rel):
            return False
        return not (target_rel and rules.matches_clean(target_rel))

    def _settle(self, end: int) -> None:
        """The member's header group is complete: pass it on, hold it back or drop it."""
        member, out = self._member, self._out
        assert member is not None
        if self._held:
            groups, dropped = self._held.release(member.rel, member.keep)
            self.excluded += dropped
            for group in groups:
                out.emit(group)
        if member.keep:
            out.emit(self._layer_group(member, out.take_group(end)))
            if member.is_dir and not member.rel:
                out.emit(opaque_whiteout(self._layer_prefix, self.root))
            self.content_bytes += member.data_size
        elif member.is_dir and self._hold_dirs:
            group = self._layer_group(member, out.take_group(end))
            self.excluded += self._held.hold(member.rel, group)
        else:
            out.drop_group()
            self.excluded += 1
        self._keep = member.keep
        self._remaining = padded(member.data_size)
        self._state = _DATA if self._remaining else _HEADER
        self._need = BLOCK

    # --- layer entries -----------------------------------------------------------------------

    def _layer_group(self, member: Member, group: bytes) -> bytes:
        return layer_group(member, group, self._layer_prefix, self.root)


class FramingOutput:
    """One chunk's output, and the header group being read, which may span chunks.

    Kept input leaves as slices of the chunk, adjacent ranges merged (a chunk of kept data
    leaves as the very same object); a header group is copied only when a chunk ends inside
    it or it is renamed.
    """

    def __init__(self) -> None:
        self.view = memoryview(b"")
        self.group_size = 0
        self._out: list[bytes | memoryview] = []
        self._run_start = self._run_end = -1
        self._saved: list[bytes] = []
        self._group_start = self._group_end = -1

    @property
    def saved_bytes(self) -> int:
        return sum(map(len, self._saved))

    def start(self, view: memoryview) -> None:
        self.view = view
        self._out = []
        self._run_start = self._run_end = -1

    def result(self, data: bytes) -> bytes:
        """The chunk's output; the unfinished group's part of it is copied: the chunk is gone."""
        if self._group_start >= 0:
            self._saved.append(self.view[self._group_start : self._group_end].tobytes())
            self._group_start = self._group_end = -1
        if self._run_start == 0 and self._run_end == self.view.nbytes and not self._out:
            return data if type(data) is bytes else self.view.tobytes()
        self._flush_run()
        return b"".join(self._out)

    def end(self) -> None:
        self._out = []
        self.view = memoryview(b"")

    def group_add(self, unit: bytes, start: int, end: int) -> None:
        """Add a unit to the group: ``view[start:end]``, or (``start`` < 0) carried over."""
        if start < 0:
            self._saved.append(unit)
        else:
            if self._group_start < 0:
                self._group_start = start
            self._group_end = end
        self.group_size += len(unit)

    def take_group(self, end: int) -> bytes:
        pieces = list(self._saved)
        if self._group_start >= 0:
            pieces.append(self.view[self._group_start : end].tobytes())
        self.drop_group()
        return b"".join(pieces)

    def drop_group(self) -> None:
        self._saved = []
        self._group_start = self._group_end = -1
        self.group_size = 0

    def pass_on(self, start: int, end: int) -> None:
        """Forward ``view[start:end]``; adjacent ranges merge so kept input leaves as one slice."""
        if self._run_end == start and self._run_start >= 0:
            self._run_end = end
            return
        self._flush_run()
        self._run_start = start
        self._run_end = end

    def emit(self, data: bytes) -> None:
        self._flush_run()
        self._out.append(data)

    def _flush_run(self) -> None:
        if self._run_start >= 0:
            self._out.append(self.view[self._run_start : self._run_end])
            self._run_start = self._run_end = -1
