"""An in-memory engine for the fast tests: containers, images, events and faults on demand.

It answers what the scheduler, the watcher and the sweep ask (``kegpackd.engine.port.EnginePort``)
the way the real engine does for those calls: the same errors (``NotFoundError`` for what
is not there), the same dictionary keys in listings, the same filters. It runs a whole
packaging job too, at the byte level: a container's files are an in-memory tree whose
archives are real tar streams (``tests/fake/files.py``), a commit adds a layer, a load
parses the uploaded docker-archive or OCI layout and applies it to an in-memory image
store, an export writes one, a push goes to an in-memory registry (``tests/fake/images.py``).
``tests/test_engine_contract.py`` runs the same cases on it and on the real engines.

Events: each ``events()`` block is one connection. ``emit`` records an event and sends it
to every open connection whose label filter it passes; a new connection first replays the
recorded events since its ``since_ns`` (inclusive, as the engine does). ``end_events``
ends the open streams cleanly; ``break_events`` makes them fail with an error. The
``image_loads()`` blocks get the ``emit_load`` events in the same way.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from kegpackd.config import Config
from kegpackd.engine.models import (
    ContainerInfo,
    ContainerSummary,
    Event,
    ImageInfo,
    ImageSummary,
    Mount,
    PathStat,
)
from kegpackd.engine.port import EnginePort
from kegpackd.errors import EngineError, NotFoundError, RegistryError
from kegpackd.packaging.jobs import JobRequest, JobResult, Progress
from tests.fake.files import EMPTY_TAR, FakeFile, add_tree, archive_bytes, tar_of
from tests.fake.images import (
    LayerStore,
    Loaded,
    digest_of,
    engine_time,
    familiar,
    history_of,
)

_MODE_DIR = 1 << 31
_MODE_SYMLINK = 1 << 27
_ids = itertools.count(1)


def fake_id() -> str:
    """A fresh 64-hex-digit id, like the engine's."""
    return f"{next(_ids):064x}"


@dataclass
class FakeContainer:
    id: str
    name: str
    labels: dict[str, str] = field(default_factory=dict)
    running: bool = True
    started_at: str = "2026-01-02T03:04:05.123456789Z"
    finished_at: str = "0001-01-01T00:00:00Z"
    health: str = ""
    auto_remove: bool = False
    mounts: tuple[Mount, ...] = ()
    image: str = "debian:12"
    image_id: str = ""
    # What ``GET /containers/json`` says: "created" for one never started; "" follows running.
    state: str = ""
    command: str = "sleep 3600"
    # Its file system, by absolute path (``add_files``); archives and stats read it.
    files: dict[str, FakeFile] = field(default_factory=dict)
    # What a commit of it adds as a layer: its changes to the image (none, by default).
    writable: bytes = EMPTY_TAR

    def info(self) -> ContainerInfo:
        return ContainerInfo(
            id=self.id,
            name=self.name,
            image=self.image,
            image_id=self.image_id,
            started_at=self.started_at,
            finished_at=self.finished_at,
            health=self.health,
            running=self.running,
            paused=False,
            auto_remove=self.auto_remove,
            labels=dict(self.labels),
            config={"Image": self.image, "Labels": dict(self.labels)},
            mounts=self.mounts,
        )


@dataclass
class FakeImage:
    id: str
    repo_tags: list[str] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    comment: str = ""
    created: str = ""
    layers: tuple[str, ...] = ()
    # Size of each layer, newest first, as the engine's history lists them.
    layer_sizes: tuple[int, ...] = ()
    # A committed or loaded image's: its config as the engine holds it, its history
    # (newest first), the runtime config, and where it was pushed (``repo@digest``).
    raw_config: bytes = b""
    history: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    repo_digests: list[str] = field(default_factory=list)

    @property
    def dangling(self) -> bool:
        return not self.repo_tags

    def info(self) -> ImageInfo:
        return ImageInfo(
            id=self.id,
            architecture="amd64",
            os="linux",
            variant=None,
            layers=self.layers,
            repo_tags=tuple(self.repo_tags),
            labels=dict(self.labels),
            comment=self.comment,
            config=dict(self.config) if self.config is not None else {"Labels": dict(self.labels)},
            created=self.created,
            repo_digests=tuple(self.repo_digests),
        )


@dataclass
class FakeConnection:
    """One ``events()`` block: what it asked for, and whether it is still open."""

    since_ns: int
    label: str
    send: MemoryObjectSendStream[Event | BaseException]
    open: bool = True


