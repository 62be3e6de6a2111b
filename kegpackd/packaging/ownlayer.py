"""The container's own layer, to sit above its mounts' layers: the commit's layer without
what the mounts hide.

With the mounts' layers below the container's own layer, a write anywhere in the container
changes only this small top layer, and the mounts' layers keep their chain (the graph-driver
store knows a layer by its whole chain of parents). Its bytes come from the commit's export:
the engine has the layer but cannot load it on another parent without them. Entries at or
under a mount point are dropped (the running container's mounts hide them, and the engine
puts its own mount point directories there), and so are whiteouts of a mount point.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zlib
from collections.abc import AsyncGenerator, Callable
from typing import Final

from kegpackd.archive.entries import Entry, HiddenByMounts, MemberData
from kegpackd.archive.layer import END_OF_ARCHIVE
from kegpackd.engine.port import EnginePort
from kegpackd.errors import PackagingError
from kegpackd.packaging.base import Base

GZIP_MAGIC: Final = b"\x1f\x8b"
# A legacy docker-archive's lower layers have this creation time in their v1 json.
_V1_PLACEHOLDER_CREATED: Final = "1970-01-01T00:00:00Z"


class OpaqueAboveMount(Exception):
    """The container's layer makes a directory above a mount point opaque: it would hide
    mount layers below it, so this job keeps the mounts' layer on top."""


class OwnLayer:
    """The commit's top layer, filtered, from its export (read once to measure, once to send)."""

    def __init__(self, engine: EnginePort, base: Base, commit_id: str, mounts: list[str]) -> None:
        self.engine = engine
        self.base = base
        self.commit_id = commit_id
        self.mounts = mounts
        top = base.image.layers[-1]
        if base.descriptors is not None:
            top = str(base.descriptors[-1].get("digest", top))
        self.blob = "blobs/" + top.replace(":", "/", 1)
        self.size = 0
        self.digest = ""
        self.dropped = 0

    async def measure(self) -> tuple[int, str]:
        """Its size and digest; an opaque directory above
        a mount point raises OpaqueAboveMount."""
        size = 0
        digest = hashlib.sha256()
        async with contextlib.aclosing(self._filtered()) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                digest.update(chunk)
        self.size, self.digest = size, "sha256:" + digest.hexdigest()
        return self.size, self.digest

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The same bytes again; other bytes than measured raise PackagingError."""
        digest = hashlib.sha256()
        async with contextlib.aclosing(self._filtered()) as chunks:
            async for chunk in chunks:
                digest.update(chunk)
                yield chunk
        if "sha256:" + digest.hexdigest() != self.digest:
            raise PackagingError(
                f"the export of the commit {self.commit_id[:19]} gave other bytes the second time"
            )

    async def _filtered(self) -> AsyncGenerator[bytes, None]:
        if not self.base.own_layer:
            yield END_OF_ARCHIVE  # an empty layer stands in for the one the commit did not add
            return
        hidden = HiddenByMounts("the container's own layer", self.mounts)
        found = False
        async with contextlib.aclosing(self._layer_bytes()) as chunks:
            async for chunk in chunks:
                found = True
                out = hidden.feed(chunk)
                if out:
                    yield out
        if not found:
            raise PackagingError(
                f"the export of the commit {self.commit_id[:19]} has no layer {self.blob}"
            )
        hidden.finish()
        if hidden.opaque_ancestors:
            raise OpaqueAboveMount(hidden.opaque_ancestors[0])
        self.dropped = hidden.dropped
        yield END_OF_ARCHIVE

    async def _layer_bytes(self) -> AsyncGenerator[bytes, None]:
        """The top layer's tar out of the export (a docker-archive or an OCI layout),
        decompressed if the store keeps it gzipped; the export is closed once it is read."""
        created: dict[str, str] = {}

        def wanted(entry: Entry) -> bool:
            if entry.path == self.blob:
                return True
            directory, _, name = entry.path.rpartition("/")
            return name == "layer.tar" and created.get(directory, _V1_PLACEHOLDER_CREATED) != (
                _V1_PLACEHOLDER_CREATED
            )

        def seen(entry: Entry) -> None:
            directory, _, name = entry.path.rpartition("/")
            if name == "json" and entry.size:
                try:
                    document = json.loads(entry.group[entry.header_size :][: entry.size])
                    created[directory] = str(document.get("created", ""))
                except ValueError:
                    pass

        member = _ExportMember(self.blob, wanted, seen)
        inflate: zlib._Decompress | None = None
        first = True
        async with self.engine.export(self.commit_id) as stream:
            async for chunk in stream:
                out = member.feed(chunk)
                if out:
                    if first:
                        first = False
                        if out.startswith(GZIP_MAGIC):
                            inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    yield inflate.decompress(out) if inflate is not None else out
                if member.complete:
                    break
        if inflate is not None:
            tail = inflate.flush()
            if tail:
                yield tail


class _ExportMember(MemberData):
    """MemberData that also reads each legacy layer directory's small ``json`` (to tell the
    top layer by its creation time: the legacy format names layer directories by hash)."""

    def __init__(
        self, blob: str, wanted: Callable[[Entry], bool], seen: Callable[[Entry], None]
    ) -> None:
        super().__init__(f"the export's layer {blob}", wanted)
        self._seen = seen

    def fingerprints(self, entry: Entry) -> bool:
        return entry.path.endswith("/json") and entry.size <= 1 << 20

    def keeps_data(self, entry: Entry) -> bool:
        return True

    def done(self, entry: Entry) -> None:
        self._seen(entry)
        super().done(entry)
