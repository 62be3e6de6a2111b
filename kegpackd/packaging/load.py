"""Loading the final image: the archive the engine is sent, and the upload of it.

Apart from the layer's content because the archive format follows the engine's image store
(a docker-archive for a graph driver, an OCI layout for the containerd store) and the
upload's rules (a short archive must never load), not what the mounts hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncGenerator
from datetime import datetime

import anyio

from kegpackd.archive.layer import (
    END_OF_ARCHIVE,
    LAYER_FILE,
    declared_size,
    file_entry,
    file_header,
    manifest,
    oci_head,
    placeholders,
    zero_padding,
)
from kegpackd.engine.models import ContainerInfo, ImageInfo
from kegpackd.engine.port import EnginePort
from kegpackd.errors import EngineError, PackagingError
from kegpackd.labels import LABEL_PAUSE
from kegpackd.packaging.base import Base
from kegpackd.packaging.jobs import JobResult, LayerKind, Progress, Stage
from kegpackd.packaging.layersource import Layer
from kegpackd.packaging.reuse import canonical, has_layer

log = logging.getLogger(__name__)

LAYER_ATTEMPTS = 3


class _LayerOutgrown(Exception):
    """The mounts changed since measured: more bytes than declared, or (where the layer's
    name is its digest) other bytes."""


class Load:
    """One job's load of its final image under the pending tag ``repo_tag``."""

    def __init__(
        self, engine: EnginePort, job_id: str, progress: Progress, result: JobResult
    ) -> None:
        self.engine = engine
        self.job_id = job_id
        self.progress = progress
        self.result = result

    async def run(
        self,
        info: ContainerInfo,
        base: Base,
        layer: Layer,
        measured: tuple[int, str],
        now: datetime,
        own: list[ImageInfo],
        repo_tag: str,
    ) -> None:
        """Load the final image: reuse a layer the engine has, else stream it, re-measuring
        (boundedly) when the mounts outgrow the headroom."""
        for attempt in range(1, LAYER_ATTEMPTS + 1):
            size, digest = measured if attempt == 1 else await layer.measure()
            declared = declared_size(size)
            if has_layer(own, base, digest):
                self.progress.stage(Stage.STREAM, "the layer is unchanged")
                config = base.config(info, self.job_id, digest, layer.created_by, now)
                try:
                    await self.engine.load_archive(
                        _config_only(base, config, repo_tag, digest, declared)
                    )
                except EngineError as exc:
                    log.warning(
                        "job %s: reusing layer %s failed (%s); sending it",
                        self.job_id,
                        digest[:19],
                        exc,
                    )
                else:
                    self.result.layer = LayerKind.REUSED
                    self.result.layer_digest = digest
                    return
            if base.descriptors is None:
                archive = self._archive(info, base, layer, declared, repo_tag, now)
            else:
                archive = self._oci_archive(info, base, layer, declared, digest, repo_tag, now)
            try:
                await self._send(archive)
            except _LayerOutgrown:
                log.warning(
                    "job %s: the mounts changed while copied (attempt %d of %d)",
                    self.job_id,
                    attempt,
                    LAYER_ATTEMPTS,
                )
                continue
            self.result.layer = LayerKind.NEW
            return
        raise PackagingError(
            f"the mounts of container {info.name} kept changing while they were copied "
            f"({LAYER_ATTEMPTS} attempts); set the label {LABEL_PAUSE}=true to pause "
            "the container during the copy"
        )

    async def _send(self, archive: AsyncGenerator[bytes, None]) -> None:
        await send_archive(self.engine, archive)

    async def _padded_layer(
        self, layer: Layer, declared: int, hasher: hashlib._Hash
    ) -> AsyncGenerator[bytes, None]:
        """The layer's bytes, hashed, padded with zeros to ``declared``; past it, the mounts
        changed since they were measured."""
        sent = 0

        def on_bytes(count: int) -> None:
            self.result.streamed_bytes += count
            self.progress.streamed(count)

        async with contextlib.aclosing(layer.chunks(on_bytes, final=True)) as chunks:
            async for chunk in chunks:
                sent += len(chunk)
                if sent > declared:
                    raise _LayerOutgrown
                hasher.update(chunk)
                yield chunk
        for zeros in zero_padding(declared - sent):
            hasher.update(zeros)
            yield zeros
        self.result.layer_bytes = declared

    async def _archive(
        self,
        info: ContainerInfo,
        base: Base,
        layer: Layer,
        declared: int,
        repo_tag: str,
        now: datetime,
    ) -> AsyncGenerator[bytes, None]:
        """The docker-archive: placeholders, the layer padded to ``declared``, config, manifest."""
        yield placeholders(len(base.image.layers)) + file_header(LAYER_FILE, declared)
        hasher = hashlib.sha256()
        async with contextlib.aclosing(self._padded_layer(layer, declared, hasher)) as body:
            async for chunk in body:
                yield chunk
        diff_id = "sha256:" + hasher.hexdigest()
        self.result.layer_digest = diff_id
        config = base.config(info, self.job_id, diff_id, layer.created_by, now)
        yield file_entry("config.json", config)
        yield file_entry("manifest.json", manifest(len(base.image.layers), canonical(repo_tag)))
        yield END_OF_ARCHIVE

    async def _oci_archive(
        self,
        info: ContainerInfo,
        base: Base,
        layer: Layer,
        declared: int,
        digest: str,
        repo_tag: str,
        now: datetime,
    ) -> AsyncGenerator[bytes, None]:
        """The OCI layout for the containerd store: manifest and config first, the layer blob
        (named by the measured digest) last; a stream that differs from it is cut off."""
        assert base.descriptors is not None
        config = base.config(info, self.job_id, digest, layer.created_by, now)
        head, blob = oci_head(base.descriptors, config, digest, declared, canonical(repo_tag))
        yield head + file_header(blob, declared)
        hasher = hashlib.sha256()
        async with contextlib.aclosing(self._padded_layer(layer, declared, hasher)) as body:
            async for chunk in body:
                yield chunk
        if "sha256:" + hasher.hexdigest() != digest:
            raise _LayerOutgrown  # other bytes than measured: not the blob the manifest names
        self.result.layer_digest = digest
        yield END_OF_ARCHIVE


