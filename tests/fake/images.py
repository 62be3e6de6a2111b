"""The fake engine's image store: layers by chain, content blobs, loads, exports, a registry.

What it holds to, as moby's ``image/tarexport/load.go`` and the containerd importer do:

- a docker-archive (``manifest.json``) names each layer's file; on the graph store the
  file is opened only when the store lacks the layer's chain (a zero-byte placeholder, or
  no file at all, stands for a known layer); on the containerd store every named file
  must be in the archive, and only a known layer may be a zero-byte placeholder;
- a layer that is read must hash to the config's diff id;
- an OCI layout (``index.json``) loads only on the containerd store: a blob the archive
  does not carry must be in the content store, and a carried one must hash to its name;
- the image's id is its config's digest; its tags come from ``RepoTags`` or from the
  index's ``io.containerd.image.name`` annotation, and move off any image that had them.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kegpackd.archive.layer import OCI_CONFIG, OCI_INDEX, OCI_LAYER, OCI_MANIFEST
from kegpackd.engine.models import parse_engine_time
from kegpackd.errors import EngineError

IMPORT_DIR = "/var/lib/docker/tmp/docker-import-0"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain id of each prefix of ``diff_ids`` (what the engine names a layer stack by)."""
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(diff_id if not chains else digest_of(f"{chains[-1]} {diff_id}".encode()))
    return chains


def read_tar(data: bytes) -> dict[str, bytes]:
    """The regular files of an uploaded archive by name; a broken tar fails as a load does."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            for member in tar:
                extracted = tar.extractfile(member) if member.isreg() else None
                if extracted is not None:
                    files[member.name] = extracted.read()
    except tarfile.TarError as exc:
        raise EngineError(f"load image: archive/tar: invalid tar header ({exc})") from None
    return files


@dataclass
class Loaded:
    """One image of an uploaded archive, checked against the store."""

    config: bytes
    diff_ids: list[str]
    tags: list[str]
    # The layers the archive carried, by diff id.
    carried: dict[str, bytes] = field(default_factory=dict)

    @property
    def image_id(self) -> str:
        return digest_of(self.config)

    @property
    def parsed(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.config)
        return data


class LayerStore:
    """Layer contents by diff id, the chains present, and (containerd) content blobs."""

    def __init__(self) -> None:
        self.kind = "containerd"
        self.layer_data: dict[str, bytes] = {}
        self.chains: set[str] = set()
        self.blobs: dict[str, bytes] = {}
        # Each upload as received (for tests: what was sent), and the registry's manifests.
        self.uploads: list[bytes] = []
        self.registry: dict[str, str] = {}

    def add_layers(self, diff_ids: Sequence[str], carried: Mapping[str, bytes]) -> None:
        for diff_id, data in carried.items():
            self.layer_data[diff_id] = data
            self.blobs[diff_id] = data
        self.chains.update(chain_ids(diff_ids))

    def collect(self, images: Iterable[Sequence[str]]) -> None:
        """Drop the layers no image uses any more (as the engine's reference counts do)."""
        used = [list(layers) for layers in images]
        self.chains &= {c for layers in used for c in chain_ids(layers)}
        wanted = {d for layers in used for d in layers}
        for diff_id in [d for d in self.layer_data if d not in wanted]:
            del self.layer_data[diff_id]
            self.blobs.pop(diff_id, None)

    def parse_load(self, data: bytes) -> list[Loaded]:
        """The images of an upload, every layer checked; raises as the engine answers."""
        self.uploads.append(data)
        files = read_tar(data)
        if "index.json" in files and self.kind == "containerd":
            return self._oci(files)
        if "manifest.json" not in files:
            raise EngineError(
                f"load image: open {IMPORT_DIR}/repositories: no such file or directory"
            )
        return self._docker_archive(files)

    def _docker_archive(self, files: Mapping[str, bytes]) -> list[Loaded]:
        loaded = []
        for entry in json.loads(files["manifest.json"]):
            config = _file(files, str(entry["Config"]))
            diff_ids = list(json.loads(config)["rootfs"]["diff_ids"])
            names = list(entry["Layers"])
            if len(names) != len(diff_ids):
                raise EngineError(
                    f"load image: invalid manifest, layers length mismatch: expected "
                    f"{len(diff_ids)}, got {len(names)}"
                )
            carried: dict[str, bytes] = {}
            for index, (name, chain) in enumerate(zip(names, chain_ids(diff_ids), strict=True)):
                known = chain in self.chains
                if known and self.kind == "graph":
                    continue  # the file is not opened
                layer = _file(files, name)
                if known and not layer:
                    continue  # a placeholder for a layer the store has
                _check_diff_id(index, diff_ids[index], layer)
                carried[diff_ids[index]] = layer
            loaded.append(Loaded(config, diff_ids, list(entry.get("RepoTags") or ()), carried))
        return loaded

    def _oci(self, files: Mapping[str, bytes]) -> list[Loaded]:
        loaded = []
        for descriptor in json.loads(files["index.json"])["manifests"]:
            manifest = json.loads(self._blob(files, descriptor["digest"]))
            config = self._blob(files, manifest["config"]["digest"])
            diff_ids = list(json.loads(config)["rootfs"]["diff_ids"])
            layers = manifest["layers"]
            if len(layers) != len(diff_ids):
                raise EngineError("load image: mismatched image rootfs and manifest layers")
            carried = {}
            for index, layer in enumerate(layers):
                blob = self._blob(files, layer["digest"])
                _check_diff_id(index, diff_ids[index], blob)
                carried[diff_ids[index]] = blob
            annotations = descriptor.get("annotations") or {}
            name = annotations.get("io.containerd.image.name")
            loaded.append(Loaded(config, diff_ids, [name] if name else [], carried))
        return loaded

    def _blob(self, files: Mapping[str, bytes], digest: str) -> bytes:
        name = "blobs/" + digest.replace(":", "/", 1)
        if name in files:
            data = files[name]
            if digest_of(data) != digest:
                raise EngineError(
                    f"load image: failed to ingest {digest}: unexpected commit digest "
                    f"{digest_of(data)}, expected {digest}: failed precondition"
                )
            self.blobs[digest] = data
            return data
        if digest not in self.blobs:
            raise EngineError(f"load image: content digest {digest}: not found")
        return self.blobs[digest]

    def export(
        self, image_id: str, config: bytes, diff_ids: Sequence[str], tags: Sequence[str]
    ) -> bytes:
        """``GET /images/{ref}/get``: the graph store's docker-archive (dockerd 20.10's: a
        directory per layer, named by a hash, with ``VERSION``, a v1 ``json`` whose
        ``created`` is 1970 but for the top layer's, and ``layer.tar``; written as a tar of
        a directory, so in name order), or the containerd store's OCI layout (with a
        ``manifest.json`` too, as dockerd 25+ writes)."""
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            if self.kind == "graph":
                dirs = [c.split(":")[1] for c in chain_ids(diff_ids)]
                names = [f"{d}/layer.tar" for d in dirs]
                config_name = f"{image_id.split(':')[1]}.json"
                created = json.loads(config).get("created", "2026-01-01T00:00:00Z")
                for directory, number, diff_id in sorted(
                    (d, n, i) for n, (d, i) in enumerate(zip(dirs, diff_ids, strict=True))
                ):
                    top = number == len(dirs) - 1
                    v1 = {"id": directory, "created": created if top else "1970-01-01T00:00:00Z"}
                    _add(tar, f"{directory}/VERSION", b"1.0")
                    _add(tar, f"{directory}/json", json.dumps(v1).encode())
                    _add(tar, f"{directory}/layer.tar", self.layer_data.get(diff_id, b""))
            else:
                _add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
                names = ["blobs/" + d.replace(":", "/", 1) for d in diff_ids]
                config_name = "blobs/" + image_id.replace(":", "/", 1)
                for name, diff_id in zip(names, diff_ids, strict=True):
                    _add(tar, name, self.layer_data.get(diff_id, b""))
            _add(tar, config_name, config)
            manifest = [{"Config": config_name, "RepoTags": list(tags), "Layers": names}]
            _add(tar, "manifest.json", json.dumps(manifest).encode())
            if self.kind != "graph":
                body = self.manifest(config, diff_ids)
                self.blobs[digest_of(body)] = body
                _add(tar, "blobs/" + digest_of(body).replace(":", "/", 1), body)
                index = {
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": [
                        {"mediaType": OCI_MANIFEST, "digest": digest_of(body), "size": len(body)}
                    ],
                }
                _add(tar, "index.json", json.dumps(index).encode())
        return out.getvalue()

    def manifest(self, config: bytes, diff_ids: Sequence[str]) -> bytes:
        """The image's OCI manifest (its layers stored uncompressed: blob digest = diff id)."""
        layers = [
            {"mediaType": OCI_LAYER, "digest": d, "size": len(self.layer_data.get(d, b""))}
            for d in diff_ids
        ]
        body = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": digest_of(config), "size": len(config)},
            "layers": layers,
        }
        return json.dumps(body, separators=(",", ":")).encode()


