"""Incremental packaging on the fake engine, both stores: what is made (full, delta, none),
what is sent, and that the layers stack up to the tree a full package shows."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import anyio
import pytest

from kegpackd.config import Config, parse_config
from kegpackd.packaging.jobs import JobRequest, JobResult
from kegpackd.packaging.mountindex import INDEX_DIR
from kegpackd.packaging.pipeline import package
from tests.fake.files import FakeFile, directory
from tests.fakeengine import FakeContainer, FakeEngine
from tests.test_pipeline_fake import make_source as pipeline_source

STORES = ["graph", "containerd"]
Tree = dict[str, tuple[Any, ...]]


def make_config(state: Path, tag: str, **packaging: Any) -> Config:
    packaging = {"repository": "kegpack-test/{name}", "tags": [tag], **packaging}
    return parse_config({"daemon": {"state_dir": str(state)}, "packaging": packaging})


def make_source(fake: FakeEngine, store: str) -> FakeContainer:
    """The pipeline tests' source (``web``, a volume at /srv/keg), with a directory more."""
    container, _base = pipeline_source(fake, store)
    fake.add_files(container, "/srv/keg/gone", {"c.txt": b"gamma"})
    return container


async def run(fake: FakeEngine, config: Config) -> JobResult:
    with anyio.fail_after(30):
        return await package(fake, config, JobRequest(container="web"))


async def tree(fake: FakeEngine, reference: str) -> Tree:
    """The image's files as its layers stack up (whiteouts and opaque marks applied)."""
    shown: Tree = {}
    for diff_id in (await fake.inspect_image(reference)).layers:
        data = fake.store.layer_data.get(diff_id, b"")
        if not data:
            continue
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
            for member in tar:
                path = member.name.rstrip("/")
                parent, _, name = path.rpartition("/")
                if name == ".wh..wh..opq":
                    shown = {p: v for p, v in shown.items() if not p.startswith(parent + "/")}
                elif name.startswith(".wh."):
                    gone = (parent + "/" if parent else "") + name[4:]
                    shown = {
                        p: v for p, v in shown.items() if p != gone and not p.startswith(gone + "/")
                    }
                else:
                    content = tar.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
                    shown[path] = (member.type, member.mode, member.uid, member.gid, content)
    return {p: v for p, v in shown.items() if p.startswith("srv")}


def change(container: FakeContainer) -> None:
    """An edit, an addition, a deletion of a directory, a file that became a directory."""
    container.files["/srv/keg/a.txt"] = FakeFile(data=b"ALPHA")
    container.files["/srv/keg/new.txt"] = FakeFile(data=b"new")
    for path in [p for p in container.files if p.startswith("/srv/keg/gone")]:
        del container.files[path]
    container.files["/srv/keg/sub/b.txt"] = directory()
    container.files["/srv/keg/sub/b.txt/d.txt"] = FakeFile(data=b"d")


@pytest.mark.parametrize("store", STORES)
async def test_a_repackage_after_a_change_sends_a_delta(
    fake: FakeEngine, tmp_path: Path, store: str
) -> None:
    """The first package is full; after a change the next is a delta, smaller than full."""
    container = make_source(fake, store)
    first = await run(fake, make_config(tmp_path, "one"))
    change(container)
    second = await run(fake, make_config(tmp_path, "two"))
    assert (first.mounts_layer, second.mounts_layer) == ("full", "delta")
    assert second.mounts_layer_bytes < second.mounts_full_bytes
    assert second.delta_layers == 1


@pytest.mark.parametrize("store", STORES)
async def test_a_delta_image_shows_the_tree_of_a_full_package(
    fake: FakeEngine, tmp_path: Path, store: str
) -> None:
    """Full + delta stack up to exactly the tree a full package of the same state has."""
    container = make_source(fake, store)
    await run(fake, make_config(tmp_path, "one"))
    change(container)
    await run(fake, make_config(tmp_path, "two"))
    await run(fake, make_config(tmp_path / "other", "full", incremental=False))
    delta_tree = await tree(fake, "kegpack-test/web:two")
    assert delta_tree == await tree(fake, "kegpack-test/web:full")
    assert "srv/keg/gone/c.txt" not in delta_tree


@pytest.mark.parametrize("store", STORES)
async def test_nothing_changed_in_the_mounts_sends_no_mount_bytes(
    fake: FakeEngine, tmp_path: Path, store: str
) -> None:
    """Unchanged mounts: the previous mount layers are kept and none of their bytes sent."""
    make_source(fake, store)
    first = await run(fake, make_config(tmp_path, "one"))
    second = await run(fake, make_config(tmp_path, "two"))
    assert second.mounts_layer == "none"
    assert second.mounts_layer_bytes == 0
    one = await fake.inspect_image("kegpack-test/web:one")
    two = await fake.inspect_image("kegpack-test/web:two")
    assert one.layers == two.layers
    assert first.layer_digest == second.layer_digest


@pytest.mark.parametrize("store", STORES)
async def test_a_lost_index_gives_a_full_layer(
    fake: FakeEngine, tmp_path: Path, store: str
) -> None:
    """Without the index of the previous image the repackage is full, never a wrong delta."""
    container = make_source(fake, store)
    await run(fake, make_config(tmp_path, "one"))
    for path in (tmp_path / INDEX_DIR).rglob("*.json.gz"):
        path.unlink()
    change(container)
    second = await run(fake, make_config(tmp_path, "two"))
    assert second.mounts_layer == "full"


async def test_the_delta_cap_writes_a_full_layer_again(fake: FakeEngine, tmp_path: Path) -> None:
    """With max_delta_layers = 1 the second change gives a full layer again."""
    container = make_source(fake, "graph")
    kinds = []
    for number in range(3):
        container.files["/srv/keg/a.txt"] = FakeFile(data=b"v%d" % number)
        config = make_config(tmp_path, f"t{number}", max_delta_layers=1)
        kinds.append((await run(fake, config)).mounts_layer)
    assert kinds == ["full", "delta", "full"]


async def test_reading_again_and_fetching_give_the_same_layer(
    fake: FakeEngine, tmp_path: Path
) -> None:
    """delta_fetch_limit = 0 reads the mounts again; the delta is the same bytes."""
    container = make_source(fake, "graph")
    fetching = {"repository": "kegpack-test/fetch"}
    rereading = {"repository": "kegpack-test/reread", "delta_fetch_limit": 0}
    await run(fake, make_config(tmp_path, "1", **fetching))
    await run(fake, make_config(tmp_path, "1", **rereading))
    change(container)
    container.files["/srv/keg/big.bin"] = FakeFile(data=b"b" * (100 << 10))  # not kept by the scan
    fetched = await run(fake, make_config(tmp_path, "2", **fetching))
    reread = await run(fake, make_config(tmp_path, "2", **rereading))
    assert (fetched.delta_source, reread.delta_source) == ("fetch", "reread")
    assert fetched.layer_digest == reread.layer_digest
