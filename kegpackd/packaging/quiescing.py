"""Quiescing the source around the copy: exec-before, pause or stop, then start it again
and exec-after.

Apart from the stages because the quiesce modes change on their own (a new mode, Podman's
differences, the stop record of a daemon that dies mid-job), and because its state (what
this job paused or stopped) must be released whatever the job's outcome.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anyio

from kegpackd.engine.models import ContainerInfo
from kegpackd.engine.port import EnginePort
from kegpackd.errors import EngineError, NotFoundError, PackagingError
from kegpackd.packaging.incontainer import Command, run_command
from kegpackd.packaging.jobs import JobResult, Progress, Stage
from kegpackd.packaging.options import JobOptions
from kegpackd.packaging.stoprecord import own_stops, remove_record, write_record
from kegpackd.packaging.undo import CLEANUP_DEADLINE

log = logging.getLogger(__name__)

# How often a source being stopped is tried again when it must run again.
RESTART_POLL = 0.1


def check_quiesce(info: ContainerInfo, options: JobOptions) -> None:
    """A source paused by someone else can neither be stopped (and started again as
    it was) nor run a command: refused before anything is done."""
    if not info.paused:
        return
    if options.quiesce == "stop":
        raise PackagingError(
            f"container {info.name} is paused, and not by kegpackd: stop mode (from "
            f"{options.quiesce_source}) does not stop a paused container; unpause it first"
        )
    if options.exec_before or options.exec_after:
        source = options.exec_before_source if options.exec_before else options.exec_after_source
        raise PackagingError(
            f"container {info.name} is paused, and not by kegpackd: the command of "
            f"{source} cannot run in it; unpause it first"
        )


class Quiescing:
    """What one job did to its source, so that exactly that is undone, once."""

    def __init__(
        self,
        engine: EnginePort,
        state_dir: Path,
        job_id: str,
        progress: Progress,
        result: JobResult,
    ) -> None:
        self.engine = engine
        self.state_dir = state_dir
        self.job_id = job_id
        self.progress = progress
        self.result = result
        self.paused: str | None = None
        # Stop mode: the source this job stopped, and the record of it (see stoprecord).
        self.stopped: tuple[str, str] | None = None  # (id, StartedAt of the stopped run)
        self.stop_record: Path | None = None
        self.quiesced_since = 0.0
        # The exec-after command, due once the exec-before one has started (or would have).
        self.after: tuple[str, str, Command] | None = None

    async def before(self, info: ContainerInfo, options: JobOptions) -> None:
        """The exec-before command, while the source runs; from here on, exec-after is due."""
        if not info.running or not (options.exec_before or options.exec_after):
            if options.exec_before or options.exec_after:
                log.info(
                    "job %s: container %s is not running: its exec commands are not run",
                    self.job_id,
                    info.name,
                )
            return
        if options.exec_after:
            after = Command(
                "exec-after", options.exec_after, options.exec_after_source,
                options.exec_timeout, options.exec_timeout_source,
            )  # fmt: skip
            self.after = (info.id, info.name, after)
        if options.exec_before:
            before = Command(
                "exec-before", options.exec_before, options.exec_before_source,
                options.exec_timeout, options.exec_timeout_source,
            )  # fmt: skip
            self.progress.stage(Stage.COMMIT, f"exec-before {before.shown}")
            await run_command(self.engine, info.id, info.name, before, self.job_id)

    async def quiesce(self, info: ContainerInfo, options: JobOptions) -> None:
        """Pause or stop a running source for the copy; stop mode writes its record first."""
        if not info.running or info.paused or options.quiesce == "none":
            return
        self.quiesced_since = time.monotonic()
        if options.quiesce == "pause":
            await self.engine.pause(info.id)
            self.paused = info.id
            return
        self.stop_record = await anyio.to_thread.run_sync(
            write_record, self.state_dir, info.id, info.name, self.job_id
        )
        # From here on the source is started again (a no-op if it never stopped) and the
        # record removed, whatever happens.
        self.stopped = (info.id, info.started_at)
        own_stops.begin(info.id, await self.engine.system_time_ns())
        self.progress.stage(Stage.COMMIT, f"stopping {info.name}")
        await self.engine.stop(info.id)

    async def release(self) -> None:
        """Unpause, or start again, the source this job paused or stopped (and only it)."""
        if self.paused is not None:
            source, self.paused = self.paused, None
            await self.engine.unpause(source)
            self._quiesced("pause")
        if self.stopped is not None:
            (source, run), self.stopped = self.stopped, None
            try:
                await self._start_again(source, run)
            except NotFoundError:
                pass  # removed meanwhile: nothing to start
            except EngineError as exc:
                log.error(
                    "job %s: the source %s, stopped for the copy, could not be started again "
                    "(%s); its stop record stays, and the next kegpackd to start retries",
                    self.job_id, source[:12], exc,
                )  # fmt: skip
                raise
            self._quiesced("stop")
            own_stops.end(source, await self.engine.system_time_ns())
            if self.stop_record is not None:
                await anyio.to_thread.run_sync(remove_record, self.stop_record)
                self.stop_record = None

    async def _start_again(self, container_id: str, stopped_run: str) -> None:
        """Start the stopped source, until a new run of it is up: a job cancelled during
        its stop call leaves the engine stopping the old run, which a start alone would
        find still running and leave to die."""
        with anyio.fail_after(CLEANUP_DEADLINE):
            while True:
                await self.engine.start(container_id)
                info = await self.engine.inspect_container(container_id)
                if info.running and info.started_at != stopped_run:
                    return
                await anyio.sleep(RESTART_POLL)

    def _quiesced(self, mode: str) -> None:
        self.result.quiesced_seconds = time.monotonic() - self.quiesced_since
        log.info(
            "job %s: the source was %s for %.2f s",
            self.job_id,
            "paused" if mode == "pause" else "stopped",
            self.result.quiesced_seconds,
        )

    async def run_after(self) -> None:
        """The exec-after command, once, when the source runs again."""
        if self.after is not None:
            container_id, name, after, self.after = *self.after, None
            await run_command(self.engine, container_id, name, after, self.job_id)
