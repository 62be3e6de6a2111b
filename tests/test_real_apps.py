"""Consistent images of real databases under a write load (issue 21): Redis and PostgreSQL.

Each source runs a client loop on loopback inside the container that writes one record at a
time and appends its number to ``/tmp/acked`` once the server acknowledged it. A "before"
command first copies that file (so the copy lists only what was acknowledged before the
command), and the image, run with no mount, must hold every record the copy lists. The
files under ``/tmp`` are in the container's own layer, so the image carries them too.
About 15 s for the three on dockerd 20.10 (2 shared cores), once the images exist; building
the PostgreSQL image takes about a minute the first time (debootstrap), then seconds.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from kegpackd.engine.client import Engine
from tests.daemontools import wait_until
from tests.dockertools import TESTENV_SCRIPT, Docker, TestEnv
from tests.test_layer import redis_cli, wait_for_redis
from tests.test_package import run_job

pytestmark = pytest.mark.engine

PGDATA = "/var/lib/postgresql/data"
# Records acknowledged before packaging starts, so that the load is under way.
WARM_UP = 50
# One client process a record (about 50-100 a second here): slow, but countable.
REDIS_LOAD = (
    'i=0; while [ "$(redis-cli SET k$i $i)" = OK ]; do echo $i >> /tmp/acked; i=$((i+1)); done'
)
PG_LOAD = (
    'i=0; while psql -qAt -v ON_ERROR_STOP=1 -c "INSERT INTO t VALUES ($i)" >/dev/null;'
    " do echo $i >> /tmp/acked; i=$((i+1)); done"
)


def app_image(command: str, image: str) -> str:
    """Build ``image`` with ``scripts/testenv.sh command`` (once, then kept on the engine)."""
    done = subprocess.run(
        [str(TESTENV_SCRIPT), command], capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr
    return image


@pytest.fixture(scope="module")
def redis_image(testenv: TestEnv) -> str:
    """Debian 12's redis-server as an image on the test engine."""
    return app_image("app-image", "kegpack-test/redis:latest")


@pytest.fixture(scope="module")
def postgres_image(testenv: TestEnv) -> str:
    """Debian 12's PostgreSQL 15 as an image on the test engine."""
    return app_image("pg-image", "kegpack-test/postgres:latest")


def data_dir(docker: Docker, image: str, path: Path) -> Path:
    """An empty directory for a bind mount, owned by the image's user, mode 0700."""
    uid, gid = docker.run_image(image, "sh", "-c", "id -u; id -g").split()
    path.mkdir()
    os.chown(path, int(uid), int(gid))
    path.chmod(0o700)
    return path


def acked(text: str) -> list[int]:
    """The numbers of a ``/tmp/acked`` file; a line the loop was still writing is left out."""
    return [int(line) for line in text.split("\n")[:-1]]


def read_acked(docker: Docker, image: str, path: str) -> list[int]:
    """The record numbers in ``path`` of ``image`` (written before its commit, so kept)."""
    return acked(docker.run_image(image, "cat", path))


