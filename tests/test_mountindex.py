"""The per-image mount index (kegpackd.packaging.mountindex): kept across restarts, tied to
its image's layers, and any doubt about it means none."""

from __future__ import annotations

import gzip
from pathlib import Path

from kegpackd.packaging.mountindex import (
    IndexEntry,
    MountIndex,
    container_dir,
    forget_others,
    load_index,
    save_index,
)

LAYERS = ("sha256:base", "sha256:mounts", "sha256:top")


def an_index(layers: tuple[str, ...] = LAYERS) -> MountIndex:
    entries = {
        "srv": IndexEntry(b"\1" * 32, ord("5")),
        "srv/l": IndexEntry(b"\2" * 32, 49, "srv/f"),
    }
    return MountIndex(layers, 1, (("sha256:mounts", 2048),), ("/srv/keg",), 4096, entries)


async def test_a_saved_index_loads_back_equal(tmp_path: Path) -> None:
    """What is saved for an image's layers is what loads for them."""
    assert await save_index(tmp_path, "web", an_index()) is None
    assert await load_index(tmp_path, "web", LAYERS) == an_index()


async def test_an_index_is_private_to_its_owner(tmp_path: Path) -> None:
    """Index files are 0600 in 0700 directories."""
    await save_index(tmp_path, "web", an_index())
    (path,) = container_dir(tmp_path, "web").iterdir()
    assert (path.stat().st_mode & 0o777, path.parent.stat().st_mode & 0o777) == (0o600, 0o700)


async def test_other_layers_find_no_index(tmp_path: Path) -> None:
    """An image with other layers (or another container's name) has no index."""
    await save_index(tmp_path, "web", an_index())
    assert await load_index(tmp_path, "web", ("sha256:base", "sha256:other")) is None
    assert await load_index(tmp_path, "db", LAYERS) is None


async def test_an_unreadable_index_is_no_index(tmp_path: Path) -> None:
    """A truncated file or another format is logged and ignored, never trusted."""
    await save_index(tmp_path, "web", an_index())
    (path,) = container_dir(tmp_path, "web").iterdir()
    path.write_bytes(path.read_bytes()[:20])
    assert await load_index(tmp_path, "web", LAYERS) is None
    path.write_bytes(gzip.compress(b'{"format": 99}'))
    assert await load_index(tmp_path, "web", LAYERS) is None


async def test_indexes_of_images_that_are_gone_are_removed(tmp_path: Path) -> None:
    """Only the indexes of the listed images stay."""
    older = ("sha256:base", "sha256:old", "sha256:top")
    await save_index(tmp_path, "web", an_index(older))
    await save_index(tmp_path, "web", an_index())
    assert await forget_others(tmp_path, "web", [LAYERS]) is None
    assert await load_index(tmp_path, "web", older) is None
    assert await load_index(tmp_path, "web", LAYERS) == an_index()


async def test_an_unwritable_state_dir_is_a_message_not_a_failure(tmp_path: Path) -> None:
    """The image stands without its index: the failure comes back as a message."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    message = await save_index(blocked, "web", an_index())
    assert message is not None
    assert "mount index" in message
