"""The engine's JSON as the boundary's data model (``engine.models``).

Apart from the client because it changes with what the engine answers, not with how it is
asked; pure, and tested without an engine. Podman's spellings are applied by the client
(``engine.podman``) before these read an answer.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any

from kegpackd.engine import podman as podman_api
from kegpackd.engine.models import (
    ContainerInfo,
    ContainerSummary,
    Event,
    ImageInfo,
    ImageSummary,
    Mount,
    PathStat,
)
from kegpackd.errors import EngineError, KegpackError

# The line `docker push` has always printed at the end: "<tag>: digest: … size: …".
_PUSHED = re.compile(r"\S+: digest: (sha256:[0-9a-f]{64}) size: \d+$")


def container_info(data: Mapping[str, Any]) -> ContainerInfo:
    """``GET /containers/{id}/json``."""
    config = data.get("Config") or {}
    state = data.get("State") or {}
    host = data.get("HostConfig") or {}
    mounts = tuple(
        Mount(
            type=m.get("Type", ""),
            destination=m.get("Destination", ""),
            source=m.get("Source", ""),
            rw=bool(m.get("RW", True)),
            name=str(m.get("Name", "") or ""),
        )
        for m in data.get("Mounts") or ()
    )
    return ContainerInfo(
        id=data["Id"],
        name=str(data.get("Name", "")).lstrip("/"),
        image=config.get("Image", ""),
        image_id=data.get("Image", ""),
        started_at=state.get("StartedAt", ""),
        finished_at=state.get("FinishedAt", ""),
        health=(state.get("Health") or {}).get("Status", ""),
        running=bool(state.get("Running")),
        paused=bool(state.get("Paused")),
        auto_remove=bool(host.get("AutoRemove")),
        labels=dict(config.get("Labels") or {}),
        config=config,
        mounts=mounts,
        host_config=host,
        networks=dict((data.get("NetworkSettings") or {}).get("Networks") or {}),
    )


def image_info(data: Mapping[str, Any]) -> ImageInfo:
    """``GET /images/{id}/json``."""
    config = data.get("Config") or {}
    return ImageInfo(
        id=data["Id"],
        architecture=data.get("Architecture", ""),
        os=data.get("Os", ""),
        variant=data.get("Variant"),
        layers=tuple((data.get("RootFS") or {}).get("Layers") or ()),
        repo_tags=tuple(data.get("RepoTags") or ()),
        labels=dict(config.get("Labels") or {}),
        comment=data.get("Comment", "") or "",
        config=config,
        created=str(data.get("Created", "") or ""),
        repo_digests=tuple(data.get("RepoDigests") or ()),
        size=int(data.get("Size") or 0),
    )


def container_summary(data: Mapping[str, Any]) -> ContainerSummary:
    """One entry of ``GET /containers/json``."""
    return ContainerSummary(
        id=str(data.get("Id", "")),
        names=tuple(str(name).lstrip("/") for name in data.get("Names") or ()),
        image_id=str(data.get("ImageID", "") or ""),
        labels=dict(data.get("Labels") or {}),
        state=str(data.get("State", "") or ""),
        command=str(data.get("Command", "") or ""),
    )


def image_summary(data: Mapping[str, Any]) -> ImageSummary:
    """One entry of ``GET /images/json``."""
    return ImageSummary(
        id=str(data.get("Id", "")),
        repo_tags=tuple(str(tag) for tag in data.get("RepoTags") or ()),
        labels=dict(data.get("Labels") or {}),
    )


def path_stat(header: str) -> PathStat:
    """The ``X-Docker-Container-Path-Stat`` header of ``HEAD …/archive`` (base64 JSON)."""
    stat = json.loads(base64.b64decode(header)) if header else {}
    return PathStat(
        name=stat.get("name", ""),
        size=int(stat.get("size", 0)),
        mode=int(stat.get("mode", 0)),
        link_target=stat.get("linkTarget", ""),
    )


def pushed_digest(entry: Mapping[str, Any], previous: str | None) -> str | None:
    """The pushed image's digest after one progress entry (``previous``: before it)."""
    digest = (entry.get("aux") or {}).get("Digest", previous)
    if digest is None:
        # dockerd 26 on the containerd store sends no aux, only the
        # line `docker push` has always printed: "<tag>: digest: … size: …".
        match = _PUSHED.match(str(entry.get("status", "")))
        digest = match.group(1) if match else None
    return None if digest is None else str(digest)


async def json_lines(
    lines: AsyncIterable[bytes], malformed: str, error: type[KegpackError]
) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a streamed response, one per line (events, push progress)."""
    async for raw in lines:
        line = raw.strip()
        if not line:
            continue
        try:
            data = json.loads(line)
        except ValueError:
            raise error(f"{malformed}: {line[:200]!r}") from None
        if not isinstance(data, dict):
            raise error(f"{malformed}: {line[:200]!r}")
        yield data


async def events(lines: AsyncIterable[bytes], *, podman: bool = False) -> AsyncIterator[Event]:
    """The event stream of ``GET /events``, with Podman's action names made Docker's."""
    async for data in json_lines(lines, "malformed event from the engine", EngineError):
        actor = data.get("Actor") or {}
        action = str(data.get("Action") or data.get("status") or "")
        if podman:
            action = podman_api.event_action(data, action)
        yield Event(
            action=action,
            id=str(actor.get("ID") or data.get("id") or ""),
            attributes=dict(actor.get("Attributes") or {}),
            time_nano=int(data.get("timeNano") or int(data.get("time", 0)) * 10**9),
        )
