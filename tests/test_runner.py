"""The job runner: how a job's end becomes its record's state and message, for the
scheduler, a Compose project and the CLI alike (``package`` itself is a stand-in)."""

from __future__ import annotations

import anyio

from kegpackd.config import Config, PackagingConfig
from kegpackd.errors import PackagingError
from kegpackd.packaging.jobs import JobRecord, JobRequest, JobState
from kegpackd.packaging.runner import CANCELLED, PipelineRunner
from tests.fakeengine import Changes, FakeEngine, FakePackage

LIMIT = 1.0


def record() -> JobRecord:
    return JobRecord(request=JobRequest(container="c" * 64))


async def test_a_job_that_ends_records_succeeded_and_its_own_result(
    fake: FakeEngine, changes: Changes
) -> None:
    """Success: state succeeded, no error, and the record's result is the one the job filled."""
    job = record()
    with anyio.fail_after(LIMIT):
        await PipelineRunner(FakePackage(changes))(fake, Config(), job)
    assert (job.state, job.error) == (JobState.SUCCEEDED, "")
    assert job.result.job_id == job.request.job_id


async def test_a_job_past_job_timeout_fails_saying_after_how_long(
    fake: FakeEngine, changes: Changes
) -> None:
    """A job still running at ``packaging.job_timeout`` is failed: "timed out after Ns"."""
    job = record()
    config = Config(packaging=PackagingConfig(job_timeout=0.05))
    with anyio.fail_after(LIMIT):
        await PipelineRunner(FakePackage(changes, block=True))(fake, config, job)
    assert (job.state, job.error) == (JobState.FAILED, "timed out after 0s")


async def test_our_error_fails_the_job_with_its_sentence(
    fake: FakeEngine, changes: Changes
) -> None:
    """A KegpackError's one-line message is the record's error, unchanged."""
    job = record()
    failing = FakePackage(changes, error=PackagingError("mount /data is gone"))
    await PipelineRunner(failing)(fake, Config(), job)
    assert (job.state, job.error) == (JobState.FAILED, "mount /data is gone")


async def test_a_crash_fails_the_job_as_an_internal_error(
    fake: FakeEngine, changes: Changes
) -> None:
    """Any other exception is a failed job that says "internal error" and the type."""
    job = record()
    await PipelineRunner(FakePackage(changes, error=ValueError("bad")))(fake, Config(), job)
    assert (job.state, job.error) == (JobState.FAILED, "internal error: ValueError: bad")


async def test_a_cancelled_job_is_recorded_cancelled_and_the_cancellation_goes_on(
    fake: FakeEngine, changes: Changes
) -> None:
    """Cancellation marks the record and still reaches the caller's scope."""
    job = record()
    gated = FakePackage(changes, block=True)
    with anyio.fail_after(LIMIT), anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(PipelineRunner(gated), fake, Config(), job)
            await changes.wait_until(lambda: gated.running == 1)
            scope.cancel()
    assert scope.cancelled_caught
    assert (job.state, job.error) == (JobState.CANCELLED, CANCELLED)
