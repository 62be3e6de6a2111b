"""Retention's rules, on the in-memory engine: what goes, what stays, and in what order.

Whether the engine really frees an image (and refuses one a container uses) is tested on
the real engine in test_lifecycle.
"""

from __future__ import annotations

from datetime import UTC, datetime

from kegpackd.config import RetentionConfig
from kegpackd.packaging.markers import final_comment
from kegpackd.packaging.retention import Candidate, prune, select
from tests.fakeengine import FakeEngine, FakeImage

DAY_NS = 86400 * 10**9
NOW_NS = 1_000 * DAY_NS


def candidates(*ages_in_days: float) -> list[Candidate]:
    """Candidates aged as given, named c0, c1, … in that order."""
    return [
        Candidate(f"c{i}", NOW_NS - int(age * DAY_NS), (f"r:{i}",))
        for i, age in enumerate(ages_in_days)
    ]


def ids(chosen: list[Candidate]) -> list[str]:
    return [c.id for c in chosen]


def test_keep_alone_removes_all_but_the_newest_n() -> None:
    """With keep = 2 and no max_age, every image past the newest two goes, oldest last."""
    assert ids(select(candidates(3, 1, 2, 0), RetentionConfig(keep=2), NOW_NS, set())) == [
        "c2",
        "c0",
    ]


def test_max_age_alone_removes_older_images_but_never_the_newest() -> None:
    """With only max_age, what is older goes, except the newest image, however old."""
    retention = RetentionConfig(max_age=10 * 86400)
    assert ids(select(candidates(40, 5, 20), retention, NOW_NS, set())) == ["c2", "c0"]
    assert ids(select(candidates(40, 30), retention, NOW_NS, set())) == ["c0"]


def test_keep_and_max_age_remove_only_old_images_beyond_keep() -> None:
    """Beyond the newest `keep`, an image stays while it is younger than max_age."""
    retention = RetentionConfig(keep=1, max_age=10 * 86400)
    assert ids(select(candidates(0, 5, 20, 30), retention, NOW_NS, set())) == ["c2", "c3"]


def test_a_protected_image_stays_and_keeps_its_place() -> None:
    """An image in use is never chosen, and it still counts as one of the newest."""
    chosen = select(candidates(0, 1, 2, 3), RetentionConfig(keep=2), NOW_NS, {"c1", "c3"})
    assert ids(chosen) == ["c2"]


def test_retention_off_chooses_nothing() -> None:
    """No keep and no max_age: nothing is ever removed."""
    assert select(candidates(0, 100, 200), RetentionConfig(), NOW_NS, set()) == []


def own(fake: FakeEngine, tag: str, age_days: float, **kw: object) -> FakeImage:
    """A final image kegpackd made of container "web", ``age_days`` old."""
    seconds = (NOW_NS - int(age_days * DAY_NS)) / 1e9
    created = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return fake.add_image(
        repo_tags=[tag],
        labels={"kegpack.source.name": "web"},
        comment=final_comment("job" + tag.rpartition(":")[2], "web"),
        created=created,
        **kw,
    )


async def test_prune_removes_the_old_images_and_counts_their_own_layers(fake: FakeEngine) -> None:
    """Past keep, an image goes with its tag; freed bytes are its own two top layers."""
    new = own(fake, "kp/web:2", 0, layers=("b", "c2", "m2"), layer_sizes=(30, 20, 0))
    old = own(fake, "kp/web:1", 1, layers=("b", "c1", "m1"), layer_sizes=(300, 200, 0))
    report = await prune(fake, RetentionConfig(keep=1), NOW_NS, source_name="web")
    assert ids(report.removed) == [old.id]
    assert report.freed_bytes == 500
    assert set(fake.images) == {new.id}


async def test_prune_does_not_count_a_layer_a_kept_image_holds(fake: FakeEngine) -> None:
    """A mounts' layer the newest image shares (unchanged content) frees no bytes."""
    own(fake, "kp/web:2", 0, layers=("b", "c2", "m"), layer_sizes=(300, 20, 0))
    own(fake, "kp/web:1", 1, layers=("b", "c1", "m"), layer_sizes=(300, 200, 0))
    report = await prune(fake, RetentionConfig(keep=1), NOW_NS, source_name="web")
    assert report.freed_bytes == 200


async def test_an_image_a_container_uses_is_not_touched(fake: FakeEngine) -> None:
    """An old image that a container (running or not) was made from keeps its tags."""
    own(fake, "kp/web:2", 0)
    old = own(fake, "kp/web:1", 1)
    fake.add_container("user", image="kp/web:1", image_id=old.id)
    report = await prune(fake, RetentionConfig(keep=1), NOW_NS, source_name="web")
    assert report.removed == []
    assert fake.images[old.id].repo_tags == ["kp/web:1"]
    assert ("kp/web:1",) not in fake.called("remove_image")


async def test_the_image_just_made_is_never_removed(fake: FakeEngine) -> None:
    """Even when its clock says it is older, the job's own image stays."""
    made = own(fake, "kp/web:1", 5)
    newer = own(fake, "kp/web:2", 0)
    report = await prune(
        fake, RetentionConfig(keep=1), NOW_NS, source_name="web", just_made=made.id
    )
    assert report.removed == []
    assert set(fake.images) == {made.id, newer.id}


async def test_an_image_tagged_elsewhere_is_untagged_here_and_kept(fake: FakeEngine) -> None:
    """Untag first: a tag in another repository keeps the image (and is left alone)."""
    own(fake, "kp/web:2", 0)
    old = own(fake, "kp/web:1", 1)
    old.repo_tags.append("mine/prod:v1")
    report = await prune(
        fake, RetentionConfig(keep=1), NOW_NS, source_name="web", repository="kp/web"
    )
    assert report.removed == []
    assert fake.images[old.id].repo_tags == ["mine/prod:v1"]
    assert len(report.kept) == 1
    assert "mine/prod:v1" in report.kept[0]


async def test_an_image_without_kegpackds_comment_is_not_its_own(fake: FakeEngine) -> None:
    """A child image that inherited the labels (docker build FROM) is never a candidate."""
    own(fake, "kp/web:2", 0)
    child = fake.add_image(repo_tags=["kp/web:1"], labels={"kegpack.source.name": "web"})
    report = await prune(fake, RetentionConfig(keep=1), NOW_NS, source_name="web")
    assert report.removed == []
    assert child.id in fake.images


async def test_dry_run_lists_and_removes_nothing(fake: FakeEngine) -> None:
    """--dry-run reports the images retention would remove and calls no removal."""
    own(fake, "kp/web:2", 0)
    old = own(fake, "kp/web:1", 1)
    report = await prune(fake, RetentionConfig(keep=1), NOW_NS, dry_run=True)
    assert ids(report.removed) == [old.id]
    assert fake.called("remove_image") == []


async def test_prune_on_demand_groups_by_container_and_repository(fake: FakeEngine) -> None:
    """Without a source, each (container name, repository) pair keeps its own newest."""
    own(fake, "kp/web:2", 0)
    own(fake, "kp/web:1", 1)
    other = fake.add_image(
        repo_tags=["kp/db:1"],
        labels={"kegpack.source.name": "db"},
        comment=final_comment("j", "db"),
    )
    report = await prune(fake, RetentionConfig(keep=1), NOW_NS)
    assert [c.tags for c in report.removed] == [("kp/web:1",)]
    assert other.id in fake.images
