"""Watch the engine's events and turn them into jobs, without a gap.

On every (re)connection: note the engine's clock, sweep what a dead job left
behind, list the labelled containers, then subscribe to events since the last
one seen (or since that clock reading). Whatever happened while disconnected
shows up in the listing or in the replayed events; the scheduler and the
per-run image labels make the overlap harmless.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from collections.abc import Set as AbstractSet
from datetime import UTC, datetime

import anyio
from anyio.abc import TaskStatus

from kegpackd.backoff import Backoff
from kegpackd.daemon.scheduler import Scheduler
from kegpackd.engine.models import ContainerInfo, ContainerSummary, Event, parse_engine_time
from kegpackd.engine.port import EnginePort
from kegpackd.errors import (
    EngineError,
    EngineUnreachable,
    InvalidValueError,
    JobConflict,
    NotFoundError,
)
from kegpackd.labels import LABEL_PACKAGE
from kegpackd.owner import current_token, is_alive
from kegpackd.packaging.jobs import JobRequest
from kegpackd.packaging.markers import (
    HELPER_PREFIX,
    PENDING_REPOSITORY,
    helper_job,
    parse_final_comment,
    parse_pending_reference,
    parse_temporary_comment,
)
from kegpackd.packaging.options import (
    Trigger,
    is_packaging_enabled,
    parse_trigger,
)
from kegpackd.packaging.stoprecord import own_stops
from kegpackd.packaging.triggers import TRIGGERS, has_run

log = logging.getLogger(__name__)

SEEN_EVENTS = 4096
RECONNECT_START = 0.5
RECONNECT_CAP = 30.0


async def sweep(
    engine: EnginePort,
    active_jobs: AbstractSet[str],
    failed_jobs: AbstractSet[str] = frozenset(),
    *,
    dry_run: bool = False,
) -> list[str]:
    """Remove helpers, pending tags and temporary images of jobs whose process is gone.

    Another live process's (a second daemon, a ``kegpackd package`` run) are left alone.
    Also removes an untagged final image of one of ``failed_jobs``: the engine died in
    the middle of that job's final step, and came back with the image but without its
    tag. Returns what was removed (with ``dry_run``: what would be).
    """
    removed: list[str] = []

    async def remove(what: str, removal: Callable[[], Awaitable[bool]]) -> None:
        if dry_run or await _remove(what, removal()):
            removed.append(what)

    for entry in await engine.list_containers({"name": [HELPER_PREFIX]}):
        job = helper_job(entry)
        if job is None:
            continue
        owner = await _owner(engine, entry, job)
        if owner is not None and _abandoned(job, owner, active_jobs):
            cid = entry.id
            await remove(
                f"helper container {cid[:12]} (job {job})", _bind(engine.remove_container, cid)
            )
    removed += await _sweep_pending(engine, active_jobs, dry_run=dry_run)
    for dangling in await engine.list_images({"dangling": ["true"]}):
        try:
            image = await engine.inspect_image(dangling.id)
        except NotFoundError:
            continue
        marker = parse_temporary_comment(image.comment)
        final = parse_final_comment(image.comment)
        if final is not None and final in failed_jobs:
            await remove(
                f"untagged image {image.id} (failed job {final})",
                _bind(engine.remove_image, image.id),
            )
        elif marker is not None and _abandoned(*marker, active_jobs):
            await remove(
                f"temporary image {image.id} (job {marker[0]})",
                _bind(engine.remove_image, image.id),
            )
    if removed and not dry_run:
        log.info("removed %d leftover(s) of interrupted jobs", len(removed))
    return removed


async def _sweep_pending(
    engine: EnginePort, active_jobs: AbstractSet[str], *, dry_run: bool = False
) -> list[str]:
    """The pending tags of jobs whose process is gone (untags only, when the image got
    its final tags before its maker died)."""
    removed: list[str] = []
    for entry in await engine.list_images({"reference": [f"{PENDING_REPOSITORY}/*"]}):
        for reference in entry.repo_tags:
            pending = parse_pending_reference(reference)
            if pending is not None and _abandoned(*pending, active_jobs):
                what = f"pending tag {reference}"
                if dry_run or await _remove(what, engine.remove_image(reference)):
                    removed.append(what)
    return removed


async def sweep_late_pending(engine: EnginePort, active_jobs: AbstractSet[str]) -> None:
    """After an image load: the pending tags of a dead job whose load the engine finished
    after the sweep, each logged."""
    for what in await _sweep_pending(engine, active_jobs):
        log.info("removed leftover %s of an interrupted job (its load ended late)", what)


def _bind(call: Callable[[str], Awaitable[bool]], ref: str) -> Callable[[], Awaitable[bool]]:
    return lambda: call(ref)


async def _remove(what: str, removal: Awaitable[bool]) -> int:
    """One removal of the sweep; a refusal (the object is in use) keeps it and is not fatal."""
    try:
        return int(await removal)
    except EngineUnreachable:
        raise
    except EngineError as exc:
        log.debug("leftover %s kept: %s", what, exc)
        return 0


class Watcher:
    def __init__(
        self,
        engine: EnginePort,
        scheduler: Scheduler,
        on_live: Callable[[bool, str], None] = lambda live, reason: None,
    ) -> None:
        self.engine = engine
        self.scheduler = scheduler
        self.on_live = on_live
        self.live = False
        self._seen: deque[tuple[str, str, int]] = deque(maxlen=SEEN_EVENTS)
        self._seen_set: set[tuple[str, str, int]] = set()
        self._warned: dict[str, str] = {}
        self._autoremove_warned: set[str] = set()
        self._since: int | None = None
        self._started = False

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Watch the labelled containers' events, and the image loads beside them."""
        async with anyio.create_task_group() as group:
            group.start_soon(_reconnecting, "image load watch", self._watch_loads, _lost_loads)
            await _reconnecting(
                "event watch", functools.partial(self._watch, task_status), self._lost_events
            )

    async def _watch_loads(self, backoff: Backoff) -> None:
        """Sweep pending tags again after every image load.

        The engine finishes a load whose sender was killed once it has the whole body,
        which may be after the next start's sweep: that image appears later, tagged only
        pending. The load event (which names no tag) is the moment to look again.
        """
        async with self.engine.image_loads() as loads:
            backoff.reset()
            # What was loaded before this subscription is seen by this first look.
            await sweep_late_pending(self.engine, self.scheduler.running_job_ids)
            async for _load in loads:
                await sweep_late_pending(self.engine, self.scheduler.running_job_ids)

    async def _watch(self, task_status: TaskStatus[None], backoff: Backoff) -> None:
        """One connection: sweep, reconcile, then the events since the last one seen."""
        clock = await self.engine.system_time_ns()
        await sweep(
            self.engine,
            self.scheduler.running_job_ids,
            self.scheduler.unsuccessful_job_ids,
        )
        await self._reconcile()
        since = self._since
        async with self.engine.events(
            since if since is not None else clock, LABEL_PACKAGE
        ) as events:
            self._set_live(True, "watching events")
            backoff.reset()
            if not self._started:
                self._started = True
                task_status.started()
            async for event in events:
                self.scheduler.metrics.events.inc()
                self._since = max(self._since or 0, event.time_nano)
                await self._handle(event)

    def _lost_events(self, reason: str, delay: float) -> None:
        was_live = self.live
        self._set_live(False, reason)
        what = "engine connection lost" if was_live else "cannot watch the engine"
        log.warning("%s (%s); retrying in %.1fs", what, reason, delay)

    def _set_live(self, live: bool, reason: str) -> None:
        """Report changes, and every failure: the reason for not being ready may change."""
        if live != self.live or not live:
            self.live = live
            self.on_live(live, reason)

    def _first_sight(self, event: Event) -> bool:
        key = (event.id, event.action, event.time_nano)
        if key in self._seen_set:
            return False
        if len(self._seen) == self._seen.maxlen:
            self._seen_set.discard(self._seen[0])
        self._seen.append(key)
        self._seen_set.add(key)
        return True

    def _trigger(self, container_id: str, name: str, labels: dict[str, str]) -> Trigger | None:
        """The trigger of a container that opted in; None if it did not.

        A bad label (``kegpack.package`` included) is logged once per container and value.
        """
        try:
            if not is_packaging_enabled(labels):
                return None
            trigger = parse_trigger(labels)
        except InvalidValueError as exc:
            if self._warned.get(container_id) != str(exc):
                self._warned[container_id] = str(exc)
                log.error("container %s (%s) not packaged: %s", name, container_id[:12], exc)
            return None
        self._warned.pop(container_id, None)
        return trigger

    def _submit(self, container_id: str, trigger: Trigger, delay: float = 0.0) -> None:
        request = JobRequest(container=container_id, trigger=trigger.kind)
        if delay > 0:
            log.info("container %s: packaging in %.1fs", container_id[:12], delay)
            self.scheduler.submit_later(request, delay)
        else:
            try:
                self.scheduler.submit(request)
            except JobConflict as exc:
                log.info("trigger %s not queued: %s", trigger.kind, exc)

    async def _handle(self, event: Event) -> None:
        if not self._first_sight(event):
            return
        action = event.action
        if action == "commit":
            await self._on_commit(event)
            return
        if action in ("die", "start") and own_stops.caused(event.id, event.time_nano):
            return  # a job of ours stopped and started it for a copy: no trigger
        if action in ("die", "destroy"):
            self.scheduler.cancel_delayed(event.id)
        if action == "destroy":
            self._warned.pop(event.id, None)
            self._autoremove_warned.discard(event.id)
            return
        trigger = self._trigger(event.id, event.attributes.get("name", "?"), dict(event.attributes))
        if trigger is None:
            return
        kind = TRIGGERS[trigger.kind]
        if action != kind.event:
            return
        if kind.name == "stop":
            await self._on_stop(event.id, trigger)
        else:
            self._submit(event.id, trigger, trigger.delay if kind.delayable else 0.0)

    async def _on_commit(self, event: Event) -> None:
        """A temporary commit whose maker died before the engine finished it (so after the
        sweep) is removed when its event arrives: the event names the image and its comment."""
        marker = parse_temporary_comment(event.attributes.get("comment", ""))
        image = event.attributes.get("imageID", "")
        if marker is None or not image or not _abandoned(*marker, self.scheduler.running_job_ids):
            return
        what = f"temporary image {image} (job {marker[0]})"
        if await _remove(what, self.engine.remove_image(image)):
            log.info("removed leftover %s of an interrupted job (its commit ended late)", what)

    async def _on_stop(self, container_id: str, trigger: Trigger) -> None:
        try:
            info = await self.engine.inspect_container(container_id)
        except NotFoundError:
            info = None
        if info is None or info.auto_remove:
            if container_id not in self._autoremove_warned:
                self._autoremove_warned.add(container_id)
                log.warning(
                    "container %s has AutoRemove (--rm): it cannot be packaged on stop",
                    container_id[:12],
                )
            return
        self._submit(container_id, trigger)

    async def _reconcile(self) -> None:
        """Submit every labelled container whose trigger condition already holds."""
        for entry in await self.engine.list_containers({"label": [LABEL_PACKAGE]}):
            try:
                info = await self.engine.inspect_container(entry.id)
            except NotFoundError:
                continue
            if info.name.startswith(HELPER_PREFIX):
                continue
            trigger = self._trigger(info.id, info.name, dict(info.labels))
            if trigger is None:
                continue
            kind = TRIGGERS[trigger.kind]
            if kind.holds(info):
                delay = _remaining(trigger.delay, info) if kind.delayable else 0.0
                self._submit(info.id, trigger, delay)


