"""Job-end notifications against a real HTTP receiver on loopback: signed, retried, bounded.

The scheduler runs on the in-memory engine with a fake ``package``; a real daemon sending
to a receiver is in test_lifecycle.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio
import pytest
from aiohttp import web

from kegpackd import backoff
from kegpackd.config import NOTIFY_ON, Config, NotifyConfig, PackagingConfig
from kegpackd.daemon.metrics import Metrics
from kegpackd.daemon.scheduler import Scheduler
from kegpackd.daemon.webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, Notifier, signature
from kegpackd.engine.credentials import Secret
from kegpackd.packaging.jobs import EventKind, JobEvent, JobRecord, JobRequest, JobState
from kegpackd.packaging.runner import PipelineRunner
from kegpackd.packaging.triggers import TriggerName
from tests.fakeengine import Changes, FakeEngine, FakePackage

LIMIT = 10.0
SECRET = "s3cr3t-never-logged"


@dataclass
class Receiver:
    """A webhook endpoint: answers with ``statuses`` in turn (then 200), records each POST."""

    statuses: list[int] = field(default_factory=list)
    posts: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    changes: Changes = field(default_factory=Changes)
    url: str = ""
    delay: float = 0.0
    redirect: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.posts.append((dict(request.headers), body))
        self.changes.notify()
        if self.delay:
            await anyio.sleep(self.delay)
        if self.redirect:
            raise web.HTTPFound(self.redirect)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)

    def accepted(self) -> list[dict[str, object]]:
        return [json.loads(body) for _headers, body in self.posts]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hook/{token}", found.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # aiohttp exposes no public accessor
    found.url = f"http://127.0.0.1:{port}/hook/tok-in-path"
    try:
        yield found
    finally:
        await runner.cleanup()


def notify_config(
    receiver: Receiver, *, timeout: float = 5.0, retries: int = 3, on: tuple[str, ...] = NOTIFY_ON
) -> NotifyConfig:
    return NotifyConfig(
        webhook_url=receiver.url, secret=Secret(SECRET), timeout=timeout, retries=retries, on=on
    )


@pytest.fixture(autouse=True)
def quick_backoff() -> Iterator[None]:
    """Retries a millisecond apart: the schedule is the backoff's, tested on its own."""
    with backoff.in_test_mode():
        yield


def finished(job_id: str, state: JobState = JobState.SUCCEEDED) -> JobEvent:
    record = JobRecord(request=JobRequest(container="c" * 64, job_id=job_id), state=state)
    return JobEvent(EventKind.FINISHED, record)


@contextlib.asynccontextmanager
async def delivering(notifier: Notifier) -> AsyncIterator[Notifier]:
    """The notifier's sender for the block; closed (what is queued is sent) after it."""
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await tg.start(notifier.run)
            try:
                yield notifier
            finally:
                notifier.close()


async def test_each_post_signs_its_timestamp_with_the_body(receiver: Receiver) -> None:
    """X-Kegpack-Signature is sha256=HMAC-SHA256(secret, "<X-Kegpack-Timestamp>.<body>")."""
    before = int(time.time())
    async with delivering(Notifier(notify_config(receiver), Metrics(process=False))) as n:
        n.on_job_event(finished("a"))
    headers, body = receiver.posts[0]
    stamp = headers[TIMESTAMP_HEADER]
    assert before <= int(stamp) <= time.time()
    signed = stamp.encode() + b"." + body
    expected = "sha256=" + hmac.new(SECRET.encode(), signed, "sha256").hexdigest()
    assert hmac.compare_digest(headers[SIGNATURE_HEADER], expected)
    assert signature(SECRET, stamp, body) == expected
    assert json.loads(body)["id"] == "a"


async def test_a_replayed_post_with_a_new_timestamp_fails_verification(receiver: Receiver) -> None:
    """A captured POST sent again under a fresh timestamp no longer matches its signature."""
    async with delivering(Notifier(notify_config(receiver), Metrics(process=False))) as n:
        n.on_job_event(finished("a"))
    headers, body = receiver.posts[0]
    fresh = str(int(headers[TIMESTAMP_HEADER]) + 3600)
    what_the_receiver_expects = signature(SECRET, fresh, body)
    assert not hmac.compare_digest(headers[SIGNATURE_HEADER], what_the_receiver_expects)


async def test_a_redirect_is_not_followed_and_counts_as_failed(receiver: Receiver) -> None:
    """A 302 to another loopback server: nothing reaches it, and the delivery failed."""
    elsewhere = Receiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", elsewhere.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]  # no public accessor
    receiver.redirect = f"http://127.0.0.1:{port}/stolen"
    metrics = Metrics(process=False)
    try:
        async with delivering(Notifier(notify_config(receiver), metrics)) as n:
            n.on_job_event(finished("a"))
    finally:
        await runner.cleanup()
    assert len(receiver.posts) == 1
    assert elsewhere.posts == []
    assert metrics.notifications.labels("failed")._value.get() == 1
    assert metrics.notifications.labels("sent")._value.get() == 0


