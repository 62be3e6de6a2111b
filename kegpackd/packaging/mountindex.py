"""The index of a packaged image's mounts: what its mount layers show, entry by entry.

A repackage compares the mounts with this instead of reading the previous image back.
It is kept in the state directory (it must survive restarts, and the one-shot CLI uses
the same place), one file per image, named by the image's layer diff ids: an index
describes exactly the image whose layers it names, and any doubt (missing, unreadable,
another format, other layers, other mounts) means a full layer, never a wrong one.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import anyio

log = logging.getLogger(__name__)

FORMAT: Final = 1
INDEX_DIR: Final = "index"


@dataclass(frozen=True)
class IndexEntry:
    fingerprint: bytes
    typeflag: int
    link: str = ""


@dataclass(frozen=True)
class MountIndex:
    """The image (all its diff ids), where its mount layers sit, and what they show."""

    layers: tuple[str, ...]
    # The source image's layers at the bottom (the mount layers come right after them).
    source_layers: int
    # The mount layers (full layer, then deltas): diff id and size, bottom first.
    mount_layers: tuple[tuple[str, int], ...]
    mounts: tuple[str, ...]
    full_bytes: int
    entries: dict[str, IndexEntry] = field(default_factory=dict)

    @property
    def deltas(self) -> int:
        return len(self.mount_layers) - 1


def index_key(layers: tuple[str, ...] | list[str]) -> str:
    return hashlib.sha256("\n".join(layers).encode()).hexdigest()[:40]


def container_dir(state_dir: Path, container_name: str) -> Path:
    """One directory per source container name (names are reused; keys keep it exact)."""
    name = hashlib.sha256(container_name.encode()).hexdigest()[:16]
    return state_dir / INDEX_DIR / name


def _path(state_dir: Path, container_name: str, layers: tuple[str, ...] | list[str]) -> Path:
    return container_dir(state_dir, container_name) / f"{index_key(layers)}.json.gz"


def _encode(index: MountIndex) -> bytes:
    document: dict[str, Any] = {
        "format": FORMAT,
        "layers": list(index.layers),
        "source_layers": index.source_layers,
        "mount_layers": [list(pair) for pair in index.mount_layers],
        "mounts": list(index.mounts),
        "full_bytes": index.full_bytes,
        "entries": [
            [path, e.fingerprint.hex(), e.typeflag, e.link] for path, e in index.entries.items()
        ],
    }
    return gzip.compress(json.dumps(document, separators=(",", ":")).encode(), compresslevel=1)


def _decode(data: bytes) -> MountIndex:
    document = json.loads(gzip.decompress(data))
    if document.get("format") != FORMAT:
        raise ValueError(f"index format {document.get('format')!r}")
    return MountIndex(
        layers=tuple(document["layers"]),
        source_layers=int(document["source_layers"]),
        mount_layers=tuple((str(d), int(s)) for d, s in document["mount_layers"]),
        mounts=tuple(document["mounts"]),
        full_bytes=int(document["full_bytes"]),
        entries={
            str(path): IndexEntry(bytes.fromhex(fp), int(kind), str(link))
            for path, fp, kind, link in document["entries"]
        },
    )


def _read(path: Path) -> MountIndex | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return _decode(data)


async def load_index(
    state_dir: Path, container_name: str, layers: tuple[str, ...] | list[str]
) -> MountIndex | None:
    """The index of the image with these layers, or None (and why, in the log)."""
    path = _path(state_dir, container_name, layers)
    try:
        index = await anyio.to_thread.run_sync(_read, path)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        log.warning("the mount index %s is unreadable (%s): writing a full layer", path, exc)
        return None
    if index is None:
        log.info("no mount index for %s's latest image: writing a full layer", container_name)
        return None
    if list(index.layers) != list(layers):
        log.warning("the mount index %s names other layers: writing a full layer", path)
        return None
    return index


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


async def save_index(state_dir: Path, container_name: str, index: MountIndex) -> str | None:
    """Write the index; a failure is returned as a message (the image is fine without it:
    the next package of the container is then a full one)."""
    path = _path(state_dir, container_name, index.layers)
    try:
        data = await anyio.to_thread.run_sync(_encode, index)
        await anyio.to_thread.run_sync(_write, path, data)
    except OSError as exc:
        return (
            f"writing the mount index {path}: {exc} (the next package of {container_name} is "
            "a full one; daemon.state_dir must be writable for incremental packaging)"
        )
    return None


def _forget(directory: Path, keep: set[str]) -> int:
    removed = 0
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.split(".", 1)[0] not in keep:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / name)
                removed += 1
    return removed


async def forget_others(
    state_dir: Path, container_name: str, images: list[tuple[str, ...] | list[str]]
) -> str | None:
    """Remove the container's indexes of images that are gone (keys not in ``images``)."""
    keep = {index_key(layers) for layers in images}
    try:
        await anyio.to_thread.run_sync(_forget, container_dir(state_dir, container_name), keep)
    except OSError as exc:
        return f"removing stale mount indexes: {exc}"
    return None
