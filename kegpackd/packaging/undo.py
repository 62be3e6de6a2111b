"""The undo log of one job: what it made that is temporary, removed in every outcome.

Kept apart from the stages that make things so that cleanup reads as one list, and so that
a failure to undo is recorded (the job's ``cleanup_failures``) rather than raised over the
job's own outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from kegpackd.engine.port import EnginePort
from kegpackd.errors import EngineError
from kegpackd.packaging.jobs import JobResult

log = logging.getLogger(__name__)

# The bound of each cleanup step that waits on the engine (undo, start the source again).
CLEANUP_DEADLINE = 60.0


class UndoLog:
    """The images and the pending tag a job made, and which of them its outcome keeps."""

    def __init__(self, engine: EnginePort, job_id: str, result: JobResult) -> None:
        self.engine = engine
        self.job_id = job_id
        self.result = result
        # Temporary images (the commit), removed newest first.
        self.images: list[str] = []
        # The job's image: removed unless it got a final tag or existed before the job.
        self.final_image: str | None = None
        # The final image existed before this job (skip_unchanged): never removed by it.
        self.existing = False
        # The pending tag (repository, tag) the load put on the image until it is final.
        self.pending: tuple[str, str] | None = None

    def made(self, image: str) -> None:
        """Note a temporary image, as soon as the engine answered with its id."""
        self.images.append(image)

    async def drop_pending(self) -> None:
        """Remove the pending tag; an image that has no final tag goes with it."""
        if self.pending is not None:
            repository, tag = self.pending
            await self.engine.remove_image(f"{repository}:{tag}")
            self.pending = None

    async def cleanup(self) -> None:
        """Undo everything temporary; each step runs even when an earlier one failed."""
        await self.attempt("drop the pending tag", self.drop_pending())
        if self.final_image is not None and not self.result.references and not self.existing:
            await self.attempt(
                f"remove image {self.final_image}", self.engine.remove_image(self.final_image)
            )
        for image in reversed(self.images):
            await self.attempt(f"remove image {image}", self.engine.remove_image(image))

    async def attempt(self, what: str, step: Awaitable[object]) -> None:
        """Run one cleanup step; an engine error is recorded and logged, not raised."""
        try:
            await step
        except EngineError as exc:
            self.result.cleanup_failures.append(f"{what}: {exc}")
            log.warning("job %s: cleanup could not %s: %s", self.job_id, what, exc)

    def failed(self, message: str) -> None:
        """Record a cleanup failure that is not an engine error of one step."""
        self.result.cleanup_failures.append(message)
        log.warning("job %s: %s", self.job_id, message)
