"""One packaging job: snapshot a container with its mounts into an image, tag it, push it.

Stages: commit → measure → stream → finalize → push, then cleanup in every outcome.

The source is committed, which gives its image's layers and its writable layer. The
mounts then become one layer of their own, loaded through ``POST /images/load`` on top
of those: each mount's archive renamed into place, behind an opaque whiteout that hides
what the image had under the mount point, as the running container's mount hides it.
The engine sees the same layer bytes on the same parent as the same layer, so an
unchanged mount is found by its digest and not sent again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import posixpath
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from kegpackd.backoff import Backoff
from kegpackd.config import Config
from kegpackd.credentials import resolve_credentials
from kegpackd.engine import ContainerInfo, ImageInfo
from kegpackd.errors import (
    EngineError,
    InvalidValueError,
    NotFoundError,
    PackagingError,
    RegistryError,
)
from kegpackd.ignore import ExcludeRules
from kegpackd.incontainer import Command, run_command
from kegpackd.jobs import JobRequest, JobResult, NoProgress, Progress, Stage
from kegpackd.layer import (
    END_OF_ARCHIVE,
    LAYER_FILE,
    SmallFiles,
    ancestors,
    declared_size,
    file_entry,
    file_header,
    first_member,
    image_config,
    layer_descriptors,
    layer_prefix,
    manifest,
    oci_head,
    parent_entry,
    placeholders,
    zero_padding,
)
from kegpackd.markers import (
    TEMP_LABEL,
    final_comment,
    final_comment_container,
    parse_temporary_comment,
    pending_reference,
    temporary_comment,
)
from kegpackd.mounts import SelectedMount, packaged_destinations, select_mounts
from kegpackd.naming import (
    COMPOSE_LABEL_PREFIX,
    COMPOSE_SERVICE_LABEL,
    ImageNames,
    TemplateContext,
    parse_reference,
    repository_allowed,
    repository_rule,
    resolve_names,
)
from kegpackd.options import (
    LABEL_ALLOW_FORCED_OWNERS,
    LABEL_PREFIX,
    JobOptions,
    Overrides,
    resolve_options,
)
from kegpackd.port import EnginePort
from kegpackd.retention import created_ns, own_images, prune, repository_of
from kegpackd.shown import quoted
from kegpackd.stoprecord import own_stops, remove_record, write_record
from kegpackd.tarscan import TarScanner

log = logging.getLogger(__name__)

IGNORE_FILE = ".kegpackignore"
LAYER_ATTEMPTS = 3
PARENT_HEADER_LIMIT = 1 << 20
PUSH_BACKOFF_START = 0.5
PUSH_BACKOFF_CAP = 10.0
IGNORE_FILE_LIMIT = 64 * 1024
CLEANUP_DEADLINE = 60.0
# A commit whose diff met a file growing under it (see _Job._commit_once_settled).
COMMIT_ATTEMPTS = 3
CHANGED_UNDER_COMMIT = "write too long"
# How often a source being stopped is tried again when it must run again.
RESTART_POLL = 0.1
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


# On an image whose mounts' owners the engine forced (Podman): not an exact copy.
FORCED_OWNERS_LABEL = "kegpack.owners"


def final_config(
    info: ContainerInfo, job_id: str, now: datetime, packaged: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """The source's runtime config, minus kegpack.* and Compose labels, plus provenance.

    Compose's labels would make a container run from the image count as one of the source
    project's (``docker-compose ps``, ``down``) without being one.

    ``packaged`` holds the copied mounts' destinations that the source's image does not
    declare a volume of itself: Compose writes every mount into the container's
    ``Volumes``, and the image would otherwise put an anonymous volume over the files.
    """
    config: dict[str, Any] = {key: info.config.get(key) for key in COPIED_CONFIG_KEYS}
    if config.get("Volumes") and packaged:
        volumes = {k: v for k, v in config["Volumes"].items() if k not in packaged}
        config["Volumes"] = volumes or None
    labels = {
        k: v
        for k, v in info.labels.items()
        if not k.startswith((LABEL_PREFIX, COMPOSE_LABEL_PREFIX))
    }
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


def check_registries(names: ImageNames, config: Config, source: str) -> None:
    """A push goes only to a registry, or a repository, that ``registries.allowed`` lists.

    A bare host allows the whole registry, where the daemon's credentials may reach
    every repository; ``host/apps/`` allows only the repositories below ``apps/``.
    """
    allowed = config.registries.allowed
    hosts = [entry for entry in allowed if "/" not in entry]
    rules = [repository_rule(e, "registries.allowed") for e in allowed if "/" in e]
    if names.registry in hosts or repository_allowed(names.repository, rules):
        return
    what = "registry" if not rules else "repository"
    shown = names.registry if not rules else names.repository.repository
    raise InvalidValueError(
        source,
        str(names.repository),
        f"{what} {shown} is not in registries.allowed ({', '.join(allowed) or 'empty'})",
    )


def check_repository(names: ImageNames, config: Config, source: str) -> None:
    """Every job's repository is one that ``packaging.allowed_repositories`` lists, if set."""
    allowed = config.packaging.allowed_repositories
    if allowed is None:
        return
    rules = [repository_rule(entry, "packaging.allowed_repositories") for entry in allowed]
    if not repository_allowed(names.repository, rules):
        raise InvalidValueError(
            source,
            str(names.repository),
            f"repository {names.repository.repository} is not in"
            f" packaging.allowed_repositories ({', '.join(allowed)})",
        )


