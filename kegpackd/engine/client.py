"""The Docker boundary: every request to the engine goes through this module.

Nothing else in kegpackd imports aiodocker or aiohttp's client. Errors are
translated here into ``kegpackd.errors`` so callers reason about "not found" or
"engine unreachable", never about HTTP status codes or socket exceptions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import ssl
import tarfile
import urllib.parse
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any

import aiodocker
import aiohttp

from kegpackd.engine import sshdial
from kegpackd.engine.endpoint import Endpoint
from kegpackd.engine.models import (
    ContainerInfo,
    Event,
    ImageInfo,
    Mount,
    PathStat,
    parse_engine_time,
)
from kegpackd.engine.naming import parse_reference
from kegpackd.errors import (
    EngineError,
    EnginePermissionDenied,
    EngineUnreachable,
    InvalidValueError,
    KegpackError,
    NotFoundError,
    RegistryError,
)

ARCHIVE_HEADERS = {"Accept-Encoding": "identity"}
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=30)
ANONYMOUS_AUTH = base64.urlsafe_b64encode(b"{}").decode()
# How the engine words a registry's refusal of the credentials: retrying cannot help.
_AUTH_REFUSED = re.compile(
    r"unauthorized|authentication required|no basic auth credentials"
    r"|access to the resource is denied",
    re.IGNORECASE,
)
_PUSHED = re.compile(r"\S+: digest: (sha256:[0-9a-f]{64}) size: \d+$")
# A container is named as Docker names it (an optional leading '/') or by (a prefix of) its
# hex id, which the same class covers. Anything else would reach another engine endpoint.
_CONTAINER_REF = re.compile(r"/?[a-zA-Z0-9][a-zA-Z0-9_.-]{0,254}")
# An image id, full (with or without its algorithm) or a prefix of at least 12 hex digits.
_IMAGE_ID = re.compile(r"(?:sha256:)?[a-f0-9]{12,64}")
# After an exec's output ends, how long its exit status may take to show (50 times 20 ms).
EXEC_EXIT_POLLS = 50
EXEC_EXIT_POLL_SECONDS = 0.02


def container_segment(ref: str) -> str:
    """``ref`` as one path segment of a container endpoint, if it names a container.

    The engine's router takes the rest of the path as the endpoint: ``../events?`` would
    open an event stream, ``../containers/x/archive?path=/`` read a whole file system.
    """
    if not _CONTAINER_REF.fullmatch(ref):
        raise InvalidValueError(
            "container",
            ref,
            "a container is named by its name ([a-zA-Z0-9][a-zA-Z0-9_.-]*) or its hex id",
        )
    return urllib.parse.quote(ref, safe="")


def image_segment(ref: str) -> str:
    """``ref`` as one path segment of an image endpoint, if it is an image id or reference."""
    if not _IMAGE_ID.fullmatch(ref):
        try:
            parse_reference(ref, "image")
        except InvalidValueError as exc:
            raise InvalidValueError(
                "image", ref, f"not an image id or reference ({exc.reason})"
            ) from None
    # Quoted whole: the engine decodes the path before it routes it, '/' included.
    return urllib.parse.quote(ref, safe="")


def _container_info(data: Mapping[str, Any]) -> ContainerInfo:
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


def _image_info(data: Mapping[str, Any]) -> ImageInfo:
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


def _familiar_image(data: Mapping[str, Any]) -> dict[str, Any]:
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


def _by_reference(entries: list[Mapping[str, Any]], patterns: list[str]) -> list[Mapping[str, Any]]:
    """Docker's ``reference`` image filter, which Podman's compat API ignores (it answers
    every image): an image is listed with its tags that match (``path.Match`` on the name,
    or on name:tag), and only if one does."""

    def matches(tagged: str) -> bool:
        bare = tagged.rsplit(":", 1)[0] if ":" in tagged.rsplit("/", 1)[-1] else tagged
        return any(_path_match(p, bare) or _path_match(p, tagged) for p in patterns)

    kept: list[Mapping[str, Any]] = []
    for entry in entries:
        tags = [str(t) for t in entry.get("RepoTags") or () if matches(str(t))]
        if tags:
            kept.append({**entry, "RepoTags": tags})
    return kept


async def _only(events: AsyncIterator[Event], actions: set[str]) -> AsyncIterator[Event]:
    async for event in events:
        if event.action in actions:
            yield event


def _full_id(image_id: str) -> str:
    """Podman's commit answers a bare hex id; Docker's ids carry ``sha256:``."""
    if re.fullmatch(r"[0-9a-f]{64}", image_id):
        return "sha256:" + image_id
    return image_id


def _ssl_context(endpoint: Endpoint) -> ssl.SSLContext | None:
    """The client TLS context of ``endpoint``'s files (see ``endpoint.TLSFiles``)."""
    tls = endpoint.tls
    if tls is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
        if not tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.cert is not None:
            context.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
    except (OSError, ssl.SSLError) as exc:
        raise EngineUnreachable(
            f"cannot load the TLS files of the Docker engine at {endpoint.where}: {exc}"
        ) from None
    return context


