"""The benchmark harness runs end to end on a tiny corpus and writes its report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dockertools import TestEnv

REPO = Path(__file__).resolve().parent.parent

TINY = (
    "--size 4M --small-files 200 --big 8M --rounds 1 --idle-seconds 1 --latency-starts 3"
    " --scaling-containers 2 --scaling-size 1M"
)
SECTIONS = (
    "## Command",
    "## Machine",
    "## Corpora",
    "## Packaging time and image size",
    "## kegpackd memory and streaming throughput",
    "## Daemon",
    "## Targets",
    "## Chart",
)


@pytest.mark.engine
def test_bench_harness_tiny_run(testenv: TestEnv, tmp_path: Path) -> None:
    """A tiny run writes every section, the skip_unchanged rows and the idle figures."""
    output = tmp_path / "BENCH.md"
    # Its own process group: on a time-out the bench's daemon goes with it, and does not
    # go on packaging every labelled container on the engine.
    with subprocess.Popen(
        [sys.executable, "-m", "bench.run", *TINY.split(), "--output", str(output)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "DOCKER_HOST": testenv.docker_host},
        start_new_session=True,
    ) as bench:
        try:
            _out, err = bench.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.communicate()
            raise
    assert bench.returncode == 0, err
    text = output.read_text()
    for section in SECTIONS:
        assert section in text
    for row in ("| bulk | (1) kegpackd package |", "| many-small | (3) commit + docker cp pipe |"):
        assert row in text
    assert "**The floor.**" in text
    assert "| bulk | (4) floor: docker cp into tar -x |" in text
    assert "## Unchanged content" in text
    assert "| `skip_unchanged` job s |" in text
    assert "| bulk |" in text.split("`skip_unchanged` job s")[1]
    assert "**not unchanged**" not in text
    assert "resident memory (VmRSS)" in text
    assert "latency p99 < 250 ms" in text
    assert "idle CPU < 1 %" in text
