"""The job runner: one job under ``packaging.job_timeout``, its outcome as a record.

The scheduler, a Compose project and the one-shot CLI all run jobs; each is handed a
``JobRunner`` rather than calling ``package()`` itself, so the three share one timeout and
one mapping of success, failure, timeout and cancellation to a state and a message, and
their tests hand them a runner of their own instead of patching a module.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Protocol

import anyio

from kegpackd.config import Config
from kegpackd.engine.port import EnginePort
from kegpackd.errors import KegpackError
from kegpackd.packaging.jobs import JobRecord, JobRequest, JobResult, JobState, Progress
from kegpackd.packaging.pipeline import package

log = logging.getLogger(__name__)

# Every caller's jobs are cancelled only as its process winds down (the daemon's drain,
# a one-shot run's signal), so that is what a cancelled record says.
CANCELLED = "cancelled at shutdown"


class JobRunner(Protocol):
    """Runs ``record.request``'s job and writes its outcome into ``record``."""

    async def __call__(
        self,
        engine: EnginePort,
        config: Config,
        record: JobRecord,
        progress: Progress | None = None,
        *,
        docker_config_dir: Path | None = None,
    ) -> None:
        """Fill ``record.result``, ``state`` and ``error``; never raise but cancellation,
        which is re-raised once the record says ``cancelled``."""
        ...


class PackageFunction(Protocol):
    """``package()``'s shape: what ``PipelineRunner`` runs (a test may hand it a stand-in)."""

    def __call__(
        self,
        engine: EnginePort,
        config: Config,
        request: JobRequest,
        progress: Progress | None = None,
        *,
        docker_config_dir: Path | None = None,
        result: JobResult | None = None,
    ) -> Awaitable[JobResult]: ...


class PipelineRunner:
    """The production runner: the packaging pipeline, bounded by ``packaging.job_timeout``."""

    def __init__(self, job: PackageFunction = package) -> None:
        self.job = job

    async def __call__(
        self,
        engine: EnginePort,
        config: Config,
        record: JobRecord,
        progress: Progress | None = None,
        *,
        docker_config_dir: Path | None = None,
    ) -> None:
        request = record.request
        # The record's result is the job's own from the start: what a failed or cancelled
        # job got done (its cleanup failures, its container's name) stays readable.
        record.result.job_id = request.job_id
        timeout = config.packaging.job_timeout
        with recording(record, timeout), anyio.fail_after(timeout):
            await self.job(
                engine,
                config,
                request,
                progress,
                docker_config_dir=docker_config_dir,
                result=record.result,
            )
            record.state = JobState.UNCHANGED if record.result.unchanged else JobState.SUCCEEDED


@contextlib.contextmanager
def recording(record: JobRecord, timeout: float | None = None) -> Iterator[None]:
    """The one mapping of how a job's work ended to ``record``'s state and message.

    An error ends the block (``FAILED``, the error's sentence); cancellation is re-raised
    once the record says ``CANCELLED``. ``timeout`` is the deadline the block ran under,
    for its message. The scheduler's skip check runs in it too, so that its engine errors
    read as a job's.
    """
    try:
        yield
    except TimeoutError as exc:
        if timeout is None:
            _crashed(record, exc)
        else:
            _fail(record, f"timed out after {timeout:.0f}s")
    except KegpackError as exc:
        _fail(record, str(exc))
    except anyio.get_cancelled_exc_class():
        record.state, record.error = JobState.CANCELLED, CANCELLED
        raise
    except Exception as exc:
        _crashed(record, exc)


def _crashed(record: JobRecord, exc: Exception) -> None:
    log.exception("job %s crashed", record.request.job_id)
    _fail(record, f"internal error: {type(exc).__name__}: {exc}")


def _fail(record: JobRecord, error: str) -> None:
    record.state, record.error = JobState.FAILED, error
