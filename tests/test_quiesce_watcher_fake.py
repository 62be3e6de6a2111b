"""The daemon's watcher and stop mode: the die and start of a source that a job of ours
stopped and started again for its copy are not triggers (a start trigger would package it
again, and stop it again, for ever); the same events outside such a stop still are."""

from __future__ import annotations

import pytest

from kegpackd.packaging.stoprecord import OwnStops
from tests.fakeengine import Changes, FakeEngine, FakePackage
from tests.test_watcher_fake import PACKAGE, started_after, watching


@pytest.fixture
def packaged(changes: Changes) -> FakePackage:
    return FakePackage(changes)


@pytest.fixture
def stops(monkeypatch: pytest.MonkeyPatch) -> OwnStops:
    fresh = OwnStops()
    monkeypatch.setattr("kegpackd.daemon.watcher.own_stops", fresh)
    return fresh


async def test_the_start_of_a_source_our_job_restarted_is_no_trigger(
    fake: FakeEngine, packaged: FakePackage, stops: OwnStops
) -> None:
    """A start event inside one of our stop windows submits nothing."""
    async with watching(fake, packaged):
        container = fake.add_container("web", PACKAGE)
        stops.begin(container.id, fake.clock_ns)
        fake.emit("start", container)
        stops.end(container.id, fake.clock_ns)
        assert await started_after(fake, packaged) == []


async def test_the_die_of_a_source_our_job_stopped_is_no_stop_trigger(
    fake: FakeEngine, packaged: FakePackage, stops: OwnStops
) -> None:
    """kegpack.trigger=stop: the die our stop caused packages nothing."""
    async with watching(fake, packaged):
        container = fake.add_container("db", {**PACKAGE, "kegpack.trigger": "stop"})
        stops.begin(container.id, fake.clock_ns)
        container.running = False
        fake.emit("die", container)
        assert await started_after(fake, packaged) == []


async def test_a_start_after_our_stop_window_is_a_trigger_again(
    fake: FakeEngine, packaged: FakePackage, stops: OwnStops
) -> None:
    """Once our job started the source again, a later start (someone else's) is a trigger."""
    async with watching(fake, packaged):
        container = fake.add_container("web", PACKAGE)
        stops.begin(container.id, fake.clock_ns)
        stops.end(container.id, fake.clock_ns)
        fake.emit("start", container)
        await fake.wait_until(lambda: packaged.containers() == [container.id])
