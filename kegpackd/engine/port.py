"""What the pipeline, the mounts, the scheduler and the watcher need of an engine.

``kegpackd.engine.client.Engine`` (aiodocker) is the real one; ``tests/fakeengine.py`` is an
in-memory one, for tests of what kegpackd decides rather than what the engine does.
Only what those modules call is here: a new call there is a new line here.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import Any, Protocol

from kegpackd.engine.models import (
    ContainerInfo,
    ContainerSummary,
    Event,
    ImageInfo,
    ImageSummary,
    PathStat,
)


class EnginePort(Protocol):
    """One engine, as ``kegpackd.engine.client.Engine`` offers it (same names, same errors)."""

    async def inspect_container(self, ref: str) -> ContainerInfo: ...

    async def inspect_image(self, ref: str) -> ImageInfo: ...

    async def image_history(self, ref: str) -> list[Mapping[str, Any]]: ...

    async def list_containers(self, filters: Mapping[str, list[str]]) -> list[ContainerSummary]: ...

    async def list_images(self, filters: Mapping[str, list[str]]) -> list[ImageSummary]: ...

    async def stat_path(self, container_id: str, path: str) -> PathStat | None: ...

    async def product(self) -> str: ...

    async def image_store(self) -> str: ...

    def export(self, ref: str) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]: ...

    async def system_time_ns(self) -> int: ...

    def events(
        self, since_ns: int, label: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]: ...

    def image_loads(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]: ...

    async def read_file(self, container_id: str, path: str, limit: int) -> bytes | None: ...

    async def pause(self, container_id: str) -> None: ...

    async def unpause(self, container_id: str) -> None: ...

    async def stop(self, container_id: str) -> None: ...

    async def start(self, container_id: str) -> None: ...

    async def exec_command(
        self, container_id: str, argv: Sequence[str], on_output: Callable[[bytes], None]
    ) -> int: ...

    async def commit(
        self,
        container_id: str,
        *,
        comment: str,
        config: Mapping[str, Any] | None = None,
    ) -> str: ...

    def archive(
        self, container_id: str, path: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[bytes]]: ...

    async def load_archive(self, body: AsyncGenerator[bytes, None]) -> None: ...

    async def remove_container(self, container_id: str) -> bool: ...

    async def remove_image(self, image: str) -> bool: ...

    async def tag(self, image_id: str, repository: str, tag: str) -> None: ...

    async def push(
        self,
        repository: str,
        tag: str,
        auth_header: str | None,
        on_progress: Callable[[Mapping[str, Any]], None],
    ) -> str | None: ...
