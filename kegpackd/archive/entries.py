"""A tar stream read entry by entry: which entries to keep, and a fingerprint of each.

Incremental packaging compares a mount's layer with the previous image's entry by entry,
and sends only what differs. That needs three readers of tar bytes that
:class:`~kegpackd.archive.tarscan.TarScanner` (which renames a mount's archive into a
layer and checks its names) is not: one that fingerprints every entry of a layer kegpackd
made (its header group and data: any change of content, type, mode, owner, times, xattrs
or link target changes it), one that keeps a chosen set of entries, and one that drops a
container's entries at and under its mount points. They share Go's framing with the
scanner (:class:`~kegpackd.archive.tarscan.TarFraming`), so a member here is a member there.

Entries are named as in a layer: no leading ``/`` or ``./``, no trailing ``/``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from kegpackd.archive.tarheader import (
    BLOCK,
    PAX_GLOBAL,
    SPARSE,
    padded,
)
from kegpackd.archive.tarmember import Member, NameRecords
from kegpackd.archive.tarscan import (
    DEFAULT_MAX_HEADER_BYTES,
    FramingOutput,
    FramingState,
    TarFraming,
)

WHITEOUT_PREFIX: Final = ".wh."
REGULAR_TYPES: Final = frozenset((0, ord("0"), ord("7")))


def entry_path(name: str) -> str:
    """A member's name as a layer path: ``./a/b/`` → ``a/b``."""
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


@dataclass(slots=True)
class Entry:
    """One member as the fingerprinting reader saw it."""

    path: str
    typeflag: int
    size: int
    # A hard link's target (a layer path), else "".
    link: str
    fingerprint: bytes = b""
    # The header group's length, and its bytes (then the data, if kept) when they were kept.
    header_size: int = 0
    group: bytes = b""

    @property
    def is_dir(self) -> bool:
        return self.typeflag == ord("5")

    @property
    def is_regular(self) -> bool:
        return self.typeflag in REGULAR_TYPES


class _HashingOutput(FramingOutput):
    """The framing's output that also hashes (and may keep) the data it passes on."""

    def __init__(self) -> None:
        super().__init__()
        self.hasher: hashlib._Hash | None = None
        self.kept: bytearray | None = None
        self.forward = True

    def pass_on(self, start: int, end: int) -> None:
        if self.hasher is not None:
            piece = self.view[start:end]
            self.hasher.update(piece)
            if self.kept is not None:
                self.kept += piece
        if self.forward:
            super().pass_on(start, end)


class EntryFilter(TarFraming):
    """Feed it a tar stream's chunks; it returns the kept entries' bytes (header group, data
    and padding, unchanged), and calls ``done`` with each entry once its data has passed.

    Subclasses decide what to keep (``keeps``) and whether to fingerprint an entry
    (``fingerprints``). PAX global headers and the end-of-archive marker are dropped.
    Sparse entries are refused: no engine writes them into the archives read here.
    """

    # Whether a kept entry's header group is passed on (MemberData passes its data only).
    EMIT_HEADERS = True

    def __init__(self, what: str, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES) -> None:
        super().__init__(what, max_header_bytes)
        self._hashing = _HashingOutput()
        self._out = self._hashing
        self._records = NameRecords()
        self._entry: Entry | None = None
        self.entries = 0

    # --- what subclasses decide ----------------------------------------------------------

    def keeps(self, entry: Entry) -> bool:
        return True

    def fingerprints(self, entry: Entry) -> bool:
        return False

    def keeps_data(self, entry: Entry) -> bool:
        """Whether to keep the entry's data in ``entry.group`` too (small changed files)."""
        return False

    def done(self, entry: Entry) -> None:
        pass

    # --- the framing's callbacks ---------------------------------------------------------

    def finish(self) -> bytes:
        tail = super().finish()
        self._complete()
        return tail

    def _complete(self) -> None:
        entry, out = self._entry, self._hashing
        if entry is None:
            return
        self._entry = None
        if out.hasher is not None:
            entry.fingerprint = out.hasher.digest()
            if out.kept is not None:
                entry.group += bytes(out.kept)
        out.hasher = None
        out.kept = None
        self.done(entry)

    def _before_header(self) -> None:
        self._complete()

    def _at_end(self) -> None:
        pass

    def _member_header(self, block: bytes, typeflag: int, end: int, offset: int) -> None:
        try:
            member = self._records.member(block, typeflag)
        except ValueError as exc:
            raise self._fail(str(exc), offset) from None
        if typeflag == SPARSE or any(k.startswith(b"GNU.sparse.") for k in member.pax or ()):
            raise self._fail(f"sparse entry {member.name!r} is not supported here", offset)
        self._start(member, end)

    def _start(self, member: Member, end: int) -> None:
        link = entry_path(member.link.decode("utf-8", "surrogateescape"))
        entry = Entry(
            entry_path(member.name),
            member.typeflag,
            member.data_size,
            link if member.typeflag == ord("1") else "",
        )
        self.entries += 1
        group = self._out.take_group(end)
        entry.header_size = len(group)
        keep = self.keeps(entry)
        if keep and self.EMIT_HEADERS:
            self._out.emit(group)
        out = self._hashing
        if self.fingerprints(entry):
            out.hasher = hashlib.sha256(group)
            entry.group = group
            if self.keeps_data(entry):
                out.kept = bytearray()
        self._entry = entry
        out.forward = keep
        self._keep = keep or out.hasher is not None
        self._remaining = padded(member.data_size)
        self._state = FramingState.DATA if self._remaining else FramingState.HEADER
        self._need = BLOCK
        if not self._remaining:
            self._complete()

    def _meta_payload(self, payload: bytes, offset: int) -> None:
        self._state = FramingState.HEADER
        self._need = BLOCK
        try:
            global_names = self._records.add(self._meta_type, payload)
        except ValueError as exc:
            raise self._fail(str(exc), offset) from None
        if global_names is not None or self._meta_type == PAX_GLOBAL:
            self._out.drop_group()

    def _sparse_extension(self, block: bytes, start: int, end: int, offset: int) -> None:
        raise self._fail("sparse entries are not supported here", offset)


