"""The layer's bytes without an engine: renaming, whiteouts, parents, sizes, config."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime
from typing import Any

import pytest

from kegpackd.archive.ignore import ExcludeRules
from kegpackd.archive.layer import (
    END_OF_ARCHIVE,
    HEADROOM_MIN,
    ancestors,
    declared_size,
    first_member,
    image_config,
    layer_prefix,
    parent_entry,
)
from kegpackd.archive.tarheader import BLOCK
from kegpackd.archive.tarscan import TarScanner
from kegpackd.errors import PackagingError


def archive(*members: tuple[str, bytes | None, str]) -> bytes:
    """A tar like the engine's: (name, content or None for a directory, hard-link target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content, link in members:
            info = tarfile.TarInfo(name)
            if link:
                info.type, info.linkname = tarfile.LNKTYPE, link
                tar.addfile(info)
            elif content is None:
                info.type, info.mode, info.uid = tarfile.DIRTYPE, 0o750, 1000
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def as_layer(data: bytes, root: str, prefix: str, rules: ExcludeRules | None = None) -> bytes:
    """``data`` through a layer-mode scanner in 100-byte chunks, closed with an end marker."""
    scanner = TarScanner(root, rules, layer_prefix=prefix)
    out = b"".join(scanner.feed(data[i : i + 100]) for i in range(0, len(data), 100))
    return out + scanner.finish() + END_OF_ARCHIVE


def members(layer: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return tar.getmembers()


def test_names_get_the_mount_parent_and_the_root_gets_an_opaque_whiteout() -> None:
    """web/… becomes srv/web/…, and srv/web/.wh..wh..opq follows srv/web itself."""
    data = archive(("web", None, ""), ("web/a.txt", b"hi", ""), ("web/sub", None, ""))
    names = [m.name for m in members(as_layer(data, "web", "srv/"))]
    assert names == ["srv/web", "srv/web/.wh..wh..opq", "srv/web/a.txt", "srv/web/sub"]


def test_metadata_and_content_are_kept_through_renaming() -> None:
    """Mode, owner and content of renamed entries are those of the archive."""
    data = archive(("web", None, ""), ("web/a.txt", b"content", ""))
    layer = as_layer(data, "web", "srv/")
    root, _, file = members(layer)
    assert (root.mode, root.uid) == (0o750, 1000)
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        handle = tar.extractfile("srv/web/a.txt")
        assert handle is not None
        assert handle.read() == b"content"
    assert file.size == 7


def test_long_and_non_ascii_names_go_into_pax_records() -> None:
    """A renamed name over 100 bytes, or not ASCII, survives whole."""
    long_name = "web/" + "d" * 97
    data = archive(("web", None, ""), (long_name, b"", ""), ("web/ü", b"", ""))
    names = [m.name for m in members(as_layer(data, "web", "home/node/"))]
    assert names[2:] == ["home/node/" + long_name, "home/node/web/ü"]


def test_hard_link_targets_are_renamed_too() -> None:
    """A hard link to web/a points at srv/web/a in the layer."""
    data = archive(("web", None, ""), ("web/a", b"x", ""), ("web/b", None, "web/a"))
    link = members(as_layer(data, "web", "srv/"))[-1]
    assert (link.name, link.linkname) == ("srv/web/b", "srv/web/a")


def test_a_single_file_mount_gets_no_whiteout() -> None:
    """The archive of /etc/hosts holds one file; the layer holds etc/hosts alone."""
    names = [m.name for m in members(as_layer(archive(("hosts", b"h", "")), "hosts", "etc/"))]
    assert names == ["etc/hosts"]


def test_the_end_of_archive_marker_is_left_out_so_mounts_concatenate() -> None:
    """Two mounts' runs joined with one end marker read as one archive."""
    one = archive(("a", None, ""), ("a/x", b"1", ""))
    two = archive(("b", None, ""), ("b/y", b"2", ""))
    joined = as_layer(one, "a", "")[: -len(END_OF_ARCHIVE)] + as_layer(two, "b", "srv/")
    names = [m.name for m in members(joined)]
    assert names == ["a", "a/.wh..wh..opq", "a/x", "srv/b", "srv/b/.wh..wh..opq", "srv/b/y"]


def test_excluded_entries_stay_out_of_the_layer() -> None:
    """Exclude rules apply in layer mode as they do in a plain scan."""
    data = archive(("web", None, ""), ("web/a.log", b"l", ""), ("web/keep", b"k", ""))
    rules = ExcludeRules.parse(["*.log"], "test")
    names = [m.name for m in members(as_layer(data, "web", "", rules))]
    assert names == ["web", "web/.wh..wh..opq", "web/keep"]


def test_declared_size_has_headroom_and_whole_blocks() -> None:
    """At least 1 MiB more than measured, and a multiple of 512."""
    for measured in (0, 1, 10 << 20, 1 << 30):
        size = declared_size(measured)
        assert size % BLOCK == 0
        assert size >= measured + HEADROOM_MIN


def test_ancestors_are_listed_outermost_first() -> None:
    """/home/node/app has the parents home and home/node; /data has none."""
    assert ancestors("/home/node/app") == ["home", "home/node"]
    assert ancestors("/data") == []
    assert layer_prefix("/home/node/app") == "home/node/"
    assert layer_prefix("/data") == ""


def test_a_parent_entry_keeps_the_source_metadata() -> None:
    """The parent's first archive header gives mode, owner and mtime to its layer entry."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("node")
        info.type, info.mode, info.uid, info.gid, info.mtime = tarfile.DIRTYPE, 0o750, 1000, 1000, 5
        tar.addfile(info)
    member = first_member(buf.getvalue()[:BLOCK])
    assert member is not None
    [entry] = members(parent_entry("home/node", member, "/home/node") + END_OF_ARCHIVE)
    assert (entry.name, entry.mode, entry.uid, entry.gid, entry.mtime) == (
        "home/node",
        0o750,
        1000,
        1000,
        5,
    )


def test_a_parent_that_is_a_symlink_is_refused_by_name() -> None:
    """A mount below a symbolic link cannot be placed in a layer; the error names the path."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("run")
        info.type, info.linkname = tarfile.SYMTYPE, "/run"
        tar.addfile(info)
    member = first_member(buf.getvalue())
    assert member is not None
    with pytest.raises(PackagingError, match="/var/run is a symbolic link"):
        parent_entry("var/run", member, "/var/run")


def test_the_image_config_appends_the_layer_and_its_history() -> None:
    """diff_ids are the base layers plus the new digest; history gains one entry."""
    history: list[dict[str, Any]] = [
        {"Created": 1, "CreatedBy": "commit", "Size": 5},
        {"Created": 0, "Size": 3},
    ]
    config = json.loads(
        image_config(
            architecture="amd64",
            os_name="linux",
            variant=None,
            base_layers=["sha256:a", "sha256:b"],
            history=history,
            layer_digest="sha256:c",
            container_config={"Cmd": ["sh"]},
            comment="kegpackd job=j container=c",
            created_by="kegpackd: copied /data",
            now=datetime(2026, 1, 1, tzinfo=UTC),
        )
    )
    assert config["rootfs"]["diff_ids"] == ["sha256:a", "sha256:b", "sha256:c"]
    assert [h["created_by"] for h in config["history"]] == ["", "commit", "kegpackd: copied /data"]
    assert config["config"] == {"Cmd": ["sh"]}
