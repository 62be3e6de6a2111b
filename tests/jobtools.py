"""Job events as the scheduler publishes them, for tests of its subscribers (the journal,
the webhook) that need no scheduler."""

from __future__ import annotations

from kegpackd.packaging.jobs import EventKind, JobEvent, JobRecord, JobRequest, JobState


def finished_event(job_id: str, state: JobState = JobState.SUCCEEDED) -> JobEvent:
    """The finished event of job ``job_id`` (a 64-character container id), which ran from
    second 1000 to 1001.5 of the epoch and ended in ``state``."""
    record = JobRecord(request=JobRequest(container="c" * 64, job_id=job_id), state=state)
    record.started, record.finished = 1000.0, 1001.5
    return JobEvent(EventKind.FINISHED, record)
