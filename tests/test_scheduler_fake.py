"""The scheduler on the in-memory engine: merging, follow-ups, limits, shutdown, skips, events.

Packaging is a stand-in (``FakePackage``, run by the real ``PipelineRunner``) that can hold
a job "running" while a test submits more; what the engine itself decides is tested against
the real one elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from kegpackd.config import Config, PackagingConfig
from kegpackd.daemon.scheduler import Scheduler
from kegpackd.engine.client import Engine
from kegpackd.engine.port import EnginePort
from kegpackd.errors import JobConflict
from kegpackd.packaging.jobs import EventKind, JobEvent, JobRequest, JobState
from kegpackd.packaging.markers import run_key_labels
from kegpackd.packaging.options import Overrides
from kegpackd.packaging.runner import PipelineRunner
from kegpackd.packaging.triggers import TriggerName
from tests.fakeengine import Changes, FakeEngine, FakePackage

LIMIT = 1.0  # seconds any one wait may take


def _engine_is_an_engine_port(engine: Engine) -> EnginePort:
    """Type-checked only: mypy (strict) must accept the real engine as an ``EnginePort``."""
    return engine


def config(concurrency: int = 1) -> Config:
    return Config(packaging=PackagingConfig(concurrency=concurrency))


@pytest.fixture
def packaged(changes: Changes) -> Iterator[FakePackage]:
    """A stand-in for ``package`` whose jobs run until ``packaged.gate`` is set."""
    fake_package = FakePackage(changes, block=True)
    yield fake_package
    fake_package.gate.set()


@contextlib.asynccontextmanager
async def running(scheduler: Scheduler) -> AsyncIterator[Scheduler]:
    """The scheduler's workers, for the block; cancelled after it."""
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await tg.start(scheduler.run)
            try:
                yield scheduler
            finally:
                tg.cancel_scope.cancel()


def manual(container: str, tags: tuple[str, ...] = ()) -> JobRequest:
    return JobRequest(
        container=container, trigger=TriggerName.MANUAL, overrides=Overrides(tags=tags)
    )


async def test_a_trigger_for_a_queued_job_merges_into_it(
    fake: FakeEngine, packaged: FakePackage, changes: Changes
) -> None:
    """A second request for a container whose job is still queued returns that job."""
    scheduler = Scheduler(fake, config(), runner=PipelineRunner(packaged))
    first = scheduler.submit(manual("a"))
    assert scheduler.submit(manual("a")) is first
    packaged.gate.set()
    async with running(scheduler):
        await changes.wait_until(lambda: len(packaged.finished) == 1)
        await anyio.wait_all_tasks_blocked()
    assert packaged.containers() == ["a"]
    assert len(scheduler.history) == 1


async def test_a_trigger_while_its_job_runs_queues_exactly_one_follow_up(
    fake: FakeEngine, packaged: FakePackage, changes: Changes
) -> None:
    """Triggers during a running job become one follow-up, which runs after the job ends."""
    scheduler = Scheduler(fake, config(concurrency=2), runner=PipelineRunner(packaged))
    async with running(scheduler):
        current = scheduler.submit(manual("a"))
        await changes.wait_until(lambda: packaged.running == 1)
        follow_up = scheduler.submit(manual("a"))
        assert follow_up is not None
        assert follow_up is not current
        assert scheduler.submit(manual("a")) is follow_up
        await anyio.wait_all_tasks_blocked()
        assert packaged.running == 1  # not alongside, although a second slot is free
        packaged.gate.set()
        await changes.wait_until(lambda: len(packaged.finished) == 2)
    assert packaged.containers() == ["a", "a"]
    assert [r.state for r in scheduler.history] == [JobState.SUCCEEDED] * 2
    assert packaged.started[1] is follow_up.request


async def test_a_manual_request_with_other_options_than_the_waiting_job_is_a_conflict(
    fake: FakeEngine, packaged: FakePackage
) -> None:
    """Merged, a request with other tags would be lost: it is refused with JobConflict."""
    scheduler = Scheduler(fake, config(), runner=PipelineRunner(packaged))
    scheduler.submit(manual("a", ("one",)))
    with pytest.raises(JobConflict, match="other options"):
        scheduler.submit(manual("a", ("two",)))


async def test_a_manual_request_with_the_same_options_merges(
    fake: FakeEngine, packaged: FakePackage
) -> None:
    """The same options as the waiting job's: the request merges into it."""
    scheduler = Scheduler(fake, config(), runner=PipelineRunner(packaged))
    first = scheduler.submit(manual("a", ("one",)))
    assert scheduler.submit(manual("a", ("one",))) is first


async def test_no_more_jobs_run_at_once_than_the_concurrency(
    fake: FakeEngine, packaged: FakePackage, changes: Changes
) -> None:
    """With concurrency 2, four containers' jobs run two at a time."""
    scheduler = Scheduler(fake, config(concurrency=2), runner=PipelineRunner(packaged))
    async with running(scheduler):
        for name in "abcd":
            scheduler.submit(manual(name))
        await changes.wait_until(lambda: packaged.running == 2)
        await anyio.wait_all_tasks_blocked()
        assert packaged.running == 2
        assert scheduler.counts == {"queued": 2, "running": 2}
        packaged.gate.set()
        await changes.wait_until(lambda: len(packaged.finished) == 4)
    assert packaged.most_running == 2