async def test_without_a_secret_there_is_no_signature(receiver: Receiver) -> None:
    """No secret_file: the POST goes unsigned (and says nothing about a secret)."""
    config = NotifyConfig(webhook_url=receiver.url)
    async with delivering(Notifier(config, Metrics(process=False))) as n:
        n.on_job_event(finished("a"))
    assert SIGNATURE_HEADER not in receiver.posts[0][0]


async def test_a_500_is_retried_until_it_is_taken(receiver: Receiver) -> None:
    """Two 500s, then 200: three POSTs of the same body, counted once as sent."""
    receiver.statuses = [500, 503]
    metrics = Metrics(process=False)
    async with delivering(Notifier(notify_config(receiver), metrics)) as n:
        n.on_job_event(finished("a"))
    assert len(receiver.posts) == 3
    assert len({body for _h, body in receiver.posts}) == 1
    assert metrics.notifications.labels("sent")._value.get() == 1


async def test_retries_are_bounded_and_then_counted_failed(receiver: Receiver) -> None:
    """retries = 1: two attempts at most, then the notification is given up."""
    receiver.statuses = [500] * 5
    metrics = Metrics(process=False)
    async with delivering(Notifier(notify_config(receiver, retries=1), metrics)) as n:
        n.on_job_event(finished("a"))
    assert len(receiver.posts) == 2
    assert metrics.notifications.labels("failed")._value.get() == 1


async def test_a_4xx_is_not_retried(receiver: Receiver) -> None:
    """A 404 will not change by trying again: one attempt, counted failed."""
    receiver.statuses = [404]
    metrics = Metrics(process=False)
    async with delivering(Notifier(notify_config(receiver), metrics)) as n:
        n.on_job_event(finished("a"))
    assert len(receiver.posts) == 1
    assert metrics.notifications.labels("failed")._value.get() == 1


async def test_a_slow_receiver_is_cut_off_at_the_timeout(receiver: Receiver) -> None:
    """Each attempt is bounded by notify.timeout; a hung receiver costs no more."""
    receiver.delay = 1.0
    metrics = Metrics(process=False)
    config = notify_config(receiver, timeout=0.2, retries=1)
    with anyio.fail_after(3):
        async with delivering(Notifier(config, metrics)) as n:
            n.on_job_event(finished("a"))
    assert metrics.notifications.labels("failed")._value.get() == 1


async def test_only_the_chosen_outcomes_are_sent(receiver: Receiver) -> None:
    """on = ["failed"]: a succeeded job sends nothing, a failed one sends its POST."""
    async with delivering(
        Notifier(notify_config(receiver, on=("failed",)), Metrics(process=False))
    ) as n:
        n.on_job_event(finished("ok"))
        n.on_job_event(finished("bad", JobState.FAILED))
    assert [p["id"] for p in receiver.accepted()] == ["bad"]


async def test_no_secret_and_no_url_path_in_any_log(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """Failures are logged by the receiver's host only; the secret and the path's token never."""
    receiver.statuses = [500, 500]
    with caplog.at_level(logging.DEBUG):
        async with delivering(
            Notifier(notify_config(receiver, retries=1), Metrics(process=False))
        ) as n:
            n.on_job_event(finished("a"))
    assert "http://127.0.0.1:" in caplog.text
    assert SECRET not in caplog.text
    assert "tok-in-path" not in caplog.text


@pytest.fixture
def packaged(changes: Changes) -> FakePackage:
    return FakePackage(changes)


async def test_a_notification_follows_its_jobs_finished_event_in_finishing_order(
    fake: FakeEngine, packaged: FakePackage, receiver: Receiver
) -> None:
    """Each POST arrives after its job's finished event, one per job, in the order they finished."""
    scheduler = Scheduler(
        fake, Config(packaging=PackagingConfig(concurrency=1)), runner=PipelineRunner(packaged)
    )
    seen: list[tuple[str, str]] = []
    scheduler.events.subscribe(lambda e: seen.append((str(e.kind), e.record.request.job_id)))
    notifier = Notifier(notify_config(receiver), Metrics(process=False))
    scheduler.events.subscribe(notifier.on_job_event)
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await tg.start(notifier.run)
            await tg.start(scheduler.run)
            jobs = [
                scheduler.submit(JobRequest(container=c, trigger=TriggerName.MANUAL)) for c in "abc"
            ]
            ids = [j.request.job_id for j in jobs if j is not None]
            await receiver.changes.wait_until(lambda: len(receiver.posts) == 3)
            tg.cancel_scope.cancel()
    finished_order = [job for kind, job in seen if kind == EventKind.FINISHED]
    assert finished_order == ids
    assert [p["id"] for p in receiver.accepted()] == ids
    assert {p["state"] for p in receiver.accepted()} == {"succeeded"}
