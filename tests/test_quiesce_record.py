"""The stop record (a source kegpackd stopped must not stay down when kegpackd dies), the
watcher's view of our own stops, and the bounded output of a command; on the fake engine."""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict
from pathlib import Path

import pytest

from kegpackd.errors import KegpackError
from kegpackd.packaging.incontainer import OUTPUT_KEEP, OutputTail
from kegpackd.packaging.stoprecord import (
    OwnStops,
    StopRecord,
    read_records,
    records_dir,
    recover_stopped,
    write_record,
)
from tests.fakeengine import FakeEngine


def plant(state_dir: Path, container_id: str, owner: str, name: str = "web") -> Path:
    """A record as a kegpackd with owner token ``owner`` would have left it."""
    directory = records_dir(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    record = StopRecord(container_id, name, "job1", owner, 4242, "2026-01-02T03:04:05+00:00")
    path = directory / f"{container_id}.job1.json"
    path.write_text(json.dumps(asdict(record)))
    return path


def test_a_record_is_written_for_its_owner_only_and_names_the_source(tmp_path: Path) -> None:
    """write_record: a 0600 file in <state_dir>/stopped naming container, job and this pid."""
    path = write_record(tmp_path / "state", "c" * 64, "web", "job7")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    [(_, record)] = read_records(tmp_path / "state")
    assert record is not None
    assert (record.container_id, record.name, record.job, record.pid) == (
        "c" * 64,
        "web",
        "job7",
        os.getpid(),
    )


def test_no_record_is_written_in_a_state_dir_others_can_write(tmp_path: Path) -> None:
    """A world-writable state_dir is refused: the source must then not be stopped."""
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    with pytest.raises(KegpackError, match=r"writable by other users.*was not stopped"):
        write_record(state, "c" * 64, "web", "job7")
    assert not records_dir(state).exists() or not os.listdir(records_dir(state))


async def test_recovery_starts_a_source_whose_stopper_died_and_drops_the_record(
    tmp_path: Path, dead: str
) -> None:
    """A dead kegpackd's record: its stopped container is started, the record removed."""
    fake = FakeEngine()
    source = fake.add_container("web", running=False)
    path = plant(tmp_path, source.id, dead)
    assert await recover_stopped(fake, tmp_path) == [f"container web ({source.id[:12]})"]
    assert source.running
    assert not path.exists()


async def test_recovery_leaves_a_live_stoppers_source_stopped(tmp_path: Path, live: str) -> None:
    """A record of a kegpackd that still runs (it is copying): nothing is started or removed."""
    fake = FakeEngine()
    source = fake.add_container("web", running=False)
    path = plant(tmp_path, source.id, live)
    assert await recover_stopped(fake, tmp_path) == []
    assert not source.running
    assert path.exists()


async def test_recovery_does_not_start_a_source_another_live_job_holds_stopped(
    tmp_path: Path, dead: str, live: str
) -> None:
    """Two records of one container, a dead maker's and a live one's: it stays stopped."""
    fake = FakeEngine()
    source = fake.add_container("web", running=False)
    old = plant(tmp_path, source.id, dead)
    old.rename(old.with_name(f"{source.id}.job0.json"))
    plant(tmp_path, source.id, live)
    assert await recover_stopped(fake, tmp_path) == []
    assert not source.running
    assert fake.called("start") == []


async def test_recovery_drops_the_record_of_a_container_that_is_gone(
    tmp_path: Path, dead: str
) -> None:
    """The container was removed since: nothing to start, the record goes."""
    fake = FakeEngine()
    path = plant(tmp_path, "d" * 64, dead)
    assert await recover_stopped(fake, tmp_path) == []
    assert not path.exists()


async def test_recovery_does_not_start_a_source_that_runs_again(tmp_path: Path, dead: str) -> None:
    """Someone started it already: no second start, the record goes."""
    fake = FakeEngine()
    source = fake.add_container("web", running=True)
    path = plant(tmp_path, source.id, dead)
    assert await recover_stopped(fake, tmp_path) == []
    assert fake.called("start") == []
    assert not path.exists()


async def test_recovery_with_no_state_dir_does_nothing(tmp_path: Path) -> None:
    """A one-shot run with no access to (or no) state directory: no record, no error."""
    assert await recover_stopped(FakeEngine(), tmp_path / "absent") == []


def test_own_stops_cover_the_events_between_stop_and_start_only() -> None:
    """Events of a container inside one of our stop windows are ours; others are not."""
    stops = OwnStops()
    stops.begin("c1", 100)
    assert stops.caused("c1", 150)
    stops.end("c1", 200)
    assert (stops.caused("c1", 99), stops.caused("c1", 200), stops.caused("c1", 201)) == (
        False,
        True,
        False,
    )
    assert not stops.caused("c2", 150)


def test_the_output_tail_keeps_only_the_last_bytes_of_a_megabyte() -> None:
    """1 MiB fed in 4 KiB pieces: the tail holds OUTPUT_KEEP bytes, the total counts all."""
    tail = OutputTail()
    for index in range(256):
        tail.feed(f"{index:04d}".encode() * 1024)
    assert (len(tail.buffer), tail.total) == (OUTPUT_KEEP, 1 << 20)
    assert tail.buffer.endswith(b"0255")
