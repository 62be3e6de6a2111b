"""One packaging job: snapshot a container with its mounts into an image, tag it, push it.

Stages: commit → measure → stream → finalize → push → prune, then cleanup in every outcome.

The source is committed, which gives its image's layers and its writable layer. The
mounts then become one layer of their own, loaded through ``POST /images/load`` on top
of those: each mount's archive renamed into place, behind an opaque whiteout that hides
what the image had under the mount point, as the running container's mount hides it.
The engine sees the same layer bytes on the same parent as the same layer, so an
unchanged mount is found by its digest and not sent again.

This module is the stage list; each stage's work has a module of its own: ``checks``
(what is allowed), ``quiescing`` (the source around the copy), ``base`` (the commit and
the image's config), ``layersource`` (the mounts' layer), ``reuse`` (what need not be
made again), ``load`` (the archive and its upload), ``push``, and ``undo`` (cleanup).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import UTC, datetime
from pathlib import Path

import anyio

from kegpackd.config import Config
from kegpackd.engine.models import ContainerInfo, ImageInfo
from kegpackd.engine.naming import ImageNames
from kegpackd.engine.port import EnginePort
from kegpackd.errors import EngineError, PackagingError
from kegpackd.packaging.base import Base, commit
from kegpackd.packaging.checks import (
    check_existing_tags,
    check_request,
    forced_owners_warning,
)
from kegpackd.packaging.jobs import (
    JobRequest,
    JobResult,
    LayerKind,
    MountsLayer,
    NoProgress,
    Progress,
    Stage,
)
from kegpackd.packaging.layersource import Layer, exclude_rules, parent_entries
from kegpackd.packaging.load import Load
from kegpackd.packaging.markers import pending_reference
from kegpackd.packaging.mounts import packaged_destinations, select_mounts
from kegpackd.packaging.options import JobOptions
from kegpackd.packaging.ownlayer import OpaqueAboveMount, OwnLayer
from kegpackd.packaging.push import Push
from kegpackd.packaging.quiescing import Quiescing, check_quiesce
from kegpackd.packaging.retention import own_images, prune
from kegpackd.packaging.reuse import latest_in, same_image
from kegpackd.packaging.stacked import Stacked
from kegpackd.packaging.undo import CLEANUP_DEADLINE, UndoLog
from kegpackd.shown import quoted

log = logging.getLogger(__name__)


class _Job:
    """One job's stages in order; what each stage leaves behind is in ``result`` (what
    the caller sees), ``source`` (what to release) and ``undo`` (what to remove)."""

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
        job_id = request.job_id
        self.source = Quiescing(engine, config.daemon.state_dir, job_id, progress, self.result)
        self.undo = UndoLog(engine, job_id, self.result)

    def _timed(self, stage: Stage) -> _StageTimer:
        self.progress.stage(stage)
        return _StageTimer(self.result.stage_seconds, stage)

    async def run(self) -> JobResult:
        now = datetime.now(UTC)
        job_id = self.request.job_id
        info = await self.engine.inspect_container(self.request.container)
        self.result.container_id, self.result.container_name = info.id, info.name
        options, names = check_request(info, self.config, self.request.overrides, now)
        await check_existing_tags(self.engine, names, info, options)
        mounts = await select_mounts(self.engine, info, options)
        warning = await forced_owners_warning(self.engine, info, mounts, options)
        if warning is not None:
            self.result.forced_owners = True
            self.result.warnings.append(warning)
            log.warning("%s: %s", quoted(info.name), warning)
        self.result.copied = sorted(packaged_destinations(info, mounts))

        check_quiesce(info, options)
        self.result.quiesce = options.quiesce
        with self._timed(Stage.COMMIT):
            await self.source.before(info, options)
            await self.source.quiesce(info, options)
            base = await commit(self.engine, info, job_id, self.undo, self.result.copied)
            base = dataclasses.replace(base, forced_owners=self.result.forced_owners)
        # One listing serves the skip_unchanged check and the reuse check of every attempt.
        own = await own_images(self.engine, info.name)
        repository = names.repository.repository
        with self._timed(Stage.MEASURE):
            rules = [await exclude_rules(self.engine, info, m, options) for m in mounts]
            parents = await parent_entries(self.engine, info, mounts)
            layer = Layer(self.engine, self.result, info, mounts, rules, parents)
            stacked = await self._stacked(info, options, base, layer, own, repository)
            if stacked is None:
                measured = await layer.measure()
                layers: list[str] | None = [*base.image.layers, measured[1]]
            else:
                measured = stacked.measured
                layers = stacked.layers_if_unchanged()
        latest = None
        if self.config.packaging.skip_unchanged:
            latest = latest_in(own, repository)
        with self._timed(Stage.STREAM):
            if latest is not None and layers and same_image(latest, layers, base, info):
                self._reuse(latest, measured[1])
                if stacked is not None:
                    self.result.mounts_layer = MountsLayer.NONE
            else:
                latest = None
                self.undo.pending = pending_reference(job_id)
                pending = ":".join(self.undo.pending)
                if stacked is not None:
                    await stacked.load(now, own, pending)
                else:
                    load = Load(self.engine, job_id, self.progress, self.result)
                    await load.run(info, base, layer, measured, now, own, pending)
            await self.source.release()
            await self.source.run_after()
        with self._timed(Stage.FINALIZE):
            await self._finalize(info, names, options)
        if options.push:
            with self._timed(Stage.PUSH):
                push = Push(
                    self.engine, self.config, self.docker_config_dir, self.progress, self.result
                )
                await push.run(names, latest)
        if self.config.retention.enabled:
            with self._timed(Stage.PRUNE):
                await self._prune(info, names)
        if stacked is not None:
            images = await own_images(self.engine, info.name)
            for failure in await stacked.keep_index(images):
                self.result.cleanup_failures.append(failure)
                log.warning("job %s: %s", job_id, failure)
        return self.result

    async def _stacked(
        self,
        info: ContainerInfo,
        options: JobOptions,
        base: Base,
        layer: Layer,
        own: list[ImageInfo],
        repository: str,
    ) -> Stacked | None:
        """The incremental layout, measured; None for the classic one (incremental off,
        Podman, or a container layer that would hide the mounts' layers below it)."""
        if not options.incremental or await self.engine.product() == "podman":
            return None
        packaging = self.config.packaging
        stacked = Stacked(
            self.engine,
            self.config.daemon.state_dir,
            self.request.job_id,
            self.progress,
            self.result,
            info,
            base,
            layer,
            OwnLayer(self.engine, base, base.image.id, self.result.copied),
            max_deltas=packaging.max_delta_layers,
            fetch_limit=packaging.delta_fetch_limit,
        )
        try:
            await stacked.prepare(own, repository)
        except OpaqueAboveMount as exc:
            log.warning(
                "job %s: %s makes %s opaque, above a mount: the mounts' layer goes on top, "
                "in full", self.request.job_id, info.name, exc,
            )  # fmt: skip
            return None
        return stacked

    def _reuse(self, latest: ImageInfo, digest: str) -> None:
        """skip_unchanged: the latest image is this one; it gets the new tags, nothing else."""
        self.progress.stage(Stage.STREAM, f"unchanged: same as {latest.id[:19]}")
        self.undo.final_image = latest.id
        self.undo.existing = True
        self.result.unchanged = True
        self.result.layer, self.result.layer_digest = LayerKind.REUSED, digest

    async def _finalize(self, info: ContainerInfo, names: ImageNames, options: JobOptions) -> None:
        """The final tags on the loaded (or reused) image, then the pending tag dropped."""
        if self.undo.pending is not None:
            repository, tag = self.undo.pending
            self.undo.final_image = (await self.engine.inspect_image(f"{repository}:{tag}")).id
        final_image = self.undo.final_image
        assert final_image is not None
        self.result.image_id = final_image
        # Again: a tag may have been put on another image while this job ran.
        await check_existing_tags(self.engine, names, info, options)
        for tag in names.tags:
            await self.engine.tag(final_image, names.repository.repository, tag)
            self.result.references.append(f"{names.repository}:{tag}")
        await self.undo.drop_pending()

    async def _prune(self, info: ContainerInfo, names: ImageNames) -> None:
        """Retention after a successful job; a failure here is logged, never the job's."""
        try:
            report = await prune(
                self.engine,
                self.config.retention,
                time.time_ns(),
                source_name=info.name,
                repository=names.repository.repository,
                just_made=self.undo.final_image,
            )
        except EngineError as exc:
            self.result.cleanup_failures.append(f"retention: {exc}")
            log.warning("job %s: retention failed: %s", self.request.job_id, exc)
            return
        self.result.pruned = [c.id for c in report.removed]
        self.result.pruned_bytes = report.freed_bytes
        self.result.cleanup_failures += report.failures

    async def settle_source(self) -> None:
        """Whatever the outcome: the source running again, then exec-after if due; each
        bounded, each failure recorded."""
        with anyio.move_on_after(CLEANUP_DEADLINE) as deadline:
            await self.undo.attempt("start or unpause the source", self.source.release())
        if deadline.cancelled_caught:
            self.undo.failed(
                f"start or unpause the source: ran out of its {CLEANUP_DEADLINE:.0f} s"
            )
        try:
            await self.source.run_after()  # bounded by its own time limit
        except (PackagingError, EngineError) as exc:
            self.undo.failed(str(exc))


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
        if job.undo.images or job.undo.pending is not None:
            job.progress.stage(Stage.CLEANUP)
        started = time.monotonic()
        with anyio.CancelScope(shield=True):
            with anyio.move_on_after(CLEANUP_DEADLINE) as deadline:
                await job.undo.cleanup()
            if deadline.cancelled_caught:
                job.result.cleanup_failures.append(
                    f"cleanup ran out of its {CLEANUP_DEADLINE:.0f} s"
                )
        job.result.stage_seconds["cleanup"] = time.monotonic() - started
