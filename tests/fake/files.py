"""A container's files held in memory, and the tar stream the engine makes of a path.

``GET /containers/{id}/archive?path=/srv/keg`` answers an uncompressed tar whose names
start at the path's base name (``keg/``, ``keg/a.txt``), parents before children, written
by Go's ``archive/tar``: USTAR headers, PAX records only where a field does not fit (a
long or non-ASCII name, a big id); modes with the file type bits (``0o100644``), as
moby's ``pkg/archive`` writes them. No user or group names.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

EMPTY_TAR = bytes(1024)
_TYPE_BITS = {"dir": 0o040000, "file": 0o100000, "symlink": 0o120000}
MTIME = 1_700_000_000


@dataclass
class FakeFile:
    """One entry of a container's file system: a directory, a regular file or a symlink."""

    kind: str = "file"  # "dir", "file" or "symlink"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    target: str = ""
    mtime: int = MTIME

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


def directory(mode: int = 0o755, uid: int = 0, gid: int = 0) -> FakeFile:
    return FakeFile(kind="dir", mode=mode, uid=uid, gid=gid)


def add_tree(
    files: dict[str, FakeFile], root: str, entries: Mapping[str, bytes | FakeFile | None]
) -> None:
    """Put ``entries`` (relative names; None is a directory) under ``root``, creating
    ``root`` and its parents as root-owned 0755 directories where missing."""
    parts = [p for p in root.split("/") if p]
    for index in range(len(parts)):
        files.setdefault("/" + "/".join(parts[: index + 1]), directory())
    for name, entry in entries.items():
        path = posixpath.join(root, name)
        parent = posixpath.dirname(path)
        while parent not in files and parent != "/":
            files[parent] = directory()
            parent = posixpath.dirname(parent)
        if entry is None:
            files[path] = directory()
        elif isinstance(entry, FakeFile):
            files[path] = entry
        else:
            files[path] = FakeFile(data=entry)


def below(files: Mapping[str, FakeFile], path: str) -> Iterator[tuple[str, FakeFile]]:
    """``path`` and everything under it, parents before children."""
    prefix = path.rstrip("/") + "/"
    for name in sorted(files, key=lambda p: p.split("/")):
        if name == path or name.startswith(prefix):
            yield name, files[name]


def archive_bytes(files: Mapping[str, FakeFile], path: str) -> bytes:
    """The tar the engine answers for ``path`` (which must exist in ``files``)."""
    base = posixpath.basename(path.rstrip("/")) or "/"
    named = ((base + name[len(path.rstrip("/")) :], e) for name, e in below(files, path))
    return _tar(named)


def tar_of(entries: Mapping[str, bytes | None]) -> bytes:
    """A small layer tar of ``entries`` (None: a directory), as a test's own layer."""
    files: dict[str, FakeFile] = {}
    add_tree(files, "/", entries)
    return _tar((name.lstrip("/"), e) for name, e in below(files, "/") if name != "/")


def _tar(entries: Iterable[tuple[str, FakeFile]]) -> bytes:
    """``entries`` as Go's writer makes them: ending with the two zero blocks, unpadded."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, entry in entries:
            info = tarfile.TarInfo(name + ("/" if entry.is_dir else ""))
            info.uid, info.gid, info.mtime = entry.uid, entry.gid, entry.mtime
            # Go 1.8's file type bits in the mode, which moby's archive puts back.
            info.mode = entry.mode | _TYPE_BITS[entry.kind]
            info.uname = info.gname = ""
            if entry.is_dir:
                info.type = tarfile.DIRTYPE
            elif entry.kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, entry.target
            info.size = len(entry.data) if entry.kind == "file" else 0
            tar.addfile(info, io.BytesIO(entry.data) if entry.kind == "file" else None)
    return _unpadded(out.getvalue())


def _unpadded(data: bytes) -> bytes:
    """Cut tarfile's padding to 10 KiB: the engine's archive ends after the two zero blocks."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.getmembers()
        return data[: tar.offset + 1024]


def members(layer: bytes) -> dict[str, tarfile.TarInfo]:
    """The entries of a layer tar by name (zero padding after its end is allowed)."""
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r") as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def file_data(layer: bytes, name: str) -> bytes:
    """The content of regular file ``name`` in a layer tar."""
    with tarfile.open(fileobj=io.BytesIO(layer), mode="r") as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None, f"{name} is not a regular file of the layer"
        return extracted.read()
