"""A commit that fails because a file grew under the engine's diff is tried again."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from kegpackd.config import Config
from kegpackd.engine import Mount
from kegpackd.errors import EngineError
from kegpackd.jobs import JobRequest
from kegpackd.pipeline import COMMIT_ATTEMPTS, package
from tests.fakeengine import FakeEngine

# dockerd 26.1's answer on the containerd store when Redis wrote during the commit.
GREW = (
    "commit container 0241bdc32050: failed to export layer: CreateDiff: mount callback failed: "
    "failed to write compressed diff: failed to create diff tar stream: failed to copy: "
    "archive/tar: write too long: unknown"
)


KEG = (Mount(type="bind", destination="/keg", source="/srv/keg", rw=True),)


async def commits_of_a_job(fake: FakeEngine) -> int:
    """Run a job on the fake until it stops (it cannot export), and count its commits."""
    source = fake.add_container("web", mounts=KEG, started_at=datetime.now(UTC).isoformat())
    request = JobRequest(container=source.id, trigger="cli")
    with pytest.raises(Exception) as raised:  # noqa: PT011 - whatever stops it after the commit
        await package(fake, Config(), request)
    assert GREW not in str(raised.value)
    return len(fake.called("commit"))


async def test_a_commit_that_met_a_growing_file_is_tried_again(fake: FakeEngine) -> None:
    """One "write too long" failure: the job commits again and goes on."""
    fake.fail_next("commit", EngineError(GREW))
    assert await commits_of_a_job(fake) == 2


async def test_other_commit_failures_are_not_tried_again(fake: FakeEngine) -> None:
    """Any other engine error fails the job at its first commit."""
    fake.fail_next("commit", EngineError("commit container x: no space left on device"))
    source = fake.add_container("web", mounts=KEG)
    with pytest.raises(EngineError, match="no space left"):
        await package(fake, Config(), JobRequest(container=source.id, trigger="cli"))
    assert len(fake.called("commit")) == 1


async def test_a_commit_that_keeps_meeting_growing_files_fails_after_its_attempts(
    fake: FakeEngine,
) -> None:
    """Every attempt fails the same way: the job fails with the engine's error."""
    fake.fail_next("commit", EngineError(GREW), times=COMMIT_ATTEMPTS)
    source = fake.add_container("web", mounts=KEG)
    with pytest.raises(EngineError, match="write too long"):
        await package(fake, Config(), JobRequest(container=source.id, trigger="cli"))
    assert len(fake.called("commit")) == COMMIT_ATTEMPTS
