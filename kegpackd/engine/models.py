"""What the engine reports, as kegpackd uses it: the data model of the engine boundary.

The port (``engine.port``) and everything above it depend on these types; only the adapter
(``engine.client``) builds them from the engine's JSON.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kegpackd.errors import EngineError

# The Go ``os.FileMode`` bits of the archive stat header (``X-Docker-Container-Path-Stat``).
_MODE_DIR = 1 << 31
_MODE_SYMLINK = 1 << 27
_MODE_DEVICE = 1 << 26
_MODE_PIPE = 1 << 25
_MODE_SOCKET = 1 << 24
_MODE_CHARDEV = 1 << 21


@dataclass(frozen=True)
class Mount:
    type: str
    destination: str
    source: str
    rw: bool
    # A volume's name ("" for a bind mount).
    name: str = ""


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    image: str
    image_id: str
    started_at: str
    finished_at: str
    health: str
    running: bool
    paused: bool
    auto_remove: bool
    labels: Mapping[str, str]
    config: Mapping[str, Any]
    mounts: tuple[Mount, ...]
    # Raw HostConfig and NetworkSettings.Networks, for what a Compose file carries.
    host_config: Mapping[str, Any] = field(default_factory=dict)
    networks: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerSummary:
    """One container of a listing (``GET /containers/json?all=1``): less than ``inspect``
    says, and enough to choose which containers to inspect or remove."""

    id: str
    # Every name, without Docker's leading "/".
    names: tuple[str, ...]
    image_id: str
    labels: Mapping[str, str]
    # "created" (never started), "running", "exited", …
    state: str
    # The command line as the engine shows it (joined, possibly shortened).
    command: str

    @property
    def name(self) -> str:
        """Its first name, or its short id when the engine lists none."""
        return self.names[0] if self.names else self.id[:12]


@dataclass(frozen=True)
class ImageSummary:
    """One image of a listing (``GET /images/json``); its tags in Docker's spelling."""

    id: str
    repo_tags: tuple[str, ...]
    labels: Mapping[str, str]


@dataclass(frozen=True)
class PathStat:
    name: str
    size: int
    mode: int
    link_target: str

    @property
    def is_dir(self) -> bool:
        return bool(self.mode & _MODE_DIR)

    @property
    def is_symlink(self) -> bool:
        return bool(self.mode & _MODE_SYMLINK)

    @property
    def is_special(self) -> bool:
        """Sockets, devices and pipes: not content that an image can carry."""
        return bool(self.mode & (_MODE_SOCKET | _MODE_DEVICE | _MODE_CHARDEV | _MODE_PIPE))


@dataclass(frozen=True)
class ImageInfo:
    id: str
    architecture: str
    os: str
    variant: str | None
    layers: tuple[str, ...]
    repo_tags: tuple[str, ...]
    labels: Mapping[str, str]
    comment: str
    config: Mapping[str, Any] = field(default_factory=dict)
    created: str = ""
    repo_digests: tuple[str, ...] = ()
    size: int = 0


@dataclass(frozen=True)
class Event:
    """One container event; ``attributes`` holds the container's labels too."""

    action: str
    id: str
    attributes: Mapping[str, str]
    time_nano: int


def parse_engine_time(text: str) -> int:
    """RFC 3339 with nanoseconds (as the engine writes it) to nanoseconds since the epoch."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if match is None:
        raise EngineError(f"unexpected engine time {text!r}")
    base, fraction, zone = match.groups()
    seconds = datetime.fromisoformat(base + (zone if zone != "Z" else "+00:00")).timestamp()
    return int(seconds) * 10**9 + int((fraction or "0")[:9].ljust(9, "0"))