def _file(files: Mapping[str, bytes], name: str) -> bytes:
    if name not in files:
        raise EngineError(f"load image: open {IMPORT_DIR}/{name}: no such file or directory")
    return files[name]


def _check_diff_id(index: int, expected: str, layer: bytes) -> None:
    if digest_of(layer) != expected:
        raise EngineError(
            f"load image: invalid diffID for layer {index}: expected {expected!r}, "
            f"got {digest_of(layer)!r}"
        )


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def familiar(reference: str) -> str:
    """``docker.io/library/web:1`` → ``web:1``: the spelling the engine reports tags in."""
    if not reference.startswith("docker.io/"):
        return reference
    rest = reference.removeprefix("docker.io/")
    if rest.startswith("library/") and rest.split(":")[0].count("/") == 1:
        return rest.removeprefix("library/")
    return rest


def engine_time(ns: int) -> str:
    """Nanoseconds since the epoch as the engine writes a time (RFC 3339, nanoseconds)."""
    seconds, fraction = divmod(ns, 10**9)
    day = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{day}.{fraction:09d}Z"


def history_of(config: Mapping[str, Any], sizes: Sequence[int]) -> list[dict[str, Any]]:
    """A config's history as ``GET /images/{id}/history`` lists it: newest first, with the
    size of each entry's layer (``sizes``: the layers', oldest first; 0 for no layer)."""
    layer_sizes = iter(sizes)
    items = []
    for entry in config.get("history") or ():
        created = str(entry.get("created") or "")
        items.append(
            {
                "Created": parse_engine_time(created) // 10**9 if created else 0,
                "CreatedBy": entry.get("created_by", ""),
                "Comment": entry.get("comment", ""),
                "Size": 0 if entry.get("empty_layer") else next(layer_sizes, 0),
            }
        )
    return items[::-1]
