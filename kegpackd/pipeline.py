"""One packaging job: snapshot a container with its mounts into an image, tag it, push it.

Stages: commit → stream → finalize → push, then cleanup in every outcome.

The helper container is created from an image that has the source's layers but
none of its config: an image that declares ``VOLUME /data`` would give the
helper an anonymous volume at /data, and whatever is streamed there would miss
the final commit. The final commit sets the source's config explicitly.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import re
import tarfile
import time
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio

from kegpackd.config import Config
from kegpackd.credentials import resolve_credentials
from kegpackd.engine import ContainerInfo, Engine, PathStat
from kegpackd.errors import EngineError, InvalidValueError, PackagingError, RegistryError
from kegpackd.naming import ImageNames, TemplateContext, resolve_names
from kegpackd.options import LABEL_PREFIX, JobOptions, Overrides, resolve_options
from kegpackd.owner import current_token
from kegpackd.tarfilter import ExcludeRules, TarScanner

log = logging.getLogger(__name__)

TEMP_LABEL = "kegpack.temporary"
TEMP_COMMENT = "kegpackd temporary job="
FINAL_COMMENT = "kegpackd job="
PENDING_REPOSITORY = "kegpack-pending"
_TEMP_COMMENT_FORMAT = re.compile(re.escape(TEMP_COMMENT) + r"(\S+)(?: owner=(\S+))?")
_FINAL_COMMENT_FORMAT = re.compile(re.escape(FINAL_COMMENT) + r"(\S+) container=")
_PENDING_FORMAT = re.compile(re.escape(PENDING_REPOSITORY) + r"/(\S+):([0-9a-zA-Z-]+\.\d+\.\d+)")
HELPER_PREFIX = "kegpack-helper-"
IGNORE_FILE = ".kegpackignore"
PUSH_BACKOFF_START = 0.5
PUSH_BACKOFF_CAP = 10.0
IGNORE_FILE_LIMIT = 64 * 1024
CLEANUP_DEADLINE = 60.0
PACKAGEABLE_MOUNTS = ("bind", "volume")
COPIED_CONFIG_KEYS = (
    "Cmd",
    "Entrypoint",
    "Env",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Healthcheck",
    "StopSignal",
    "Volumes",
    "Shell",
    "OnBuild",
)
STAGES = ("commit", "stream", "finalize", "push", "cleanup")


class Progress(Protocol):
    """Where a job reports what it is doing (a terminal display, a log, metrics)."""

    def stage(self, name: str, detail: str = "") -> None: ...

    def streamed(self, count: int) -> None: ...


class NoProgress:
    def stage(self, name: str, detail: str = "") -> None:
        pass

    def streamed(self, count: int) -> None:
        pass


@dataclass(frozen=True)
class JobRequest:
    container: str
    trigger: str = "manual"
    overrides: Overrides = field(default_factory=Overrides)
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])


@dataclass
class JobResult:
    job_id: str
    container_id: str = ""
    container_name: str = ""
    image_id: str = ""
    references: list[str] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)
    streamed_bytes: int = 0
    entries: int = 0
    excluded: int = 0
    push_retries: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SelectedMount:
    destination: str
    is_dir: bool

    @property
    def parent(self) -> str:
        return posixpath.dirname(self.destination) or "/"

    @property
    def root_name(self) -> str:
        return posixpath.basename(self.destination)


def _is_within(path: str, ancestor: str) -> bool:
    return ancestor in ("/", path) or path.startswith(ancestor.rstrip("/") + "/")


async def select_mounts(
    engine: Engine, info: ContainerInfo, options: JobOptions
) -> list[SelectedMount]:
    """Choose the mounts to copy; a mount inside another chosen one travels with it.

    The engine mounts every volume into the container's root before archiving,
    so the archive of /data already holds the content of a mount at /data/sub.
    """
    by_destination = {m.destination: m for m in info.mounts}
    if options.paths is None:
        wanted = [m.destination for m in info.mounts if m.type in PACKAGEABLE_MOUNTS]
    else:
        wanted = list(options.paths)
        for path in wanted:
            mount = by_destination.get(path)
            if mount is None:
                raise InvalidValueError(
                    options.paths_source,
                    path,
                    f"not a mount of container {info.name} "
                    f"(its mounts: {', '.join(sorted(by_destination)) or 'none'})",
                )
            if mount.type not in PACKAGEABLE_MOUNTS:
                raise InvalidValueError(
                    options.paths_source, path, f"is a {mount.type} mount, which has no content"
                )
    selected: list[SelectedMount] = []
    for path in sorted(set(wanted)):
        if any(_is_within(path, s.destination) for s in selected):
            continue
        stat = await engine.stat_path(info.id, path)
        if stat is None:
            raise PackagingError(f"mount {path} of container {info.name} cannot be read")
        if stat.is_special:
            if options.paths is not None:
                raise InvalidValueError(
                    options.paths_source, path, "is a socket or device, which has no content"
                )
            continue
        selected.append(SelectedMount(path, stat.is_dir))
    if not selected:
        raise PackagingError(
            f"nothing to package: container {info.name} has no bind mount or volume with content"
        )
    return selected


def final_config(info: ContainerInfo, job_id: str, now: datetime) -> dict[str, Any]:
    """The source's runtime config, minus kegpack.* labels, plus provenance."""
    config: dict[str, Any] = {key: info.config.get(key) for key in COPIED_CONFIG_KEYS}
    labels = {k: v for k, v in info.labels.items() if not k.startswith(LABEL_PREFIX)}
    labels.update(
        {
            "kegpack.source.id": info.id,
            "kegpack.source.name": info.name,
            "kegpack.source.image": info.image,
            "kegpack.source.started_at": info.started_at,
            "kegpack.job": job_id,
            "org.opencontainers.image.created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    config["Labels"] = labels
    return config


def pending_reference(job_id: str) -> tuple[str, str]:
    """The tag a final image is born with, until its real tags are on.

    The engine may complete a commit whose caller never hears back (the engine or
    kegpackd killed mid-call). Such an image carries only this tag, which names its
    job and maker, so the sweep can tell it from a finished image and remove it.
    """
    return f"{PENDING_REPOSITORY}/{job_id}", current_token().replace("/", ".")


def parse_pending_reference(reference: str) -> tuple[str, str] | None:
    """(job id, owner token) of a pending tag; None for any other reference."""
    match = _PENDING_FORMAT.fullmatch(reference)
    if match is None:
        return None
    return match.group(1), match.group(2).replace(".", "/")


def final_comment(job_id: str, container_name: str) -> str:
    return f"{FINAL_COMMENT}{job_id} container={container_name}"


def parse_final_comment(comment: str) -> str | None:
    """The job id in a final image's comment; None for any other image."""
    match = _FINAL_COMMENT_FORMAT.match(comment)
    return None if match is None else match.group(1)


def temporary_comment(job_id: str) -> str:
    """The comment that marks a temporary image: its job, and the process that made it."""
    return f"{TEMP_COMMENT}{job_id} owner={current_token()}"


def parse_temporary_comment(comment: str) -> tuple[str, str | None] | None:
    """(job id, owner token or None) of a temporary image's comment; None for any other image."""
    match = _TEMP_COMMENT_FORMAT.fullmatch(comment)
    return None if match is None else (match.group(1), match.group(2))


def _bare_image_config(
    layers: tuple[str, ...],
    architecture: str,
    os_name: str,
    history: list[Mapping[str, Any]],
    job_id: str,
    now: datetime,
) -> bytes:
    """An image config with the given layers and nothing else (no volumes, no labels)."""
    entries = []
    for item in reversed(history):
        entry: dict[str, Any] = {
            "created": datetime.fromtimestamp(int(item.get("Created", 0)), UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "created_by": item.get("CreatedBy", ""),
        }
        if item.get("Comment"):
            entry["comment"] = item["Comment"]
        if not item.get("Size"):
            entry["empty_layer"] = True
        entries.append(entry)
    if sum(1 for e in entries if not e.get("empty_layer")) != len(layers):
        entries = []
    config = {
        "architecture": architecture,
        "os": os_name or "linux",
        "created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "author": "kegpackd",
        "comment": temporary_comment(job_id),
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": list(layers)},
        "history": entries,
    }
    return json.dumps(config, separators=(",", ":")).encode()


def _directory_tar(path: str) -> bytes:
    """A tar of the directory chain leading to ``path`` (for a nested mount's parent)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parts = [p for p in path.split("/") if p]
        for depth in range(1, len(parts) + 1):
            info = tarfile.TarInfo("/".join(parts[:depth]))
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
    return buf.getvalue()


def check_registries(names: ImageNames, config: Config, source: str) -> None:
    allowed = config.registries.allowed
    if names.registry not in allowed:
        raise InvalidValueError(
            source,
            str(names.repository),
            f"registry {names.registry} is not in registries.allowed "
            f"({', '.join(allowed) or 'empty'})",
        )


class _Job:
    def __init__(
        self,
        engine: Engine,
        config: Config,
        request: JobRequest,
        progress: Progress,
        docker_config_dir: Path | None,
        result: JobResult | None,
    ) -> None:
        self.engine = engine
        self.docker_config_dir = docker_config_dir
        self.config = config
        self.request = request
        self.progress = progress
        self.result = result or JobResult(job_id=request.job_id)
        self.paused: str | None = None
        self.helper: str | None = None
        self.images: list[str] = []
        self.final_image: str | None = None
        self.pending: tuple[str, str] | None = None

    @property
    def _comment(self) -> str:
        return temporary_comment(self.request.job_id)

    def _timed(self, stage: str) -> _StageTimer:
        self.progress.stage(stage)
        return _StageTimer(self.result.stage_seconds, stage)

    async def run(self) -> JobResult:
        now = datetime.now(UTC)
        info = await self.engine.inspect_container(self.request.container)
        self.result.container_id, self.result.container_name = info.id, info.name
        options = resolve_options(info.labels, self.config, self.request.overrides)
        names = resolve_names(
            options.repository,
            options.repository_source,
            options.tags,
            options.tags_source,
            TemplateContext(name=info.name, id=info.id, now=now),
        )
        if options.push:
            check_registries(names, self.config, options.repository_source)
        ExcludeRules.parse(options.exclude, options.exclude_source)
        mounts = await select_mounts(self.engine, info, options)

        with self._timed("commit"):
            if options.pause and info.running and not info.paused:
                await self.engine.pause(info.id)
                self.paused = info.id
            await self._snapshot(info, now)
        with self._timed("stream"):
            for mount in mounts:
                await self._copy(info, mount, await self._exclude_rules(info, mount, options))
            await self._unpause()
        with self._timed("finalize"):
            await self._verify(mounts)
            self.pending = pending_reference(self.request.job_id)
            self.final_image = await self.engine.commit(
                self._helper_id,
                comment=final_comment(self.request.job_id, info.name),
                config=final_config(info, self.request.job_id, now),
                tag=self.pending,
            )
            self.result.image_id = self.final_image
            for tag in names.tags:
                await self.engine.tag(self.final_image, names.repository.repository, tag)
                self.result.references.append(f"{names.repository}:{tag}")
            await self._drop_pending()
        if options.push:
            with self._timed("push"):
                await self._push(names)
        return self.result

    @property
    def _helper_id(self) -> str:
        assert self.helper is not None
        return self.helper

    async def _snapshot(self, info: ContainerInfo, now: datetime) -> None:
        committed = await self.engine.commit(
            info.id, comment=self._comment, config={"Labels": {TEMP_LABEL: self.request.job_id}}
        )
        self.images.append(committed)
        image = await self.engine.inspect_image(committed)
        history = await self.engine.image_history(committed)
        config = _bare_image_config(
            image.layers, image.architecture, image.os, history, self.request.job_id, now
        )
        manifest: list[Mapping[str, Any]] = [
            {
                "Config": "config.json",
                "RepoTags": None,
                "Layers": [f"{i}/layer.tar" for i in range(len(image.layers))],
            }
        ]
        bare = await self.engine.load_image(manifest, config)
        self.images.append(bare)
        await self.engine.remove_image(committed)
        self.images.remove(committed)
        self.helper = await self.engine.create_helper(bare, HELPER_PREFIX + self.request.job_id)
        helper = await self.engine.inspect_container(self.helper)
        if helper.mounts:
            mounted = ", ".join(m.destination for m in helper.mounts)
            raise PackagingError(
                f"the helper container got mounts ({mounted}); content copied there would be lost"
            )

    async def _exclude_rules(
        self, info: ContainerInfo, mount: SelectedMount, options: JobOptions
    ) -> ExcludeRules:
        """The configured or labelled patterns, plus a ``.kegpackignore`` at the mount's root."""
        patterns = list(options.exclude)
        source = options.exclude_source
        if mount.is_dir:
            ignore_path = posixpath.join(mount.destination, IGNORE_FILE)
            content = await self.engine.read_file(info.id, ignore_path, IGNORE_FILE_LIMIT)
            if content is not None:
                lines = content.decode("utf-8", errors="replace").splitlines()
                ExcludeRules.parse(lines, f"{ignore_path} in container {info.name}")
                patterns += lines
                source = f"{source} and {ignore_path}"
        return ExcludeRules.parse(patterns, source)

    async def _copy(self, info: ContainerInfo, mount: SelectedMount, exclude: ExcludeRules) -> None:
        self.progress.stage("stream", mount.destination)
        if await self.engine.stat_path(self._helper_id, mount.parent) is None:
            await self.engine.put_archive(self._helper_id, "/", _directory_tar(mount.parent))
        scanner = TarScanner(mount.root_name, exclude if exclude else None)

        def on_bytes(count: int) -> None:
            self.result.streamed_bytes += count
            self.progress.streamed(count)

        await self.engine.copy_archive(
            info.id, mount.destination, self._helper_id, mount.parent, scanner, on_bytes
        )
        if scanner.entries == 0:
            raise PackagingError(f"the archive of {mount.destination} was empty")
        self.result.entries += scanner.entries
        self.result.excluded += scanner.excluded

    async def _verify(self, mounts: list[SelectedMount]) -> None:
        """Every copied mount must now exist in the helper, as the same kind of file."""
        for mount in mounts:
            stat: PathStat | None = await self.engine.stat_path(self._helper_id, mount.destination)
            if stat is None or stat.is_dir != mount.is_dir:
                raise PackagingError(
                    f"{mount.destination} is missing from the packaged image after the copy"
                )

    async def _push(self, names: ImageNames) -> None:
        credentials = await resolve_credentials(
            names.registry, self.config.registries.auth, self.docker_config_dir
        )
        header = credentials.auth_header(names.registry) if credentials else None
        for tag in names.tags:
            reference = f"{names.repository}:{tag}"
            self.progress.stage("push", reference)
            self.result.digests[reference] = await self._push_one(names, tag, header)

    async def _push_one(self, names: ImageNames, tag: str, header: str | None) -> str:
        """Push one tag, retrying registry errors with capped exponential backoff."""
        reference = f"{names.repository}:{tag}"
        attempt = 0
        while True:
            try:
                digest = await self.engine.push(
                    names.repository.repository, tag, header, lambda _entry: None
                )
                if digest is None:
                    raise RegistryError(f"push {reference}: the engine reported no digest")
                return digest
            except RegistryError as exc:
                if not exc.retryable or attempt >= self.config.packaging.push_retries:
                    raise
                delay = min(PUSH_BACKOFF_CAP, PUSH_BACKOFF_START * 2**attempt)
                attempt += 1
                self.result.push_retries += 1
                log.warning("%s; retry %d in %.1fs", exc, attempt, delay)
                await anyio.sleep(delay)

    async def _drop_pending(self) -> None:
        """Remove the pending tag; an image that has no final tag goes with it."""
        if self.pending is not None:
            repository, tag = self.pending
            await self.engine.remove_image(f"{repository}:{tag}")
            self.pending = None

    async def _unpause(self) -> None:
        if self.paused is not None:
            source, self.paused = self.paused, None
            await self.engine.unpause(source)

    async def cleanup(self) -> None:
        """Undo everything temporary; each step runs even when an earlier one failed."""
        await self._attempt("unpause the source", self._unpause())
        if self.helper is not None:
            await self._attempt(
                f"remove helper {self.helper[:12]}", self.engine.remove_container(self.helper)
            )
        await self._attempt("drop the pending tag", self._drop_pending())
        if self.final_image is not None and not self.result.references:
            await self._attempt(
                f"remove image {self.final_image}", self.engine.remove_image(self.final_image)
            )
        for image in reversed(self.images):
            await self._attempt(f"remove image {image}", self._remove_temporary(image))

    async def _attempt(self, what: str, step: Awaitable[object]) -> None:
        try:
            await step
        except EngineError as exc:
            log.warning("job %s: cleanup could not %s: %s", self.request.job_id, what, exc)

    async def _remove_temporary(self, image: str) -> None:
        """Remove a temporary image; the bare one stays only as the final image's parent."""
        try:
            await self.engine.remove_image(image)
        except EngineError as exc:
            if self.final_image is None or "dependent child" not in str(exc):
                raise


class _StageTimer:
    def __init__(self, into: dict[str, float], stage: str) -> None:
        self.into = into
        self.stage = stage
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.into[self.stage] = self.into.get(self.stage, 0.0) + time.monotonic() - self.start


async def package(
    engine: Engine,
    config: Config,
    request: JobRequest,
    progress: Progress | None = None,
    *,
    docker_config_dir: Path | None = None,
    result: JobResult | None = None,
) -> JobResult:
    """Run one job to completion; cleanup runs shielded whatever the outcome.

    Pass ``result`` to see what a failed job got done (its fields fill in as it goes).
    """
    job = _Job(engine, config, request, progress or NoProgress(), docker_config_dir, result)
    try:
        return await job.run()
    finally:
        if job.helper is not None or job.images:
            job.progress.stage("cleanup")
        started = time.monotonic()
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLEANUP_DEADLINE):
            await job.cleanup()
        job.result.stage_seconds["cleanup"] = time.monotonic() - started
