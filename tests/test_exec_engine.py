"""Commands run in the source around the copy, on the real engine: a failing, a hanging and
a very talkative "before" command, and the "after" command that runs in every case."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anyio
import pytest

from kegpackd.config import Config, parse_config
from kegpackd.engine.client import Engine
from kegpackd.errors import PackagingError
from kegpackd.packaging.jobs import JobRequest, JobResult
from kegpackd.packaging.options import Overrides
from kegpackd.packaging.pipeline import package
from tests.dockertools import Docker

pytestmark = pytest.mark.engine

AFTER = "sh -c 'echo ran >> /keg/after-ran'"
CONFIG = parse_config({"packaging": {"repository": "kegpack-test/{name}", "tags": ["t1"]}})


async def run_job(
    engine: Engine,
    docker: Docker,
    cid: str,
    exec_before: str,
    exec_after: str | None = None,
    quiesce: str | None = None,
    config: Config = CONFIG,
) -> JobResult:
    overrides = Overrides(
        exec_before=exec_before, exec_after=exec_after, quiesce=quiesce, origin="--"
    )
    request = JobRequest(container=cid, overrides=overrides)
    with anyio.fail_after(120):
        result = await package(engine, config, request)
    for reference in result.references:
        docker.track_image(reference)
    return result


def source(docker: Docker, tmp_path: Path, *labels: str) -> str:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a\n")
    return docker.container("-v", f"{tmp_path / 'data'}:/keg", *labels)


async def test_a_failing_before_command_fails_the_job_and_the_after_command_runs(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """exec-before exits 3: the error names it and its status, nothing is packaged, after ran."""
    cid = source(docker, tmp_path)
    with pytest.raises(PackagingError, match=r"exec-before command \['sh', '-c', 'exit 3'\] "
                       r"\(from --exec-before\) .* exit status 3"):  # fmt: skip
        await run_job(engine, docker, cid, exec_before="sh -c 'exit 3'", exec_after=AFTER)
    assert (tmp_path / "data" / "after-ran").read_text() == "ran\n"
    assert docker.packaged(cid) == []
    assert docker.leftovers() == ([], [])


async def test_a_before_command_past_its_limit_fails_the_job_and_the_after_command_runs(
    engine: Engine, docker: Docker, tmp_path: Path
) -> None:
    """exec-before sleeps past a 2 s limit set by label: a clear error in about 2 s; after ran."""
    cid = source(docker, tmp_path, "-l", "kegpack.exec-timeout=2")
    started = time.monotonic()
    with pytest.raises(
        PackagingError, match=r"did not finish within 2 s .*label kegpack\.exec-timeout"
    ):
        await run_job(engine, docker, cid, exec_before="sleep 30", exec_after=AFTER)
    assert time.monotonic() - started < 10
    assert (tmp_path / "data" / "after-ran").read_text() == "ran\n"
    assert docker.packaged(cid) == []


async def test_a_megabyte_of_before_output_is_logged_bounded_and_the_job_succeeds(
    engine: Engine, docker: Docker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1 MiB of output: the job succeeds, under 64 KiB of it is logged, its size is said."""
    cid = source(docker, tmp_path)
    caplog.set_level(logging.INFO, logger="kegpackd.packaging.incontainer")
    result = await run_job(
        engine, docker, cid,
        exec_before="sh -c 'yes 0123456789abcdef | head -c 1048576'", exec_after=AFTER,
    )  # fmt: skip
    assert result.references
    logged = [r.getMessage() for r in caplog.records if r.name == "kegpackd.packaging.incontainer"]
    assert "1048576 byte(s) of output; only its last 100 line(s) are shown" in logged[0]
    assert sum(len(line) for line in logged) < 64 * 1024
    assert (tmp_path / "data" / "after-ran").read_text() == "ran\n"


async def test_command_output_cannot_forge_a_log_line(
    engine: Engine, docker: Docker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each output line is logged marked as output, control characters escaped."""
    cid = source(docker, tmp_path)
    caplog.set_level(logging.INFO, logger="kegpackd.packaging.incontainer")
    await run_job(engine, docker, cid, exec_before="printf 'INFO forged\\r\\033[2K\\n'")
    logged = [r.getMessage() for r in caplog.records if r.name == "kegpackd.packaging.incontainer"]
    assert logged[1].endswith("exec-before output| INFO forged\\r\\x1b[2K")


@pytest.mark.parametrize("quiesce", ["pause", "stop"])
async def test_the_commands_run_while_the_source_runs_around_its_quiesce(
    engine: Engine, docker: Docker, tmp_path: Path, quiesce: str
) -> None:
    """before runs before the pause or stop, after once it runs again (exec needs it running)."""
    cid = docker.container(
        "-v", f"{tmp_path}:/keg",
        command=["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"],
    )  # fmt: skip
    config = parse_config(
        {
            "packaging": {"repository": "kegpack-test/{name}", "tags": ["t1"]},
            "daemon": {"state_dir": str(tmp_path / "state")},
        }
    )
    result = await run_job(
        engine, docker, cid,
        exec_before="sh -c 'echo before > /keg/order'",
        exec_after="sh -c 'echo after >> /keg/order'",
        quiesce=quiesce, config=config,
    )  # fmt: skip
    assert (tmp_path / "order").read_text() == "before\nafter\n"
    assert result.quiesced_seconds is not None
    assert docker.run_image(result.references[0], "cat", "/keg/order") == "before\n"
