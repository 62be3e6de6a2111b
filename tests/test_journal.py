"""The job journal: what it writes, how it rotates, and that a crash never makes it fatal."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from kegpackd.daemon.journal import JOURNAL_FILE, Journal
from kegpackd.packaging.jobs import EventKind, JobEvent, JobState
from tests.jobtools import finished_event

LIMIT = 5.0


def file_sizes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir()}


async def write(journal: Journal, *events: JobEvent) -> None:
    """Run the journal's writer for ``events``, then close it and wait for the last line."""
    with anyio.fail_after(LIMIT):
        async with anyio.create_task_group() as tg:
            await tg.start(journal.run)
            for event in events:
                journal.on_job_event(event)
            journal.close()


async def test_finished_jobs_come_back_after_a_restart(tmp_path: Path) -> None:
    """What one journal wrote, a new one (the next start) loads, oldest first."""
    journal = Journal(tmp_path)
    journal.prepare()
    await write(journal, finished_event("a"), finished_event("b", JobState.FAILED))
    loaded = await Journal(tmp_path).load(10)
    assert [(j["id"], j["state"]) for j in loaded] == [("a", "succeeded"), ("b", "failed")]


async def test_only_finished_events_are_written(tmp_path: Path) -> None:
    """Queued and started events leave no line."""
    journal = Journal(tmp_path)
    journal.prepare()
    record = finished_event("a").record
    await write(journal, JobEvent(EventKind.QUEUED, record), JobEvent(EventKind.STARTED, record))
    assert not (tmp_path / JOURNAL_FILE).exists()


async def test_the_journal_is_owner_only(tmp_path: Path) -> None:
    """The state directory is made 0700 and the journal 0600, even under a lax umask."""
    state = tmp_path / "state"
    old = os.umask(0)
    try:
        journal = Journal(state)
        journal.prepare()
        await write(journal, finished_event("a"))
    finally:
        os.umask(old)
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / JOURNAL_FILE).stat().st_mode & 0o777 == 0o600


async def test_a_world_readable_journal_is_tightened(tmp_path: Path) -> None:
    """A journal left 0644 (copied in by hand) is made 0600 at start."""
    path = tmp_path / JOURNAL_FILE
    path.write_text("")
    path.chmod(0o644)
    Journal(tmp_path).prepare()
    assert path.stat().st_mode & 0o777 == 0o600


async def test_a_torn_last_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A line cut short by a crash is left out of the history, and said so, not fatal."""
    journal = Journal(tmp_path)
    journal.prepare()
    await write(journal, finished_event("a"))
    with (tmp_path / JOURNAL_FILE).open("ab") as handle:
        handle.write(b'{"id":"b","sta')
    with caplog.at_level(logging.WARNING):
        loaded = await Journal(tmp_path).load(10)
    assert [j["id"] for j in loaded] == ["a"]
    assert "torn by a crash" in caplog.text


async def test_an_append_after_a_torn_line_starts_a_fresh_line(tmp_path: Path) -> None:
    """The next start ends the torn line first, so the new job is not glued onto it."""
    (tmp_path / JOURNAL_FILE).write_bytes(b'{"id":"a"}\n{"id":"b","sta')
    journal = Journal(tmp_path)
    journal.prepare()
    await write(journal, finished_event("c"))
    assert [j["id"] for j in await Journal(tmp_path).load(10)] == ["a", "c"]


async def test_the_journal_rotates_at_its_size_limit(tmp_path: Path) -> None:
    """Past the limit the file becomes jobs.jsonl.1; both are read, the older one first."""
    journal = Journal(tmp_path, limit=1500)
    journal.prepare()
    await write(journal, *(finished_event(f"job{i}") for i in range(12)))
    sizes = file_sizes(tmp_path)
    assert set(sizes) <= {JOURNAL_FILE, JOURNAL_FILE + ".1"}
    assert JOURNAL_FILE + ".1" in sizes
    assert sum(sizes.values()) < 2 * 1500 + 1000
    loaded = [j["id"] for j in await Journal(tmp_path).load(100)]
    assert loaded == sorted(loaded, key=lambda i: int(i[3:]))
    assert loaded[-1] == "job11"


async def test_load_returns_the_newest_count(tmp_path: Path) -> None:
    """The history is bounded: only the newest ``count`` jobs come back."""
    journal = Journal(tmp_path)
    journal.prepare()
    await write(journal, *(finished_event(f"j{i}") for i in range(5)))
    assert [j["id"] for j in await Journal(tmp_path).load(2)] == ["j3", "j4"]


async def test_an_unusable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A state_dir that cannot be created names the key and the reason."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Exception, match=r"daemon\.state_dir: cannot use .*file/state"):
        Journal(blocker / "state").prepare()


WRITER = textwrap.dedent(
    """
    import sys, anyio
    from pathlib import Path
    from kegpackd.packaging.jobs import EventKind, JobEvent, JobRecord, JobRequest, JobState
    from kegpackd.daemon.journal import Journal

    async def main() -> None:
        journal = Journal(Path(sys.argv[1]), limit=1 << 30)
        journal.prepare()
        async with anyio.create_task_group() as tg:
            await tg.start(journal.run)
            print("writing", flush=True)
            for i in range(10**9):
                record = JobRecord(JobRequest("c" * 64, job_id=f"j{i}"), JobState.FAILED)
                record.error = "x" * 5000
                journal.on_job_event(JobEvent(EventKind.FINISHED, record))
                await anyio.sleep(0)

    anyio.run(main)
    """
)


@pytest.mark.parametrize("delay", [0.2, 0.5, 0.9])
def test_a_sigkill_mid_write_leaves_a_journal_that_loads(tmp_path: Path, delay: float) -> None:
    """A writer SIGKILLed while appending leaves lines that load, at most the last one torn."""
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "writing\n"
        try:
            writer.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == -signal.SIGKILL
    data = (tmp_path / JOURNAL_FILE).read_bytes()
    lines = data.split(b"\n")
    loaded = anyio.run(Journal(tmp_path).load, 10**6)
    assert len(loaded) >= len(lines) - 2
    assert all(json.loads(line)["id"] for line in lines[:-1])
