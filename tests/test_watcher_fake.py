"""The watcher on the in-memory engine, with a real scheduler whose packaging is a fake.

Events in, jobs out: which events submit a job, what the reconcile at (re)connection
submits, and how a lost event stream is resumed. To show that an event submitted
nothing, a test sends a labelled "sentinel" container's start after it: with one job at
a time, in order, once the sentinel's job has started every earlier one has.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from kegpackd import backoff
from kegpackd.config import Config, PackagingConfig
from kegpackd.daemon.scheduler import Scheduler
from kegpackd.daemon.watcher import Watcher
from kegpackd.errors import EngineUnreachable
from kegpackd.packaging.runner import PipelineRunner
from tests.fakeengine import Changes, FakeContainer, FakeEngine, FakePackage
from tests.owners import comment_of, pending_tag

LIMIT = 1.0
PACKAGE = {"kegpack.package": "true"}


@pytest.fixture
def packaged(changes: Changes) -> FakePackage:
    """A stand-in for ``package`` that records each job and returns at once."""
    return FakePackage(changes)


@pytest.fixture
def quick_reconnect() -> Iterator[None]:
    """Reconnections a millisecond apart: the schedule is the backoff's, tested on its own."""
    with backoff.in_test_mode():
        yield


class Live:
    """What the watcher reported through ``on_live``."""

    def __init__(self, changes: Changes) -> None:
        self.changes = changes
        self.reports: list[tuple[bool, str]] = []

    def __call__(self, live: bool, reason: str) -> None:
        self.reports.append((live, reason))
        self.changes.notify()


@contextlib.asynccontextmanager
async def watching(
    fake: FakeEngine, packaged: FakePackage, live: Live | None = None
) -> AsyncIterator[Watcher]:
    """A scheduler (one job at a time, ``packaged`` its pipeline) and a watcher, connected,
    for the block."""
    scheduler = Scheduler(
        fake,
        Config(packaging=PackagingConfig(concurrency=1)),
        runner=PipelineRunner(packaged),
    )
    watcher = Watcher(fake, scheduler, live or (lambda _live, _reason: None))
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            await tg.start(watcher.run)
            try:
                yield watcher
            finally:
                tg.cancel_scope.cancel()


async def started_after(fake: FakeEngine, packaged: FakePackage) -> list[str]:
    """Send a sentinel's start event; once its job has started, the jobs started before it."""
    sentinel = fake.add_container("sentinel", PACKAGE)
    fake.emit("start", sentinel)
    await fake.wait_until(lambda: sentinel.id in packaged.containers())
    return packaged.containers()[: packaged.containers().index(sentinel.id)]


def stopped(container: FakeContainer) -> None:
    container.running = False
    container.finished_at = "2026-01-02T04:00:00Z"


async def test_a_start_event_of_a_labelled_container_submits_a_job(
    fake: FakeEngine, packaged: FakePackage
) -> None:
    """kegpack.package=true and a start event: the container is packaged."""
    async with watching(fake, packaged):
        container = fake.add_container("web", PACKAGE)
        fake.emit("start", container)
        await fake.wait_until(lambda: packaged.containers() == [container.id])


@pytest.mark.parametrize("labels", [{}, {"kegpack.package": "false"}], ids=["unlabelled", "false"])
async def test_a_container_that_did_not_opt_in_is_not_packaged(
    fake: FakeEngine, packaged: FakePackage, labels: dict[str, str]
) -> None:
    """No kegpack.package label, or kegpack.package=false: its start submits nothing."""
    async with watching(fake, packaged):
        fake.emit("start", fake.add_container("web", labels))
        assert await started_after(fake, packaged) == []