async def _reconnecting(
    what: str,
    connection: Callable[[Backoff], Awaitable[None]],
    lost: Callable[[str, float], None],
) -> None:
    """Run ``connection`` again and again, with backoff; it resets the backoff once up."""
    backoff = Backoff(RECONNECT_START, RECONNECT_CAP, jitter=True)
    while True:
        try:
            await connection(backoff)
            reason = "the event stream ended"
        except EngineError as exc:
            reason = str(exc)
        except Exception as exc:
            log.exception("%s failed unexpectedly", what)
            reason = f"internal error: {type(exc).__name__}: {exc}"
        delay = backoff.next()
        lost(reason, delay)
        await anyio.sleep(delay)


def _lost_loads(reason: str, delay: float) -> None:
    """Debug level: the container stream's loss, at the same moment, is the warning."""
    log.debug("image load watch lost (%s); retrying in %.1fs", reason, delay)


async def _owner(engine: EnginePort, helper: ContainerSummary, job: str) -> str | None:
    """A helper's maker, read from its image: the config-less copy that job loaded.

    None when the image carries no marker of that job: then the container is not
    kegpackd's, whatever its name, and the sweep leaves it alone. A marker without an
    owner (kegpackd before owners were recorded) is ``""``, which counts as abandoned.
    """
    try:
        image = await engine.inspect_image(helper.image_id)
    except (NotFoundError, InvalidValueError):
        return None
    marker = parse_temporary_comment(image.comment)
    if marker is None or marker[0] != job:
        return None
    return marker[1] or ""


def _abandoned(job: str, owner: str | None, active_jobs: AbstractSet[str]) -> bool:
    """A temporary object is abandoned unless its job runs here or its maker is alive."""
    if job in active_jobs:
        return False
    if not owner or owner == current_token():
        return True
    return not is_alive(owner)


def _remaining(delay: float, info: ContainerInfo) -> float:
    """What is left of a start delay for a container that started a while ago."""
    if delay <= 0 or not has_run(info):
        return 0.0
    try:
        started = parse_engine_time(info.started_at) / 1e9
    except EngineError:
        return delay
    elapsed = datetime.now(UTC).timestamp() - started
    return max(0.0, delay - elapsed) if elapsed >= 0 else delay
