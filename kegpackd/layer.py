"""The bytes of the image kegpackd loads: one layer of mounts, its config, the docker-archive.

``POST /images/load`` takes a docker-archive (``docker save`` format). The engine opens a
layer file only when it lacks that layer, so the source's committed layers travel as
zero-byte placeholders (a missing file is refused by the containerd store and Podman), and
only the new layer carries data. The outer tar needs the layer's size before its bytes:
the size is declared with headroom, and a shorter layer is padded with zeros, which
readers accept after the end-of-archive marker and which the layer's digest then covers.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from kegpackd.errors import PackagingError

BLOCK: Final = 512
END_OF_ARCHIVE: Final = bytes(2 * BLOCK)
LAYER_FILE: Final = "kegpack/layer.tar"
HEADROOM_MIN: Final = 1 << 20
HEADROOM_FRACTION: Final = 64
ZEROS: Final = bytes(1 << 20)
# PAX records a parent directory's header must not carry over: they name or size another entry.
_FOREIGN_PAX: Final = frozenset(("path", "linkpath", "size"))


def declared_size(measured: int) -> int:
    """The layer entry's size: what the pre-pass counted, plus headroom for a changing mount."""
    size = measured + max(HEADROOM_MIN, measured // HEADROOM_FRACTION)
    return (size + BLOCK - 1) // BLOCK * BLOCK


def file_header(name: str, size: int) -> bytes:
    """The header of a plain file entry of the outer archive (no timestamps of ours)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(tarfile.PAX_FORMAT)


def file_entry(name: str, content: bytes) -> bytes:
    padding = -len(content) % BLOCK
    return file_header(name, len(content)) + content + bytes(padding)


def ancestors(destination: str) -> list[str]:
    """The directories above a mount point, outermost first, without the root: /a/b/c -> a, a/b."""
    parts = [p for p in destination.split("/") if p][:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def first_member(head: bytes) -> tarfile.TarInfo | None:
    """The first member of a tar stream's beginning; None while ``head`` is too short to tell."""
    try:
        with tarfile.open(fileobj=io.BytesIO(head), mode="r|") as tar:
            return tar.next()
    except tarfile.TarError:
        return None


def parent_entry(name: str, member: tarfile.TarInfo, where: str) -> bytes:
    """A directory entry ``name`` with the mode, owner, times and xattrs the source shows.

    Without it the engine would create the directory as root 0755 in the new layer, and
    overlay would show that to the application instead of what the image had.
    """
    if not member.isdir():
        kind = "symbolic link" if member.issym() else "file that is not a directory"
        raise PackagingError(
            f"{where} is a {kind} in the container; a mount below it cannot be packaged "
            "as a layer (name the mount by its real path)"
        )
    info = tarfile.TarInfo(name + "/")
    info.type = tarfile.DIRTYPE
    info.mode, info.uid, info.gid = member.mode, member.uid, member.gid
    info.uname, info.gname, info.mtime = member.uname, member.gname, member.mtime
    info.pax_headers = {k: v for k, v in member.pax_headers.items() if k not in _FOREIGN_PAX}
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def layer_prefix(destination: str) -> str:
    """What the names of a mount's archive (``web/…`` for /srv/web) need in front in the layer."""
    parent = posixpath.dirname(destination.rstrip("/")).strip("/")
    return parent + "/" if parent else ""


def _created(item: Mapping[str, Any]) -> str:
    return datetime.fromtimestamp(int(item.get("Created", 0)), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_config(
    *,
    architecture: str,
    os_name: str,
    variant: str | None,
    base_layers: Sequence[str],
    history: Sequence[Mapping[str, Any]],
    layer_digest: str,
    container_config: Mapping[str, Any],
    comment: str,
    created_by: str,
    now: datetime,
) -> bytes:
    """The final image's config: the source's layers and runtime config, plus the mounts' layer.

    ``history`` is the engine's, newest first. It is kept when it matches the layers, and
    gets an entry saying what kegpackd copied.
    """
    created = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    entries: list[dict[str, Any]] = []
    for item in reversed(history):
        entry: dict[str, Any] = {"created": _created(item), "created_by": item.get("CreatedBy", "")}
        if item.get("Comment"):
            entry["comment"] = item["Comment"]
        if not item.get("Size"):
            entry["empty_layer"] = True
        entries.append(entry)
    if sum(1 for e in entries if not e.get("empty_layer")) != len(base_layers):
        entries = []
    else:
        entries.append(
            {"created": created, "created_by": created_by, "author": "kegpackd", "comment": comment}
        )
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": os_name or "linux",
        "created": created,
        "author": "kegpackd",
        "comment": comment,
        "config": dict(container_config),
        "rootfs": {"type": "layers", "diff_ids": [*base_layers, layer_digest]},
    }
    if variant:
        config["variant"] = variant
    if entries:
        config["history"] = entries
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


def manifest(base_count: int, repo_tag: str) -> bytes:
    layers = [f"{i}/layer.tar" for i in range(base_count)] + [LAYER_FILE]
    entry = {"Config": "config.json", "RepoTags": [repo_tag], "Layers": layers}
    return json.dumps([entry]).encode()


def placeholders(base_count: int) -> bytes:
    """Zero-byte files for the layers the engine already has."""
    return b"".join(file_header(f"{i}/layer.tar", 0) for i in range(base_count))
