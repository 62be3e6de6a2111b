"""The mounts' layer as a stream that can be read more than once: measured, then sent.

Apart from the encoding and the upload because what goes into the layer (which mounts, the
exclude rules and ``.kegpackignore``, the parents' metadata, the whiteouts) changes for
other reasons than the archive format the engine is sent it in.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
from collections.abc import AsyncGenerator, Callable

import anyio

from kegpackd.archive.ignore import ExcludeRules
from kegpackd.archive.layer import (
    END_OF_ARCHIVE,
    ancestors,
    declared_size,
    first_member,
    layer_prefix,
    parent_entry,
    zero_padding,
)
from kegpackd.archive.tarscan import TarScanner
from kegpackd.engine.models import ContainerInfo
from kegpackd.engine.port import EnginePort
from kegpackd.errors import PackagingError
from kegpackd.packaging.jobs import JobResult
from kegpackd.packaging.mounts import SelectedMount
from kegpackd.packaging.options import JobOptions

IGNORE_FILE = ".kegpackignore"
IGNORE_FILE_LIMIT = 64 * 1024
PARENT_HEADER_LIMIT = 1 << 20


class Layer:
    """The mounts' layer, as a stream that can be read more than once (measured, then sent)."""

    def __init__(
        self,
        engine: EnginePort,
        result: JobResult,
        info: ContainerInfo,
        mounts: list[SelectedMount],
        rules: list[ExcludeRules],
        parents: bytes,
    ) -> None:
        self.engine = engine
        self.result = result
        self.info = info
        self.mounts = mounts
        self.rules = rules
        self.parents = parents
        self.created_by = "kegpackd: copied " + ", ".join(m.destination for m in mounts)
        # Also sees the bytes ``measure`` reads (incremental packaging's scan).
        self.observe: Callable[[bytes], None] | None = None

    @staticmethod
    def declared(measured: int) -> int:
        """The size the layer is declared (and padded to) when ``measured`` bytes long."""
        return declared_size(measured)

    async def measure(self) -> tuple[int, str]:
        """Size and digest of the layer as the declared-size entry would carry it."""
        size = 0
        digest = hashlib.sha256()
        async with contextlib.aclosing(self.chunks(lambda _count: None, final=False)) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                digest.update(chunk)
                if self.observe is not None:
                    self.observe(chunk)
        for zeros in zero_padding(self.declared(size) - size):
            digest.update(zeros)
        return size, "sha256:" + digest.hexdigest()

    async def chunks(
        self, on_bytes: Callable[[int], None], *, final: bool
    ) -> AsyncGenerator[bytes, None]:
        """Parents, then each mount renamed into place behind its opaque whiteout, then the end."""
        yield self.parents
        entries = excluded = 0
        for mount, rules in zip(self.mounts, self.rules, strict=True):
            scanner = TarScanner(
                mount.root_name,
                rules if rules else None,
                layer_prefix=layer_prefix(mount.destination),
            )
            async with self.engine.archive(self.info.id, mount.destination) as stream:
                async for chunk in stream:
                    on_bytes(len(chunk))
                    out = await _scan(scanner, chunk, threaded=bool(rules))
                    if out:
                        yield out
            tail = scanner.finish()
            if tail:
                yield tail
            if scanner.entries == 0:
                raise PackagingError(f"the archive of {mount.destination} was empty")
            entries += scanner.entries
            excluded += scanner.excluded
        if final:
            self.result.entries, self.result.excluded = entries, excluded
        yield END_OF_ARCHIVE


async def _scan(scanner: TarScanner, chunk: bytes, *, threaded: bool) -> bytes:
    """One chunk through the scanner; with exclude rules (a container owner's patterns, whose
    matching is linear but can still cost milliseconds per entry) in a worker thread, so the
    event loop (``/healthz``, the watchdog, signals) keeps running meanwhile."""
    if threaded:
        return await anyio.to_thread.run_sync(scanner.feed, chunk)
    return scanner.feed(chunk)


async def exclude_rules(
    engine: EnginePort, info: ContainerInfo, mount: SelectedMount, options: JobOptions
) -> ExcludeRules:
    """The configured or labelled patterns, plus a ``.kegpackignore`` at the mount's root."""
    patterns = list(options.exclude)
    source = options.exclude_source
    if mount.is_dir:
        ignore_path = posixpath.join(mount.destination, IGNORE_FILE)
        content = await engine.read_file(info.id, ignore_path, IGNORE_FILE_LIMIT)
        if content is not None:
            lines = content.decode("utf-8", errors="replace").splitlines()
            ExcludeRules.parse(lines, f"{ignore_path} in container {info.name}")
            patterns += lines
            source = f"{source} and {ignore_path}"
    return ExcludeRules.parse(patterns, source)


async def parent_entries(
    engine: EnginePort, info: ContainerInfo, mounts: list[SelectedMount]
) -> bytes:
    """Directory entries for the mounts' parents, with the metadata the source shows.

    The first header of a parent's archive is the parent itself; the rest is not read,
    and closing the stream early releases the container.
    """
    wanted = sorted({a for m in mounts for a in ancestors(m.destination)}, key=_path_key)
    entries = []
    for name in wanted:
        head = b""
        member = None
        async with engine.archive(info.id, "/" + name) as chunks:
            async for chunk in chunks:
                head += chunk
                member = first_member(head)
                if member is not None or len(head) > PARENT_HEADER_LIMIT:
                    break
        where = f"/{name}, the parent of a mount of container {info.name},"
        if member is None:
            raise PackagingError(f"{where} gave no readable archive header")
        entries.append(parent_entry(name, member, where))
    return b"".join(entries)


def _path_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))