def _check_quiesce(info: ContainerInfo, options: JobOptions) -> None:
    """A source paused by someone else can neither be stopped (and started again as
    it was) nor run a command: refused before anything is done."""
    if not info.paused:
        return
    if options.quiesce == "stop":
        raise PackagingError(
            f"container {info.name} is paused, and not by kegpackd: stop mode (from "
            f"{options.quiesce_source}) does not stop a paused container; unpause it first"
        )
    if options.exec_before or options.exec_after:
        source = options.exec_before_source if options.exec_before else options.exec_after_source
        raise PackagingError(
            f"container {info.name} is paused, and not by kegpackd: the command of "
            f"{source} cannot run in it; unpause it first"
        )


def check_request(
    info: ContainerInfo, config: Config, overrides: Overrides, now: datetime
) -> tuple[JobOptions, ImageNames]:
    """Options and image names of a job for ``info``; raises on a bad value, before anything
    is made (the API refuses such a request with the same message)."""
    options = resolve_options(info.labels, config, overrides)
    names = resolve_names(
        options.repository,
        options.repository_source,
        options.tags,
        options.tags_source,
        TemplateContext(
            name=info.name, id=info.id, now=now, service=info.labels.get(COMPOSE_SERVICE_LABEL, "")
        ),
    )
    check_repository(names, config, options.repository_source)
    if options.push:
        check_registries(names, config, options.repository_source)
    ExcludeRules.parse(options.exclude, options.exclude_source)
    return options, names


async def check_existing_tags(
    engine: EnginePort, names: ImageNames, info: ContainerInfo, options: JobOptions
) -> None:
    """A job never moves a tag off an image that kegpackd did not make of this container.

    The repository and tags may come from the container's labels: without this, a label
    could re-point any local tag (``victim/db:15``) at its owner's image, and the next
    ``docker run victim/db:15`` would run it. Such an image has kegpackd's final comment
    naming this container (a comment, unlike a label, is not inherited by a child image).
    """
    for reference in names.references():
        try:
            image = await engine.inspect_image(reference)
        except NotFoundError:
            continue
        if final_comment_container(image.comment) == info.name:
            continue
        sources = dict.fromkeys((options.repository_source, options.tags_source))
        raise InvalidValueError(
            ", ".join(sources),
            str(parse_reference(reference, "image tag")),
            f"the tag is on image {image.id[:19]}, which kegpackd did not make of container"
            f" {info.name}; a job never moves such a tag",
        )


class _LayerOutgrown(Exception):
    """The mounts changed since measured: more bytes than declared, or (where the layer's
    name is its digest) other bytes."""


