"""Podman's differences from Docker, in what its Docker-compatible API answers.

Kept here so that the client applies them and nothing above the boundary sees them: names
in full (``docker.io/library/web:1``), a ``reference`` image filter it ignores, other event
names, and bare hex ids from a commit. Pure functions of the engine's JSON.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from kegpackd.engine.models import Event, ImageSummary

# The component of ``GET /version`` that tells Podman's API from Docker's.
PODMAN_COMPONENT = "Podman Engine"
# Podman's event names where Docker's differ (container removal; an image load).
_PODMAN_ACTIONS = {("container", "remove"): "destroy", ("image", "loadfromarchive"): "load"}


def familiar(reference: str) -> str:
    """``docker.io/library/web:1`` → ``web:1``: Docker's short spelling, which Podman does not
    use in what it reports and the rest of kegpackd compares names in."""
    if not reference.startswith("docker.io/"):
        return reference
    rest = reference.removeprefix("docker.io/")
    path = re.split(r"[:@]", rest, maxsplit=1)[0]
    if path.startswith("library/") and path.count("/") == 1:
        return rest.removeprefix("library/")
    return rest


def familiar_image(data: Mapping[str, Any]) -> dict[str, Any]:
    """An image's JSON (inspect or list) with its names in Docker's spelling."""
    entry = dict(data)
    for key in ("RepoTags", "RepoDigests"):
        if entry.get(key):
            entry[key] = [familiar(str(name)) for name in entry[key]]
    return entry


def _path_match(pattern: str, name: str) -> bool:
    """Go's ``path.Match`` for the patterns kegpackd filters by (``*``, ``?``): neither crosses
    a ``/``. Character classes are not needed by any caller, so they match literally."""
    source = "".join(
        "[^/]*" if char == "*" else "[^/]" if char == "?" else re.escape(char) for char in pattern
    )
    return re.fullmatch(source, name) is not None


def by_reference(images: Sequence[ImageSummary], patterns: Sequence[str]) -> list[ImageSummary]:
    """Docker's ``reference`` image filter, which Podman's compat API ignores (it answers
    every image): an image is listed with its tags that match (``path.Match`` on the name,
    or on name:tag), and only if one does."""

    def matches(tagged: str) -> bool:
        bare = tagged.rsplit(":", 1)[0] if ":" in tagged.rsplit("/", 1)[-1] else tagged
        return any(_path_match(p, bare) or _path_match(p, tagged) for p in patterns)

    kept: list[ImageSummary] = []
    for image in images:
        tags = tuple(t for t in image.repo_tags if matches(t))
        if tags:
            kept.append(dataclasses.replace(image, repo_tags=tags))
    return kept


def event_action(data: Mapping[str, Any], action: str) -> str:
    """A Podman event's action as Docker names it."""
    action = _PODMAN_ACTIONS.get((str(data.get("Type", "")), action), action)
    if action == "health_status" and data.get("HealthStatus"):
        # Docker spells the state into the action; Podman beside it.
        action = f"health_status: {data['HealthStatus']}"
    return action


async def only(events: AsyncIterator[Event], actions: set[str]) -> AsyncIterator[Event]:
    """The events of ``actions``: Podman's event filter would need its own names for them."""
    async for event in events:
        if event.action in actions:
            yield event


def full_id(image_id: str) -> str:
    """Podman's commit answers a bare hex id; Docker's ids carry ``sha256:``."""
    if re.fullmatch(r"[0-9a-f]{64}", image_id):
        return "sha256:" + image_id
    return image_id
