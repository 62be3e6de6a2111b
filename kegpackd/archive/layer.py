"""The bytes of the image kegpackd loads: one layer of mounts, its config, the docker-archive.

``POST /images/load`` takes a docker-archive (``docker save`` format). The engine opens a
layer file only when it lacks that layer, so the source's committed layers travel as
zero-byte placeholders (a missing file is refused by the containerd store and Podman), and
only the new layer carries data. The outer tar needs the layer's size before its bytes:
the size is declared with headroom, and a shorter layer is padded with zeros, which
readers accept after the end-of-archive marker and which the layer's digest then covers.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from kegpackd.archive.tarheader import BLOCK, decode, padded, parse_pax
from kegpackd.errors import PackagingError

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
    return padded(size)


def zero_padding(count: int) -> Iterator[bytes]:
    """``count`` zero bytes, in chunks of at most 1 MiB (the padding after a short layer)."""
    for start in range(0, count, len(ZEROS)):
        yield ZEROS[: min(len(ZEROS), count - start)]


def file_header(name: str, size: int) -> bytes:
    """The header of a plain file entry of the outer archive (no timestamps of ours)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(tarfile.PAX_FORMAT)


def file_entry(name: str, content: bytes) -> bytes:
    return file_header(name, len(content)) + content + bytes(padded(len(content)) - len(content))


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