async def test_a_bad_package_label_is_logged_once(
    fake: FakeEngine, packaged: FakePackage, caplog: pytest.LogCaptureFixture
) -> None:
    """kegpack.package=maybe: one error line for the container, however many events."""
    caplog.set_level(logging.ERROR, logger="kegpackd.daemon.watcher")
    async with watching(fake, packaged):
        container = fake.add_container("web", {"kegpack.package": "maybe"})
        fake.emit("start", container)
        fake.emit("restart", container)
        fake.emit("start", container)
        assert await started_after(fake, packaged) == []
    errors = [r for r in caplog.records if "not packaged" in r.getMessage()]
    assert len(errors) == 1
    assert "maybe" in errors[0].getMessage()


async def test_a_stop_trigger_packages_on_die(fake: FakeEngine, packaged: FakePackage) -> None:
    """kegpack.trigger=stop: the start submits nothing, the die packages the container."""
    async with watching(fake, packaged):
        container = fake.add_container("db", {**PACKAGE, "kegpack.trigger": "stop"})
        fake.emit("start", container)
        stopped(container)
        fake.emit("die", container)
        assert await started_after(fake, packaged) == [container.id]


async def test_a_stop_trigger_of_an_auto_remove_container_is_not_packaged(
    fake: FakeEngine, packaged: FakePackage
) -> None:
    """A --rm container is gone by the time it could be packaged on stop: nothing submitted."""
    async with watching(fake, packaged):
        labels = {**PACKAGE, "kegpack.trigger": "stop"}
        container = fake.add_container("db", labels, auto_remove=True)
        stopped(container)
        fake.emit("die", container)
        assert await started_after(fake, packaged) == []


async def test_the_reconcile_at_connection_submits_a_running_start_trigger_container(
    fake: FakeEngine, packaged: FakePackage
) -> None:
    """A labelled container already running when the watcher connects is packaged."""
    container = fake.add_container("web", PACKAGE)
    fake.add_container("other", {})
    async with watching(fake, packaged):
        await fake.wait_until(lambda: packaged.containers() == [container.id])


async def test_the_reconcile_skips_a_stopped_start_trigger_container(
    fake: FakeEngine, packaged: FakePackage
) -> None:
    """A labelled container that is not running does not meet its start trigger."""
    stopped(fake.add_container("web", PACKAGE))
    async with watching(fake, packaged):
        assert await started_after(fake, packaged) == []


@pytest.mark.usefixtures("quick_reconnect")
async def test_after_the_event_stream_ends_the_watcher_reconnects_and_relists(
    fake: FakeEngine, packaged: FakePackage
) -> None:
    """A container that started while the stream was down is found by the re-listing."""
    async with watching(fake, packaged):
        fake.end_events()
        container = fake.add_container("web", PACKAGE)
        await fake.wait_until(lambda: packaged.containers() == [container.id])
        assert len(fake.connections) == 2
        assert len(fake.called("list_containers")) >= 2


@pytest.mark.usefixtures("quick_reconnect")
async def test_a_lost_connection_is_reported_not_live_until_reconnected(
    fake: FakeEngine, packaged: FakePackage, changes: Changes
) -> None:
    """A broken event stream reports not live, with the reason; reconnected, live again."""
    live = Live(changes)
    async with watching(fake, packaged, live):
        fake.break_events(EngineUnreachable("cannot reach the Docker engine at test"))
        await changes.wait_until(lambda: len(live.reports) >= 3)
    assert live.reports[:3] == [
        (True, "watching events"),
        (False, "cannot reach the Docker engine at test"),
        (True, "watching events"),
    ]


@pytest.mark.usefixtures("quick_reconnect")
async def test_a_failed_connection_attempt_is_retried(
    fake: FakeEngine, packaged: FakePackage
) -> None:
    """An engine unreachable at the first attempts: the watcher keeps trying, then connects."""
    fake.fail_next("system_time_ns", EngineUnreachable("cannot reach the Docker engine"), times=2)
    async with watching(fake, packaged):
        assert len(fake.called("system_time_ns")) == 3
        assert fake.open_connections == 1


