"""The archive of an incremental job's load: the layers the engine lacks, and its config.

Apart from :mod:`kegpackd.packaging.stacked` (which layers there are, and where their bytes
come from) because the archive's format follows the engine's image store: a docker-archive
with zero-byte placeholders for a graph driver, an OCI layout without the blobs the store
has for the containerd store.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import datetime

from kegpackd.archive.layer import (
    END_OF_ARCHIVE,
    OCI_LAYER,
    blob_name,
    file_entry,
    file_header,
    manifest,
    oci_head,
)
from kegpackd.archive.tarheader import padded
from kegpackd.engine.models import ContainerInfo
from kegpackd.packaging.base import Base
from kegpackd.packaging.reuse import canonical


class Outgrown(Exception):
    """The mounts sent other bytes than were measured."""


@dataclass
class Part:
    """One layer of the final image: its diff id and size, and its bytes when the engine
    lacks it (None: it has it on this chain)."""

    digest: str
    size: int
    source: Callable[[], AsyncGenerator[bytes, None]] | None = None


class StackedArchive:
    """The final image of one incremental job as an archive for ``POST /images/load``."""

    def __init__(
        self, base: Base, info: ContainerInfo, job_id: str, source_layers: list[str]
    ) -> None:
        self.base = base
        self.info = info
        self.job_id = job_id
        self.source_layers = source_layers

    async def _verified(self, part: Part, *, digest_known: bool) -> AsyncGenerator[bytes, None]:
        """A new layer's bytes, exactly ``part.size`` of them; its digest set (or checked)."""
        assert part.source is not None
        hasher = hashlib.sha256()
        sent = 0
        async with contextlib.aclosing(part.source()) as chunks:
            async for chunk in chunks:
                sent += len(chunk)
                if sent > part.size:
                    raise Outgrown(f"a layer outgrew its {part.size} bytes")
                hasher.update(chunk)
                yield chunk
        if sent != part.size:
            raise Outgrown(f"a layer of {part.size} bytes ended after {sent}")
        digest = "sha256:" + hasher.hexdigest()
        if digest_known and digest != part.digest:
            raise Outgrown("other bytes than measured")
        part.digest = digest

    async def docker(
        self, parts: list[Part], created_by: list[str], now: datetime, repo_tag: str
    ) -> AsyncGenerator[bytes, None]:
        """The docker-archive: placeholders for what the engine has, the new layers, then
        the config (which names the new layers' digests, known once they are sent)."""
        names = []
        for number, part in enumerate(parts):
            name = f"{number}/layer.tar"
            names.append(name)
            if part.source is None:
                yield file_header(name, 0)
                continue
            yield file_header(name, part.size)
            async with contextlib.aclosing(self._verified(part, digest_known=False)) as body:
                async for chunk in body:
                    yield chunk
            yield bytes(padded(part.size) - part.size)
        yield file_entry("config.json", self._config(parts, created_by, now))
        yield file_entry("manifest.json", manifest(0, canonical(repo_tag), names=names))
        yield END_OF_ARCHIVE

    async def oci(
        self, parts: list[Part], created_by: list[str], now: datetime, repo_tag: str
    ) -> AsyncGenerator[bytes, None]:
        """The OCI layout: the index, manifest and config first (every digest is known
        before), then the blobs of the layers the store lacks."""
        assert self.base.descriptors is not None
        descriptors = list(self.base.descriptors[: len(self.source_layers)])
        descriptors += [
            {"mediaType": OCI_LAYER, "digest": p.digest, "size": p.size}
            for p in parts[len(self.source_layers) : -1]
        ]
        top = parts[-1]
        config = self._config(parts, created_by, now)
        head, _blob = oci_head(descriptors, config, top.digest, top.size, canonical(repo_tag))
        yield head
        for part in parts:
            if part.source is None:
                continue
            yield file_header(blob_name(part.digest), part.size)
            async with contextlib.aclosing(self._verified(part, digest_known=True)) as body:
                async for chunk in body:
                    yield chunk
            yield bytes(padded(part.size) - part.size)
        yield END_OF_ARCHIVE

    def _config(self, parts: list[Part], created_by: list[str], now: datetime) -> bytes:
        mounts = parts[len(self.source_layers) : -1]
        return self.base.config(
            self.info,
            self.job_id,
            parts[-1].digest,
            "",
            now,
            below_top=[(p.digest, by) for p, by in zip(mounts, created_by, strict=True)],
        )