class _Job:
    def __init__(
        self,
        engine: EnginePort,
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
        # Stop mode: the source this job stopped, and the record of it (see stoprecord).
        self.stopped: tuple[str, str] | None = None  # (id, StartedAt of the stopped run)
        self.stop_record: Path | None = None
        self.quiesced_since = 0.0
        # The exec-after command, due once the exec-before one has started (or would have).
        self.after: tuple[str, str, Command] | None = None
        self.images: list[str] = []
        self.final_image: str | None = None
        # The final image existed before this job (skip_unchanged): never removed by it.
        self.existing = False
        self.pending: tuple[str, str] | None = None

    @property
    def _comment(self) -> str:
        return temporary_comment(self.request.job_id)

    def _timed(self, stage: Stage) -> _StageTimer:
        self.progress.stage(stage)
        return _StageTimer(self.result.stage_seconds, stage)

    async def run(self) -> JobResult:
        now = datetime.now(UTC)
        info = await self.engine.inspect_container(self.request.container)
        self.result.container_id, self.result.container_name = info.id, info.name
        options, names = check_request(info, self.config, self.request.overrides, now)
        await check_existing_tags(self.engine, names, info, options)
        mounts = await select_mounts(self.engine, info, options)
        await self._check_owners(info, mounts, options)
        self.result.copied = sorted(packaged_destinations(info, mounts))

        _check_quiesce(info, options)
        self.result.quiesce = options.quiesce
        with self._timed(Stage.COMMIT):
            await self._before(info, options)
            await self._quiesce(info, options)
            base = await self._commit(info)
            base = dataclasses.replace(
                base,
                packaged=await self._packaged_paths(info),
                forced_owners=self.result.forced_owners,
            )
        with self._timed(Stage.MEASURE):
            rules = [await self._exclude_rules(info, m, options) for m in mounts]
            parents = await self._parent_entries(info, mounts)
            layer = _Layer(self, info, mounts, rules, parents)
            measured = await layer.measure()
        # One listing serves the skip_unchanged check and the reuse check of every attempt.
        own = await own_images(self.engine, info.name)
        latest = None
        if self.config.packaging.skip_unchanged:
            latest = _latest_in(own, names.repository.repository)
        with self._timed(Stage.STREAM):
            if latest is not None and _same_image(latest, base, measured[1], info):
                self._reuse(latest, measured[1])
            else:
                latest = None
                self.pending = pending_reference(self.request.job_id)
                await self._load(info, base, layer, measured, now, own)
            await self._release()
            await self._run_after()
        with self._timed(Stage.FINALIZE):
            if self.pending is not None:
                repository, tag = self.pending
                self.final_image = (await self.engine.inspect_image(f"{repository}:{tag}")).id
            assert self.final_image is not None
            self.result.image_id = self.final_image
            # Again: a tag may have been put on another image while this job ran.
            await check_existing_tags(self.engine, names, info, options)
            for tag in names.tags:
                await self.engine.tag(self.final_image, names.repository.repository, tag)
                self.result.references.append(f"{names.repository}:{tag}")
            await self._drop_pending()
        if options.push:
            with self._timed(Stage.PUSH):
                await self._push(names, latest)
        if self.config.retention.enabled:
            with self._timed(Stage.PRUNE):
                await self._prune(info, names)
        return self.result

    async def _check_owners(
        self, info: ContainerInfo, mounts: Sequence[SelectedMount], options: JobOptions
    ) -> None:
        """Podman's archive API reports every file as owned by the container's user (its
        copier forces owners), so the image cannot keep the mounts' owners: refused unless
        allowed, and then said in the result, the log, the metrics and the image's labels."""
        if not mounts or await self.engine.product() != "podman":
            return
        where = ", ".join(quoted(m.destination) for m in mounts)
        if not options.allow_forced_owners:
            raise PackagingError(
                f"{quoted(info.name)}: the engine is Podman, whose archive API reports every "
                f"file under {where} as owned by the container's user, so the image would not "
                f"keep the files' owners; to package it with those owners, set the label "
                f"{LABEL_ALLOW_FORCED_OWNERS}=true or the config key "
                f"packaging.allow_forced_owners = true"
            )
        warning = (
            f"owners under {where} are the container user's, as Podman reports them, "
            f"not the files' own ({LABEL_ALLOW_FORCED_OWNERS})"
        )
        self.result.forced_owners = True
        self.result.warnings.append(warning)
        log.warning("%s: %s", quoted(info.name), warning)

    def _reuse(self, latest: ImageInfo, digest: str) -> None:
        """skip_unchanged: the latest image is this one; it gets the new tags, nothing else."""
        self.progress.stage(Stage.STREAM, f"unchanged: same as {latest.id[:19]}")
        self.final_image = latest.id
        self.existing = True
        self.result.unchanged = True
        self.result.layer, self.result.layer_digest = "reused", digest

    async def _prune(self, info: ContainerInfo, names: ImageNames) -> None:
        """Retention after a successful job; a failure here is logged, never the job's."""
        try:
            report = await prune(
                self.engine,
                self.config.retention,
                time.time_ns(),
                source_name=info.name,
                repository=names.repository.repository,
                just_made=self.final_image,
            )
        except EngineError as exc:
            self.result.cleanup_failures.append(f"retention: {exc}")
            log.warning("job %s: retention failed: %s", self.request.job_id, exc)
            return
        self.result.pruned = [c.id for c in report.removed]
        self.result.pruned_bytes = report.freed_bytes
        self.result.cleanup_failures += report.failures

    async def _packaged_paths(self, info: ContainerInfo) -> frozenset[str]:
        """The copied mounts' destinations that the source's image declares no volume of."""
        try:
            image = await self.engine.inspect_image(info.image_id)
        except NotFoundError:
            declared: Mapping[str, Any] = {}
        else:
            declared = image.config.get("Volumes") or {}
        return frozenset(d for d in self.result.copied if d not in declared)

    async def _commit(self, info: ContainerInfo) -> _Base:
        """Commit the source: its image's layers and its writable layer, the new layer's base."""
        committed = await self._commit_once_settled(info)
        self.images.append(committed)
        image = await self.engine.inspect_image(committed)
        history = await self.engine.image_history(committed)
        if await self.engine.image_store() != "containerd":
            return _Base(image, history)
        exported = SmallFiles()
        async with self.engine.export(committed) as chunks:
            async for chunk in chunks:
                exported.feed(chunk)
                if exported.done:
                    break
        descriptors = layer_descriptors(exported.files, image.architecture, image.os)
        if len(descriptors) != len(image.layers):
            raise PackagingError(
                f"the commit of {info.name} has {len(image.layers)} layers but its manifest "
                f"lists {len(descriptors)}"
            )
        return _Base(image, history, descriptors)

    async def _commit_once_settled(self, info: ContainerInfo) -> str:
        """The commit, tried again when a file of the running source grew while the engine
        diffed its writable layer (the containerd store then fails with "write too long",
        seen on dockerd 26.1 with Redis writing): a later diff sees a later state. Such a
        failed commit leaves no image."""
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                return await self.engine.commit(
                    info.id,
                    comment=self._comment,
                    config={"Labels": {TEMP_LABEL: self.request.job_id}},
                )
            except EngineError as exc:
                if CHANGED_UNDER_COMMIT not in str(exc) or attempt == COMMIT_ATTEMPTS:
                    raise
                log.info(
                    "job %s: a file of %s changed while it was committed; committing again "
                    "(attempt %d of %d)",
                    self.request.job_id, quoted(info.name), attempt + 1, COMMIT_ATTEMPTS,
                )  # fmt: skip
        raise AssertionError("unreachable")

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

    async def _parent_entries(self, info: ContainerInfo, mounts: list[SelectedMount]) -> bytes:
        """Directory entries for the mounts' parents, with the metadata the source shows.

        The first header of a parent's archive is the parent itself; the rest is not read,
        and closing the stream early releases the container.
        """
        wanted = sorted({a for m in mounts for a in ancestors(m.destination)}, key=_path_key)
        entries = []
        for name in wanted:
            head = b""
            member = None
            async with self.engine.archive(info.id, "/" + name) as chunks:
                async for chunk in chunks:
                    head += chunk
                    member = first_member(head)
                    if member is not None or len(head) > PARENT_HEADER_LIMIT:
                        break
            where = f"/{name}, the parent of a mount of container {info.name},"
            if member is None:
                raise PackagingError(f"{where} gave no readable archive header")
            entries.append(parent_entry(name, member, where))
        return b"".join(entries)

    async def _load(
        self,
        info: ContainerInfo,
        base: _Base,
        layer: _Layer,
        measured: tuple[int, str],
        now: datetime,
        own: list[ImageInfo],
    ) -> None:
        """Load the final image: reuse a layer the engine has, else stream it, re-measuring
        (boundedly) when the mounts outgrow the headroom."""
        assert self.pending is not None
        repo_tag = ":".join(self.pending)
        for attempt in range(1, LAYER_ATTEMPTS + 1):
            size, digest = measured if attempt == 1 else await layer.measure()
            declared = declared_size(size)
            chain = [*base.image.layers, digest]
            if any(list(image.layers) == chain for image in own):
                self.progress.stage(Stage.STREAM, "the layer is unchanged")
                config = base.config(info, self.request.job_id, digest, layer.created_by, now)
                try:
                    await self.engine.load_archive(
                        _config_only(base, config, repo_tag, digest, declared)
                    )
                except EngineError as exc:
                    log.warning(
                        "job %s: reusing layer %s failed (%s); sending it",
                        self.request.job_id,
                        digest[:19],
                        exc,
                    )
                else:
                    self.result.layer = "reused"
                    self.result.layer_digest = digest
                    return
            if base.descriptors is None:
                archive = self._archive(info, base, layer, declared, repo_tag, now)
            else:
                archive = self._oci_archive(info, base, layer, declared, digest, repo_tag, now)
            try:
                await self._send(archive)
            except _LayerOutgrown:
                log.warning(
                    "job %s: the mounts changed while copied (attempt %d of %d)",
                    self.request.job_id,
                    attempt,
                    LAYER_ATTEMPTS,
                )
                continue
            self.result.layer = "new"
            return
        raise PackagingError(
            f"the mounts of container {info.name} kept changing while they were copied "
            f"({LAYER_ATTEMPTS} attempts); set the label {LABEL_PREFIX}pause=true to pause "
            "the container during the copy"
        )

    async def _send(self, archive: AsyncGenerator[bytes, None]) -> None:
        """Load ``archive``, produced in a task of ours and handed over through a stream.

        The archive's source reads stay in a task this job owns, so cancellation and
        failures close them here; the upload only forwards chunks. An upload whose producer
        failed is cut off, never ended cleanly, so the engine cannot load a short archive.
        """
        send, receive = anyio.create_memory_object_stream[bytes | None](4)
        failure: list[BaseException] = []

        async def produce() -> None:
            async with send, contextlib.aclosing(archive) as chunks:
                try:
                    async for chunk in chunks:
                        await send.send(chunk)
                    await send.send(None)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return  # the upload stopped reading: the engine's answer says why
                except Exception as exc:
                    failure.append(exc)
                    raise

        async def body() -> AsyncGenerator[bytes, None]:
            async with receive:
                async for chunk in receive:
                    if chunk is None:
                        return
                    yield chunk
            raise PackagingError("the layer stream stopped before its end")

        try:
            async with anyio.create_task_group() as group:
                group.start_soon(produce)
                await self.engine.load_archive(body())
        except BaseExceptionGroup as errors:
            raise (failure[0] if failure else errors.exceptions[0]) from None

    async def _padded_layer(
        self, layer: _Layer, declared: int, hasher: hashlib._Hash
    ) -> AsyncGenerator[bytes, None]:
        """The layer's bytes, hashed, padded with zeros to ``declared``; past it, the mounts
        changed since they were measured."""
        sent = 0

        def on_bytes(count: int) -> None:
            self.result.streamed_bytes += count
            self.progress.streamed(count)

        async with contextlib.aclosing(layer.chunks(on_bytes, final=True)) as chunks:
            async for chunk in chunks:
                sent += len(chunk)
                if sent > declared:
                    raise _LayerOutgrown
                hasher.update(chunk)
                yield chunk
        for zeros in zero_padding(declared - sent):
            hasher.update(zeros)
            yield zeros
        self.result.layer_bytes = declared

    async def _archive(
        self,
        info: ContainerInfo,
        base: _Base,
        layer: _Layer,
        declared: int,
        repo_tag: str,
        now: datetime,
    ) -> AsyncGenerator[bytes, None]:
        """The docker-archive: placeholders, the layer padded to ``declared``, config, manifest."""
        yield placeholders(len(base.image.layers)) + file_header(LAYER_FILE, declared)
        hasher = hashlib.sha256()
        async with contextlib.aclosing(self._padded_layer(layer, declared, hasher)) as body:
            async for chunk in body:
                yield chunk
        diff_id = "sha256:" + hasher.hexdigest()
        self.result.layer_digest = diff_id
        config = base.config(info, self.request.job_id, diff_id, layer.created_by, now)
        yield file_entry("config.json", config)
        yield file_entry("manifest.json", manifest(len(base.image.layers), _canonical(repo_tag)))
        yield END_OF_ARCHIVE

    async def _oci_archive(
        self,
        info: ContainerInfo,
        base: _Base,
        layer: _Layer,
        declared: int,
        digest: str,
        repo_tag: str,
        now: datetime,
    ) -> AsyncGenerator[bytes, None]:
        """The OCI layout for the containerd store: manifest and config first, the layer blob
        (named by the measured digest) last; a stream that differs from it is cut off."""
        assert base.descriptors is not None
        config = base.config(info, self.request.job_id, digest, layer.created_by, now)
        head, blob = oci_head(base.descriptors, config, digest, declared, _canonical(repo_tag))
        yield head + file_header(blob, declared)
        hasher = hashlib.sha256()
        async with contextlib.aclosing(self._padded_layer(layer, declared, hasher)) as body:
            async for chunk in body:
                yield chunk
        if "sha256:" + hasher.hexdigest() != digest:
            raise _LayerOutgrown  # other bytes than measured: not the blob the manifest names
        self.result.layer_digest = digest
        yield END_OF_ARCHIVE

    async def _push(self, names: ImageNames, latest: ImageInfo | None) -> None:
        """Push every tag; for an unchanged image, skip a tag the registry already has (it
        was on this image, which was pushed to this repository before)."""
        credentials = await resolve_credentials(
            names.registry, self.config.registries.auth, self.docker_config_dir
        )
        header = credentials.auth_header(names.registry) if credentials else None
        for tag in names.tags:
            reference = f"{names.repository}:{tag}"
            canonical = f"{names.repository.repository}:{tag}"
            known = _pushed_digest(latest, canonical) if latest is not None else None
            if known is not None:
                self.progress.stage(Stage.PUSH, f"{reference}: the registry has it")
                self.result.digests[reference] = known
                continue
            self.progress.stage(Stage.PUSH, reference)
            self.result.digests[reference] = await self._push_one(names, tag, header)

    async def _push_one(self, names: ImageNames, tag: str, header: str | None) -> str:
        """Push one tag, retrying registry errors with capped exponential backoff."""
        reference = f"{names.repository}:{tag}"
        backoff = Backoff(PUSH_BACKOFF_START, PUSH_BACKOFF_CAP)
        while True:
            try:
                digest = await self.engine.push(
                    names.repository.repository, tag, header, lambda _entry: None
                )
                if digest is None:
                    raise RegistryError(f"push {reference}: the engine reported no digest")
                return digest
            except RegistryError as exc:
                if not exc.retryable or backoff.attempt >= self.config.packaging.push_retries:
                    raise
                delay = backoff.next()
                self.result.push_retries += 1
                log.warning("%s; retry %d in %.1fs", exc, backoff.attempt, delay)
                await anyio.sleep(delay)

    async def _drop_pending(self) -> None:
        """Remove the pending tag; an image that has no final tag goes with it."""
        if self.pending is not None:
            repository, tag = self.pending
            await self.engine.remove_image(f"{repository}:{tag}")
            self.pending = None

    async def _before(self, info: ContainerInfo, options: JobOptions) -> None:
        """The exec-before command, while the source runs; from here on, exec-after is due."""
        if not info.running or not (options.exec_before or options.exec_after):
            if options.exec_before or options.exec_after:
                log.info(
                    "job %s: container %s is not running: its exec commands are not run",
                    self.request.job_id,
                    info.name,
                )
            return
        if options.exec_after:
            after = Command(
                "exec-after", options.exec_after, options.exec_after_source,
                options.exec_timeout, options.exec_timeout_source,
            )  # fmt: skip
            self.after = (info.id, info.name, after)
        if options.exec_before:
            before = Command(
                "exec-before", options.exec_before, options.exec_before_source,
                options.exec_timeout, options.exec_timeout_source,
            )  # fmt: skip
            self.progress.stage(Stage.COMMIT, f"exec-before {before.shown}")
            await run_command(self.engine, info.id, info.name, before, self.request.job_id)

    async def _quiesce(self, info: ContainerInfo, options: JobOptions) -> None:
        """Pause or stop a running source for the copy; stop mode writes its record first."""
        if not info.running or info.paused or options.quiesce == "none":
            return
        self.quiesced_since = time.monotonic()
        if options.quiesce == "pause":
            await self.engine.pause(info.id)
            self.paused = info.id
            return
        self.stop_record = await anyio.to_thread.run_sync(
            write_record, self.config.daemon.state_dir, info.id, info.name, self.request.job_id
        )
        # From here on the source is started again (a no-op if it never stopped) and the
        # record removed, whatever happens.
        self.stopped = (info.id, info.started_at)
        own_stops.begin(info.id, await self.engine.system_time_ns())
        self.progress.stage(Stage.COMMIT, f"stopping {info.name}")
        await self.engine.stop(info.id)

    async def _release(self) -> None:
        """Unpause, or start again, the source this job paused or stopped (and only it)."""
        if self.paused is not None:
            source, self.paused = self.paused, None
            await self.engine.unpause(source)
            self._quiesced("pause")
        if self.stopped is not None:
            (source, run), self.stopped = self.stopped, None
            try:
                await self._start_again(source, run)
            except NotFoundError:
                pass  # removed meanwhile: nothing to start
            except EngineError as exc:
                log.error(
                    "job %s: the source %s, stopped for the copy, could not be started again "
                    "(%s); its stop record stays, and the next kegpackd to start retries",
                    self.request.job_id, source[:12], exc,
                )  # fmt: skip
                raise
            self._quiesced("stop")
            own_stops.end(source, await self.engine.system_time_ns())
            if self.stop_record is not None:
                await anyio.to_thread.run_sync(remove_record, self.stop_record)
                self.stop_record = None

    async def _start_again(self, container_id: str, stopped_run: str) -> None:
        """Start the stopped source, until a new run of it is up: a job cancelled during
        its stop call leaves the engine stopping the old run, which a start alone would
        find still running and leave to die."""
        with anyio.fail_after(CLEANUP_DEADLINE):
            while True:
                await self.engine.start(container_id)
                info = await self.engine.inspect_container(container_id)
                if info.running and info.started_at != stopped_run:
                    return
                await anyio.sleep(RESTART_POLL)

    def _quiesced(self, mode: str) -> None:
        self.result.quiesced_seconds = time.monotonic() - self.quiesced_since
        log.info(
            "job %s: the source was %s for %.2f s",
            self.request.job_id,
            "paused" if mode == "pause" else "stopped",
            self.result.quiesced_seconds,
        )

    async def _run_after(self) -> None:
        """The exec-after command, once, when the source runs again."""
        if self.after is not None:
            container_id, name, after, self.after = *self.after, None
            await run_command(self.engine, container_id, name, after, self.request.job_id)

    async def settle_source(self) -> None:
        """Whatever the outcome: the source running again, then exec-after if due; each
        bounded, each failure recorded."""
        with anyio.move_on_after(CLEANUP_DEADLINE) as deadline:
            await self._attempt("start or unpause the source", self._release())
        if deadline.cancelled_caught:
            self._failed(f"start or unpause the source: ran out of its {CLEANUP_DEADLINE:.0f} s")
        try:
            await self._run_after()  # bounded by its own time limit
        except (PackagingError, EngineError) as exc:
            self._failed(str(exc))

    def _failed(self, message: str) -> None:
        self.result.cleanup_failures.append(message)
        log.warning("job %s: %s", self.request.job_id, message)

    async def cleanup(self) -> None:
        """Undo everything temporary; each step runs even when an earlier one failed."""
        await self._attempt("drop the pending tag", self._drop_pending())
        if self.final_image is not None and not self.result.references and not self.existing:
            await self._attempt(
                f"remove image {self.final_image}", self.engine.remove_image(self.final_image)
            )
        for image in reversed(self.images):
            await self._attempt(f"remove image {image}", self.engine.remove_image(image))

    async def _attempt(self, what: str, step: Awaitable[object]) -> None:
        try:
            await step
        except EngineError as exc:
            self.result.cleanup_failures.append(f"{what}: {exc}")
            log.warning("job %s: cleanup could not %s: %s", self.request.job_id, what, exc)


@dataclass(frozen=True)
class _Base:
    """The committed source: the layers the final image starts from."""

    image: ImageInfo
    history: list[Mapping[str, Any]]
    # The containerd store's layer descriptors of the commit (None on a graph-driver store).
    descriptors: list[dict[str, Any]] | None = None
    # Copied mounts that are no volume of the source's image (see final_config).
    packaged: frozenset[str] = frozenset()
    # The engine forced the mounts' owners (Podman): the image's labels say so.
    forced_owners: bool = False

    def config(
        self, info: ContainerInfo, job_id: str, diff_id: str, created_by: str, now: datetime
    ) -> bytes:
        runtime = final_config(info, job_id, now, self.packaged)
        if self.forced_owners:
            runtime["Labels"][FORCED_OWNERS_LABEL] = "forced-by-engine"
        runtime = {k: v for k, v in runtime.items() if v is not None}
        return image_config(
            architecture=self.image.architecture,
            os_name=self.image.os,
            variant=self.image.variant,
            base_layers=self.image.layers,
            # The commit's own entry says "temporary": not what the final image is.
            history=[
                {k: v for k, v in item.items() if k != "Comment"}
                if parse_temporary_comment(str(item.get("Comment", ""))) is not None
                else item
                for item in self.history
            ],
            layer_digest=diff_id,
            container_config=runtime,
            comment=final_comment(job_id, info.name),
            created_by=created_by,
            now=now,
        )


class _Layer:
    """The mounts' layer, as a stream that can be read more than once (measured, then sent)."""

    def __init__(
        self,
        job: _Job,
        info: ContainerInfo,
        mounts: list[SelectedMount],
        rules: list[ExcludeRules],
        parents: bytes,
    ) -> None:
        self.engine = job.engine
        self.result = job.result
        self.info = info
        self.mounts = mounts
        self.rules = rules
        self.parents = parents
        self.created_by = "kegpackd: copied " + ", ".join(m.destination for m in mounts)

    async def measure(self) -> tuple[int, str]:
        """Size and digest of the layer as the declared-size entry would carry it."""
        size = 0
        digest = hashlib.sha256()
        async with contextlib.aclosing(self.chunks(lambda _count: None, final=False)) as chunks:
            async for chunk in chunks:
                size += len(chunk)
                digest.update(chunk)
        for zeros in zero_padding(declared_size(size) - size):
            digest.update(zeros)
        return size, "sha256:" + digest.hexdigest()

    async def chunks(
        self, on_bytes: Callable[[int], None], *, final: bool
    ) -> AsyncGenerator[bytes, None]:
        """Parents, then each mount renamed into place behind its opaque whiteout, then the end."""
        yield self.parents
        entries = excluded = 0
        for mount, rules in zip(self.mounts, self.rules, strict=True):
            scanner = TarScanner(
                mount.root_name,
                rules if rules else None,
                layer_prefix=layer_prefix(mount.destination),
            )
            async with self.engine.archive(self.info.id, mount.destination) as stream:
                async for chunk in stream:
                    on_bytes(len(chunk))
                    out = await _scan(scanner, chunk, threaded=bool(rules))
                    if out:
                        yield out
            tail = scanner.finish()
            if tail:
                yield tail
            if scanner.entries == 0:
                raise PackagingError(f"the archive of {mount.destination} was empty")
            entries += scanner.entries
            excluded += scanner.excluded
        if final:
            self.result.entries, self.result.excluded = entries, excluded
        yield END_OF_ARCHIVE


async def _scan(scanner: TarScanner, chunk: bytes, *, threaded: bool) -> bytes:
    """One chunk through the scanner; with exclude rules (a container owner's patterns, whose
    matching is linear but can still cost milliseconds per entry) in a worker thread, so the
    event loop (``/healthz``, the watchdog, signals) keeps running meanwhile."""
    if threaded:
        return await anyio.to_thread.run_sync(scanner.feed, chunk)
    return scanner.feed(chunk)


async def _config_only(
    base: _Base, config: bytes, repo_tag: str, digest: str, size: int
) -> AsyncGenerator[bytes, None]:
    """An archive whose every layer the engine has: placeholders, config, manifest (or, on
    the containerd store, an OCI layout without the layer blobs, which the store holds)."""
    if base.descriptors is not None:
        head, _blob = oci_head(base.descriptors, config, digest, size, _canonical(repo_tag))
        yield head + END_OF_ARCHIVE
        return
    count = len(base.image.layers)
    yield (
        placeholders(count)
        + file_header(LAYER_FILE, 0)
        + file_entry("config.json", config)
        + file_entry("manifest.json", manifest(count, _canonical(repo_tag)))
        + END_OF_ARCHIVE
    )


# Provenance that differs on every job: not a change of the image.
PROVENANCE_LABELS = ("kegpack.job", "kegpack.source.started_at", "org.opencontainers.image.created")


def _latest_in(own: list[ImageInfo], repository: str) -> ImageInfo | None:
    """The newest of kegpackd's images of a container (``own``) with a tag in ``repository``."""
    wanted = repository_of(repository)
    mine = [i for i in own if any(repository_of(t) == wanted for t in i.repo_tags)]
    return max(mine, key=created_ns, default=None)


def _same_image(image: ImageInfo, base: _Base, digest: str, info: ContainerInfo) -> bool:
    """Same layers, and the same runtime config but for the provenance labels."""
    if list(image.layers) != [*base.image.layers, digest]:
        return False
    wanted = final_config(info, "", datetime.now(UTC), base.packaged)
    for key in COPIED_CONFIG_KEYS:
        if (image.config.get(key) or None) != (wanted.get(key) or None):
            return False
    have = dict(image.config.get("Labels") or {})
    for label in PROVENANCE_LABELS:
        have.pop(label, None)
        wanted["Labels"].pop(label, None)
    return bool(have == wanted["Labels"])


def _pushed_digest(image: ImageInfo, reference: str) -> str | None:
    """The digest ``reference`` was pushed with, when it already named ``image``."""
    if reference not in {_canonical(t) for t in image.repo_tags if repository_of(t)}:
        return None
    repository = repository_of(reference)
    for entry in image.repo_digests:
        name, _, digest = entry.partition("@")
        if repository_of(name) == repository:
            return digest
    return None


def _canonical(repo_tag: str) -> str:
    """``web:1`` → ``docker.io/library/web:1``: as ImageNames spells references, and as
    the containerd store names images (in full, ``docker.io/`` for no registry)."""
    reference = parse_reference(repo_tag, "image tag")
    return f"{reference.repository}:{reference.tag}"


def _path_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


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
    engine: EnginePort,
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
        with anyio.CancelScope(shield=True):
            await job.settle_source()
        if job.images or job.pending is not None:
            job.progress.stage(Stage.CLEANUP)
        started = time.monotonic()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLEANUP_DEADLINE) as deadline:
                await job.cleanup()
            if deadline.cancelled_caught:
                job.result.cleanup_failures.append(
                    f"cleanup ran out of its {CLEANUP_DEADLINE:.0f} s"
                )
        job.result.stage_seconds["cleanup"] = time.monotonic() - started
