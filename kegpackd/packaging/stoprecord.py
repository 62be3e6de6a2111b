"""The durable record of a source that kegpackd stopped, so that it is never left down.

Stop mode stops the source for the copy and starts it again after, in every outcome this
process lives through. One it does not (SIGKILL, OOM) is covered by a file written, and
fsync'd, in ``<state_dir>/stopped/`` before the stop and removed after the start: the next
kegpackd to start (the daemon, or a one-shot run's start-up sweep) starts every container
whose record's maker is gone, and removes the record. It cannot be a label: labels are
fixed when a container is made.

As for the journal: the directory must be writable by kegpackd's user only, and no record
is opened through a symlink. A record names a container by id; starting it is all that is
done with it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
from collections import OrderedDict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import anyio

from kegpackd.engine.port import EnginePort
from kegpackd.errors import (
    EngineError,
    EngineUnreachable,
    InvalidValueError,
    KegpackError,
    NotFoundError,
)
from kegpackd.owner import current_token, is_alive
from kegpackd.shown import shown

log = logging.getLogger(__name__)

STOPPED_DIR = "stopped"
RECORD_LIMIT = 4096
_NO_LINKS = os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class StopRecord:
    container_id: str
    name: str
    job: str
    # The maker's owner token (kegpackd.owner): boot id, pid and start time.
    owner: str
    pid: int
    stopped_at: str


def records_dir(state_dir: Path) -> Path:
    return state_dir / STOPPED_DIR


def _prepare(directory: Path) -> None:
    """Create the directory (owner only); refuse one that others can write."""
    directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.mkdir(mode=0o700, exist_ok=True)
    if stat.S_ISLNK(os.lstat(directory).st_mode):
        raise OSError(errno.ELOOP, f"{directory} is a symlink")
    for path in (directory.parent, directory):
        mode = os.stat(path).st_mode
        if mode & 0o022:
            raise KegpackError(
                f"config key daemon.state_dir: {path} is writable by other users "
                f"(mode {stat.S_IMODE(mode):04o}); make it writable by kegpackd's user only"
            )


def write_record(state_dir: Path, container_id: str, name: str, job: str) -> Path:
    """Write and fsync the record of a source about to be stopped; raises if it cannot,
    and then the source must not be stopped."""
    directory = records_dir(state_dir)
    record = StopRecord(
        container_id=container_id,
        name=name,
        job=job,
        owner=current_token(),
        pid=os.getpid(),
        stopped_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    path = directory / f"{container_id}.{job}.json"
    try:
        _prepare(directory)
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_LINKS, 0o600)
        try:
            os.write(handle, json.dumps(asdict(record)).encode())
            os.fsync(handle)
        finally:
            os.close(handle)
        _sync_dir(directory)
    except OSError as exc:
        raise KegpackError(
            f"stop mode needs a record of the stop in {directory} (config key "
            f"daemon.state_dir), and it cannot be written: {exc.strerror}; the source was "
            "not stopped"
        ) from None
    except KegpackError as exc:
        raise KegpackError(f"{exc}; the source was not stopped") from None
    return path


def remove_record(path: Path) -> None:
    try:
        os.unlink(path)
        _sync_dir(path.parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("stop record %s not removed: %s", path, exc.strerror)


def _sync_dir(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _read(path: Path) -> StopRecord | None:
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NO_LINKS)
        try:
            if not stat.S_ISREG(os.fstat(handle).st_mode):
                return None
            data = os.read(handle, RECORD_LIMIT + 1)
        finally:
            os.close(handle)
        fields = json.loads(data) if len(data) <= RECORD_LIMIT else None
        if not isinstance(fields, dict):
            return None
        return StopRecord(**{k: fields[k] for k in StopRecord.__dataclass_fields__})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_records(state_dir: Path) -> list[tuple[Path, StopRecord | None]]:
    """Every record, None for one that does not parse; none when the directory cannot be
    read (a one-shot run by a user without access to the daemon's state)."""
    directory = records_dir(state_dir)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [(directory / n, _read(directory / n)) for n in names if n.endswith(".json")]


async def recover_stopped(
    engine: EnginePort, state_dir: Path, *, dry_run: bool = False
) -> list[str]:
    """Start every container that a dead kegpackd stopped and did not start again; remove
    its record. A container that another live process holds stopped is left alone.
    Returns what was started (with ``dry_run``: what would be)."""
    records = await anyio.to_thread.run_sync(read_records, state_dir)
    held = {r.container_id for _p, r in records if r is not None and _alive(r.owner)}
    started: list[str] = []
    for path, record in records:
        if record is None:
            log.warning("stop record %s does not parse; removed", path)
            if not dry_run:
                await anyio.to_thread.run_sync(remove_record, path)
            continue
        if _alive(record.owner):
            continue
        if record.container_id not in held and await _restart(engine, record, dry_run):
            started.append(f"container {shown(record.name)} ({record.container_id[:12]})")
        if not dry_run:
            await anyio.to_thread.run_sync(remove_record, path)
    return started


def _alive(owner: str) -> bool:
    """Whether the record's maker still runs: this very process included (its jobs hold
    their sources stopped while they copy them)."""
    return is_alive(owner)


async def _restart(engine: EnginePort, record: StopRecord, dry_run: bool) -> bool:
    """Start the container of ``record`` if it exists and is not running."""
    what = f"container {shown(record.name)} ({record.container_id[:12]})"
    try:
        info = await engine.inspect_container(record.container_id)
    except (NotFoundError, InvalidValueError):
        log.info("%s, stopped by kegpackd job %s, no longer exists", what, record.job)
        return False
    if info.running or info.paused:
        log.info("%s, stopped by kegpackd job %s, is running again", what, record.job)
        return False
    if not dry_run:
        try:
            await engine.start(record.container_id)
        except EngineUnreachable:
            raise
        except EngineError as exc:
            log.error("%s could not be started again: %s", what, exc)
            return False
    log.warning(
        "%s started again: kegpackd (pid %d, job %s) stopped it at %s for a copy and died "
        "before it could start it",
        what,
        record.pid,
        record.job,
        record.stopped_at,
    )
    return True


class OwnStops:
    """When (on the engine's clock) this process had each container stopped, so that the
    watcher does not take the ``die`` and ``start`` of a copy for a trigger (a ``start``
    trigger would package it again, stopping it again, for ever)."""

    PER_CONTAINER = 4
    CONTAINERS = 1024

    def __init__(self) -> None:
        self._windows: OrderedDict[str, list[list[int | None]]] = OrderedDict()

    def begin(self, container_id: str, engine_ns: int) -> None:
        windows = self._windows.setdefault(container_id, [])
        self._windows.move_to_end(container_id)
        windows.append([engine_ns, None])
        del windows[: -self.PER_CONTAINER]
        while len(self._windows) > self.CONTAINERS:
            self._windows.popitem(last=False)

    def end(self, container_id: str, engine_ns: int) -> None:
        for window in self._windows.get(container_id, ()):
            if window[1] is None:
                window[1] = engine_ns

    def caused(self, container_id: str, event_ns: int) -> bool:
        for since, until in self._windows.get(container_id, ()):
            assert since is not None
            if since <= event_ns and (until is None or event_ns <= until):
                return True
        return False


# One per process: the pipeline's jobs note their stops, the daemon's watcher reads them.
own_stops = OwnStops()