class _EventFeed:
    """The events of one connection; a queued exception is raised where the next event was."""

    def __init__(self, receive: MemoryObjectReceiveStream[Event | BaseException]) -> None:
        self._receive = receive

    def __aiter__(self) -> _EventFeed:
        return self

    async def __anext__(self) -> Event:
        try:
            item = await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        if isinstance(item, BaseException):
            raise item
        return item


class Changes:
    """ "Something happened": what the fakes notify, so a test awaits a condition, not a time."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = anyio.Event()

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Return once ``condition`` holds, re-checking it after every notification."""
        while True:
            event = self._event
            if condition():
                return
            await event.wait()


class FakePackage:
    """Stands in for ``kegpackd.packaging.pipeline.package`` (``PipelineRunner(FakePackage())``).

    Records each request; while ``gate`` is not set, a job blocks in it (stays running);
    with ``error``, each job then raises it.
    """

    def __init__(
        self, changes: Changes, *, block: bool = False, error: Exception | None = None
    ) -> None:
        self.changes = changes
        self.error = error
        self.gate = anyio.Event()
        if not block:
            self.gate.set()
        self.started: list[JobRequest] = []
        self.finished: list[JobRequest] = []
        self.running = 0
        self.most_running = 0

    async def __call__(
        self,
        engine: EnginePort,
        config: Config,
        request: JobRequest,
        progress: Progress | None = None,
        *,
        docker_config_dir: object = None,
        result: JobResult | None = None,
    ) -> JobResult:
        self.started.append(request)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.changes.notify()
        try:
            await self.gate.wait()
        finally:
            self.running -= 1
            self.changes.notify()
        if self.error is not None:
            raise self.error
        self.finished.append(request)
        return result or JobResult(job_id=request.job_id)

    def containers(self) -> list[str]:
        return [request.container for request in self.started]


