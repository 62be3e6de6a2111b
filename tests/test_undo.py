"""A job's undo log (``packaging/undo.py``) on the fake engine: every step runs, every
failure is recorded, and nothing the job did not make goes."""

from __future__ import annotations

from kegpackd.errors import EngineError
from kegpackd.packaging.jobs import JobResult
from kegpackd.packaging.undo import UndoLog
from tests.fakeengine import FakeEngine


async def test_cleanup_removes_every_temporary_image_even_when_one_removal_fails() -> None:
    """The newest image's removal fails: the older one still goes, and the failure is recorded."""
    fake = FakeEngine()
    older, newer = fake.add_image(), fake.add_image()
    result = JobResult(job_id="job")
    undo = UndoLog(fake, "job", result)
    undo.made(older.id)
    undo.made(newer.id)
    fake.fail_next("remove_image", EngineError("image is in use"))
    await undo.cleanup()
    assert set(fake.images) == {newer.id}
    assert result.cleanup_failures == [f"remove image {newer.id}: image is in use"]


async def test_cleanup_keeps_a_final_image_that_existed_before_the_job() -> None:
    """skip_unchanged reused an image that got no new reference: it is not the job's to remove."""
    fake = FakeEngine()
    latest = fake.add_image()
    undo = UndoLog(fake, "job", JobResult(job_id="job"))
    undo.final_image, undo.existing = latest.id, True
    await undo.cleanup()
    assert latest.id in fake.images
