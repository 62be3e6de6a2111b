"""The job journal: finished jobs as JSON lines in the state directory.

So that ``/v1/jobs`` still shows yesterday's jobs after a restart (an upgrade, a reboot),
and the sweep still knows which jobs failed. Lines are appended by a task of the daemon's
own, fed by the job events, so a slow disk never holds a job up. The file is bounded: past
``limit`` bytes it becomes ``jobs.jsonl.1`` (one old generation). A crash can tear the
last line; loading skips a line that does not parse, with a warning, and the next append
starts on a fresh line. Only what ``/v1/jobs`` shows is written (no secret), to a file
only its owner can read.

The daemon runs as root: a state directory that other users can write would let them
plant ``jobs.jsonl`` as a symlink to any file, which the journal would then chmod and
append to. Such a directory is refused, and no journal file is opened through a symlink
(``O_NOFOLLOW``) in any case.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections import deque
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os
import anyio
from anyio.abc import TaskStatus

from kegpackd.errors import KegpackError
from kegpackd.packaging.jobs import EventKind, JobEvent, job_json

log = logging.getLogger(__name__)

JOURNAL_FILE = "jobs.jsonl"
ROTATE_BYTES = 1 << 20
# Jobs waiting to be written; past this (a disk that hangs) new ones are dropped, and said so.
BACKLOG = 1000
READ_LIMIT = 4 * ROTATE_BYTES


_NO_LINKS = os.O_NOFOLLOW | os.O_CLOEXEC


def _opener(path: str, flags: int) -> int:
    return os.open(path, flags | _NO_LINKS, 0o600)


class Journal:
    def __init__(self, state_dir: Path, limit: int = ROTATE_BYTES) -> None:
        self.path = state_dir / JOURNAL_FILE
        self.rotated = state_dir / (JOURNAL_FILE + ".1")
        self.limit = limit
        self._send, self._receive = anyio.create_memory_object_stream[bytes](BACKLOG)
        self._dropped = 0

    def prepare(self) -> None:
        """Create the state directory (owner only), refuse one that others can write, and
        tighten an existing journal's mode (never through a symlink)."""
        directory = self.path.parent
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            mode = directory.stat().st_mode
            if mode & 0o022:
                raise KegpackError(
                    f"config key daemon.state_dir: {directory} is writable by other users "
                    f"(mode {stat.S_IMODE(mode):04o}); make it writable by kegpackd's user only"
                )
            for path in (self.path, self.rotated):
                _tighten(path)
        except OSError as exc:
            raise KegpackError(
                f"config key daemon.state_dir: cannot use {directory}: {exc.strerror}"
            ) from None

    async def load(self, count: int) -> list[dict[str, Any]]:
        """The newest ``count`` jobs of the journal, oldest first; torn or bad lines skipped."""
        jobs: deque[dict[str, Any]] = deque(maxlen=count)
        for path in (self.rotated, self.path):
            try:
                async with aiofiles.open(path, "rb", opener=_opener) as handle:
                    data = await handle.read(READ_LIMIT)
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("job journal %s not read: %s", path, exc.strerror)
                continue
            lines = data.split(b"\n")
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    job = json.loads(line)
                    if not isinstance(job, dict) or not isinstance(job.get("id"), str):
                        raise ValueError("not a job")
                except ValueError:
                    torn = number == len(lines)
                    log.warning(
                        "job journal %s: line %d skipped (%s)",
                        path,
                        number,
                        "torn by a crash mid-write" if torn else "not a complete job record",
                    )
                    continue
                jobs.append(job)
        return list(jobs)

    def on_job_event(self, event: JobEvent) -> None:
        """A finished job, queued for writing (never waits)."""
        if event.kind != EventKind.FINISHED:
            return
        line = json.dumps(job_json(event.record), separators=(",", ":")).encode() + b"\n"
        try:
            self._send.send_nowait(line)
        except anyio.WouldBlock:
            self._dropped += 1
            log.warning("job journal: %d job(s) not written, the disk is behind", self._dropped)
        except anyio.ClosedResourceError:
            log.warning("job journal closed: job %s not written", event.record.request.job_id)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Append queued jobs until ``close``; the last line is finished first if torn."""
        await self._end_torn_line()
        task_status.started()
        async with self._receive:
            async for line in self._receive:
                try:
                    await self._append(line)
                except OSError as exc:
                    log.warning("job journal %s: not written: %s", self.path, exc.strerror)

    def close(self) -> None:
        """No more jobs: ``run`` writes what is queued, then returns."""
        self._send.close()

    async def _end_torn_line(self) -> None:
        try:
            async with aiofiles.open(self.path, "rb", opener=_opener) as handle:
                await handle.seek(0, os.SEEK_END)
                if await handle.tell() == 0:
                    return
                await handle.seek(-1, os.SEEK_END)
                last = await handle.read(1)
        except FileNotFoundError:
            return
        except OSError as exc:  # a symlink planted since prepare(): appends will fail too
            log.warning("job journal %s not read: %s", self.path, exc.strerror)
            return
        if last != b"\n":
            await self._append(b"\n")

    async def _append(self, line: bytes) -> None:
        async with aiofiles.open(self.path, "ab", opener=_opener) as handle:
            await handle.write(line)
            await handle.flush()
            size = await handle.tell()
        if size > self.limit:
            await aiofiles.os.replace(self.path, self.rotated)


def _tighten(path: Path) -> None:
    """Make an existing journal file 0600, through no symlink (one there is an error)."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NO_LINKS)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise KegpackError(
            f"config key daemon.state_dir: {path} is a symlink; the job journal is never "
            "written through one"
        ) from None
    try:
        if os.fstat(handle).st_mode & 0o077:
            os.fchmod(handle, 0o600)
    finally:
        os.close(handle)