@pytest.mark.usefixtures("quick_reconnect")
async def test_a_reconnection_resumes_events_from_the_last_one_seen(
    fake: FakeEngine, packaged: FakePackage
) -> None:
    """The new subscription starts at the last event seen, not at the engine's clock."""
    async with watching(fake, packaged):
        container = fake.add_container("web", PACKAGE)
        seen = fake.emit("start", container)
        await fake.wait_until(lambda: packaged.containers() == [container.id])
        stopped(container)  # so the re-listing does not submit it again
        fake.clock_ns += 10**9
        fake.end_events()
        await fake.wait_until(lambda: fake.open_connections == 1 and len(fake.connections) == 2)
        assert fake.connections[1].since_ns == seen.time_nano
        # The replayed last event is not taken for a new one.
        assert await started_after(fake, packaged) == [container.id]


async def test_repeated_events_are_dropped(fake: FakeEngine, packaged: FakePackage) -> None:
    """The very same event twice (same container, action, time) submits one job."""
    async with watching(fake, packaged):
        container = fake.add_container("web", PACKAGE)
        event = fake.emit("start", container)
        await fake.wait_until(lambda: packaged.containers() == [container.id])
        fake.resend(event)
        assert await started_after(fake, packaged) == [container.id]


async def loads_watched(fake: FakeEngine) -> None:
    """Until the watcher's image-load stream is open."""
    await fake.wait_until(lambda: any(c.open for c in fake.load_connections))


async def test_a_dead_jobs_pending_image_loaded_after_the_sweep_goes_at_its_load_event(
    fake: FakeEngine, packaged: FakePackage, dead: str
) -> None:
    """The engine finishing a killed job's load after the sweep: that image goes on its event."""
    async with watching(fake, packaged):
        await loads_watched(fake)
        image = fake.add_image(repo_tags=[pending_tag("job1", dead)])
        fake.emit_load(image)
        await fake.wait_until(lambda: image.id not in fake.images)


async def test_a_live_makers_pending_image_stays_through_a_load_event(
    fake: FakeEngine, packaged: FakePackage, dead: str, live: str
) -> None:
    """A load event looks at pending tags; another live process's stays."""
    async with watching(fake, packaged):
        await loads_watched(fake)
        kept = fake.add_image(repo_tags=[pending_tag("job1", live)])
        fake.emit_load(kept)
        gone = fake.add_image(repo_tags=[pending_tag("job2", dead)])
        fake.emit_load(gone)
        await fake.wait_until(lambda: gone.id not in fake.images)
        assert kept.id in fake.images


async def test_a_pending_image_loaded_while_the_load_stream_was_down_goes_at_reconnection(
    fake: FakeEngine, packaged: FakePackage, dead: str, quick_reconnect: None
) -> None:
    """A load missed between two subscriptions is found by the look at reconnection."""
    async with watching(fake, packaged):
        await loads_watched(fake)
        fake.break_events(EngineUnreachable("cannot reach the Docker engine at test"))
        image = fake.add_image(repo_tags=[pending_tag("job1", dead)])
        await fake.wait_until(lambda: image.id not in fake.images)
        assert len(fake.load_connections) == 2


async def test_a_dead_makers_temporary_commit_finished_after_the_sweep_goes_at_its_event(
    fake: FakeEngine, packaged: FakePackage, dead: str
) -> None:
    """The commit event names the image and its comment: a dead maker's temporary image goes."""
    async with watching(fake, packaged):
        container = fake.add_container("web", PACKAGE)
        image = fake.add_image(comment=comment_of("job1", dead))
        fake.emit("commit", container, extra={"comment": image.comment, "imageID": image.id})
        await fake.wait_until(lambda: image.id not in fake.images)


async def test_a_live_makers_commit_event_removes_nothing(
    fake: FakeEngine, packaged: FakePackage, live: str
) -> None:
    """Another live process's temporary commit is its work in progress: kept, and no job."""
    async with watching(fake, packaged):
        container = fake.add_container("web", {**PACKAGE, "kegpack.trigger": "stop"})
        image = fake.add_image(comment=comment_of("job1", live))
        fake.emit("commit", container, extra={"comment": image.comment, "imageID": image.id})
        assert await started_after(fake, packaged) == []
        assert image.id in fake.images