def _history_entries(history: Sequence[Mapping[str, Any]], layers: int) -> list[dict[str, Any]]:
    """The engine's history (newest first) as config entries, oldest first; [] when which
    entries are layers cannot be told.

    The API has no ``empty_layer``: a zero size may be an instruction that made no layer or a
    layer with nothing in it. The newest entry is the commit's, a layer on the graph-driver
    stores even when empty; past that, a zero-size entry is taken as no layer; else (the
    containerd store's commit of an unchanged container adds no layer) no zero-size entry
    is; else only the classic builder's ``#(nop)`` instructions are.
    """
    rules: tuple[Callable[[Mapping[str, Any], bool], bool], ...] = (
        lambda item, newest: not item.get("Size") and not newest,
        lambda item, newest: not item.get("Size"),
        lambda item, newest: not item.get("Size") and "#(nop)" in str(item.get("CreatedBy", "")),
    )
    for empty in rules:
        entries: list[dict[str, Any]] = []
        for index in range(len(history) - 1, -1, -1):
            item = history[index]
            entry: dict[str, Any] = {
                "created": _created(item),
                "created_by": item.get("CreatedBy", ""),
            }
            if item.get("Comment"):
                entry["comment"] = item["Comment"]
            if empty(item, index == 0):
                entry["empty_layer"] = True
            entries.append(entry)
        if sum(1 for e in entries if not e.get("empty_layer")) == layers:
            return entries
    return []


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
    below_top: Sequence[tuple[str, str]] = (),
    top_is_own: bool = True,
) -> bytes:
    """The final image's config: the source's layers and runtime config, plus the mounts' layer.

    ``history`` is the engine's, newest first. It is kept when it matches the layers, and
    gets an entry saying what kegpackd copied.
    """
    # Microseconds: retention orders a container's images by this, and jobs can be a second apart.
    created = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    entries = _history_entries(history, len(base_layers))
    ours = {"created": created, "author": "kegpackd", "comment": comment}
    if below_top:
        # The mounts' layers go below the base's top layer (the container's own), and
        # ``layer_digest`` is that top layer as loaded (see packaging.ownlayer).
        # (``top_is_own`` false: the commit added no layer, and ``layer_digest`` is an empty
        # one in its place, whose history entry is the commit's.)
        lower = base_layers[:-1] if top_is_own else base_layers
        diff_ids = [*lower, *(d for d, _ in below_top), layer_digest]
        if entries:
            # The newest entry carries the image's comment: the containerd store shows
            # that as the image's Comment, by which kegpackd knows its own images.
            top = {**entries.pop(), "comment": comment}
            top.pop("empty_layer", None)
            entries += [{**ours, "created_by": by} for _, by in below_top]
            entries.append(top)
    else:
        diff_ids = [*base_layers, layer_digest]
        if entries:
            entries.append({**ours, "created_by": created_by})
    config: dict[str, Any] = {
        "architecture": architecture,
        "os": os_name or "linux",
        "created": created,
        "author": "kegpackd",
        "comment": comment,
        "config": dict(container_config),
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    if variant:
        config["variant"] = variant
    if entries:
        config["history"] = entries
    return json.dumps(config, separators=(",", ":"), sort_keys=True).encode()


def manifest(base_count: int, repo_tag: str, *, names: Sequence[str] = ()) -> bytes:
    """The docker-archive's manifest: ``base_count`` placeholders and the layer file, or
    the layer files ``names`` in order."""
    layers = list(names) or [f"{i}/layer.tar" for i in range(base_count)] + [LAYER_FILE]
    entry = {"Config": "config.json", "RepoTags": [repo_tag], "Layers": layers}
    return json.dumps([entry]).encode()


def placeholders(base_count: int) -> bytes:
    """Zero-byte files for the layers the engine already has."""
    return b"".join(file_header(f"{i}/layer.tar", 0) for i in range(base_count))


# --- the OCI layout, for the containerd image store ------------------------------------------
#
# The containerd store keeps an image as a manifest of content blobs. A docker-archive's
# zero-byte placeholders would become the base layers' blobs there: the image runs (the
# snapshots exist) but is broken for push and save (dockerd 26.1 even panics pushing it).
# So on that store the load is an OCI layout whose manifest reuses the committed image's own
# layer descriptors, and only the new layer, its config and the manifest travel as blobs.

OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
_INDEX_TYPES: Final = frozenset(
    (OCI_INDEX, "application/vnd.docker.distribution.manifest.list.v2+json")
)
SMALL_FILE_LIMIT: Final = 1 << 20


class SmallFiles:
    """Feed it a tar stream; it keeps the files up to ``limit`` bytes (manifests, configs).

    For reading ``index.json`` and the manifests out of an image export without holding
    its layers: their data is counted past, not kept.
    """

    def __init__(self, limit: int = SMALL_FILE_LIMIT) -> None:
        self.limit = limit
        self.files: dict[str, bytes] = {}
        self._buffer = bytearray()
        self._skip = 0
        self._pending: tuple[str, int] | None = None
        self._pax_path: str | None = None
        self.done = False

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.done:
            if self._skip:
                take = min(self._skip, len(view))
                self._skip -= take
                view = view[take:]
                continue
            need = BLOCK if self._pending is None else padded(self._pending[1])
            take = min(need - len(self._buffer), len(view))
            self._buffer += view[:take]
            view = view[take:]
            if len(self._buffer) == need:
                unit = bytes(self._buffer)
                self._buffer.clear()
                self._unit(unit)

    def _unit(self, unit: bytes) -> None:
        if self._pending is not None:
            name, size = self._pending
            self._pending = None
            if name == "\0pax":
                self._pax_path = _pax_path(unit[:size])
            else:
                self.files[name] = unit[:size]
            return
        if unit == bytes(BLOCK):
            self.done = True
            return
        try:
            info = tarfile.TarInfo.frombuf(unit, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise PackagingError(f"the image export is not a readable tar: {exc}") from None
        name = self._pax_path or info.name
        self._pax_path = None
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE):
            if info.type == tarfile.XHDTYPE and info.size <= self.limit:
                self._pending = ("\0pax", info.size)
            else:
                self._skip = padded(info.size)
        elif info.isreg() and info.size <= self.limit:
            if info.size:
                self._pending = (name, info.size)
            else:
                self.files[name] = b""
        elif info.isreg():
            self._skip = padded(info.size)


def _pax_path(payload: bytes) -> str | None:
    try:
        path = parse_pax(payload).get(b"path")
    except ValueError:
        raise PackagingError("the image export is not a readable tar: bad PAX header") from None
    return None if path is None else decode(path)


def _json_blob(files: Mapping[str, bytes], digest: str, what: str) -> dict[str, Any]:
    name = "blobs/" + digest.replace(":", "/", 1)
    try:
        data = json.loads(files[name])
    except (KeyError, ValueError):
        raise PackagingError(f"the image export has no readable {what} {digest}") from None
    if not isinstance(data, dict):
        raise PackagingError(f"the image export's {what} {digest} is not a JSON object")
    return data


def layer_descriptors(
    files: Mapping[str, bytes], architecture: str, os_name: str
) -> list[dict[str, Any]]:
    """The layer descriptors of an exported image's manifest (for its platform, if an index)."""
    try:
        index = json.loads(files["index.json"])
        descriptor = index["manifests"][0]
    except (KeyError, IndexError, ValueError, TypeError):
        raise PackagingError("the image export has no readable index.json") from None
    for _depth in range(4):
        if descriptor.get("mediaType") not in _INDEX_TYPES:
            break
        nested = _json_blob(files, descriptor["digest"], "index")
        matching = [
            m
            for m in nested.get("manifests") or ()
            if (m.get("platform") or {}).get("architecture") == architecture
            and (m.get("platform") or {}).get("os") == (os_name or "linux")
        ]
        descriptor = (matching or nested.get("manifests") or [{}])[0]
    manifest_json = _json_blob(files, str(descriptor.get("digest", "")), "manifest")
    layers = manifest_json.get("layers")
    if not isinstance(layers, list):
        raise PackagingError("the image export's manifest lists no layers")
    return [dict(layer) for layer in layers]


def _descriptor(media_type: str, content: bytes) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(content).hexdigest(),
        "size": len(content),
    }


def oci_head(
    base_descriptors: Sequence[Mapping[str, Any]],
    config: bytes,
    layer_digest: str,
    layer_size: int,
    image_name: str,
) -> tuple[bytes, str]:
    """The OCI layout's small entries (all but the layer blob), and the layer blob's name.

    The blob name is the layer's digest, so it must be known before its bytes: the pre-pass
    gives it, and a stream that then differs is refused by the engine and sent again.
    """
    config_descriptor = _descriptor(OCI_CONFIG, config)
    manifest_json = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config_descriptor,
            "layers": [
                *base_descriptors,
                {"mediaType": OCI_LAYER, "digest": layer_digest, "size": layer_size},
            ],
        },
        separators=(",", ":"),
    ).encode()
    manifest_descriptor = _descriptor(OCI_MANIFEST, manifest_json)
    tag = image_name.rpartition(":")[2]
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {
                    **manifest_descriptor,
                    "annotations": {
                        "io.containerd.image.name": image_name,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        }
    ).encode()
    head = b"".join(
        (
            file_entry("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            file_entry(blob_name(config_descriptor["digest"]), config),
            file_entry(blob_name(manifest_descriptor["digest"]), manifest_json),
            file_entry("index.json", index),
        )
    )
    return head, blob_name(layer_digest)


def blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)
