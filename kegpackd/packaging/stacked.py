"""Incremental packaging: the mounts' layers below the container's own, and only the change
sent on a repackage.

The image is the source image's layers, the mounts' layers (one full layer, then up to
``max_delta_layers`` deltas), then the container's own layer without what the mounts hide
(:mod:`kegpackd.packaging.ownlayer`). A layer the engine already has on the same chain of
parents travels as a zero-byte placeholder (or, on the containerd store, is left out of
the OCI layout): a write in the container outside its mounts sends only the top layer,
and a change in the mounts only the delta (:mod:`kegpackd.packaging.delta`) and the top
layer. The previous image's mount layers are known from its index
(:mod:`kegpackd.packaging.mountindex`); without a usable one the mounts' layer is full.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from datetime import datetime
from pathlib import Path

from kegpackd.archive.layer import (
    zero_padding,
)
from kegpackd.engine.models import ContainerInfo, ImageInfo
from kegpackd.engine.port import EnginePort
from kegpackd.errors import PackagingError
from kegpackd.labels import LABEL_PAUSE
from kegpackd.packaging.base import Base
from kegpackd.packaging.delta import (
    DELTA_FRACTION,
    Delta,
    DeltaPlan,
    MountsChanged,
    Scan,
    hides_lower,
    plan_delta,
)
from kegpackd.packaging.jobs import JobResult, LayerKind, MountsLayer, Progress
from kegpackd.packaging.layersource import Layer
from kegpackd.packaging.load import LAYER_ATTEMPTS, send_archive
from kegpackd.packaging.mountindex import MountIndex, forget_others, load_index, save_index
from kegpackd.packaging.ownlayer import OwnLayer
from kegpackd.packaging.reuse import latest_in
from kegpackd.packaging.stackedarchive import Outgrown, Part, StackedArchive

log = logging.getLogger(__name__)


class Stacked:
    """One job's mount layers and load in the incremental layout."""

    def __init__(
        self,
        engine: EnginePort,
        state_dir: Path,
        job_id: str,
        progress: Progress,
        result: JobResult,
        info: ContainerInfo,
        base: Base,
        layer: Layer,
        own_layer: OwnLayer,
        *,
        max_deltas: int,
        fetch_limit: int,
    ) -> None:
        self.engine = engine
        self.state_dir = state_dir
        self.job_id = job_id
        self.progress = progress
        self.result = result
        self.info = info
        self.base = base
        self.layer = layer
        self.own_layer = own_layer
        self.max_deltas = max_deltas
        self.fetch_limit = fetch_limit
        self.source_layers = list(base.source_layers)
        self.previous: MountIndex | None = None
        self.scan: Scan | None = None
        self.plan: DeltaPlan | None = None
        self.kind = MountsLayer.FULL
        self.measured = (0, "")
        self.mount_layers: list[tuple[str, int]] = []
        self.index: MountIndex | None = None

    # --- the measure stage -----------------------------------------------------------------

    async def prepare(self, own: list[ImageInfo], repository: str) -> None:
        """The previous image's index (if usable), then one read of the mounts."""
        latest = latest_in(own, repository)
        if latest is not None:
            index = await load_index(self.state_dir, self.info.name, latest.layers)
            self.previous = self._usable(index)
        await self.own_layer.measure()
        await self._scan()

    def _usable(self, index: MountIndex | None) -> MountIndex | None:
        if index is None:
            return None
        why = ""
        if list(index.layers[: index.source_layers]) != self.source_layers:
            why = "the container's image changed"
        elif tuple(index.mounts) != tuple(self.result.copied):
            why = "the packaged mounts changed"
        elif index.deltas >= self.max_deltas:
            why = f"{index.deltas} delta layers are stacked already (max_delta_layers)"
        if why:
            log.info("job %s: a full mounts layer: %s", self.job_id, why)
            return None
        return index

    async def _scan(self) -> None:
        scan = Scan(self.previous)
        self.layer.observe = scan.feed
        try:
            self.measured = await self.layer.measure()
        finally:
            self.layer.observe = None
        scan.finish()
        self.scan = scan
        self.kind, self.plan = MountsLayer.FULL, None
        full = self.layer.declared(self.measured[0])
        if self.previous is None:
            return
        plan = plan_delta(self.previous, scan.entries)
        if not plan.changed and not plan.deleted:
            self.kind = MountsLayer.NONE
        elif plan.size > DELTA_FRACTION * full:
            log.info(
                "job %s: the change (%d bytes) is over %d%% of the mounts: a full layer",
                self.job_id, plan.size, round(DELTA_FRACTION * 100),
            )  # fmt: skip
        elif not hides_lower(plan):
            self.kind, self.plan = MountsLayer.DELTA, plan

    def layers_if_unchanged(self) -> list[str] | None:
        """The final image's layers when no new mounts layer is due (skip_unchanged)."""
        if self.kind == MountsLayer.DELTA:
            return None
        if self.kind == MountsLayer.NONE:
            assert self.previous is not None
            mounts = [d for d, _ in self.previous.mount_layers]
        else:
            mounts = [self.measured[1]]
        return [*self.source_layers, *mounts, self.own_layer.digest]

    # --- the stream stage ------------------------------------------------------------------

    async def load(self, now: datetime, own: list[ImageInfo], repo_tag: str) -> None:
        """Load the final image; mounts that change while read are read again (boundedly)."""
        for attempt in range(1, LAYER_ATTEMPTS + 1):
            if attempt > 1:
                await self._scan()
            try:
                await self._load_once(now, own, repo_tag)
            except (MountsChanged, Outgrown) as exc:
                log.warning(
                    "job %s: the mounts changed while copied (attempt %d of %d): %s",
                    self.job_id, attempt, LAYER_ATTEMPTS, exc,
                )  # fmt: skip
                continue
            return
        raise PackagingError(
            f"the mounts of container {self.info.name} kept changing while they were copied "
            f"({LAYER_ATTEMPTS} attempts); set the label {LABEL_PAUSE}=true to pause "
            "the container during the copy"
        )

    async def _load_once(self, now: datetime, own: list[ImageInfo], repo_tag: str) -> None:
        oci = self.base.descriptors is not None
        size, digest = self.measured
        full = self.layer.declared(size)
        kept_index = True
        new: Part | None = None
        delta: Delta | None = None
        if self.kind == MountsLayer.NONE:
            assert self.previous is not None
            mounts = list(self.previous.mount_layers)
        elif self.kind == MountsLayer.DELTA:
            assert self.previous is not None
            assert self.plan is not None
            delta = Delta(self.engine, self.info, self.plan, self.layer, self.fetch_limit)
            delta_digest = (await delta.measure())[1] if oci else ""
            new = Part(delta_digest, self.plan.size, lambda: delta.chunks(self._streamed))
            mounts = [*self.previous.mount_layers, (delta_digest, self.plan.size)]
        else:
            new = Part(digest, full, lambda: self._full_chunks(full))
            mounts = [(digest, full)]
        chain = [*self.source_layers, *(d for d, _ in mounts)]
        parts = [Part(d, 0) for d in self.source_layers]
        parts += [Part(d, s) for d, s in mounts]
        if new is not None and not _known(own, chain):
            parts[-1] = new
        else:
            new = None
        top = Part(self.own_layer.digest, self.own_layer.size, self.own_layer.chunks)
        if not _known(own, [*chain, top.digest]) or new is not None:
            parts.append(top)
        else:
            parts.append(Part(top.digest, top.size))
        created_by = self._created_by(len(mounts))
        archive = StackedArchive(self.base, self.info, self.job_id, self.source_layers)
        if oci:
            await send_archive(self.engine, archive.oci(parts, created_by, now, repo_tag))
        else:
            await send_archive(self.engine, archive.docker(parts, created_by, now, repo_tag))
            if new is not None:
                mounts[-1] = (parts[-2].digest, mounts[-1][1])
                kept_index = self.kind != MountsLayer.FULL or parts[-2].digest == digest
        self.mount_layers = mounts
        self._report(new is not None, delta, full)
        if kept_index and self.scan is not None:
            layers = [*self.source_layers, *(d for d, _ in mounts), self.own_layer.digest]
            self.index = MountIndex(
                layers=tuple(layers),
                source_layers=len(self.source_layers),
                mount_layers=tuple(mounts),
                mounts=tuple(self.result.copied),
                full_bytes=full,
                entries=self.scan.index_entries(),
            )
        else:
            log.warning(
                "job %s: the mounts changed between their measure and their copy; the next "
                "package of %s is a full one", self.job_id, self.info.name,
            )  # fmt: skip

    def _created_by(self, count: int) -> list[str]:
        mounts = ", ".join(self.result.copied)
        return [f"kegpackd: copied {mounts}"] + [f"kegpackd: changes to {mounts}"] * (count - 1)

    def _report(self, sent: bool, delta: Delta | None, full: int) -> None:
        result = self.result
        result.mounts_layer = str(self.kind)
        result.mounts_full_bytes = full
        result.delta_layers = len(self.mount_layers) - 1
        result.delta_source = delta.source if delta is not None else ""
        made = self.kind != MountsLayer.NONE
        result.mounts_layer_bytes = self.mount_layers[-1][1] if made else 0
        result.layer = LayerKind.NEW if sent else LayerKind.REUSED
        result.layer_digest = self.mount_layers[-1][0]
        result.layer_bytes = self.mount_layers[-1][1] if sent else 0
        if self.kind == MountsLayer.DELTA and self.plan is not None:
            result.entries = len(self.plan.include)

    def _streamed(self, count: int) -> None:
        self.result.streamed_bytes += count
        self.progress.streamed(count)

    async def _full_chunks(self, declared: int) -> AsyncGenerator[bytes, None]:
        sent = 0
        async with contextlib.aclosing(self.layer.chunks(self._streamed, final=True)) as chunks:
            async for chunk in chunks:
                sent += len(chunk)
                if sent > declared:
                    raise Outgrown("more bytes than measured")
                yield chunk
        for zeros in zero_padding(declared - sent):
            yield zeros

    # --- after the job ---------------------------------------------------------------------

    async def keep_index(self, images: list[ImageInfo]) -> list[str]:
        """Save the new image's index and drop those of the container's images now gone;
        failures are returned (the image stands; the next package is then full)."""
        failures = []
        if self.index is not None:
            failure = await save_index(self.state_dir, self.info.name, self.index)
            if failure is not None:
                failures.append(failure)
        keep: list[tuple[str, ...] | list[str]] = [list(i.layers) for i in images]
        if self.index is not None:
            keep.append(self.index.layers)
        failure = await forget_others(self.state_dir, self.info.name, keep)
        if failure is not None:
            failures.append(failure)
        return failures


def _known(own: list[ImageInfo], chain: list[str]) -> bool:
    """One of kegpackd's images of the container has this chain of layers at its bottom:
    the engine has the chain's top layer on these parents."""
    return any(list(image.layers[: len(chain)]) == chain for image in own)
