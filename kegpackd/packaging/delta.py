"""The mounts' change since the previous image, as a layer of its own (a delta).

One read of the mounts fingerprints every entry of what would be the full layer and
compares it with the previous image's index; the delta then holds the entries that
differ (whole hard-link groups, so no link points into a lower layer), every directory
above them (else the engine would create those with default owners and modes, and the
image would show them so), and a whiteout for each topmost deleted entry. Its bytes come
from what the scan kept (directory and link headers, small changed files), or are fetched
path by path through the archive API, or (when many files changed) from a second read
of the mounts that keeps only those entries; every entry is checked against its scanned
fingerprint, so the delta is exactly the change the index records.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Final

from kegpackd.archive.entries import Entry, Fingerprinter, Selection, parent_of
from kegpackd.archive.layer import END_OF_ARCHIVE, layer_prefix
from kegpackd.archive.tarheader import padded
from kegpackd.archive.tarmember import OPAQUE_WHITEOUT, empty_entry
from kegpackd.archive.tarscan import TarScanner
from kegpackd.engine.models import ContainerInfo
from kegpackd.engine.port import EnginePort
from kegpackd.packaging.layersource import Layer
from kegpackd.packaging.mountindex import IndexEntry, MountIndex

# A delta bigger than this share of the full layer is written as a full layer instead.
DELTA_FRACTION: Final = 0.5
# Changed files up to this size are kept whole by the scan (up to KEPT_BUDGET in all).
SMALL_FILE: Final = 64 * 1024
KEPT_BUDGET: Final = 16 << 20
LINK: Final = ord("1")


class MountsChanged(Exception):
    """An entry read for the delta is not what the scan fingerprinted: the mounts changed."""


class Scan:
    """The fingerprints of every entry of the mounts' full layer, in layer order, with what
    a delta may need kept: headers of directories, hard links and changed entries, and
    changed small files whole."""

    def __init__(self, previous: MountIndex | None) -> None:
        self.previous = previous.entries if previous is not None else None
        self.entries: list[Entry] = []
        self.kept_bytes = 0
        self.reader = Fingerprinter("the mounts' layer", self._on_entry, self._keep_data)

    def feed(self, chunk: bytes) -> None:
        self.reader.feed(chunk)

    def finish(self) -> None:
        self.reader.finish()

    def _changed(self, entry: Entry) -> bool:
        if self.previous is None:
            return True
        before = self.previous.get(entry.path)
        return before is None or before.fingerprint != entry.fingerprint

    def _keep_data(self, entry: Entry) -> bool:
        if self.previous is None:
            return False  # no delta without a previous index: nothing to keep
        return entry.is_regular and entry.size <= SMALL_FILE and self.kept_bytes < KEPT_BUDGET

    def _on_entry(self, entry: Entry) -> None:
        if self.previous is None:
            entry.group = b""
        elif self._changed(entry):
            self.kept_bytes += len(entry.group)
            if entry.is_regular and len(entry.group) == entry.header_size and entry.size:
                entry.group = b""  # too big to keep: fetched or read again
        elif entry.is_dir or entry.typeflag == LINK:
            entry.group = entry.group[: entry.header_size]
        else:
            entry.group = b""
        self.entries.append(entry)

    def index_entries(self) -> dict[str, IndexEntry]:
        return {e.path: IndexEntry(e.fingerprint, e.typeflag, e.link) for e in self.entries}


@dataclass
class DeltaPlan:
    """What the delta holds, in layer order, and its exact size."""

    include: list[Entry]
    whiteouts: list[str]
    size: int
    changed: int
    deleted: int
    # Paths whose bytes the scan did not keep.
    missing: set[str] = field(default_factory=set)


def plan_delta(previous: MountIndex, entries: list[Entry]) -> DeltaPlan:
    """The entries that differ from ``previous``, closed over hard-link groups and parents."""
    new = {e.path: e for e in entries}
    before = previous.entries
    wanted = {
        e.path
        for e in entries
        if (old := before.get(e.path)) is None or old.fingerprint != e.fingerprint
    }
    changed = len(wanted)
    links: dict[str, list[str]] = {}
    for e in entries:
        if e.link:
            links.setdefault(e.link, []).append(e.path)
    for target, members in links.items():
        if target in wanted or any(m in wanted for m in members):
            wanted.add(target)
            wanted.update(members)
    deleted = [p for p in before if p not in new]
    whiteouts = [
        p for p in deleted if not parent_of(p) or (parent_of(p) in new and new[parent_of(p)].is_dir)
    ]
    for path in [*wanted, *whiteouts]:
        parent = parent_of(path)
        while parent and parent not in wanted and parent in new:
            wanted.add(parent)
            parent = parent_of(parent)
    include = [e for e in entries if e.path in wanted]
    size = sum(e.header_size + padded(e.size) for e in include)
    size += sum(len(whiteout(p)) for p in whiteouts) + len(END_OF_ARCHIVE)
    missing = {e.path for e in include if len(e.group) < e.header_size + padded(e.size)}
    return DeltaPlan(include, whiteouts, size, changed, len(deleted), missing)


def hides_lower(plan: DeltaPlan) -> bool:
    """Whether the delta would carry an opaque whiteout (which would hide the layers below)."""
    return any(e.path.rpartition("/")[2] == OPAQUE_WHITEOUT for e in plan.include)


def whiteout(path: str) -> bytes:
    parent, _, name = path.rpartition("/")
    return empty_entry(
        ((parent + "/" if parent else "") + ".wh." + name).encode("utf-8", "surrogateescape")
    )


class Delta:
    """The delta layer's bytes: kept by the scan, fetched path by path, or read again."""

    def __init__(
        self,
        engine: EnginePort,
        info: ContainerInfo,
        plan: DeltaPlan,
        layer: Layer,
        fetch_limit: int,
    ) -> None:
        self.engine = engine
        self.info = info
        self.plan = plan
        self.layer = layer
        # "scan": the scan kept every byte the delta needs.
        self.source = "scan" if not plan.missing else "fetch"
        if len(plan.missing) > fetch_limit:
            self.source = "reread"

    async def measure(self) -> tuple[int, str]:
        """Size and digest (they are known only by producing the bytes once)."""
        size = 0
        digest = hashlib.sha256()
        async with contextlib.aclosing(self.chunks(lambda _count: None)) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                digest.update(chunk)
        return size, "sha256:" + digest.hexdigest()

    async def chunks(self, on_bytes: Callable[[int], None]) -> AsyncGenerator[bytes, None]:
        if self.source != "reread":
            for entry in self.plan.include:
                if entry.path in self.plan.missing:
                    async with contextlib.aclosing(self._fetch(entry, on_bytes)) as fetched:
                        async for chunk in fetched:
                            yield chunk
                else:
                    yield entry.group
        else:
            async with contextlib.aclosing(self._reread(on_bytes)) as chunks:
                async for chunk in chunks:
                    yield chunk
        for path in self.plan.whiteouts:
            yield whiteout(path)
        yield END_OF_ARCHIVE

    async def _fetch(
        self, entry: Entry, on_bytes: Callable[[int], None]
    ) -> AsyncGenerator[bytes, None]:
        """One entry through the archive API, renamed as the mount's archive names it."""
        path = "/" + entry.path
        scanner = TarScanner(entry.path.rpartition("/")[2], layer_prefix=layer_prefix(path))
        selection = Selection(path, {entry.path: entry.fingerprint}, _changed)
        async with self.engine.archive(self.info.id, path) as stream:
            async for chunk in stream:
                on_bytes(len(chunk))
                out = selection.feed(scanner.feed(chunk))
                if out:
                    yield out
        # The scanner leaves out the end-of-archive marker (mounts' runs are concatenated).
        tail = selection.feed(scanner.finish() + END_OF_ARCHIVE)
        selection.finish()
        if tail:
            yield tail
        if entry.path not in selection.seen:
            raise MountsChanged(entry.path)

    async def _reread(self, on_bytes: Callable[[int], None]) -> AsyncGenerator[bytes, None]:
        """The mounts read again, only the delta's entries kept."""
        wanted = {e.path: e.fingerprint for e in self.plan.include}
        selection = Selection("the mounts", wanted, _changed)
        async with contextlib.aclosing(self.layer.chunks(on_bytes, final=False)) as chunks:
            async for chunk in chunks:
                out = selection.feed(chunk)
                if out:
                    yield out
        selection.finish()
        if selection.seen != wanted.keys():
            raise MountsChanged(next(iter(wanted.keys() - selection.seen)))


def _changed(path: str) -> None:
    raise MountsChanged(path)
