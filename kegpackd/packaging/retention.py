"""Retention: remove the older local images kegpackd made of one container, safely.

A daemon that packages a container on every start makes a new image each time; without
this, the host's disk fills within weeks. The rule (``select``) is pure, so its cases test
without an engine; ``prune`` applies it the careful way: only kegpackd's own final images
(by their comment, not by a label a child image would inherit), never one that a container
uses or the one just made, and by untagging first, so that an image someone also tagged
elsewhere keeps that name and stays.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from kegpackd.config import RetentionConfig
from kegpackd.engine.models import ImageInfo, parse_engine_time
from kegpackd.engine.naming import parse_reference
from kegpackd.engine.port import EnginePort
from kegpackd.errors import EngineError, InvalidValueError, NotFoundError
from kegpackd.labels import SOURCE_NAME_LABEL
from kegpackd.packaging.markers import parse_final_comment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Candidate:
    """One of kegpackd's images of a source, with its tags in the repository being pruned."""

    id: str
    created_ns: int
    tags: tuple[str, ...]
    layers: tuple[str, ...] = ()


@dataclass
class PruneReport:
    removed: list[Candidate] = field(default_factory=list)
    freed_bytes: int = 0
    # Images the rule picked that stayed, and why (in use, tagged elsewhere, refused).
    kept: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def select(
    candidates: Iterable[Candidate],
    retention: RetentionConfig,
    now_ns: int,
    protected: set[str],
) -> list[Candidate]:
    """The candidates to remove, oldest last.

    Newest first, the first ``keep`` stay (at least the newest one, whatever the config).
    Beyond them, an image goes when it is older than ``max_age``, or, with no ``max_age``,
    always. A protected image (in use, just made) stays and still takes its place in line.
    """
    if not retention.enabled:
        return []
    ordered = sorted(candidates, key=lambda c: (c.created_ns, c.id), reverse=True)
    keep = retention.keep if retention.keep is not None else 1
    doomed = []
    for index, candidate in enumerate(ordered):
        if index < keep or candidate.id in protected:
            continue
        age = (now_ns - candidate.created_ns) / 1e9
        if retention.max_age is None or age > retention.max_age:
            doomed.append(candidate)
    return doomed


def repository_of(reference: str) -> str:
    """The canonical repository of a name or tag: ``web:1`` → ``docker.io/library/web``,
    ``host:5000/apps/web:tag`` → itself without the tag; "" for ``<none>:<none>``."""
    try:
        return parse_reference(reference, "image tag").repository
    except InvalidValueError:
        return ""


def created_ns(image: ImageInfo) -> int:
    return parse_engine_time(image.created) if image.created else 0


async def own_images(engine: EnginePort, source_name: str | None) -> list[ImageInfo]:
    """kegpackd's final images (by comment), of one source name or of all."""
    label = SOURCE_NAME_LABEL if source_name is None else f"{SOURCE_NAME_LABEL}={source_name}"
    found = []
    for entry in await engine.list_images({"label": [label]}):
        try:
            image = await engine.inspect_image(entry.id)
        except NotFoundError:
            continue
        if parse_final_comment(image.comment) is not None:
            found.append(image)
    return found


def _candidates(images: Sequence[ImageInfo], repository: str) -> list[Candidate]:
    candidates = []
    for image in images:
        tags = tuple(t for t in image.repo_tags if repository_of(t) == repository)
        if tags:
            candidates.append(Candidate(image.id, created_ns(image), tags, image.layers))
    return candidates


async def _own_layer_sizes(engine: EnginePort, candidate: Candidate) -> dict[str, int]:
    """Sizes of the layers kegpackd added (the container's changes, the mounts), by diff id.

    By construction the newest history entry is the mounts' layer and the one below it the
    commit's. Read before removal, and only for the images that go.
    """
    try:
        history = await engine.image_history(candidate.id)
    except NotFoundError:
        return {}
    top = reversed(candidate.layers[-2:])
    sizes = zip(top, history[:2], strict=False)  # fewer history entries: fewer sizes known
    return {layer: int(entry.get("Size") or 0) for layer, entry in sizes}


async def _images_in_use(engine: EnginePort) -> set[str]:
    return {c.image_id for c in await engine.list_containers({})}


async def prune(
    engine: EnginePort,
    retention: RetentionConfig,
    now_ns: int,
    *,
    source_name: str | None = None,
    repository: str | None = None,
    just_made: str | None = None,
    dry_run: bool = False,
) -> PruneReport:
    """Apply retention to one source and repository (after a job), or to every pair."""
    report = PruneReport()
    if not retention.enabled:
        return report
    images = await own_images(engine, source_name)
    groups: dict[tuple[str, str], list[ImageInfo]] = defaultdict(list)
    wanted = None if repository is None else repository_of(repository)
    for image in images:
        name = image.labels.get(SOURCE_NAME_LABEL, "")
        for repo in {repository_of(t) for t in image.repo_tags} - {""}:
            if wanted is None or repo == wanted:
                groups[(name, repo)].append(image)
    protected = await _images_in_use(engine)
    if just_made is not None:
        protected.add(just_made)
    for (name, repo), members in sorted(groups.items()):
        candidates = _candidates(members, repo)
        doomed = select(candidates, retention, now_ns, protected)
        survivors = {layer for c in candidates if c not in doomed for layer in c.layers}
        # Bytes of the layers kegpackd added that no remaining image of the group holds.
        freed: dict[str, int] = {}
        for candidate in doomed:
            sizes = await _own_layer_sizes(engine, candidate)
            if dry_run or await _remove(engine, candidate, name, report):
                report.removed.append(candidate)
                freed.update((k, v) for k, v in sizes.items() if k not in survivors)
        report.freed_bytes += sum(freed.values())
    return report


async def _remove(
    engine: EnginePort, candidate: Candidate, source_name: str, report: PruneReport
) -> bool:
    """Untag the repository's tags; then remove the image only if it is left dangling.
    False when it stayed (tagged elsewhere, or the engine refused: in ``report``)."""
    short = candidate.id.removeprefix("sha256:")[:12]
    try:
        for tag in candidate.tags:
            await engine.remove_image(tag)
        try:
            image = await engine.inspect_image(candidate.id)
        except NotFoundError:
            image = None  # the engine removed it with its last tag
        if image is not None and image.repo_tags:
            report.kept.append(f"{short}: also tagged {', '.join(image.repo_tags)}")
            log.info(
                "retention: untagged %s (%s); kept, it is also tagged elsewhere",
                short,
                ", ".join(candidate.tags),
            )
            return False
        if image is not None:
            await engine.remove_image(candidate.id)
    except EngineError as exc:
        report.failures.append(f"remove image {short}: {exc}")
        log.warning("retention: could not remove image %s of %s: %s", short, source_name, exc)
        return False
    log.info(
        "retention: removed image %s of %s (%s)",
        short,
        source_name,
        ", ".join(candidate.tags),
        extra={"fields": {"image": candidate.id, "container": source_name}},
    )
    return True
