"""Whole packaging jobs on the fake engine: what the pipeline decides, byte by byte.

The fake runs the real code paths of a job (tar streams in, a docker-archive or OCI layout
out, loaded into an in-memory store); ``tests/test_engine_contract.py`` keeps it honest.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import anyio
import pytest

from kegpackd.config import Config, parse_config
from kegpackd.errors import EngineError
from kegpackd.packaging.jobs import JobRequest, JobResult
from kegpackd.packaging.pipeline import package
from tests.fake.files import FakeFile, directory, file_data, members
from tests.fakeengine import FakeContainer, FakeEngine, FakeImage

REFERENCE = "kegpack-test/web:t1"


def make_config(**packaging: Any) -> Config:
    return parse_config(
        {
            "packaging": {
                "repository": "kegpack-test/{name}",
                "tags": ["t1"],
                "incremental": False,
                **packaging,
            }
        }
    )


def make_source(fake: FakeEngine, store: str = "graph") -> tuple[FakeContainer, FakeImage]:
    """A container ``web`` of a one-layer base image, with a volume at /srv/keg."""
    fake.store.kind = store
    base = fake.add_base_image("busybox:1", {"bin": None, "bin/sh": b"#!"})
    container = fake.add_container("web", image="busybox:1", image_id=base.id)
    fake.add_files(
        container,
        "/srv/keg",
        {
            "a.txt": b"alpha",
            "sub": None,
            "sub/b.txt": FakeFile(data=b"beta", mode=0o600, uid=1000, gid=1001),
        },
    )
    container.files["/srv"] = directory(mode=0o750, uid=7, gid=8)
    return container, base


async def run(fake: FakeEngine, config: Config | None = None, **kw: Any) -> JobResult:
    with anyio.fail_after(30):
        return await package(fake, config or make_config(), JobRequest(container="web"), **kw)


async def final_layer(fake: FakeEngine) -> bytes:
    image = await fake.inspect_image(REFERENCE)
    return fake.store.layer_data[image.layers[-1]]


def uploaded_names(fake: FakeEngine, index: int = -1) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(fake.store.uploads[index]), mode="r") as tar:
        return {m.name for m in tar.getmembers()}


async def test_a_job_makes_an_image_whose_layer_holds_the_mounts_tree(fake: FakeEngine) -> None:
    """The final image is the commit's layers plus one layer with the volume's files."""
    _container, base = make_source(fake)
    result = await run(fake)
    image = await fake.inspect_image(REFERENCE)
    assert result.layer == "new"
    assert len(image.layers) == len(base.layers) + 2
    assert image.layers[: len(base.layers)] == base.layers
    layer = await final_layer(fake)
    entries = members(layer)
    assert {"srv", "srv/keg", "srv/keg/a.txt", "srv/keg/sub", "srv/keg/sub/b.txt"} <= set(entries)
    srv = entries["srv"]
    assert (srv.mode & 0o7777, srv.uid, srv.gid) == (0o750, 7, 8)
    b = entries["srv/keg/sub/b.txt"]
    assert (b.mode & 0o7777, b.uid, b.gid) == (0o600, 1000, 1001)
    assert file_data(layer, "srv/keg/sub/b.txt") == b"beta"


async def test_the_image_config_carries_the_source_labels_and_the_final_comment(
    fake: FakeEngine,
) -> None:
    """The loaded config is the job's: provenance labels, and kegpackd's final comment."""
    make_source(fake)
    result = await run(fake)
    image = await fake.inspect_image(REFERENCE)
    assert image.id == result.image_id
    assert image.labels["kegpack.source.name"] == "web"
    assert image.labels["kegpack.job"] == result.job_id
    assert "web" in image.comment
    assert "temporary" not in image.comment


async def test_a_job_leaves_only_the_final_image_and_no_pending_tag(fake: FakeEngine) -> None:
    """The commit and the pending tag are gone after a successful job."""
    _container, base = make_source(fake)
    result = await run(fake)
    assert set(fake.images) == {base.id, result.image_id}
    assert all("kegpack-pending" not in t for i in fake.images.values() for t in i.repo_tags)


async def test_a_repackage_with_no_change_reuses_the_layer(fake: FakeEngine) -> None:
    """The second job finds the same layer on the same parents and sends no layer bytes."""
    make_source(fake)
    await run(fake)
    first_upload = len(fake.store.uploads[-1])
    again = await run(fake)
    assert again.layer == "reused"
    assert again.streamed_bytes == 0
    assert len(fake.store.uploads[-1]) < first_upload - 1024 * 1024
    assert (await fake.inspect_image(REFERENCE)).id == again.image_id


async def test_skip_unchanged_reuses_the_image(fake: FakeEngine) -> None:
    """With skip_unchanged, an unchanged source gets the latest image again: nothing loaded."""
    make_source(fake)
    config = make_config(skip_unchanged=True)
    first = await run(fake, config)
    again = await run(fake, config)
    assert again.unchanged
    assert again.image_id == first.image_id
    assert len(fake.store.uploads) == 1


async def test_a_changed_mount_makes_a_new_layer(fake: FakeEngine) -> None:
    """A file written between two jobs makes a new layer, which holds it."""
    container, _base = make_source(fake)
    first = await run(fake)
    fake.add_files(container, "/srv/keg", {"c.txt": b"gamma"})
    again = await run(fake)
    assert again.layer == "new"
    assert again.image_id != first.image_id
    assert file_data(await final_layer(fake), "srv/keg/c.txt") == b"gamma"


async def test_a_mount_that_grows_between_measure_and_send_is_measured_again(
    fake: FakeEngine,
) -> None:
    """Past the declared size's headroom the upload is cut off; the second attempt holds all."""
    make_source(fake)
    reads = 0

    def grow(container: FakeContainer, path: str) -> None:
        nonlocal reads
        if path == "/srv/keg":
            reads += 1
            if reads == 2:
                fake.add_files(container, "/srv/keg", {"big.bin": bytes(3 << 20)}, mount="")

    fake.on_archive = grow
    result = await run(fake)
    assert result.layer == "new"
    assert reads == 4  # measure, cut-off send, measure again, send
    assert len(fake.store.uploads) == 1
    assert members(await final_layer(fake))["srv/keg/big.bin"].size == 3 << 20


