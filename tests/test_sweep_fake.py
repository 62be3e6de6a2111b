"""The sweep's owner rules on the in-memory engine: what a dead job left goes, the rest stays."""

from __future__ import annotations

import anyio
import pytest

from kegpackd.daemon.watcher import sweep
from kegpackd.errors import EngineError, EngineUnreachable
from kegpackd.owner import current_token
from kegpackd.packaging.markers import (
    HELPER_COMMAND,
    HELPER_PREFIX,
    final_comment,
    temporary_comment,
)
from tests.fakeengine import FakeEngine
from tests.owners import comment_of, pending_tag

LIMIT = 1.0


async def swept(fake: FakeEngine, *args: set[str], dry_run: bool = False) -> list[str]:
    with anyio.fail_after(LIMIT):
        return await sweep(fake, *args, dry_run=dry_run)


async def test_a_dead_makers_temporary_image_is_removed(dead: str) -> None:
    """A temporary image whose maker has exited, and whose job runs nowhere, goes."""
    fake = FakeEngine()
    image = fake.add_image(comment=comment_of("job1", dead))
    assert await swept(fake, set()) == [f"temporary image {image.id} (job job1)"]
    assert image.id not in fake.images


async def test_a_live_makers_temporary_image_stays(live: str) -> None:
    """Another live process's temporary image is its work in progress: kept."""
    fake = FakeEngine()
    image = fake.add_image(comment=comment_of("job1", live))
    assert await swept(fake, set()) == []
    assert image.id in fake.images


async def test_an_active_jobs_objects_stay() -> None:
    """This process's temporary image and pending tag stay while their job is active."""
    fake = FakeEngine()
    image = fake.add_image(comment=temporary_comment("job1"))
    tag = pending_tag("job1", current_token())
    pending = fake.add_image(repo_tags=[tag])
    assert await swept(fake, {"job1"}) == []
    assert image.id in fake.images
    assert fake.images[pending.id].repo_tags == [tag]


async def test_this_process_objects_of_no_active_job_are_removed() -> None:
    """This process's own temporary image of a job it no longer runs is a leftover."""
    fake = FakeEngine()
    image = fake.add_image(comment=temporary_comment("job1"))
    assert await swept(fake, {"another"}) == [f"temporary image {image.id} (job job1)"]


async def test_a_dead_makers_pending_tag_is_removed(dead: str) -> None:
    """An image with only a dead maker's pending tag (its final step never ended) goes."""
    fake = FakeEngine()
    tag = pending_tag("job1", dead)
    image = fake.add_image(repo_tags=[tag])
    assert await swept(fake, set()) == [f"pending tag {tag}"]
    assert image.id not in fake.images


async def test_a_pending_tag_on_a_finished_image_is_only_untagged(dead: str) -> None:
    """An image that got its final tag before its maker died keeps it; the pending tag goes."""
    fake = FakeEngine()
    image = fake.add_image(repo_tags=[pending_tag("job1", dead), "kegpack/web:v1"])
    assert len(await swept(fake, set())) == 1
    assert fake.images[image.id].repo_tags == ["kegpack/web:v1"]


async def test_a_dead_makers_helper_container_is_removed(dead: str) -> None:
    """A helper container (made before 0.2) whose image names a dead maker goes."""
    fake = FakeEngine()
    image = fake.add_image(repo_tags=["kegpack-helper-image:1"], comment=comment_of("job1", dead))
    helper = fake.add_container(
        f"{HELPER_PREFIX}job1",
        image_id=image.id,
        running=False,
        state="created",
        command=HELPER_COMMAND,
    )
    removed = await swept(fake, set())
    assert removed == [f"helper container {helper.id[:12]} (job job1)"]
    assert helper.id not in fake.containers


@pytest.mark.parametrize(
    ("state", "command", "comment_job"),
    [
        ("running", HELPER_COMMAND, "job1"),
        ("exited", HELPER_COMMAND, "job1"),
        ("created", "sleep 3600", "job1"),
        ("created", HELPER_COMMAND, "job2"),
        ("created", HELPER_COMMAND, None),
    ],
)
async def test_a_container_named_like_a_helper_without_its_marker_stays(
    dead: str, state: str, command: str, comment_job: str | None
) -> None:
    """A kegpack-helper-* container that was started, runs another command, or whose image
    carries no marker of that job is somebody's: kept."""
    fake = FakeEngine()
    comment = "" if comment_job is None else comment_of(comment_job, dead)
    image = fake.add_image(repo_tags=["user/app:1"], comment=comment)
    user = fake.add_container(
        f"{HELPER_PREFIX}job1", image_id=image.id, running=state == "running", state=state,
        command=command,
    )  # fmt: skip
    assert await swept(fake, set()) == []
    assert user.id in fake.containers


async def test_dry_run_lists_without_removing(dead: str) -> None:
    """With dry_run, the sweep names what it would remove and removes nothing."""
    fake = FakeEngine()
    image = fake.add_image(comment=comment_of("job1", dead))
    tagged = fake.add_image(repo_tags=[pending_tag("job2", dead)])
    removed = await swept(fake, set(), dry_run=True)
    assert len(removed) == 2
    assert {image.id, tagged.id} <= set(fake.images)
    assert fake.called("remove_image") == []


async def test_an_untagged_final_image_of_a_failed_job_is_removed() -> None:
    """A final image that lost its tag when its job failed mid-way goes."""
    fake = FakeEngine()
    image = fake.add_image(comment=final_comment("job9", "web"))
    assert await swept(fake, set(), {"job9"}) == [f"untagged image {image.id} (failed job job9)"]
    assert image.id not in fake.images


async def test_an_untagged_final_image_of_no_failed_job_stays() -> None:
    """An untagged final image of a job that did not fail here is somebody's image: kept."""
    fake = FakeEngine()
    image = fake.add_image(comment=final_comment("job9", "web"))
    assert await swept(fake, set(), {"job8"}) == []
    assert image.id in fake.images


async def test_an_engine_error_on_one_removal_does_not_stop_the_sweep(dead: str) -> None:
    """A refused removal (the image is in use) keeps that one, and the sweep goes on."""
    fake = FakeEngine()
    kept = fake.add_image(comment=comment_of("job1", dead))
    gone = fake.add_image(comment=comment_of("job2", dead))
    fake.fail_next("remove_image", EngineError("remove image: image is being used"))
    assert await swept(fake, set()) == [f"temporary image {gone.id} (job job2)"]
    assert kept.id in fake.images
    assert gone.id not in fake.images


async def test_an_unreachable_engine_stops_the_sweep(dead: str) -> None:
    """EngineUnreachable is not a refusal: it ends the sweep, and the caller hears it."""
    fake = FakeEngine()
    fake.add_image(comment=comment_of("job1", dead))
    fake.add_image(comment=comment_of("job2", dead))
    fake.fail_next("remove_image", EngineUnreachable("cannot reach the Docker engine"))
    with pytest.raises(EngineUnreachable):
        await swept(fake, set())
    assert len(fake.called("remove_image")) == 1
    assert len(fake.images) == 2
