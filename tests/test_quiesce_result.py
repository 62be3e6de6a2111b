"""How long a source was paused or stopped: in the job's JSON, the jobs table and the
``kegpack_source_quiesced_seconds`` histogram, by mode."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from kegpackd.cli import jobs_table
from kegpackd.daemon.metrics import Metrics
from kegpackd.packaging.jobs import (
    EventKind,
    JobEvent,
    JobRecord,
    JobRequest,
    JobResult,
    JobState,
    job_json,
)


def record(quiesce: str, seconds: float | None) -> JobRecord:
    result = JobResult(job_id="j1", quiesce=quiesce, quiesced_seconds=seconds)
    return JobRecord(
        request=JobRequest(container="web", job_id="j1"),
        state=JobState.SUCCEEDED,
        started=1000.0,
        finished=1010.0,
        result=result,
    )


def test_the_job_json_says_the_mode_and_how_long_the_source_was_stopped() -> None:
    """quiesce and quiesced_seconds (rounded to ms); null seconds when it was not quiesced."""
    assert {k: job_json(record("stop", 2.34567))[k] for k in ("quiesce", "quiesced_seconds")} == {
        "quiesce": "stop",
        "quiesced_seconds": 2.346,
    }
    assert job_json(record("stop", None))["quiesced_seconds"] is None


def test_the_jobs_table_shows_the_stop_beside_the_duration() -> None:
    """kegpackd jobs: "10.0s (stop 2.3s)" for a job that stopped its source."""
    lines = jobs_table([job_json(record("stop", 2.34))], 200)
    assert "10.0s (stop 2.3s)" in lines[1]


def test_quiesced_seconds_are_observed_by_mode() -> None:
    """A finished job that paused its source adds one observation to mode="pause" only."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, process=False)
    metrics.on_job_event(JobEvent(EventKind.FINISHED, record("pause", 1.5)))
    metrics.on_job_event(JobEvent(EventKind.FINISHED, record("none", None)))
    name = "kegpack_source_quiesced_seconds"
    assert registry.get_sample_value(f"{name}_count", {"mode": "pause"}) == 1
    assert registry.get_sample_value(f"{name}_sum", {"mode": "pause"}) == 1.5
    assert registry.get_sample_value(f"{name}_count", {"mode": "stop"}) == 0