async def test_reconfigure_with_a_higher_concurrency_runs_more_at_once(
    fake: FakeEngine, packaged: FakePackage, changes: Changes
) -> None:
    """Raising packaging.concurrency starts waiting jobs now, not after the running ones."""
    scheduler = Scheduler(fake, config(concurrency=1), runner=PipelineRunner(packaged))
    async with running(scheduler):
        for name in "abc":
            scheduler.submit(manual(name))
        await changes.wait_until(lambda: packaged.running == 1)
        scheduler.reconfigure(config(concurrency=3))
        await changes.wait_until(lambda: packaged.running == 3)


async def test_shutdown_drops_queued_jobs(
    fake: FakeEngine, packaged: FakePackage, changes: Changes
) -> None:
    """At shutdown a job still waiting for a slot ends dropped, and is never started."""
    scheduler = Scheduler(fake, config(concurrency=1), runner=PipelineRunner(packaged))
    async with running(scheduler):
        scheduler.submit(manual("a"))
        waiting = scheduler.submit(manual("b"))
        await changes.wait_until(lambda: packaged.running == 1)
        packaged.gate.set()
        await scheduler.shutdown(grace=LIMIT / 2)
    assert waiting is not None
    assert waiting.state == JobState.DROPPED
    assert packaged.containers() == ["a"]
    assert scheduler.submit(manual("c")) is None


async def test_shutdown_cancels_a_running_job_after_the_grace(
    fake: FakeEngine, packaged: FakePackage, changes: Changes
) -> None:
    """A job still running when the grace runs out is cancelled, and says so."""
    scheduler = Scheduler(fake, config(concurrency=1), runner=PipelineRunner(packaged))
    async with running(scheduler):
        record = scheduler.submit(manual("a"))
        await changes.wait_until(lambda: packaged.running == 1)
        await scheduler.shutdown(grace=0.05)
    assert record is not None
    assert record.state == JobState.CANCELLED
    assert record.error == "cancelled at shutdown"


async def test_an_automatic_trigger_for_a_packaged_run_is_skipped(
    fake: FakeEngine, packaged: FakePackage
) -> None:
    """A start trigger for a run that already has an image (its run-key labels) is skipped."""
    container = fake.add_container("web", {"kegpack.package": "true"})
    labels = dict(
        label.split("=", 1) for label in run_key_labels(container.id, container.started_at)
    )
    fake.add_image(repo_tags=["kegpack/web:v1"], labels=labels)
    scheduler = Scheduler(fake, config(), runner=PipelineRunner(packaged))
    record = scheduler.submit(JobRequest(container=container.id, trigger=TriggerName.START))
    async with running(scheduler):
        await anyio.wait_all_tasks_blocked()
    assert record is not None
    assert record.state == JobState.SKIPPED
    assert packaged.started == []


async def test_an_automatic_trigger_for_a_new_run_is_packaged(
    fake: FakeEngine, packaged: FakePackage, changes: Changes
) -> None:
    """The same trigger, when only an earlier run has an image, packages this run."""
    container = fake.add_container("web", {"kegpack.package": "true"})
    labels = dict(label.split("=", 1) for label in run_key_labels(container.id, "earlier"))
    fake.add_image(repo_tags=["kegpack/web:v1"], labels=labels)
    scheduler = Scheduler(fake, config(), runner=PipelineRunner(packaged))
    packaged.gate.set()
    scheduler.submit(JobRequest(container=container.id, trigger=TriggerName.START))
    async with running(scheduler):
        await changes.wait_until(lambda: len(packaged.finished) == 1)
    assert packaged.containers() == [container.id]


async def test_lifecycle_events_reach_a_subscriber_in_order(
    fake: FakeEngine, packaged: FakePackage, changes: Changes
) -> None:
    """A subscriber hears queued, started and finished, in that order, for the one job."""
    heard: list[JobEvent] = []

    def listen(event: JobEvent) -> None:
        heard.append(event)
        changes.notify()

    scheduler = Scheduler(fake, config(), runner=PipelineRunner(packaged))
    scheduler.events.subscribe(listen)
    packaged.gate.set()
    async with running(scheduler):
        record = scheduler.submit(manual("a"))
        await changes.wait_until(lambda: len(heard) == 3)
    assert [e.kind for e in heard] == [EventKind.QUEUED, EventKind.STARTED, EventKind.FINISHED]
    assert all(e.record is record for e in heard)
    assert heard[-1].record.state == JobState.SUCCEEDED


async def test_jobs_wait_while_the_engine_is_out_of_reach(
    fake: FakeEngine, packaged: FakePackage, changes: Changes
) -> None:
    """A job queued while the event stream is lost starts once it is back, not before."""
    scheduler = Scheduler(fake, config(), runner=PipelineRunner(packaged))
    packaged.gate.set()
    async with running(scheduler):
        scheduler.engine_reachable(False)
        record = scheduler.submit(manual("a"))
        assert record is not None
        await anyio.wait_all_tasks_blocked()
        assert (record.state, packaged.started) == (JobState.QUEUED, [])
        scheduler.engine_reachable(True)
        await changes.wait_until(lambda: len(packaged.finished) == 1)
    assert record.state == JobState.SUCCEEDED
