"""How the engine boundary reads Podman's answers, without an engine (tests/test_podman.py has
the same on a real Podman): names, the reference filter, events, ids, archive names."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kegpackd.engine import decode
from kegpackd.engine.models import ImageSummary
from kegpackd.engine.podman import by_reference, familiar, full_id
from kegpackd.errors import TarFormatError
from tests.test_layer_framing import archive, as_layer, members


@pytest.mark.parametrize(
    ("reported", "expected"),
    [
        ("docker.io/library/web:1", "web:1"),
        ("docker.io/kegpack-pending/abc:0.1.2", "kegpack-pending/abc:0.1.2"),
        ("docker.io/library/a/b:1", "library/a/b:1"),
        ("docker.io/library/web@sha256:" + "a" * 64, "web@sha256:" + "a" * 64),
        ("127.0.0.1:5000/app:1", "127.0.0.1:5000/app:1"),
        ("localhost/app:1", "localhost/app:1"),
    ],
)
def test_names_podman_reports_in_full_are_spelled_as_docker_spells_them(
    reported: str, expected: str
) -> None:
    """``docker.io/library/web:1`` is ``web:1``; other registries keep their names."""
    assert familiar(reported) == expected


def test_the_reference_filter_keeps_only_matching_tags_and_images() -> None:
    """As Docker's: ``*`` stays within one path segment, and only matching tags are listed."""
    images = [
        ImageSummary("1", ("kegpack-pending/job:0.1.2", "web:1"), {}),
        ImageSummary("2", ("web:2",), {}),
        ImageSummary("3", ("kegpack-pending/a/b:1",), {}),
    ]
    kept = by_reference(images, ["kegpack-pending/*"])
    assert [(e.id, e.repo_tags) for e in kept] == [("1", ("kegpack-pending/job:0.1.2",))]


def test_a_bare_commit_id_gets_dockers_prefix() -> None:
    """Podman's commit answers a bare hex id; other ids are kept as they are."""
    assert full_id("ab" * 32) == "sha256:" + "ab" * 32
    assert full_id("sha256:" + "ab" * 32) == "sha256:" + "ab" * 32


async def _lines(*events: dict[str, Any]) -> AsyncIterator[bytes]:
    """An event stream's body, one JSON object a line, as the engine sends it."""
    for event in events:
        yield json.dumps(event).encode() + b"\n"


async def actions(*events: dict[str, Any], podman: bool) -> list[str]:
    return [event.action async for event in decode.events(_lines(*events), podman=podman)]


def podman_event(kind: str, action: str, **extra: Any) -> dict[str, Any]:
    return {"Type": kind, "Action": action, "Actor": {"ID": "c1", "Attributes": {}}, **extra}


async def test_podman_event_names_become_dockers() -> None:
    """Podman: ``remove`` is ``destroy``, ``loadfromarchive`` ``load``; health joins the action."""
    events = (
        podman_event("container", "remove"),
        podman_event("image", "loadfromarchive"),
        podman_event("container", "health_status", HealthStatus="healthy"),
        podman_event("container", "start"),
    )
    assert await actions(*events, podman=True) == [
        "destroy",
        "load",
        "health_status: healthy",
        "start",
    ]


async def test_dockers_events_are_read_as_they_come() -> None:
    """On Docker nothing is renamed (its health action already holds the state)."""
    events = (
        podman_event("container", "remove"),
        podman_event("container", "health_status: healthy"),
    )
    assert await actions(*events, podman=False) == ["remove", "health_status: healthy"]


def test_an_archive_named_from_slash_is_read_as_the_mount_root() -> None:
    """Podman names a stopped container's ``/keg`` ``/``, ``/a.txt``: the same layer as ``keg/``."""
    slash = archive(("/", None, ""), ("/a.txt", b"hi", ""), ("/sub", None, ""))
    named = archive(("keg", None, ""), ("keg/a.txt", b"hi", ""), ("keg/sub", None, ""))
    from_slash = [m.name for m in members(as_layer(slash, "keg", "srv/"))]
    assert from_slash == [m.name for m in members(as_layer(named, "keg", "srv/"))]
    assert from_slash == ["srv/keg", "srv/keg/.wh..wh..opq", "srv/keg/a.txt", "srv/keg/sub"]


def test_an_archive_may_not_mix_the_two_spellings() -> None:
    """The first entry decides: after ``keg/``, an entry named ``/x`` lies outside the root."""
    mixed = archive(("keg", None, ""), ("/etc", None, ""))
    with pytest.raises(TarFormatError, match="lies outside"):
        as_layer(mixed, "keg", "srv/")
