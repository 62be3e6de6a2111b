"""The committed source: the layers the final image starts from, and its config.

Apart from the stages because what the image copies of the source (its runtime config,
labels, history) changes for other reasons than how the bytes get to the engine; the
reuse check compares against the same ``final_config``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kegpackd.archive.layer import SmallFiles, image_config, layer_descriptors
from kegpackd.engine.models import ContainerInfo, ImageInfo
from kegpackd.engine.port import EnginePort
from kegpackd.errors import EngineError, NotFoundError, PackagingError
from kegpackd.labels import (
    COMPOSE_LABEL_PREFIX,
    FORCED_OWNERS_LABEL,
    JOB_LABEL,
    LABEL_PREFIX,
    SOURCE_ID_LABEL,
    SOURCE_IMAGE_LABEL,
    SOURCE_NAME_LABEL,
    SOURCE_STARTED_AT_LABEL,
    TEMP_LABEL,
)
from kegpackd.packaging.markers import (
    final_comment,
    parse_temporary_comment,
    temporary_comment,
)
from kegpackd.packaging.undo import UndoLog

log = logging.getLogger(__name__)

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
            SOURCE_ID_LABEL: info.id,
            SOURCE_NAME_LABEL: info.name,
            SOURCE_IMAGE_LABEL: info.image,
            SOURCE_STARTED_AT_LABEL: info.started_at,
            JOB_LABEL: job_id,
            "org.opencontainers.image.created": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
    )
    config["Labels"] = labels
    return config


@dataclass(frozen=True)
class Base:
    """The committed source: the layers the final image starts from."""

    image: ImageInfo
    history: list[Mapping[str, Any]]
    # The containerd store's layer descriptors of the commit (None on a graph-driver store).
    descriptors: list[dict[str, Any]] | None = None
    # Copied mounts that are no volume of the source's image (see final_config).
    packaged: frozenset[str] = frozenset()
    # The engine forced the mounts' owners (Podman): the image's labels say so.
    forced_owners: bool = False
    # The commit added a layer of the container's own (the containerd store adds none for
    # a container that changed nothing).
    own_layer: bool = True

    @property
    def source_layers(self) -> tuple[str, ...]:
        """The layers below the container's own."""
        layers = tuple(self.image.layers)
        return layers[:-1] if self.own_layer else layers

    def config(
        self,
        info: ContainerInfo,
        job_id: str,
        diff_id: str,
        created_by: str,
        now: datetime,
        below_top: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        """The final image's config; with ``below_top`` (the mounts' layers and what made
        them), those go below the container's own layer, which ``diff_id`` then names."""
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
            below_top=below_top,
            top_is_own=self.own_layer,
        )


# A commit whose diff met a file growing under it (see commit_once_settled).
COMMIT_ATTEMPTS = 3
CHANGED_UNDER_COMMIT = "write too long"


async def commit_once_settled(engine: EnginePort, info: ContainerInfo, job_id: str) -> str:
    """The commit, tried again when a file of the running source grew while the engine
    diffed its writable layer (the containerd store then fails with "write too long",
    seen on dockerd 26.1 with Redis writing): a later diff sees a later state. Such a
    failed commit leaves no image."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return await engine.commit(
                info.id, comment=temporary_comment(job_id), config={"Labels": {TEMP_LABEL: job_id}}
            )
        except EngineError as exc:
            if CHANGED_UNDER_COMMIT not in str(exc) or attempt == COMMIT_ATTEMPTS:
                raise
            log.info(
                "job %s: a file of %s changed while it was committed; committing again "
                "(attempt %d of %d)",
                job_id, info.name, attempt + 1, COMMIT_ATTEMPTS,
            )  # fmt: skip
    raise AssertionError("unreachable")


async def commit(
    engine: EnginePort, info: ContainerInfo, job_id: str, undo: UndoLog, copied: list[str]
) -> Base:
    """Commit the source: its image's layers and its writable layer, the new layer's base.

    The source's image (one inspect) tells whether the commit added a layer of its own and
    which of the ``copied`` mount destinations it declares no volume of."""
    committed = await commit_once_settled(engine, info, job_id)
    undo.made(committed)
    image = await engine.inspect_image(committed)
    history = await engine.image_history(committed)
    source: ImageInfo | None = None
    with contextlib.suppress(NotFoundError):
        source = await engine.inspect_image(info.image_id)
    own_layer = source is None or list(image.layers) != list(source.layers)
    declared: Mapping[str, Any] = (source.config.get("Volumes") or {}) if source else {}
    packaged = frozenset(d for d in copied if d not in declared)
    if await engine.image_store() != "containerd":
        return Base(image, history, packaged=packaged, own_layer=own_layer)
    exported = SmallFiles()
    async with engine.export(committed) as chunks:
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
    return Base(image, history, descriptors, packaged=packaged, own_layer=own_layer)