def _label_matches(labels: Mapping[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


class FakeEngine:
    """Satisfies ``EnginePort``; the test sets its state directly or through ``add_*``."""

    def __init__(self, changes: Changes | None = None) -> None:
        self.changes = changes or Changes()
        self.containers: dict[str, FakeContainer] = {}
        self.images: dict[str, FakeImage] = {}
        self.clock_ns = time.time_ns()
        # What product() answers: "podman" makes the pipeline meet Podman's forced owners.
        self.engine_product = "docker"
        self.event_log: list[Event] = []
        self.connections: list[FakeConnection] = []
        # ``image_loads()`` blocks and the load events, apart from the containers' ones.
        self.load_log: list[Event] = []
        self.load_connections: list[FakeConnection] = []
        # Every call, in order: (method, its arguments).
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self._faults: dict[str, list[BaseException]] = {}
        # Layers, blobs, uploads and the registry; ``store.kind`` is what image_store() says.
        self.store = LayerStore()
        # Archives arrive in chunks of this size; ``on_archive(container, path)`` runs as
        # each archive starts (a test's way to change a mount between two reads).
        self.archive_chunk = 64 * 1024
        self.on_archive: Callable[[FakeContainer, str], None] | None = None

    # -- what a test does ------------------------------------------------------------------

    def add_container(
        self, name: str, labels: Mapping[str, str] | None = None, **kw: Any
    ) -> FakeContainer:
        container = FakeContainer(
            id=kw.pop("id", fake_id()), name=name, labels=dict(labels or {}), **kw
        )
        self.containers[container.id] = container
        return container

    def add_image(
        self,
        *,
        repo_tags: list[str] | None = None,
        labels: Mapping[str, str] | None = None,
        comment: str = "",
        **kw: Any,
    ) -> FakeImage:
        image = FakeImage(
            id="sha256:" + fake_id(),
            repo_tags=list(repo_tags or []),
            labels=dict(labels or {}),
            comment=comment,
            **kw,
        )
        self.images[image.id] = image
        return image

    def fail_next(self, method: str, error: BaseException, times: int = 1) -> None:
        """Make the next ``times`` calls of ``method`` raise ``error`` instead of answering."""
        self._faults.setdefault(method, []).extend([error] * times)

    def called(self, method: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.calls if name == method]

    def emit(
        self,
        action: str,
        container: FakeContainer,
        time_nano: int | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Event:
        """An event for ``container`` (its labels and name in the attributes, as the engine
        sends them, and ``extra``: a commit's ``comment`` and ``imageID``), to every open
        connection that wants it."""
        if time_nano is None:
            self.clock_ns += 1000
            time_nano = self.clock_ns
        attributes = {
            **container.labels,
            "name": container.name,
            "image": container.image,
            **(extra or {}),
        }
        event = Event(action=action, id=container.id, attributes=attributes, time_nano=time_nano)
        self.event_log.append(event)
        for connection in self.connections:
            if connection.open and _label_matches(attributes, connection.label):
                connection.send.send_nowait(event)
        return event

    def emit_load(self, image: FakeImage) -> Event:
        """An image ``load`` event, which names the image by id only, to every open load
        stream."""
        self.clock_ns += 1000
        event = Event(
            action="load", id=image.id, attributes={"name": image.id}, time_nano=self.clock_ns
        )
        self.load_log.append(event)
        for connection in self.load_connections:
            if connection.open:
                connection.send.send_nowait(event)
        return event

    def resend(self, event: Event) -> None:
        """The very same event once more (the engine may repeat one across a reconnection)."""
        for connection in self.connections:
            if connection.open and _label_matches(event.attributes, connection.label):
                connection.send.send_nowait(event)

    def end_events(self) -> None:
        """End every open event stream, as a restarting engine does."""
        for connection in self.connections + self.load_connections:
            if connection.open:
                connection.open = False
                connection.send.close()
        self._notify()

    def break_events(self, error: BaseException) -> None:
        """Fail every open event stream with ``error`` (a lost connection)."""
        for connection in self.connections + self.load_connections:
            if connection.open:
                connection.open = False
                connection.send.send_nowait(error)
                connection.send.close()
        self._notify()

    @property
    def open_connections(self) -> int:
        return sum(c.open for c in self.connections)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait (without polling) until ``condition`` holds after some call to the engine."""
        await self.changes.wait_until(condition)

    def _notify(self) -> None:
        self.changes.notify()

    async def _call(self, method: str, *args: Any) -> None:
        """Record a call, let other tasks run (a real call yields), raise a planned fault."""
        self.calls.append((method, args))
        self._notify()
        await anyio.lowlevel.checkpoint()
        faults = self._faults.get(method)
        if faults:
            raise faults.pop(0)

    def _container(self, ref: str) -> FakeContainer:
        for container in self.containers.values():
            if ref in (container.id, container.name) or (
                len(ref) >= 12 and container.id.startswith(ref)
            ):
                return container
        raise NotFoundError(f"container {ref!r}: No such container: {ref}")

    def _image(self, ref: str) -> FakeImage:
        """By id, or by tag in any spelling (``docker.io/library/web:1``, ``web`` for latest)."""
        names = {familiar(ref), familiar(ref) + ":latest"}
        for image in self.images.values():
            if ref in (image.id, image.id.removeprefix("sha256:")) or names & {
                familiar(t) for t in image.repo_tags
            }:
                return image
        raise NotFoundError(f"image {ref!r}: No such image: {ref}")

    # -- packaging: files, layers, loads (the byte-level part; tests/fake/) ---------------

    def add_files(
        self,
        container: FakeContainer,
        root: str,
        entries: Mapping[str, bytes | FakeFile | None],
        *,
        mount: str = "volume",
    ) -> None:
        """Put ``entries`` under ``root`` in the container's files; with ``mount`` (a mount
        type, or "" for none) ``root`` becomes a mount of the container, if not one yet."""
        add_tree(container.files, root, entries)
        if mount and all(m.destination != root for m in container.mounts):
            name = root.strip("/").replace("/", "-") if mount == "volume" else ""
            source = f"/var/lib/docker/volumes/{name}/_data" if name else f"/host{root}"
            container.mounts += (Mount(mount, root, source, True, name),)

    def add_base_image(self, tag: str, entries: Mapping[str, bytes | None]) -> FakeImage:
        """An image of one real layer holding ``entries`` (None: a directory), as pulled."""
        layer = tar_of(entries)
        diff_id = digest_of(layer)
        self.store.add_layers([diff_id], {diff_id: layer})
        history = [{"Created": 1_700_000_000, "CreatedBy": "ADD rootfs", "Size": len(layer)}]
        return self._new_image([diff_id], {"Cmd": ["sh"]}, tags=[tag], history=history, comment="")

    def _new_image(
        self,
        layers: list[str],
        runtime: Mapping[str, Any],
        *,
        tags: list[str],
        history: list[dict[str, Any]],
        comment: str,
    ) -> FakeImage:
        """An image as a commit makes it: its config's digest is its id."""
        self.clock_ns += 1000
        created = engine_time(self.clock_ns)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "comment": comment,
            "config": dict(runtime),
            "rootfs": {"type": "layers", "diff_ids": layers},
        }
        raw = json.dumps(config, sort_keys=True).encode()
        image = FakeImage(
            id=digest_of(raw),
            repo_tags=[familiar(t) for t in tags],
            labels=dict(runtime.get("Labels") or {}),
            comment=comment,
            created=created,
            layers=tuple(layers),
            raw_config=raw,
            history=history,
            config=dict(runtime),
        )
        self.images[image.id] = image
        return image

    def _config_of(self, image: FakeImage) -> bytes:
        if image.raw_config:
            return image.raw_config
        runtime = image.config or {"Labels": image.labels}
        config = {"architecture": "amd64", "os": "linux", "config": runtime,
                  "rootfs": {"type": "layers", "diff_ids": list(image.layers)}}  # fmt: skip
        return json.dumps(config).encode()

    async def _chunks(self, data: bytes) -> AsyncIterator[bytes]:
        """``data`` as the engine streams it: in chunks, yielding between them."""
        for start in range(0, len(data), self.archive_chunk):
            await anyio.lowlevel.checkpoint()
            yield data[start : start + self.archive_chunk]

    def _take_names(self, names: list[str], taker: str) -> None:
        """Move ``names`` off the images that have them. The containerd store keeps images by
        name: one whose last name moves away is gone (unless a container uses it), as on
        dockerd 26; the graph store keeps it, untagged."""
        dropped = False
        for other in list(self.images.values()):
            had = bool(other.repo_tags)
            other.repo_tags = [t for t in other.repo_tags if familiar(t) not in names]
            in_use = any(c.image_id == other.id for c in self.containers.values())
            if (
                self.store.kind == "containerd"
                and had
                and not other.repo_tags
                and (other.id != taker and not in_use)
            ):
                del self.images[other.id]
                dropped = True
        if dropped:
            self.store.collect(i.layers for i in self.images.values())

    def _apply(self, loaded: Loaded) -> FakeImage:
        """A checked load: its layers and image stored, its tags moved onto it."""
        config = loaded.parsed
        self.store.add_layers(loaded.diff_ids, loaded.carried)
        tags = [familiar(t) for t in loaded.tags]
        image = self.images.get(loaded.image_id)
        if image is None:
            runtime = dict(config.get("config") or {})
            image = FakeImage(
                id=loaded.image_id,
                labels=dict(runtime.get("Labels") or {}),
                comment=str(config.get("comment", "")),
                created=str(config.get("created", "")),
                layers=tuple(loaded.diff_ids),
                raw_config=loaded.config,
                history=history_of(
                    config, [len(self.store.layer_data.get(d, b"")) for d in loaded.diff_ids]
                ),
                config=runtime,
            )
            self.images[image.id] = image
        self._take_names(tags, image.id)
        image.repo_tags += [t for t in tags if t not in image.repo_tags]
        self.emit_load(image)
        return image

    # -- EnginePort --------------------------------------------------------------------------

    async def inspect_container(self, ref: str) -> ContainerInfo:
        await self._call("inspect_container", ref)
        return self._container(ref).info()

    async def inspect_image(self, ref: str) -> ImageInfo:
        await self._call("inspect_image", ref)
        return self._image(ref).info()

    async def image_history(self, ref: str) -> list[Mapping[str, Any]]:
        await self._call("image_history", ref)
        image = self._image(ref)
        if image.history:
            return [dict(item) for item in image.history]
        return [{"Size": size} for size in image.layer_sizes]

    async def list_containers(self, filters: Mapping[str, list[str]]) -> list[ContainerSummary]:
        """``all=1``, with the ``label`` (all must match), ``name`` (substring) and ``id``
        filters."""
        await self._call("list_containers", dict(filters))
        found: list[ContainerSummary] = []
        for c in self.containers.values():
            if not all(_label_matches(c.labels, w) for w in filters.get("label", ())):
                continue
            if "name" in filters and not any(n in c.name for n in filters["name"]):
                continue
            if "id" in filters and not any(c.id.startswith(i) for i in filters["id"]):
                continue
            found.append(
                ContainerSummary(
                    id=c.id,
                    names=(c.name,),
                    image_id=c.image_id,
                    labels=dict(c.labels),
                    state=c.state or ("running" if c.running else "exited"),
                    command=c.command,
                )
            )
        return found

    async def list_images(self, filters: Mapping[str, list[str]]) -> list[ImageSummary]:
        """With the ``label`` (all must match), ``reference`` (a glob on ``repo:tag`` or
        ``repo``) and ``dangling`` filters."""
        await self._call("list_images", dict(filters))
        found: list[ImageSummary] = []
        for image in self.images.values():
            if not all(_label_matches(image.labels, w) for w in filters.get("label", ())):
                continue
            if "dangling" in filters and image.dangling != (filters["dangling"] == ["true"]):
                continue
            if "reference" in filters and not any(
                fnmatch.fnmatchcase(ref, pattern) or fnmatch.fnmatchcase(ref.split(":")[0], pattern)
                for ref in image.repo_tags
                for pattern in filters["reference"]
            ):
                continue
            found.append(ImageSummary(image.id, tuple(image.repo_tags), dict(image.labels)))
        return found

    async def stat_path(self, container_id: str, path: str) -> PathStat | None:
        await self._call("stat_path", container_id, path)
        container = self._container(container_id)
        if path in container.files:
            entry = container.files[path]
            kind = {"dir": _MODE_DIR, "symlink": _MODE_SYMLINK}.get(entry.kind, 0)
            return PathStat(
                name=path.rsplit("/", 1)[-1],
                size=len(entry.data),
                mode=kind | entry.mode,
                link_target=entry.target,
            )
        if not any(m.destination == path for m in container.mounts):
            return None
        return PathStat(
            name=path.rsplit("/", 1)[-1], size=4096, mode=_MODE_DIR | 0o755, link_target=""
        )

    async def product(self) -> str:
        await self._call("product")
        return self.engine_product

    async def image_store(self) -> str:
        await self._call("image_store")
        return self.store.kind

    @contextlib.asynccontextmanager
    async def export(self, ref: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The store's export of an image: a docker-archive (graph) or an OCI layout."""
        await self._call("export", ref)
        image = self._image(ref)
        data = self.store.export(image.id, self._config_of(image), image.layers, image.repo_tags)
        yield self._chunks(data)

    async def system_time_ns(self) -> int:
        await self._call("system_time_ns")
        return self.clock_ns

    def events(
        self, since_ns: int, label: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        return self._connect("events", self.connections, self.event_log, since_ns, label)

    def image_loads(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        """From now on, as the engine streams events when not given a ``since``."""
        return self._connect(
            "image_loads", self.load_connections, self.load_log, self.clock_ns + 1, ""
        )

    @contextlib.asynccontextmanager
    async def _connect(
        self,
        method: str,
        connections: list[FakeConnection],
        past: list[Event],
        since_ns: int,
        label: str,
    ) -> AsyncIterator[AsyncIterator[Event]]:
        """One event stream; ``label`` empty: every event (the image loads)."""
        await self._call(method, *([since_ns, label] if label else []))
        send, receive = anyio.create_memory_object_stream[Event | BaseException](float("inf"))
        connection = FakeConnection(since_ns, label, send)
        for event in past:
            if event.time_nano >= since_ns and (
                not label or _label_matches(event.attributes, label)
            ):
                send.send_nowait(event)
        connections.append(connection)
        self._notify()
        try:
            with receive:
                yield _EventFeed(receive)
        finally:
            connection.open = False
            send.close()
            self._notify()

    async def read_file(self, container_id: str, path: str, limit: int) -> bytes | None:
        await self._call("read_file", container_id, path, limit)
        entry = self._container(container_id).files.get(path)
        if entry is None or entry.kind != "file":
            return None
        if len(entry.data) > limit:
            raise EngineError(f"{path} in container {container_id[:12]} is over {limit} bytes")
        return entry.data

    async def pause(self, container_id: str) -> None:
        await self._call("pause", container_id)
        self._container(container_id)

    async def unpause(self, container_id: str) -> None:
        await self._call("unpause", container_id)
        self._container(container_id)

    async def stop(self, container_id: str) -> None:
        await self._call("stop", container_id)
        self._container(container_id).running = False
        self._notify()

    async def start(self, container_id: str) -> None:
        await self._call("start", container_id)
        container = self._container(container_id)
        if not container.running:
            container.running = True
            container.started_at = f"2026-01-03T00:00:{len(self.calls) % 60:02d}.000000000Z"
        self._notify()

    async def exec_command(
        self, container_id: str, argv: Sequence[str], on_output: Callable[[bytes], None]
    ) -> int:
        """Commands are the real engine's to run: the fake only records them, exit 0."""
        await self._call("exec_command", container_id, tuple(argv))
        self._container(container_id)
        return 0

    async def commit(
        self,
        container_id: str,
        *,
        comment: str,
        config: Mapping[str, Any] | None = None,
    ) -> str:
        """The container's image's layers plus its writable layer (``writable``: none by
        default, so an unchanged container commits the same layers each time)."""
        await self._call("commit", container_id)
        container = self._container(container_id)
        base: FakeImage | None = None
        for ref in filter(None, (container.image_id, container.image)):
            with contextlib.suppress(NotFoundError):
                base = base or self._image(ref)
        diff_id = digest_of(container.writable)
        layers = [*(base.layers if base else ()), diff_id]
        self.store.add_layers(layers, {diff_id: container.writable})
        size = 0 if container.writable == EMPTY_TAR else len(container.writable)
        entry = {"Created": self.clock_ns // 10**9, "CreatedBy": container.command,
                 "Comment": comment, "Size": size}  # fmt: skip
        runtime = {**container.info().config, "Labels": dict((config or {}).get("Labels") or {})}
        image = self._new_image(
            layers,
            runtime,
            tags=[],
            history=[entry, *(base.history if base else ())],
            comment=comment,
        )
        return image.id

    @contextlib.asynccontextmanager
    async def archive(self, container_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The tar of ``path`` in the container's files, names from its base name on."""
        await self._call("archive", container_id, path)
        container = self._container(container_id)
        if self.on_archive is not None:
            self.on_archive(container, path)
        if path not in container.files:
            raise NotFoundError(
                f"read {path!r} of container {container_id[:12]}: Could not find the file "
                f"{path} in container {container.name}"
            )
        yield self._chunks(archive_bytes(container.files, path))

    async def load_archive(self, body: AsyncGenerator[bytes, None]) -> None:
        """Read the whole upload, check it against the store, then apply it (all or nothing)."""
        received = bytearray()
        async with contextlib.aclosing(body) as chunks:
            await self._call("load_archive")
            async for chunk in chunks:
                received += chunk
        for loaded in self.store.parse_load(bytes(received)):
            self._apply(loaded)
        self._notify()

    async def remove_container(self, container_id: str) -> bool:
        await self._call("remove_container", container_id)
        try:
            container = self._container(container_id)
        except NotFoundError:
            return False
        del self.containers[container.id]
        self._notify()
        return True

    async def remove_image(self, image: str) -> bool:
        """By tag: untag (the image goes with its last tag); by id: the image goes."""
        await self._call("remove_image", image)
        try:
            found = self._image(image)
        except NotFoundError:
            return False
        if image in found.repo_tags:
            found.repo_tags.remove(image)
            if found.repo_tags:
                self._notify()
                return True
        elif len(found.repo_tags) > 1:
            raise EngineError(f"remove image {image}: image is referenced in multiple repositories")
        del self.images[found.id]
        self.store.collect(i.layers for i in self.images.values())
        self._notify()
        return True

    async def tag(self, image_id: str, repository: str, tag: str) -> None:
        """Put the tag on the image, moving it off another image that had it."""
        await self._call("tag", image_id, repository, tag)
        image = self._image(image_id)
        name = familiar(f"{repository}:{tag}")
        self._take_names([name], image.id)
        image.repo_tags.append(name)

    async def push(
        self,
        repository: str,
        tag: str,
        auth_header: str | None,
        on_progress: Callable[[Mapping[str, Any]], None],
    ) -> str | None:
        """To the in-memory registry (``store.registry``: reference → manifest digest)."""
        reference = f"{repository}:{tag}"
        await self._call("push", repository, tag)
        try:
            image = self._image(reference)
        except NotFoundError:
            raise RegistryError(
                f"push {reference}: An image does not exist locally with the tag: "
                f"{familiar(repository)}"
            ) from None
        for diff_id in image.layers:
            if diff_id not in self.store.layer_data:
                raise RegistryError(f"push {reference}: layer {diff_id} does not exist")
        manifest = self.store.manifest(self._config_of(image), image.layers)
        digest = digest_of(manifest)
        on_progress({"status": f"{tag}: digest: {digest} size: {len(manifest)}"})
        on_progress({"aux": {"Tag": tag, "Digest": digest, "Size": len(manifest)}})
        self.store.registry[familiar(reference)] = digest
        repo = familiar(repository)
        image.repo_digests = [d for d in image.repo_digests if not d.startswith(repo + "@")]
        image.repo_digests.append(f"{repo}@{digest}")
        return digest
