"""The engine's long-running transfers: event streams, archives and exports read as they
arrive, loads and pushes streamed, each closed rather than pooled when left early.

A base of ``engine.client.Engine``, apart because streaming changes for its own reasons
(flow control, early exits, what a broken upload means), not with the plain requests.
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp

from kegpackd.engine import decode, podman, translate
from kegpackd.engine.models import Event, parse_engine_time
from kegpackd.engine.refs import container_segment, image_segment
from kegpackd.engine.transport import ARCHIVE_HEADERS, NO_TIMEOUT, Transport
from kegpackd.errors import EngineError, EngineUnreachable, RegistryError

ANONYMOUS_AUTH = base64.urlsafe_b64encode(b"{}").decode()


class Transfers(Transport):
    """Streams to and from the engine (see the module's docstring)."""

    async def system_time_ns(self) -> int:
        """The engine's clock: events are stamped with it, not with ours."""
        info = await self._json("docker info", "GET", "info")
        return parse_engine_time(str(info.get("SystemTime", "")))

    def events(
        self, since_ns: int, label: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        """Container events since ``since_ns`` for containers carrying ``label``."""
        return self._events("watch events", since_ns, {"type": ["container"], "label": [label]})

    def image_loads(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        """``load`` events of images from now on.

        A loaded image carries no label of ours, and the engine names only its id.
        """
        return self._events("watch image loads", None, {"type": ["image"], "event": ["load"]})

    @contextlib.asynccontextmanager
    async def _events(
        self, what: str, since_ns: int | None, filters: Mapping[str, list[str]]
    ) -> AsyncIterator[AsyncIterator[Event]]:
        is_podman = await self.product() == "podman"
        wanted = set(filters.get("event") or ())
        if is_podman and wanted:
            # Podman names a load `loadfromarchive`: filter on the names after translation.
            filters = {key: value for key, value in filters.items() if key != "event"}
        params = {"filters": json.dumps(filters)}
        if since_ns is not None:
            params["since"] = f"{since_ns // 10**9}.{since_ns % 10**9:09d}"
        async with self._request(
            what, "GET", "events", params=params, client_timeout=NO_TIMEOUT
        ) as resp:
            events = decode.events(resp.content, podman=is_podman)
            if is_podman and wanted:
                events = podman.only(events, wanted)
            yield events

    @contextlib.asynccontextmanager
    async def export(self, ref: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """``GET /images/{ref}/get``: the image as a tar, as it arrives."""
        async with self._download(
            f"export image {ref}", f"images/{image_segment(ref)}/get", {}
        ) as chunks:
            yield chunks

    @contextlib.asynccontextmanager
    async def archive(self, container_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The tar of ``path`` in a container (``GET …/archive``), as it arrives, uncompressed.

        Leaving the block early closes the connection, which makes the engine stop and
        release the container.
        """
        what = f"read {path!r} of container {container_id[:12]}"
        async with self._download(
            what, f"containers/{container_segment(container_id)}/archive", {"path": path}
        ) as chunks:
            yield chunks

    @contextlib.asynccontextmanager
    async def _download(
        self, what: str, path: str, params: Mapping[str, str]
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """A GET whose body is read as it arrives, uncompressed, and always closed after.

        Pooled half-read, the connection would keep the engine writing (and, for an
        archive, holding the container's lock) for nobody.
        """
        async with self._request(
            what, "GET", path, params=params, headers=ARCHIVE_HEADERS, client_timeout=NO_TIMEOUT
        ) as resp:
            try:
                yield resp.content.iter_any()
            finally:
                resp.close()

    async def load_archive(self, body: AsyncGenerator[bytes, None]) -> None:
        """``POST /images/load`` of a docker-archive streamed from ``body``.

        A failure of ``body`` is reported rather than the broken upload it causes; the
        engine then discards what it received. ``body`` runs in aiohttp's writer task, so it
        should hold no resources of its own (see ``pipeline._Job._send``).
        """
        failure: list[BaseException] = []

        async def guarded() -> AsyncIterator[bytes]:
            # Only our body's own errors count. aiohttp cancels its writer task (this
            # generator's) once the engine has answered, say with ENOSPC mid-upload: that
            # CancelledError is not a failure of ours, and re-raised in the job's task it
            # would make the job look cancelled instead of failed with the engine's error.
            try:
                async for chunk in body:
                    yield chunk
            except Exception as exc:
                failure.append(exc)
                raise

        try:
            async with self._request(
                "load image",
                "POST",
                "images/load",
                params={"quiet": "1"},
                data=guarded(),
                headers={"Content-Type": "application/x-tar"},
                client_timeout=NO_TIMEOUT,
            ) as resp:
                answer = await resp.read()
        except Exception as exc:
            if failure and failure[0] is not exc:
                cause = failure[0]
                if isinstance(cause, aiohttp.ClientError):
                    raise EngineError(
                        f"load image: the archive stream broke off "
                        f"({type(cause).__name__}: {cause})"
                    ) from None
                raise cause from None
            raise
        if failure:
            raise failure[0]
        for line in answer.decode(errors="replace").splitlines():
            try:
                entry = json.loads(line) if line.strip() else {}
            except ValueError:
                raise EngineError(f"load image: unexpected answer {line[:200]!r}") from None
            if isinstance(entry, dict) and "error" in entry:
                raise EngineError(f"load image: {entry['error']}")

    async def push(
        self,
        repository: str,
        tag: str,
        auth_header: str | None,
        on_progress: Callable[[Mapping[str, Any]], None],
    ) -> str | None:
        """Push one tag; an error anywhere in the progress stream fails the push."""
        reference = f"{repository}:{tag}"
        digest: str | None = None
        headers = {"X-Registry-Auth": auth_header or ANONYMOUS_AUTH}
        try:
            async with self._request(
                f"push {reference}",
                "POST",
                f"images/{image_segment(repository)}/push",
                params={"tag": tag},
                headers=headers,
                client_timeout=NO_TIMEOUT,
            ) as resp:
                malformed = f"push {reference}: malformed progress"
                async for entry in decode.json_lines(resp.content, malformed, RegistryError):
                    if "error" in entry:
                        message = str(entry["error"])
                        raise RegistryError(
                            f"push {reference}: {message}",
                            retryable=not translate.credentials_refused(message),
                        )
                    digest = decode.pushed_digest(entry, digest)
                    on_progress(entry)
        except EngineUnreachable:
            raise
        except EngineError as exc:
            raise RegistryError(str(exc)) from None
        return digest
