"""How the engine boundary reads listings into its models (``engine.decode``), without an
engine: callers never see the engine's JSON keys."""

from __future__ import annotations

from kegpackd.engine import decode


def test_a_listed_container_is_named_without_dockers_leading_slash() -> None:
    """``"Names": ["/web"]`` is ``names == ("web",)``, and ``name`` its first."""
    entry = {"Id": "ab" * 32, "Names": ["/web"], "ImageID": "sha256:1", "State": "created"}
    summary = decode.container_summary(entry)
    assert (summary.names, summary.name, summary.image_id) == (("web",), "web", "sha256:1")


def test_a_listed_container_without_names_is_named_by_its_short_id() -> None:
    """No ``Names`` (or null ``Labels``): the short id, and no labels, rather than a KeyError."""
    summary = decode.container_summary({"Id": "ab" * 32, "Names": None, "Labels": None})
    assert (summary.name, dict(summary.labels)) == ("ab" * 6, {})


def test_a_listed_image_with_null_tags_has_none() -> None:
    """A dangling image's ``"RepoTags": null`` (older engines) reads as no tags."""
    summary = decode.image_summary({"Id": "sha256:1", "RepoTags": None, "Labels": {"a": "b"}})
    assert (summary.repo_tags, dict(summary.labels)) == ((), {"a": "b"})