async def test_a_failure_at_load_leaves_no_image_or_pending_tag(fake: FakeEngine) -> None:
    """The engine's refusal fails the job, and cleanup removes the commit."""
    _container, base = make_source(fake)
    fake.fail_next("load_archive", EngineError("load image: no space left on device"))
    with pytest.raises(EngineError, match="no space left"):
        await run(fake)
    assert set(fake.images) == {base.id}
    assert all("kegpack-pending" not in t for t in base.repo_tags)


async def test_the_containerd_store_gets_an_oci_layout_without_the_base_layers(
    fake: FakeEngine,
) -> None:
    """On the containerd store the load is an OCI layout that carries only the new layer."""
    _container, base = make_source(fake, store="containerd")
    result = await run(fake)
    image = await fake.inspect_image(REFERENCE)
    names = uploaded_names(fake)
    assert "index.json" in names
    assert "manifest.json" not in names
    blobs = {n for n in names if n.startswith("blobs/")}
    assert "blobs/" + image.layers[-1].replace(":", "/") in blobs
    assert not any(d.replace(":", "/") in n for d in image.layers[:-1] for n in blobs)
    assert result.layer == "new"
    assert file_data(await final_layer(fake), "srv/keg/a.txt") == b"alpha"
    assert image.layers[: len(base.layers)] == base.layers


async def test_a_repackage_on_the_containerd_store_reuses_the_layer(fake: FakeEngine) -> None:
    """The config-only OCI layout names the stored layer blob and loads."""
    make_source(fake, store="containerd")
    await run(fake)
    again = await run(fake)
    assert again.layer == "reused"
    assert not any(n.startswith("blobs/") and "layer" in n for n in uploaded_names(fake))
    assert len(fake.store.uploads[-1]) < 64 * 1024


async def test_a_push_goes_to_the_registry_with_the_images_digest(
    fake: FakeEngine, tmp_path: Path
) -> None:
    """Each tag is pushed; the result and the image's repo digests name the same digest."""
    make_source(fake)
    result = await run(fake, push_config(), docker_config_dir=tmp_path)
    digest = fake.store.registry["registry.test/kp/web:t1"]
    assert result.digests == {"registry.test/kp/web:t1": digest}
    image = await fake.inspect_image("registry.test/kp/web:t1")
    assert image.repo_digests == (f"registry.test/kp/web@{digest}",)


async def test_an_unchanged_image_is_not_pushed_again(fake: FakeEngine, tmp_path: Path) -> None:
    """skip_unchanged with push: the registry has the tag's digest, so no second push."""
    make_source(fake)
    first = await run(fake, push_config(skip_unchanged=True), docker_config_dir=tmp_path)
    again = await run(fake, push_config(skip_unchanged=True), docker_config_dir=tmp_path)
    assert again.unchanged
    assert again.digests == first.digests
    assert len(fake.called("push")) == 1


def push_config(**packaging: Any) -> Config:
    return parse_config(
        {
            "packaging": {
                "repository": "registry.test/kp/{name}",
                "tags": ["t1"],
                "push": True,
                **packaging,
            },
            "registries": {"allowed": ["registry.test"]},
        }
    )


async def test_names_that_need_pax_records_arrive_whole_across_small_chunks(
    fake: FakeEngine,
) -> None:
    """Long and non-ASCII names (PAX records), read in odd-sized chunks, reach the layer."""
    container, _base = make_source(fake)
    long_name = "n" * 150 + ".txt"
    fake.add_files(container, "/srv/keg", {long_name: b"long", "grüße.txt": b"hi"}, mount="")
    fake.archive_chunk = 509
    await run(fake)
    layer = await final_layer(fake)
    assert file_data(layer, f"srv/keg/{long_name}") == b"long"
    assert file_data(layer, "srv/keg/grüße.txt") == b"hi"


async def test_a_kegpackignore_at_the_mount_root_excludes_its_patterns(fake: FakeEngine) -> None:
    """The ignore file is read from the container, and what it names stays out of the layer."""
    container, _base = make_source(fake)
    fake.add_files(
        container, "/srv/keg", {".kegpackignore": b"*.log\n", "app.log": b"noise"}, mount=""
    )
    result = await run(fake)
    names = set(members(await final_layer(fake)))
    assert "srv/keg/app.log" not in names
    assert "srv/keg/a.txt" in names
    assert result.excluded == 1


async def test_a_failure_after_the_load_drops_the_pending_tag_then_the_commit(
    fake: FakeEngine,
) -> None:
    """Cleanup undoes in reverse: the loaded image (by its pending tag), then the commit."""
    _container, base = make_source(fake)
    fake.fail_next("tag", EngineError("tag kegpack-test/web:t1: conflict"))
    with pytest.raises(EngineError, match="conflict"):
        await run(fake)
    removed = [args[0] for args in fake.called("remove_image")]
    assert removed[0].startswith("kegpack-pending/")
    committed = fake.called("image_history")[0][0]  # the job reads the commit's history
    assert removed[-1] == committed
    assert set(fake.images) == {base.id}
