"""Jobs in flight: a queue, a concurrency limit, one job per container, deadlines.

Triggers for a container whose job is queued merge into that job; a trigger
that arrives while its job runs queues exactly one follow-up. Nothing is lost
and nothing doubles, and a run that already has an image is never packaged again.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from kegpackd.config import Config
from kegpackd.daemon.metrics import Metrics
from kegpackd.engine.port import EnginePort
from kegpackd.errors import JobConflict, NotFoundError
from kegpackd.packaging.jobs import (
    SUCCESSES,
    EventKind,
    JobEvent,
    JobEvents,
    JobRecord,
    JobRequest,
    JobState,
)
from kegpackd.packaging.markers import run_key_labels
from kegpackd.packaging.runner import JobRunner, PipelineRunner, recording
from kegpackd.packaging.triggers import TRIGGERS

log = logging.getLogger(__name__)

HISTORY = 200


class Scheduler:
    """``runner`` runs each job (the pipeline by default; a test hands in its own)."""

    def __init__(
        self,
        engine: EnginePort,
        config: Config,
        metrics: Metrics | None = None,
        *,
        past: Sequence[Mapping[str, Any]] = (),
        runner: JobRunner | None = None,
    ) -> None:
        self.engine = engine
        self.config = config
        self.runner: JobRunner = runner or PipelineRunner()
        self.metrics = metrics or Metrics(process=False)
        self._send: MemoryObjectSendStream[str]
        self._receive: MemoryObjectReceiveStream[str]
        self._send, self._receive = anyio.create_memory_object_stream[str](math.inf)
        self._queued: dict[str, JobRecord] = {}
        self._again: dict[str, JobRecord] = {}
        self._running: dict[str, JobRecord] = {}
        self._delays: dict[str, anyio.CancelScope] = {}
        self.history: deque[JobRecord] = deque(maxlen=HISTORY)
        # Jobs from before the last restart (the journal), as /v1/jobs showed them; oldest first.
        self.past: list[Mapping[str, Any]] = list(past)[-HISTORY:]
        self._task_group: anyio.abc.TaskGroup | None = None
        self._idle = anyio.Event()
        self._closing = False
        # Lifecycle events: metrics and the log line listen; a webhook would subscribe here.
        self.events = JobEvents()
        self.events.subscribe(self.metrics.on_job_event)
        self.events.subscribe(log_job_events)
        self._workers = 0
        # Jobs wait while the engine is out of reach (its event stream lost, e.g. while it
        # restarts): one started then would fail at once, and its run go unpackaged.
        self._reachable = anyio.Event()
        self._reachable.set()

    def engine_reachable(self, reachable: bool) -> None:
        """The daemon's event stream came back (True) or was lost (False)."""
        if reachable:
            self._reachable.set()
        elif self._reachable.is_set():
            self._reachable = anyio.Event()

    @property
    def running_job_ids(self) -> set[str]:
        return {record.request.job_id for record in self._running.values()}

    @property
    def unsuccessful_job_ids(self) -> set[str]:
        """Jobs that ended failed or cancelled: no untagged image of theirs is worth keeping."""
        ended = (JobState.FAILED, JobState.CANCELLED)
        ids = {r.request.job_id for r in self.history if r.state in ended}
        return ids | {str(j["id"]) for j in self.past if j.get("state") in ended}

    @property
    def counts(self) -> Mapping[str, int]:
        return {"queued": len(self._queued), "running": len(self._running)}

    def submit(self, request: JobRequest) -> JobRecord | None:
        """Queue a job, or merge it into the container's queued or running one."""
        cid = request.container
        if self._closing:
            log.info("not taking a job for %s: shutting down", cid[:12])
            return None
        waiting = self._queued.get(cid) or self._again.get(cid)
        if waiting is not None:
            if waiting.request.overrides != request.overrides:
                raise JobConflict(
                    f"job {waiting.request.job_id} for container {cid[:12]} is waiting with "
                    "other options (repository, tags or push); this request would be lost in "
                    "it: send it again once that job has started"
                )
            log.debug("trigger %s for %s merged into its waiting job", request.trigger, cid[:12])
            return waiting
        record = JobRecord(request=request)
        record.result.job_id = request.job_id
        self.history.append(record)
        self.events.publish(EventKind.QUEUED, record)
        if cid in self._running:
            self._again[cid] = record
            log.debug("trigger %s for %s will run after its current job", request.trigger, cid[:12])
            return record
        self._enqueue(record)
        return record

    def _enqueue(self, record: JobRecord) -> None:
        self._queued[record.request.container] = record
        self._send.send_nowait(record.request.container)
        self.metrics.queued.set(len(self._queued))

    def find(self, job_id: str) -> JobRecord | None:
        return next((r for r in self.history if r.request.job_id == job_id), None)

    def submit_later(self, request: JobRequest, delay: float) -> None:
        """Submit after ``delay`` seconds, unless ``cancel_delayed`` comes first."""
        if self._task_group is None or self._closing:
            return
        self.cancel_delayed(request.container)
        scope = anyio.CancelScope()
        self._delays[request.container] = scope
        self._task_group.start_soon(self._delayed, request, delay, scope)

    def cancel_delayed(self, container_id: str) -> bool:
        scope = self._delays.pop(container_id, None)
        if scope is None:
            return False
        scope.cancel()
        log.info("delayed job for %s cancelled: the container stopped", container_id[:12])
        return True

    async def _delayed(self, request: JobRequest, delay: float, scope: anyio.CancelScope) -> None:
        with scope:
            await anyio.sleep(delay)
            if self._delays.get(request.container) is scope:
                del self._delays[request.container]
                try:
                    self.submit(request)
                except JobConflict as exc:
                    log.info("delayed trigger %s not queued: %s", request.trigger, exc)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            self._add_workers()
            task_status.started()

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: new jobs use it, and a new concurrency takes effect now
        (more workers at once; fewer as running jobs finish)."""
        old, new = self.config.packaging.concurrency, config.packaging.concurrency
        self.config = config
        if new != old:
            log.info("packaging.concurrency %d -> %d", old, new)
            self._add_workers()

    def _add_workers(self) -> None:
        assert self._task_group is not None
        while self._workers < self.config.packaging.concurrency:
            self._workers += 1
            self._task_group.start_soon(self._worker)

    def _surplus_worker(self) -> bool:
        if self._workers > self.config.packaging.concurrency:
            self._workers -= 1
            return True
        return False

    async def shutdown(self, grace: float) -> None:
        """Take no more jobs; give running ones ``grace`` seconds, then cancel them."""
        self._closing = True
        for cid in list(self._delays):
            self._delays.pop(cid).cancel()
        dropped = list(self._queued.values())
        self._queued.clear()
        self._again.clear()
        for record in dropped:
            record.state = JobState.DROPPED
        self._send.close()
        if self._running:
            log.info("waiting up to %.0fs for %d running job(s)", grace, len(self._running))
        with anyio.move_on_after(grace):
            if self._running:
                await self._idle.wait()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    async def _worker(self) -> None:
        async for cid in self._receive:
            if self._surplus_worker():
                self._send.send_nowait(cid)  # for a worker that stays
                return
            await self._reachable.wait()
            record = self._queued.pop(cid, None)
            self.metrics.queued.set(len(self._queued))
            if record is None:
                continue
            self._running[cid] = record
            try:
                await self._run(record)
            finally:
                del self._running[cid]
                if self._closing and not self._running:
                    self._idle.set()
                follow_up = self._again.pop(cid, None)
                if follow_up is not None and not self._closing:
                    self._enqueue(follow_up)
            if self._surplus_worker():
                return

    async def _already_packaged(self, record: JobRecord) -> bool:
        request = record.request
        try:
            info = await self.engine.inspect_container(request.container)
        except NotFoundError:
            return False
        record.result.container_id, record.result.container_name = info.id, info.name
        if not info.started_at or info.started_at.startswith("0001-"):
            return False
        images = await self.engine.list_images({"label": run_key_labels(info.id, info.started_at)})
        return bool(images)

    async def _run(self, record: JobRecord) -> None:
        request = record.request
        record.state, record.started = JobState.RUNNING, time.time()
        fields: dict[str, object] = {
            "job": request.job_id,
            "container": request.container[:12],
            "trigger": request.trigger,
        }
        try:
            with recording(record):
                automatic = TRIGGERS[request.trigger].automatic
                if automatic and await self._already_packaged(record):
                    record.state = JobState.SKIPPED
                    log.info("job skipped: this run is already packaged", extra={"fields": fields})
                    return
            if record.state == JobState.FAILED:
                return
            log.info("job started", extra={"fields": fields})
            self.events.publish(EventKind.STARTED, record)
            await self.runner(
                self.engine, self.config, record, _MetricsProgress(self.metrics, record)
            )
        finally:
            record.finished = time.time()
            if record.state != JobState.SKIPPED:
                self.events.publish(EventKind.FINISHED, record)


def log_job_events(event: JobEvent) -> None:
    """The end-of-job log line (a subscriber to the scheduler's events)."""
    if event.kind != EventKind.FINISHED:
        return
    record = event.record
    result = record.result
    fields = {
        "job": record.request.job_id,
        "container": record.request.container[:12],
        "trigger": record.request.trigger,
        "name": result.container_name,
        "outcome": record.state,
        "images": ",".join(result.references),
        "bytes": result.streamed_bytes,
        "layer": result.layer or None,
        "mounts_layer": result.mounts_layer or None,
        "mounts_layer_bytes": result.mounts_layer_bytes,
        "mounts_full_bytes": result.mounts_full_bytes,
        "duration": round(record.finished - record.started, 3),
    }
    if record.error:
        fields["error"] = record.error
    if result.pruned:
        fields["pruned"] = len(result.pruned)
    level = logging.INFO if record.state in SUCCESSES else logging.WARNING
    log.log(level, "job %s", record.state, extra={"fields": fields})


class _MetricsProgress:
    """Counts streamed bytes, and keeps the record's stage for the API and status page."""

    def __init__(self, metrics: Metrics, record: JobRecord) -> None:
        self.metrics = metrics
        self.record = record

    def stage(self, name: str, detail: str = "") -> None:
        self.record.stage = name

    def streamed(self, count: int) -> None:
        self.metrics.streamed.inc(count)