class Fingerprinter(EntryFilter):
    """Every entry of a layer, fingerprinted, handed to ``on_entry``; nothing is passed on."""

    def __init__(
        self,
        what: str,
        on_entry: Callable[[Entry], None],
        keep_data: Callable[[Entry], bool] = lambda _entry: False,
    ) -> None:
        super().__init__(what)
        self._on_entry = on_entry
        self._keep_data = keep_data

    def keeps(self, entry: Entry) -> bool:
        return False

    def fingerprints(self, entry: Entry) -> bool:
        return True

    def keeps_data(self, entry: Entry) -> bool:
        return self._keep_data(entry)

    def done(self, entry: Entry) -> None:
        self._on_entry(entry)


class Selection(EntryFilter):
    """The entries named in ``wanted`` (path → expected fingerprint), passed on unchanged;
    ``mismatch`` is called with the path of any whose fingerprint is not the expected one."""

    def __init__(
        self, what: str, wanted: dict[str, bytes], mismatch: Callable[[str], None]
    ) -> None:
        super().__init__(what)
        self.wanted = wanted
        self.seen: set[str] = set()
        self._mismatch = mismatch

    def keeps(self, entry: Entry) -> bool:
        return entry.path in self.wanted

    def fingerprints(self, entry: Entry) -> bool:
        return entry.path in self.wanted

    def done(self, entry: Entry) -> None:
        if entry.path not in self.wanted:
            return
        self.seen.add(entry.path)
        if entry.fingerprint != self.wanted[entry.path]:
            self._mismatch(entry.path)


class HiddenByMounts(EntryFilter):
    """A container's committed layer without what its mounts hide: entries at or under a
    mount point, and whiteouts of a mount point (the mounts' layers below bring those).

    ``opaque_ancestors`` lists the opaque directories above a mount point: such a directory
    would hide the mounts' layers below it, so the caller cannot put them there.
    """

    def __init__(self, what: str, mount_points: list[str]) -> None:
        super().__init__(what)
        self.points = [entry_path(p) for p in mount_points]
        self._whiteouts = {
            f"{parent_of(p)}/{WHITEOUT_PREFIX}{p.rpartition('/')[2]}".lstrip("/")
            for p in self.points
        }
        self._ancestors = {a for p in self.points for a in _ancestors(p)}
        self.opaque_ancestors: list[str] = []
        self.dropped = 0

    def keeps(self, entry: Entry) -> bool:
        path = entry.path
        if path.endswith("/" + WHITEOUT_PREFIX + WHITEOUT_PREFIX + ".opq") or path == (
            WHITEOUT_PREFIX + WHITEOUT_PREFIX + ".opq"
        ):
            directory = parent_of(path)
            if directory in self._ancestors:
                self.opaque_ancestors.append(directory or "/")
        hidden = path in self._whiteouts or any(
            path == p or path.startswith(p + "/") for p in self.points
        )
        if hidden:
            self.dropped += 1
        return not hidden


def _ancestors(path: str) -> list[str]:
    """``a/b/c`` → ``""``, ``a``, ``a/b``."""
    parts = path.split("/")[:-1]
    return ["", *("/".join(parts[: i + 1]) for i in range(len(parts)))]


class MemberData(EntryFilter):
    """The data of one member of an outer archive (a layer in an image export), found by
    ``wanted`` (called with each member's path; the first that matches is taken)."""

    EMIT_HEADERS = False

    def __init__(self, what: str, wanted: Callable[[Entry], bool]) -> None:
        super().__init__(what)
        self._wanted = wanted
        self.found: Entry | None = None
        self.complete = False

    def keeps(self, entry: Entry) -> bool:
        if self.found is None and self._wanted(entry):
            self.found = entry
            return True
        return False

    def done(self, entry: Entry) -> None:
        if entry is self.found:
            self.complete = True