def count_acked(docker: Docker, cid: str) -> int:
    done = subprocess.run(
        ["docker", "-H", docker.env.docker_host, "exec", cid, "cat", "/tmp/acked"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return len(acked(done.stdout))


def start_load(docker: Docker, cid: str, loop: str) -> None:
    """Run ``loop`` in the container, detached, and wait until it has acknowledged WARM_UP."""
    docker.run("exec", "-d", cid, "sh", "-c", loop)
    wait_until(lambda: count_acked(docker, cid) >= WARM_UP, 60, f"{WARM_UP} writes acknowledged")


def pg_ready(docker: Docker, cid: str) -> bool:
    done = subprocess.run(
        ["docker", "-H", docker.env.docker_host, "exec", cid, "pg_isready", "-q"],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return done.returncode == 0


def wait_for_postgres(docker: Docker, cid: str) -> None:
    try:
        wait_until(lambda: pg_ready(docker, cid), 60, f"postgres in {cid[:12]} accepts connections")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {container_log(docker, cid)}") from None


def container_log(docker: Docker, cid: str) -> str:
    """What the container wrote to stdout and stderr (PostgreSQL logs to stderr)."""
    done = subprocess.run(
        ["docker", "-H", docker.env.docker_host, "logs", cid],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30, check=True,
    )  # fmt: skip
    return done.stdout


def psql(docker: Docker, cid: str, sql: str) -> str:
    return docker.run("exec", cid, "psql", "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql)


def postgres_source(docker: Docker, image: str, tmp_path: Path, *labels: str) -> str:
    """A PostgreSQL container with its data dir bind-mounted, a table t and the write load."""
    data = data_dir(docker, image, tmp_path / "pgdata")
    label_args = [arg for label in labels for arg in ("-l", label)]
    # SIGINT is PostgreSQL's fast shutdown (docker import cannot set the image's STOPSIGNAL).
    cid = docker.container(
        "--stop-signal", "SIGINT", "-v", f"{data}:{PGDATA}", *label_args, image=image, command=()
    )
    wait_for_postgres(docker, cid)
    psql(docker, cid, "CREATE TABLE t (id integer PRIMARY KEY)")
    start_load(docker, cid, PG_LOAD)
    return cid


def rows(docker: Docker, cid: str) -> set[int]:
    return {int(line) for line in psql(docker, cid, "SELECT id FROM t").split()}


def run_copy(docker: Docker, image: str) -> str:
    """A container of the packaged ``image``, with no mount."""
    copy = docker.container(image=image, command=())
    assert docker.inspect(copy)["Mounts"] == []
    return copy


async def test_redis_saved_by_the_before_command_keeps_every_acknowledged_key(
    engine: Engine, docker: Docker, tmp_path: Path, redis_image: str
) -> None:
    """Redis (RDB only) under load, `redis-cli SAVE` before: the image has every key acked."""
    data = data_dir(docker, redis_image, tmp_path / "redis")
    before = "sh -c 'cp /tmp/acked /tmp/acked-at-save && redis-cli SAVE'"
    cid = docker.container(
        "-v", f"{data}:/var/lib/redis", "-l", f"kegpack.exec-before={before}",
        image=redis_image, command=[
            "redis-server", "--bind", "127.0.0.1", "--dir", "/var/lib/redis",
            "--save", "60 1", "--appendonly", "no",
        ],
    )  # fmt: skip
    wait_for_redis(docker, cid)
    start_load(docker, cid, REDIS_LOAD)
    result = await run_job(engine, docker, cid)
    at_save = read_acked(docker, result.references[0], "/tmp/acked-at-save")
    assert len(at_save) >= WARM_UP
    assert count_acked(docker, cid) > len(at_save), "the load stopped before the SAVE"
    copy = run_copy(docker, result.references[0])
    wait_for_redis(docker, copy)
    keys = [f"k{i}" for i in at_save]
    assert redis_cli(docker, copy, "MGET", *keys).split() == [str(i) for i in at_save]


async def test_postgres_stopped_for_the_copy_starts_clean_with_every_committed_row(
    engine: Engine, docker: Docker, tmp_path: Path, postgres_image: str
) -> None:
    """PostgreSQL under load, quiesce=stop: the image starts without recovery, with every row."""
    cid = postgres_source(docker, postgres_image, tmp_path, "kegpack.quiesce=stop")
    result = await run_job(engine, docker, cid)
    # The load ended with the stop; the image's /tmp/acked is every acknowledged insert.
    committed = read_acked(docker, result.references[0], "/tmp/acked")
    assert len(committed) >= WARM_UP
    copy = run_copy(docker, result.references[0])
    wait_for_postgres(docker, copy)
    log = container_log(docker, copy)
    assert "database system was shut down" in log, log
    assert "was interrupted" not in log, log
    assert "automatic recovery" not in log, log
    assert set(committed) <= rows(docker, copy)


async def test_postgres_paused_after_a_checkpoint_starts_with_every_committed_row(
    engine: Engine, docker: Docker, tmp_path: Path, postgres_image: str
) -> None:
    """PostgreSQL under load, quiesce=pause after `psql -c CHECKPOINT`: the image has every row."""
    before = "sh -c 'cp /tmp/acked /tmp/acked-at-checkpoint && psql -c CHECKPOINT'"
    cid = postgres_source(
        docker, postgres_image, tmp_path, "kegpack.quiesce=pause", f"kegpack.exec-before={before}"
    )
    result = await run_job(engine, docker, cid)
    at_checkpoint = read_acked(docker, result.references[0], "/tmp/acked-at-checkpoint")
    assert len(at_checkpoint) >= WARM_UP
    copy = run_copy(docker, result.references[0])
    wait_for_postgres(docker, copy)
    assert set(at_checkpoint) <= rows(docker, copy)
