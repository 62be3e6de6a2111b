"""The engine's requests: what kegpackd asks of a Docker (or Podman) engine, one method each.

``Engine`` is the adapter behind ``engine.port.EnginePort``; nothing else in kegpackd
imports aiodocker or aiohttp's client. Its bases hold what changes for other reasons:
``engine.transport`` (the session, errors, version), ``engine.transfers`` (streams). The
engine's JSON is read by ``engine.decode``, errors are translated by ``engine.translate``,
Podman's differences applied from ``engine.podman``, references checked by ``engine.refs``.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kegpackd.engine import decode, podman
from kegpackd.engine.models import (
    ContainerInfo,
    ContainerSummary,
    ImageInfo,
    ImageSummary,
    PathStat,
)
from kegpackd.engine.refs import container_segment, image_segment
from kegpackd.engine.transfers import Transfers
from kegpackd.engine.transport import ARCHIVE_HEADERS, NO_TIMEOUT
from kegpackd.errors import EngineError, NotFoundError

# After an exec's output ends, how long its exit status may take to show (50 times 20 ms).
EXEC_EXIT_POLLS = 50
EXEC_EXIT_POLL_SECONDS = 0.02


class Engine(Transfers):
    """One connection to one Docker engine (``Engine.open``)."""

    async def inspect_container(self, ref: str) -> ContainerInfo:
        data = await self._json(
            f"container {ref!r}", "GET", f"containers/{container_segment(ref)}/json"
        )
        return decode.container_info(data)

    async def inspect_image(self, ref: str) -> ImageInfo:
        data = await self._json(f"image {ref!r}", "GET", f"images/{image_segment(ref)}/json")
        if await self.product() == "podman":
            data = podman.familiar_image(data)
        return decode.image_info(data)

    async def image_history(self, ref: str) -> list[Mapping[str, Any]]:
        result: list[Mapping[str, Any]] = await self._json(
            f"image {ref!r}", "GET", f"images/{image_segment(ref)}/history"
        )
        return result

    async def list_containers(self, filters: Mapping[str, list[str]]) -> list[ContainerSummary]:
        """Every container (running or not) that passes ``filters``."""
        result = await self._json(
            "list containers",
            "GET",
            "containers/json",
            params={"all": "1", "filters": json.dumps(filters)},
        )
        return [decode.container_summary(entry) for entry in result or ()]

    async def list_images(self, filters: Mapping[str, list[str]]) -> list[ImageSummary]:
        """The images that pass ``filters``, named as Docker names them."""
        result = await self._json(
            "list images", "GET", "images/json", params={"filters": json.dumps(filters)}
        )
        if await self.product() != "podman":
            return [decode.image_summary(entry) for entry in result or ()]
        images = [decode.image_summary(podman.familiar_image(entry)) for entry in result or ()]
        if filters.get("reference"):
            images = podman.by_reference(images, list(filters["reference"]))
        return images

    async def stat_path(self, container_id: str, path: str) -> PathStat | None:
        """Stat a path inside a container (``HEAD …/archive``); None when it does not exist."""
        what = f"stat {path!r} in container {container_id[:12]}"
        async with self._request(
            what,
            "HEAD",
            f"containers/{container_segment(container_id)}/archive",
            params={"path": path},
            headers=ARCHIVE_HEADERS,
            answer_errors=True,
        ) as resp:
            status = resp.status
            header = resp.headers.get("X-Docker-Container-Path-Stat", "")
        if status == 404:
            await self.inspect_container(container_id)
            return None
        if status != 200:
            raise EngineError(f"{what}: HTTP {status}")
        return decode.path_stat(header)

    async def read_file(self, container_id: str, path: str, limit: int) -> bytes | None:
        """A small regular file from a container; None when absent or not a regular file."""
        stat = await self.stat_path(container_id, path)
        if stat is None or stat.is_dir or stat.is_special or stat.is_symlink:
            return None
        if stat.size > limit:
            raise EngineError(f"{path} in container {container_id[:12]} is over {limit} bytes")
        data = bytearray()
        async with self.archive(container_id, path) as chunks:
            async for chunk in chunks:
                data += chunk
                if len(data) > limit + 65536:
                    raise EngineError(f"{path} grew over {limit} bytes while read")
        try:
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                member = tar.next()
                handle = tar.extractfile(member) if member is not None and member.isreg() else None
                return handle.read() if handle is not None else None
        except tarfile.TarError as exc:
            raise EngineError(f"read {path!r}: {exc}") from None

    async def pause(self, container_id: str) -> None:
        await self._json(
            f"pause container {container_id[:12]}",
            "POST",
            f"containers/{container_segment(container_id)}/pause",
        )

    async def unpause(self, container_id: str) -> None:
        await self._json(
            f"unpause container {container_id[:12]}",
            "POST",
            f"containers/{container_segment(container_id)}/unpause",
        )

    async def stop(self, container_id: str) -> None:
        """``POST …/stop`` with the container's own stop timeout (which may be long: no
        client timeout). The engine marks it stopped by hand: no restart policy wakes it."""
        await self._json(
            f"stop container {container_id[:12]}",
            "POST",
            f"containers/{container_segment(container_id)}/stop",
            client_timeout=NO_TIMEOUT,
        )

    async def start(self, container_id: str) -> None:
        await self._json(
            f"start container {container_id[:12]}",
            "POST",
            f"containers/{container_segment(container_id)}/start",
        )

    async def exec_command(
        self, container_id: str, argv: Sequence[str], on_output: Callable[[bytes], None]
    ) -> int:
        """Run ``argv`` in a running container (no shell, no TTY, the container's user) and
        return its exit status; stdout and stderr are handed to ``on_output`` as they
        arrive, so that the caller decides what to keep. Cancelling closes the stream; the
        engine's exec API cannot stop the process, which may go on running."""
        what = f"run a command in container {container_id[:12]}"
        with self._translate(what):
            container = self._docker.containers.container(container_segment(container_id))
            execution = await container.exec(list(argv), stdout=True, stderr=True, tty=False)
            async with execution.start(detach=False) as stream:
                while (message := await stream.read_out()) is not None:
                    on_output(message.data)
            # The stream ends as the process does; the engine may record its exit just after.
            for _ in range(EXEC_EXIT_POLLS):
                data = await execution.inspect()
                if not data.get("Running"):
                    break
                await asyncio.sleep(EXEC_EXIT_POLL_SECONDS)
        code = data.get("ExitCode")
        if data.get("Running") or not isinstance(code, int):
            raise EngineError(f"{what}: the engine reported no exit status")
        return code

    async def commit(
        self, container_id: str, *, comment: str, config: Mapping[str, Any] | None = None
    ) -> str:
        """Commit without pausing (the engine's default pauses): a job quiesces its source,
        or not, by its own ``kegpack.quiesce`` choice. The image is untagged; its comment
        names the job, which is how the sweep finds it if the job dies."""
        params = {"container": container_id, "pause": "0", "author": "kegpackd", "comment": comment}
        result = await self._json(
            f"commit container {container_id[:12]}",
            "POST",
            "commit",
            params=params,
            body=dict(config or {}),
        )
        return podman.full_id(str(result["Id"]))

    async def remove_container(self, container_id: str) -> bool:
        """Remove a stopped container and its anonymous volumes; False when it was already gone.

        Never forced: a container that is running (started since it was listed) is
        somebody's, and the engine's refusal keeps it.
        """
        try:
            await self._json(
                f"remove container {container_id[:12]}",
                "DELETE",
                f"containers/{container_segment(container_id)}",
                params={"v": "1"},
            )
        except NotFoundError:
            return False
        return True

    async def remove_image(self, image: str) -> bool:
        """Remove an image; False when it was already gone."""
        try:
            await self._json(
                f"remove image {image}",
                "DELETE",
                f"images/{image_segment(image)}",
                params={"noprune": "0"},
            )
        except NotFoundError:
            return False
        return True

    async def tag(self, image_id: str, repository: str, tag: str) -> None:
        await self._json(
            f"tag {repository}:{tag}",
            "POST",
            f"images/{image_segment(image_id)}/tag",
            params={"repo": repository, "tag": tag},
        )
