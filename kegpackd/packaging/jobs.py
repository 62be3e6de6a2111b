"""Jobs: what is asked (request), what it got (result), where it stands (record), in words
that the pipeline, the scheduler, the API and the metrics share.

States and stages are enums of strings, so they compare and serialise as the words the API
and the logs have always used. Lifecycle events (queued, started, stage, finished) are
published by the scheduler; metrics, logs and any later subscriber (a webhook) listen to
them instead of being called from the scheduler's ``finally``.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from kegpackd.packaging.options import Overrides
from kegpackd.packaging.triggers import TriggerName
from kegpackd.shown import MESSAGE_LIMIT, VALUE_LIMIT, cut

log = logging.getLogger(__name__)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    # Succeeded with nothing new: the latest image already had these layers and this config.
    UNCHANGED = "unchanged"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    DROPPED = "dropped"

    @property
    def finished(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class Stage(enum.StrEnum):
    COMMIT = "commit"
    MEASURE = "measure"
    STREAM = "stream"
    FINALIZE = "finalize"
    PUSH = "push"
    PRUNE = "prune"
    CLEANUP = "cleanup"


OUTCOMES = (JobState.SUCCEEDED, JobState.UNCHANGED, JobState.FAILED, JobState.CANCELLED)
# The outcomes of a job that did its work (an unchanged one made no new image: none was due).
SUCCESSES = (JobState.SUCCEEDED, JobState.UNCHANGED)


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
    trigger: TriggerName = TriggerName.MANUAL
    overrides: Overrides = field(default_factory=Overrides)
    job_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    # The daemon's id of the Compose project this job is one service of ("" for none).
    project: str = ""


class LayerKind(enum.StrEnum):
    """Where a job's layer came from; a StrEnum, so JSON and metrics keep the plain names."""

    NEW = "new"  # copied from the mounts and loaded
    REUSED = "reused"  # an earlier image of the container already had it


class MountsLayer(enum.StrEnum):
    """What an incremental job made of the mounts: a full layer, a delta of what changed
    since the previous image, or nothing new (the previous image's mount layers)."""

    FULL = "full"
    DELTA = "delta"
    NONE = "none"


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
    layer: LayerKind | None = None
    layer_digest: str = ""
    layer_bytes: int = 0
    # Mount destinations whose content the image carries (nested mounts included).
    copied: list[str] = field(default_factory=list)
    # skip_unchanged found the latest image the same: its id is image_id, no image was made.
    unchanged: bool = False
    pruned: list[str] = field(default_factory=list)
    pruned_bytes: int = 0
    cleanup_failures: list[str] = field(default_factory=list)
    # The engine reported every owner in the mounts as the container user's (Podman), and
    # the job was allowed to package them so: the image says so too (kegpack.owners).
    forced_owners: bool = False
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # The quiesce mode asked (none, pause, stop), and how long the source was paused or
    # stopped (None: it was not, e.g. it was not running).
    quiesce: str = ""
    quiesced_seconds: float | None = None
    # Incremental packaging: the mounts' layer made ("full", "delta", or "none" when the
    # previous image's mount layers were kept as they are; "" for the classic layout), its
    # bytes, what a full one is, the deltas now stacked, and where a delta's bytes came from.
    mounts_layer: str = ""
    mounts_layer_bytes: int = 0
    mounts_full_bytes: int = 0
    delta_layers: int = 0
    delta_source: str = ""


@dataclass
class JobRecord:
    request: JobRequest
    state: JobState = JobState.QUEUED
    # The stage a running job is in (the status page and /v1 show it while it runs).
    stage: str = ""
    error: str = ""
    started: float = 0.0
    finished: float = 0.0
    result: JobResult = field(default_factory=lambda: JobResult(job_id=""))


class EventKind(enum.StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"


@dataclass(frozen=True)
class JobEvent:
    kind: EventKind
    record: JobRecord


Subscriber = Callable[[JobEvent], None]


class JobEvents:
    """Where the scheduler publishes lifecycle events; a failing subscriber is logged, and
    never fails the job or the other subscribers."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, kind: EventKind, record: JobRecord) -> None:
        event = JobEvent(kind, record)
        for subscriber in self._subscribers:
            try:
                subscriber(event)
            except Exception:
                log.exception("job event subscriber %r failed", subscriber)


def _rfc3339(stamp: float) -> str | None:
    """Epoch seconds as RFC 3339 UTC with milliseconds; None for "not yet"."""
    if not stamp:
        return None
    moment = datetime.fromtimestamp(stamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_json(record: JobRecord) -> dict[str, Any]:
    """A job as ``/v1/jobs`` shows it (and as a notification would carry it): no secret.

    What came from outside (the container as asked, the error naming a label's value) is
    cut: the record is copied into the API, the journal and every webhook body.
    """
    result = record.result
    return {
        "id": record.request.job_id,
        "container": result.container_id or cut(record.request.container, VALUE_LIMIT),
        "name": result.container_name,
        "trigger": record.request.trigger,
        "project": record.request.project or None,
        "state": str(record.state),
        "stage": (record.stage or None) if record.state == JobState.RUNNING else None,
        "started": record.started or None,
        "finished": record.finished or None,
        "started_at": _rfc3339(record.started),
        "finished_at": _rfc3339(record.finished),
        "stages": {k: round(v, 3) for k, v in result.stage_seconds.items()},
        "bytes": result.streamed_bytes,
        "image": result.image_id or None,
        "images": result.references,
        "digests": result.digests,
        "push_retries": result.push_retries,
        "layer": result.layer or None,
        "layer_digest": result.layer_digest or None,
        "layer_bytes": result.layer_bytes or None,
        "pruned": result.pruned,
        "mounts_layer": result.mounts_layer or None,
        # None for the classic layout, where these are not measured.
        "mounts_layer_bytes": result.mounts_layer_bytes if result.mounts_layer else None,
        "mounts_full_bytes": result.mounts_full_bytes if result.mounts_layer else None,
        "delta_layers": result.delta_layers if result.mounts_layer else None,
        "delta_source": result.delta_source or None,
        "quiesce": result.quiesce or None,
        "quiesced_seconds": (
            None if result.quiesced_seconds is None else round(result.quiesced_seconds, 3)
        ),
        "error": cut(record.error, MESSAGE_LIMIT) or None,
    }