async def send_archive(engine: EnginePort, archive: AsyncGenerator[bytes, None]) -> None:
    """Load ``archive``, produced in a task of ours and handed over through a stream.

    The archive's source reads stay in a task this job owns, so cancellation and
    failures close them here; the upload only forwards chunks. An upload whose producer
    failed is cut off, never ended cleanly, so the engine cannot load a short archive.
    """
    send, receive = anyio.create_memory_object_stream[bytes | None](4)
    failure: list[BaseException] = []

    async def produce() -> None:
        async with send, contextlib.aclosing(archive) as chunks:
            try:
                async for chunk in chunks:
                    await send.send(chunk)
                await send.send(None)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                return  # the upload stopped reading: the engine's answer says why
            except Exception as exc:
                failure.append(exc)
                raise

    async def body() -> AsyncGenerator[bytes, None]:
        async with receive:
            async for chunk in receive:
                if chunk is None:
                    return
                yield chunk
        raise PackagingError("the layer stream stopped before its end")

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(produce)
            await engine.load_archive(body())
    except BaseExceptionGroup as errors:
        raise (failure[0] if failure else errors.exceptions[0]) from None


async def _config_only(
    base: Base, config: bytes, repo_tag: str, digest: str, size: int
) -> AsyncGenerator[bytes, None]:
    """An archive whose every layer the engine has: placeholders, config, manifest (or, on
    the containerd store, an OCI layout without the layer blobs, which the store holds)."""
    if base.descriptors is not None:
        head, _blob = oci_head(base.descriptors, config, digest, size, canonical(repo_tag))
        yield head + END_OF_ARCHIVE
        return
    count = len(base.image.layers)
    yield (
        placeholders(count)
        + file_header(LAYER_FILE, 0)
        + file_entry("config.json", config)
        + file_entry("manifest.json", manifest(count, canonical(repo_tag)))
        + END_OF_ARCHIVE
    )