def _engine_message(exc: aiodocker.DockerError) -> str:
    return str(exc.message).strip().splitlines()[0] if exc.message else f"HTTP {exc.status}"


async def _json_lines(
    resp: aiohttp.ClientResponse, malformed: str, error: type[KegpackError]
) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a streamed response, one per line (events, push progress)."""
    async for raw in resp.content:
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


class Engine:
    """One connection to one Docker engine."""

    def __init__(self, docker: aiodocker.Docker, endpoint: Endpoint) -> None:
        self._docker = docker
        self.endpoint = endpoint
        self.host = endpoint.host
        self._store: str | None = None
        self._product: str | None = None
        # The ssh bridge of an ssh:// engine, whose last ssh failure explains a lost connection.
        self._ssh: sshdial.Bridge | None = None
        # How messages name the engine: its address, and what chose it.
        self.where = endpoint.where

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, endpoint: Endpoint | str) -> AsyncIterator[Engine]:
        """A connection to ``endpoint`` (a bare host string: one given by the caller)."""
        if isinstance(endpoint, str):
            endpoint = Endpoint.given(endpoint)
        async with contextlib.AsyncExitStack() as stack:
            url, ssh = endpoint.url, None
            if url.startswith("ssh://"):
                ssh = await stack.enter_async_context(sshdial.bridge(endpoint))
                url = ssh.url
            try:
                docker = aiodocker.Docker(url=url, ssl_context=_ssl_context(endpoint))
            except ValueError as exc:
                raise EngineUnreachable(f"Docker engine at {endpoint.where}: {exc}") from None
            engine = cls(docker, endpoint)
            engine._ssh = ssh
            try:
                yield engine
            finally:
                await docker.close()

    @contextlib.contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        try:
            yield
        except aiodocker.DockerError as exc:
            if exc.status == 900:
                # aiodocker's "cannot connect", raised while handling aiohttp's own error.
                cause = exc.__context__
                if isinstance(cause, aiohttp.ClientError):
                    raise self._connection_error(what, cause) from None
                raise EngineUnreachable(
                    f"cannot reach the Docker engine at {self.where}: {_engine_message(exc)}"
                ) from None
            message = _engine_message(exc)
            if exc.status == 404:
                raise NotFoundError(f"{what}: {message}") from None
            raise EngineError(f"{what}: {message}") from None
        except aiohttp.ClientError as exc:
            raise self._connection_error(what, exc) from None

    def _connection_error(self, what: str, exc: aiohttp.ClientError) -> EngineUnreachable:
        """One line for a failed connection, by the error's type, without aiohttp's wording."""
        if self._ssh is not None and self._ssh.failure is not None:
            return EngineUnreachable(
                f"cannot reach the Docker engine at {self.where}: {self._ssh.failure}"
            )
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            verify = getattr(exc.certificate_error, "verify_message", "") or exc.certificate_error
            return EngineUnreachable(
                f"TLS verification of the Docker engine at {self.where} failed: "
                f"certificate verify failed: {verify} "
                "(is ca.pem in the cert path the CA that signed the engine's certificate?)"
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            if isinstance(exc.os_error, PermissionError):
                return EnginePermissionDenied(
                    f"permission denied on the Docker socket {self.where} "
                    "(is this user in the docker group?)"
                )
            reason = exc.os_error.strerror or str(exc.os_error)
            return EngineUnreachable(f"cannot reach the Docker engine at {self.where}: {reason}")
        return EngineUnreachable(
            f"{what}: connection to the Docker engine at {self.where} failed: "
            f"{type(exc).__name__}: {exc}"
        )

    async def _json(
        self,
        what: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        with self._translate(what):
            data = None if body is None else json.dumps(body)
            return await self._docker._query_json(path, method, params=params, data=data)

    @contextlib.asynccontextmanager
    async def _stream(
        self,
        path: str,
        method: str,
        *,
        params: Mapping[str, Any],
        headers: Mapping[str, str],
        data: Any = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A long-running request whose connection is closed, not pooled, on any early exit.

        Released half-read, the engine would keep writing into a connection
        nobody reads, and keep the container locked while it does.
        """
        async with self._docker._query(
            path, method, params=params, data=data, headers=headers, timeout=NO_TIMEOUT
        ) as resp:
            try:
                yield resp
            except BaseException:
                resp.close()
                raise

    async def inspect_container(self, ref: str) -> ContainerInfo:
        data = await self._json(
            f"container {ref!r}", "GET", f"containers/{container_segment(ref)}/json"
        )
        return _container_info(data)

    async def inspect_image(self, ref: str) -> ImageInfo:
        data = await self._json(f"image {ref!r}", "GET", f"images/{image_segment(ref)}/json")
        if await self.product() == "podman":
            data = _familiar_image(data)
        return _image_info(data)

    async def image_history(self, ref: str) -> list[Mapping[str, Any]]:
        result: list[Mapping[str, Any]] = await self._json(
            f"image {ref!r}", "GET", f"images/{image_segment(ref)}/history"
        )
        return result

    async def list_containers(self, filters: Mapping[str, list[str]]) -> list[Mapping[str, Any]]:
        result: list[Mapping[str, Any]] = await self._json(
            "list containers",
            "GET",
            "containers/json",
            params={"all": "1", "filters": json.dumps(filters)},
        )
        return result

    async def list_images(self, filters: Mapping[str, list[str]]) -> list[Mapping[str, Any]]:
        result: list[Mapping[str, Any]] = await self._json(
            "list images", "GET", "images/json", params={"filters": json.dumps(filters)}
        )
        if await self.product() == "podman":
            result = [_familiar_image(entry) for entry in result]
            if filters.get("reference"):
                result = _by_reference(result, list(filters["reference"]))
        return result

    async def stat_path(self, container_id: str, path: str) -> PathStat | None:
        """Stat a path inside a container (``HEAD …/archive``); None when it does not exist."""
        what = f"stat {path!r} in container {container_id[:12]}"
        with self._translate(what):
            # aiodocker cannot read a HEAD error (it expects a JSON body), so go one level down.
            await self._docker._check_version()
            url = self._docker._canonicalize_url(
                f"containers/{container_segment(container_id)}/archive"
            )
            async with self._docker.session.request(
                "HEAD", url, params={"path": path}, headers=ARCHIVE_HEADERS
            ) as resp:
                status = resp.status
                header = resp.headers.get("X-Docker-Container-Path-Stat", "")
        if status == 404:
            await self.inspect_container(container_id)
            return None
        if status != 200:
            raise EngineError(f"{what}: HTTP {status}")
        stat = json.loads(base64.b64decode(header)) if header else {}
        return PathStat(
            name=stat.get("name", ""),
            size=int(stat.get("size", 0)),
            mode=int(stat.get("mode", 0)),
            link_target=stat.get("linkTarget", ""),
        )

    async def product(self) -> str:
        """``podman`` for Podman's Docker-compatible API, else ``docker``.

        Podman differs in what this boundary hides (names, event names, ids, filters) and in
        one thing the pipeline must know: its archives report every owner as the container
        user's.
        """
        if self._product is None:
            version = await self._json("engine version", "GET", "version")
            names = {
                str(part.get("Name", ""))
                for part in version.get("Components") or ()
                if isinstance(part, dict)
            }
            self._product = "podman" if PODMAN_COMPONENT in names else "docker"
        return self._product

    async def image_store(self) -> str:
        """``containerd`` for the containerd image store (Docker 29's default), else ``graph``."""
        if self._store is None:
            info = await self._json("docker info", "GET", "info")
            status = info.get("DriverStatus") or []
            containerd = any(
                isinstance(pair, list)
                and len(pair) == 2
                and pair[0] == "driver-type"
                and str(pair[1]).startswith("io.containerd.snapshotter")
                for pair in status
            )
            self._store = "containerd" if containerd else "graph"
        return self._store

    @contextlib.asynccontextmanager
    async def export(self, ref: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """``GET /images/{ref}/get``: the image as a tar, as it arrives."""
        async with self._download(
            f"export image {ref}", f"images/{image_segment(ref)}/get", {}
        ) as chunks:
            yield chunks

    async def system_time_ns(self) -> int:
        """The engine's clock: events are stamped with it, not with ours."""
        info = await self._json("docker info", "GET", "info")
        return parse_engine_time(str(info.get("SystemTime", "")))

    def events(
        self, since_ns: int, label: str
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        """Container events since ``since_ns`` for containers carrying ``label``."""
        return self._events("watch events", since_ns, {"type": ["container"], "label": [label]})

    def image_loads(self) -> contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]:
        """``load`` events of images from now on.

        A loaded image carries no label of ours, and the engine names only its id.
        """
        return self._events("watch image loads", None, {"type": ["image"], "event": ["load"]})

    @contextlib.asynccontextmanager
    async def _events(
        self, what: str, since_ns: int | None, filters: Mapping[str, list[str]]
    ) -> AsyncIterator[AsyncIterator[Event]]:
        podman = await self.product() == "podman"
        wanted = set(filters.get("event") or ())
        if podman and wanted:
            # Podman names a load `loadfromarchive`: filter on the names after translation.
            filters = {key: value for key, value in filters.items() if key != "event"}
        params = {"filters": json.dumps(filters)}
        if since_ns is not None:
            params["since"] = f"{since_ns // 10**9}.{since_ns % 10**9:09d}"
        with self._translate(what):
            async with self._stream("events", "GET", params=params, headers={}) as resp:
                events = self._parse_events(resp, podman=podman)
                if podman and wanted:
                    events = _only(events, wanted)
                yield events

    @staticmethod
    async def _parse_events(
        resp: aiohttp.ClientResponse, *, podman: bool = False
    ) -> AsyncIterator[Event]:
        async for data in _json_lines(resp, "malformed event from the engine", EngineError):
            actor = data.get("Actor") or {}
            action = str(data.get("Action") or data.get("status") or "")
            if podman:
                action = _PODMAN_ACTIONS.get((str(data.get("Type", "")), action), action)
                if action == "health_status" and data.get("HealthStatus"):
                    # Docker spells the state into the action; Podman beside it.
                    action = f"health_status: {data['HealthStatus']}"
            yield Event(
                action=action,
                id=str(actor.get("ID") or data.get("id") or ""),
                attributes=dict(actor.get("Attributes") or {}),
                time_nano=int(data.get("timeNano") or int(data.get("time", 0)) * 10**9),
            )

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
        with self._translate(f"pause container {container_id[:12]}"):
            await self._docker._query_json(
                f"containers/{container_segment(container_id)}/pause", "POST"
            )

    async def unpause(self, container_id: str) -> None:
        with self._translate(f"unpause container {container_id[:12]}"):
            await self._docker._query_json(
                f"containers/{container_segment(container_id)}/unpause", "POST"
            )

    async def stop(self, container_id: str) -> None:
        """``POST …/stop`` with the container's own stop timeout (which may be long: no
        client timeout). The engine marks it stopped by hand: no restart policy wakes it."""
        with self._translate(f"stop container {container_id[:12]}"):
            await self._docker._query_json(
                f"containers/{container_segment(container_id)}/stop", "POST", timeout=NO_TIMEOUT
            )

    async def start(self, container_id: str) -> None:
        with self._translate(f"start container {container_id[:12]}"):
            await self._docker._query_json(
                f"containers/{container_segment(container_id)}/start", "POST"
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
        self,
        container_id: str,
        *,
        comment: str,
        config: Mapping[str, Any] | None = None,
        pause: bool = False,
        tag: tuple[str, str] | None = None,
    ) -> str:
        """Commit, and tag the new image as ``(repository, tag)`` in the same engine call.

        Tagging in the commit itself leaves no moment at which the new image exists
        without the tag that tells the sweep whose it is.
        """
        params = {
            "container": container_id,
            "pause": "1" if pause else "0",
            "author": "kegpackd",
            "comment": comment,
        }
        if tag is not None:
            params["repo"], params["tag"] = tag
        result = await self._json(
            f"commit container {container_id[:12]}",
            "POST",
            "commit",
            params=params,
            body=dict(config or {}),
        )
        return _full_id(str(result["Id"]))

    @contextlib.asynccontextmanager
    async def archive(self, container_id: str, path: str) -> AsyncIterator[AsyncIterator[bytes]]:
        """The tar of ``path`` in a container (``GET …/archive``), as it arrives, uncompressed.

        Leaving the block early closes the connection, which makes the engine stop and
        release the container.
        """
        what = f"read {path!r} of container {container_id[:12]}"
        async with self._download(
            what, f"containers/{container_segment(container_id)}/archive", {"path": path}
        ) as chunks:
            yield chunks

    @contextlib.asynccontextmanager
    async def _download(
        self, what: str, path: str, params: Mapping[str, str]
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """A GET whose body is read as it arrives, uncompressed, and always closed after.

        Pooled half-read, the connection would keep the engine writing (and, for an
        archive, holding the container's lock) for nobody.
        """
        with self._translate(what):
            async with self._stream(path, "GET", params=params, headers=ARCHIVE_HEADERS) as resp:
                try:
                    yield resp.content.iter_any()
                finally:
                    resp.close()

    async def load_archive(self, body: AsyncGenerator[bytes, None]) -> None:
        """``POST /images/load`` of a docker-archive streamed from ``body``.

        A failure of ``body`` is reported rather than the broken upload it causes; the
        engine then discards what it received. ``body`` runs in aiohttp's writer task, so it
        should hold no resources of its own (see ``pipeline._Job._send``).
        """
        failure: list[BaseException] = []

        async def guarded() -> AsyncIterator[bytes]:
            # Only our body's own errors count. aiohttp cancels its writer task (this
            # generator's) once the engine has answered, say with ENOSPC mid-upload: that
            # CancelledError is not a failure of ours, and re-raised in the job's task it
            # would make the job look cancelled instead of failed with the engine's error.
            try:
                async for chunk in body:
                    yield chunk
            except Exception as exc:
                failure.append(exc)
                raise

        try:
            with self._translate("load image"):
                async with self._stream(
                    "images/load",
                    "POST",
                    params={"quiet": "1"},
                    data=guarded(),
                    headers={"Content-Type": "application/x-tar"},
                ) as resp:
                    answer = await resp.read()
        except Exception as exc:
            if failure and failure[0] is not exc:
                cause = failure[0]
                if isinstance(cause, aiohttp.ClientError):
                    raise EngineError(
                        f"load image: the archive stream broke off "
                        f"({type(cause).__name__}: {cause})"
                    ) from None
                raise cause from None
            raise
        if failure:
            raise failure[0]
        for line in answer.decode(errors="replace").splitlines():
            try:
                entry = json.loads(line) if line.strip() else {}
            except ValueError:
                raise EngineError(f"load image: unexpected answer {line[:200]!r}") from None
            if isinstance(entry, dict) and "error" in entry:
                raise EngineError(f"load image: {entry['error']}")

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

    async def push(
        self,
        repository: str,
        tag: str,
        auth_header: str | None,
        on_progress: Callable[[Mapping[str, Any]], None],
    ) -> str | None:
        """Push one tag; an error anywhere in the progress stream fails the push."""
        reference = f"{repository}:{tag}"
        digest: str | None = None
        headers = {"X-Registry-Auth": auth_header or ANONYMOUS_AUTH}
        try:
            with self._translate(f"push {reference}"):
                async with self._stream(
                    f"images/{image_segment(repository)}/push",
                    "POST",
                    params={"tag": tag},
                    headers=headers,
                ) as resp:
                    malformed = f"push {reference}: malformed progress"
                    async for entry in _json_lines(resp, malformed, RegistryError):
                        if "error" in entry:
                            message = str(entry["error"])
                            raise RegistryError(
                                f"push {reference}: {message}",
                                retryable=not _AUTH_REFUSED.search(message),
                            )
                        aux = entry.get("aux") or {}
                        digest = aux.get("Digest", digest)
                        if digest is None:
                            # dockerd 26 on the containerd store sends no aux, only the
                            # line `docker push` has always printed: "<tag>: digest: … size: …".
                            match = _PUSHED.match(str(entry.get("status", "")))
                            digest = match.group(1) if match else None
                        on_progress(entry)
        except EngineUnreachable:
            raise
        except EngineError as exc:
            raise RegistryError(str(exc)) from None
        return digest
