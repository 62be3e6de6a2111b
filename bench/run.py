"""End-to-end benchmark of kegpackd against the docker CLI procedures it replaces.

Needs a Docker engine in ``DOCKER_HOST`` (``eval "$(scripts/testenv.sh up)"``) with the
base image ``kegpack-test/busybox:latest``. Every container runs with ``--network none``;
everything the run creates (containers, images, temp dirs) is removed at the end, also on
failure or Ctrl-C. Writes a Markdown report and, when matplotlib is installed, a PNG chart.

Run from the repository: ``python -m bench.run [--size 512M] [--small-files 100000] [--big 2G]
[--rounds 3] ...`` (as a module, so that it finds the tests' daemon tools as a package).
kegpackd's own figures (stages, bytes, layer) come from the job JSON that ``kegpackd
package --result FILE`` writes, not from its log lines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.daemontools import DaemonProcess, wait_until, write_config

REPO = Path(__file__).resolve().parent.parent
BASE_IMAGE = "kegpack-test/busybox:latest"
MOUNT = "/data"
MIB = 1 << 20
CONFIG_KEYS = ("Cmd", "Entrypoint", "Env", "WorkingDir", "User", "ExposedPorts", "Labels")
PROCEDURES = ("kegpackd", "tarball", "pipeline", "floor")
# The procedures that make an image (the floor only reads the mount and writes it to disk).
IMAGE_PROCEDURES = ("kegpackd", "tarball", "pipeline")
STAGES = ("startup", "commit", "measure", "stream", "finalize", "cleanup")
PROC_TITLES = {
    "kegpackd": "(1) kegpackd package",
    "tarball": "(2) tarball via exec/commit/run",
    "pipeline": "(3) commit + docker cp pipe",
    "floor": "(4) floor: docker cp into tar -x",
}
FLOOR_STEP = "cp into tar -x"


def parse_size(text: str) -> int:
    match = re.fullmatch(r"(\d+)([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 512M, 2G)")
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2).upper()]


def human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


class Interrupted(Exception):
    pass


# Things that went wrong during the run and are reported as such.
NOTES: list[str] = []


# ---------------------------------------------------------------- docker CLI


@dataclass
class Docker:
    run_id: str
    containers: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    _scratch_root: Path | None = None

    @property
    def label(self) -> str:
        return f"kegpack.bench={self.run_id}"

    @property
    def repo(self) -> str:
        return f"kbench-{self.run_id}"

    def __call__(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            ["docker", *args], capture_output=True, text=True, check=False, timeout=1800
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def container(self, name: str, *args: str, command: Sequence[str] = ("sleep", "86400")) -> str:
        cid = self(
            "run", "-d", "--network", "none", "--name", name, "-l", self.label, *args,
            BASE_IMAGE, *command,
        )  # fmt: skip
        self.containers.append(cid)
        return cid

    def inspect(self, ref: str) -> dict[str, Any]:
        data: list[dict[str, Any]] = json.loads(self("inspect", ref))
        return data[0]

    def image_size(self, ref: str) -> int:
        return int(self("image", "inspect", "-f", "{{.Size}}", ref))

    def rm(self, *cids: str) -> None:
        for cid in cids:
            self("rm", "-f", "-v", cid, check=False)
            if cid in self.containers:
                self.containers.remove(cid)

    def rmi(self, *refs: str) -> None:
        for ref in refs:
            self("rmi", "-f", ref, check=False)
            if ref in self.images:
                self.images.remove(ref)

    @property
    def data_root(self) -> str:
        return self("info", "--format", "{{.DockerRootDir}}")

    def scratch_root(self) -> Path:
        """Where the floor procedure extracts: beside the engine's data root, on its disk.

        The bench runs as root on the engine's host, so the data root's parent is a
        directory of this host (an engine in a chroot reports its own path: then the
        system temp dir is used, and the report says so).
        """
        if self._scratch_root is None:
            parent = Path(self.data_root).parent
            if not parent.is_dir():
                NOTES.append(
                    f"the engine's data root's parent {parent} is not a directory of this "
                    f"host: procedure (4) extracted into {tempfile.gettempdir()} instead"
                )
                parent = Path(tempfile.gettempdir())
            self._scratch_root = parent
        return self._scratch_root

    def scratch_dir(self) -> str:
        folder = tempfile.mkdtemp(prefix="kbench-floor-", dir=self.scratch_root())
        self.dirs.append(folder)
        return folder

    def rm_dir(self, folder: str) -> None:
        subprocess.run(["rm", "-rf", "--", folder], check=False)
        if folder in self.dirs:
            self.dirs.remove(folder)

    def made_by_kegpackd(self, cids: Sequence[str]) -> list[str]:
        found: list[str] = []
        for cid in cids:
            found += self(
                "images", "-q", "--no-trunc", "--filter", f"label=kegpack.source.id={cid}",
                check=False,
            ).split()  # fmt: skip
        return found

    def wait_engine(self, timeout: float = 180) -> None:
        """Wait for the engine to answer (it may be restarted by others sharing it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            probe = subprocess.run(["docker", "info"], check=False, capture_output=True)
            if probe.returncode == 0:
                return
            time.sleep(1)

    def cleanup(self) -> None:
        for folder in list(self.dirs):
            self.rm_dir(folder)
        self.wait_engine()
        made = self.made_by_kegpackd(self.containers)
        for cid in list(reversed(self.containers)):
            self.rm(cid)
        ours = self(
            "images", "--format", "{{.Repository}}:{{.Tag}}", "--filter",
            f"reference={self.repo}/*", check=False,
        ).split()  # fmt: skip
        self.rmi(*reversed(self.images), *dict.fromkeys(made), *ours)


# ---------------------------------------------------------------- corpora


def write_random_file(path: Path, size: int) -> None:
    with path.open("wb") as out:
        left = size
        while left > 0:
            chunk = min(left, 4 * MIB)
            out.write(os.urandom(chunk))
            left -= chunk


def write_small_files(
    root: Path, total_bytes: int | None, count: int | None, lo: int, hi: int
) -> int:
    """Files of ``lo``-``hi`` bytes of incompressible data, 1000 per directory."""
    rng = random.Random(1)
    pool = os.urandom(4 * MIB)
    written = index = 0
    while (total_bytes is None or written < total_bytes) and (count is None or index < count):
        folder = root / f"d{index // 1000:04d}"
        if index % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        size = rng.randint(lo, hi)
        start = rng.randrange(0, len(pool) - size)
        (folder / f"f{index:06d}.dat").write_bytes(pool[start : start + size])
        written += size
        index += 1
    return index


def make_bulk(root: Path, size: int) -> str:
    root.mkdir(parents=True)
    write_random_file(root / "big.bin", size // 2)
    files = write_small_files(root / "small", size - size // 2, None, 1024, 16 * 1024)
    return f"one {human(size // 2)} random file + {files} files of 1-16 KiB ({human(size)})"


def make_many_small(root: Path, count: int) -> str:
    root.mkdir(parents=True)
    write_small_files(root, None, count, 1024, 4 * 1024)
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    return f"{count} files of 1-4 KiB ({human(total)})"


# ---------------------------------------------------------------- procedures


@dataclass
class Outcome:
    seconds: float
    image: str
    peak_rss: int = 0
    stream_mbps: float | None = None
    stages: dict[str, float] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    layer: str = ""
    # skip_unchanged found the latest image the same (stdout's last word).
    unchanged: bool = False


@contextmanager
def step(into: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``into[name]``."""
    started = time.monotonic()
    try:
        yield
    finally:
        into[name] = into.get(name, 0.0) + time.monotonic() - started


def watch_process(process: subprocess.Popen[str]) -> tuple[int, float]:
    """Poll VmHWM of ``process`` until it exits, then reap it: (peak RSS, CPU seconds).

    Reaped with ``wait4`` for its own user+system time (its rusage; unlike ru_maxrss,
    the CPU times do not start from the forking parent's).
    """
    peak = 0
    status = Path(f"/proc/{process.pid}/status")
    while True:
        pid, wait_status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(wait_status)
            return peak, usage.ru_utime + usage.ru_stime
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]) * 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.02)


def stream_rate(job: dict[str, Any]) -> float | None:
    """MB/s of the stream stage, from the job's bytes and its stage's seconds."""
    seconds = job["stages"].get("stream", 0.0)
    return job["bytes"] / 1e6 / seconds if seconds > 0 else None


def stage_split(job: dict[str, Any], began: float, ended: float) -> dict[str, float]:
    """Seconds per phase of a CLI run: ``startup`` until its job started (interpreter,
    imports, config, engine connection, sweep), the job's own stages, and ``cleanup``
    until the process ended."""
    split: dict[str, float] = {"startup": job["started"] - began, **job["stages"]}
    split["cleanup"] = split.get("cleanup", 0.0) + ended - job["finished"]
    return split


def run_kegpackd(docker: Docker, src: str, tag: str, config: Path) -> Outcome:
    ref = f"{docker.repo}/p1:{tag}"
    result = config.with_name(f"result-{tag}.json")
    started, began = time.monotonic(), time.time()
    process = subprocess.Popen(
        [sys.executable, "-m", "kegpackd", "package", src, "-c", str(config),
         "--repository", f"{docker.repo}/p1", "--tag", tag, "--no-push",
         "--result", str(result)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    docker.images.append(ref)
    peak, cpu = watch_process(process)
    _out, err = process.communicate()
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"kegpackd package failed ({process.returncode}): {err.strip()}")
    job = json.loads(result.read_text())
    result.unlink()
    return Outcome(
        seconds, ref, peak, stream_rate(job), stage_split(job, began, time.time()),
        cpu_seconds=cpu, layer=job["layer"] or "unknown", unchanged=job["state"] == "unchanged",
    )  # fmt: skip


def run_tarball(docker: Docker, src: str, tag: str) -> Outcome:
    ref = f"{docker.repo}/p2:{tag}"
    tmp_image = f"{docker.repo}/p2tmp:{tag}"
    tmp_name = f"{docker.repo}-p2tmp-{tag}"
    steps: dict[str, float] = {}
    started = time.monotonic()
    with step(steps, "tar czf"):
        docker("exec", src, "tar", "czf", "/tmp/kbench.tgz", "-C", "/", MOUNT.lstrip("/"))
    docker.images.append(tmp_image)
    with step(steps, "commit source"):
        docker("commit", src, tmp_image)
    with step(steps, "rm tgz"):
        docker("exec", src, "rm", "-f", "/tmp/kbench.tgz")
    docker.containers.append(tmp_name)
    with step(steps, "run untar"):
        docker(
            "run", "--network", "none", "--name", tmp_name, tmp_image,
            "sh", "-c", "tar xzf /tmp/kbench.tgz -C / && rm /tmp/kbench.tgz",
        )  # fmt: skip
    docker.images.append(ref)
    with step(steps, "commit"):
        docker("commit", tmp_name, ref)
    with step(steps, "remove container"):
        docker.rm(tmp_name)
    with step(steps, "remove image"):
        docker("rmi", tmp_image)
    docker.images.remove(tmp_image)
    return Outcome(time.monotonic() - started, ref, stages=steps)


def run_pipeline(docker: Docker, src: str, tag: str) -> Outcome:
    ref = f"{docker.repo}/p3:{tag}"
    tmp_image = f"{docker.repo}/p3tmp:{tag}"
    helper = f"{docker.repo}-p3helper-{tag}"
    steps: dict[str, float] = {}
    started = time.monotonic()
    docker.images.append(tmp_image)
    with step(steps, "commit source"):
        docker("commit", src, tmp_image)
    docker.containers.append(helper)
    with step(steps, "create helper"):
        docker("create", "--network", "none", "--name", helper, tmp_image)
    parent = os.path.dirname(MOUNT)
    pipe = f"docker cp {shlex.quote(src)}:{MOUNT} - | docker cp - {shlex.quote(helper)}:{parent}"
    with step(steps, "cp pipe"):
        subprocess.run(["bash", "-o", "pipefail", "-c", pipe], check=True, timeout=1800)
    docker.images.append(ref)
    with step(steps, "commit helper"):
        docker("commit", helper, ref)
    with step(steps, "remove helper"):
        docker.rm(helper)
    with step(steps, "remove image"):
        docker("rmi", tmp_image)
    docker.images.remove(tmp_image)
    return Outcome(time.monotonic() - started, ref, stages=steps)


def run_floor(docker: Docker, src: str) -> Outcome:
    """One read of the mount through the API, one write of it onto the engine's disk.

    Only the pipe is timed; the extracted copy is removed afterwards. No image is made.
    """
    folder = docker.scratch_dir()
    pipe = f"docker cp {shlex.quote(src)}:{MOUNT} - | tar -x -f - -C {shlex.quote(folder)}"
    steps: dict[str, float] = {}
    try:
        started = time.monotonic()
        with step(steps, FLOOR_STEP):
            subprocess.run(["bash", "-o", "pipefail", "-c", pipe], check=True, timeout=1800)
        seconds = time.monotonic() - started
    finally:
        docker.rm_dir(folder)
    return Outcome(seconds, "", stages=steps)


def config_of(data: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = data["Config"]
    view = {key: config.get(key) for key in CONFIG_KEYS}
    labels = {k: v for k, v in (view["Labels"] or {}).items() if not k.startswith("kegpack.")}
    view["Labels"] = labels
    return view


# ---------------------------------------------------------------- daemon


def cpu_ticks(daemon: DaemonProcess) -> int:
    """User plus system clock ticks the daemon has used so far."""
    assert daemon.process is not None
    fields = Path(f"/proc/{daemon.process.pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def rss_bytes(daemon: DaemonProcess) -> int:
    """The daemon's resident memory now (VmRSS)."""
    assert daemon.process is not None
    for line in Path(f"/proc/{daemon.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@contextmanager
def webhook_receiver() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback webhook that takes every POST (204) and keeps the bodies."""
    posts: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posts.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/kegpack", posts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def log_time(record: dict[str, Any]) -> float:
    return (
        datetime.strptime(str(record["time"]), "%Y-%m-%dT%H:%M:%S.%fZ")
        .replace(tzinfo=UTC)
        .timestamp()
    )


@dataclass
class EventWatch:
    """A live ``docker events`` subscription (the engine keeps only its last 256 events)."""

    docker: Docker
    path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.path.open("wb") as out:
            self.process = subprocess.Popen(
                ["docker", "events", "--since", f"{time.time() - 1:.3f}",
                 "--filter", f"label={self.docker.label}", "--filter", "event=start",
                 "--format", "{{json .}}"],
                stdout=out,
            )  # fmt: skip
        time.sleep(0.5)

    def starts(self, cids: Sequence[str], timeout: float = 30) -> dict[str, float]:
        """Engine time (UTC, ns precision) of the first start event of each container."""
        deadline = time.monotonic() + timeout
        while True:
            found: dict[str, float] = {}
            for line in self.path.read_text().splitlines():
                event = json.loads(line)
                cid = event.get("id") or event.get("Actor", {}).get("ID", "")
                if cid in cids and cid not in found:
                    found[cid] = event["timeNano"] / 1e9
            if len(found) == len(cids) or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@contextmanager
def event_watch(docker: Docker, path: Path) -> Iterator[EventWatch]:
    watch = EventWatch(docker, path)
    try:
        watch.start()
        yield watch
    finally:
        watch.stop()


def wait_quiet(docker: Docker, timeout: float = 180) -> bool:
    """Wait until no other kegpackd job runs on the engine (helpers of others) and no
    container of others is labelled for packaging: a daemon at start removes every
    ``kegpack-helper-*`` container it finds, and packages every labelled container."""
    deadline = time.monotonic() + timeout
    while True:
        helpers = docker("ps", "-a", "-q", "--filter", "name=kegpack-helper-").split()
        labelled = set(docker("ps", "-a", "-q", "--filter", "label=kegpack.package=true").split())
        mine = set(docker("ps", "-a", "-q", "--filter", f"label={docker.label}").split())
        if not helpers and not (labelled - mine):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


@contextmanager
def daemon_running(
    docker: Docker, workdir: Path, concurrency: int, webhook: str = ""
) -> Iterator[DaemonProcess]:
    """A daemon (its job journal in ``workdir``); with ``webhook``, notifying it of every job."""
    config = write_config(
        workdir / f"daemon-c{concurrency}.toml",
        concurrency=concurrency,
        grace="5s",
        repository=f"{docker.repo}/daemon",
        level="info",
        extra=f'[notify]\nwebhook_url = "{webhook}"\n' if webhook else "",
    )
    daemon = DaemonProcess(config, workdir / f"daemon-c{concurrency}.log")
    try:
        if not wait_quiet(docker):
            NOTES.append(
                f"daemon (concurrency {concurrency}) started while other kegpackd jobs or "
                "labelled containers of others were on the engine"
            )
        daemon.start()
        yield daemon
    finally:
        daemon.stop()


# ---------------------------------------------------------------- the run


@dataclass
class Results:
    corpora: dict[str, str] = field(default_factory=dict)
    times: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    configs: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    source_config: dict[str, Any] = field(default_factory=dict)
    rss: dict[str, int] = field(default_factory=dict)
    stream_mbps: dict[str, list[float]] = field(default_factory=dict)
    stages: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    steps: dict[str, dict[str, list[dict[str, float]]]] = field(default_factory=dict)
    cpu: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    # Per corpus: the timed second run on unchanged content, and the first (untimed) one's layer.
    reuse: dict[str, Outcome] = field(default_factory=dict)
    reuse_first: dict[str, str] = field(default_factory=dict)
    # Per corpus: a third run with packaging.skip_unchanged (no image made).
    skipped: dict[str, Outcome] = field(default_factory=dict)
    idle_rss: int = 0
    scaling: dict[int, float] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    idle_cpu: float = 0.0
    idle_seconds: float = 0.0


def bench_corpus(
    docker: Docker, res: Results, name: str, folder: Path, rounds: int, config: Path
) -> None:
    src = docker.container(
        f"{docker.repo}-src-{name}", "-v", f"{folder}:{MOUNT}", "-l", "bench.app=demo",
        "-e", "BENCH=1", "-w", MOUNT, "--expose", "8080",
    )  # fmt: skip
    res.source_config = config_of(docker.inspect(src))
    res.times[name] = {p: [] for p in PROCEDURES}
    res.sizes[name] = {}
    res.configs[name] = {}
    for rnd in range(rounds):
        turn = rnd % len(PROCEDURES)
        order = PROCEDURES[turn:] + PROCEDURES[:turn]
        for proc in order:
            tag = f"{name}-r{rnd}"
            print(f"bench: {name} round {rnd + 1}/{rounds}: {proc}", file=sys.stderr, flush=True)
            outcome = attempt(docker, proc, src, tag, config)
            if proc == "kegpackd":
                res.rss[name] = max(res.rss.get(name, 0), outcome.peak_rss)
                if outcome.stream_mbps is not None:
                    res.stream_mbps.setdefault(name, []).append(outcome.stream_mbps)
                res.stages.setdefault(name, []).append(outcome.stages)
                res.cpu.setdefault(name, []).append((outcome.cpu_seconds, outcome.seconds))
            else:
                res.steps.setdefault(name, {}).setdefault(proc, []).append(outcome.stages)
            res.times[name][proc].append(outcome.seconds)
            if proc in IMAGE_PROCEDURES:
                res.sizes[name][proc] = docker.image_size(outcome.image)
                res.configs[name][proc] = config_of(docker.inspect(outcome.image))
                docker.rmi(outcome.image)
    bench_reuse(docker, res, name, src, config)
    docker.rm(src)


def bench_reuse(docker: Docker, res: Results, name: str, src: str, config: Path) -> None:
    """Package the source once (untimed, image kept), then again unchanged (timed), then once
    more with ``packaging.skip_unchanged`` (timed: the job that makes no image)."""
    print(f"bench: {name}: packaging unchanged content again", file=sys.stderr, flush=True)
    skip = config.with_name("kegpackd-skip.toml")
    skip.write_text(config.read_text() + "[packaging]\nskip_unchanged = true\n")
    first = attempt(docker, "kegpackd", src, f"{name}-reuse1", config)
    try:
        res.reuse_first[name] = first.layer
        again = attempt(docker, "kegpackd", src, f"{name}-reuse2", config)
        res.reuse[name] = again
        skipped = attempt(docker, "kegpackd", src, f"{name}-reuse3", skip)
        res.skipped[name] = skipped
        docker.rmi(skipped.image)
        docker.rmi(again.image)
    finally:
        docker.rmi(first.image)
    if not skipped.unchanged:
        NOTES.append(f"{name}: the skip_unchanged run did not end `unchanged`")
    if again.layer != "reused":
        NOTES.append(
            f"{name}: the second package of unchanged content said `layer {again.layer}`, "
            "not `layer reused`"
        )


def attempt(docker: Docker, proc: str, src: str, tag: str, config: Path) -> Outcome:
    """One procedure; a failed attempt is noted, cleaned up and retried (3 attempts)."""
    for number in range(1, 4):
        try:
            if proc == "kegpackd":
                return run_kegpackd(docker, src, tag, config)
            if proc == "tarball":
                return run_tarball(docker, src, tag)
            if proc == "floor":
                return run_floor(docker, src)
            return run_pipeline(docker, src, tag)
        except (RuntimeError, subprocess.CalledProcessError) as exc:
            NOTES.append(f"{PROC_TITLES[proc]}, {tag}, attempt {number} failed: {exc}")
            print(f"bench: {NOTES[-1]}", file=sys.stderr, flush=True)
            docker.wait_engine()
            docker.rm(*[c for c in docker.containers if c.startswith(docker.repo)])
            docker.rmi(*[i for i in docker.images if tag in i])
    raise RuntimeError(f"{PROC_TITLES[proc]} failed 3 times on {tag}")


def bench_big(docker: Docker, res: Results, folder: Path, size: int, config: Path) -> None:
    print(f"bench: peak RSS at {human(size)}", file=sys.stderr, flush=True)
    src = docker.container(f"{docker.repo}-src-big", "-v", f"{folder}:{MOUNT}")
    outcome = attempt(docker, "kegpackd", src, "big", config)
    res.rss["big"] = outcome.peak_rss
    if outcome.stream_mbps is not None:
        res.stream_mbps["big"] = [outcome.stream_mbps]
    docker.rmi(outcome.image)
    docker.rm(src)


def bench_scaling(
    docker: Docker, res: Results, work: Path, folder: Path, count: int, levels: Sequence[int]
) -> None:
    for level in levels:
        print(f"bench: daemon concurrency {level}", file=sys.stderr, flush=True)
        with (
            daemon_running(docker, work, level) as daemon,
            event_watch(docker, work / f"events-c{level}.jsonl") as watch,
        ):
            cids = [
                docker.container(
                    f"{docker.repo}-c{level}-{i}",
                    "-l",
                    "kegpack.package=true",
                    "-v",
                    f"{folder}:{MOUNT}",
                )
                for i in range(count)
            ]
            ends = [log_time(_finished(daemon, cid, 900)) for cid in cids]
            starts = watch.starts(cids)
            res.scaling[level] = max(ends) - min(starts.values())
        made = docker.made_by_kegpackd(cids)
        docker.rm(*cids)
        docker.rmi(*made)


def _finished(daemon: DaemonProcess, cid: str, timeout: float) -> dict[str, Any]:
    """The daemon's end-of-job line for ``cid``; a failed job is noted in the report."""
    record = daemon.wait_for(
        lambda r: (
            r.get("container") == cid[:12]
            and r.get("message") in ("job succeeded", "job failed", "job cancelled")
        ),
        timeout,
    )
    if record["message"] != "job succeeded":
        NOTES.append(f"daemon job for {cid[:12]}: {record['message']}: {record.get('error')}")
    return record


def _job(message: str, cid: str) -> Callable[[dict[str, Any]], bool]:
    def matches(record: dict[str, Any]) -> bool:
        return record.get("message") == message and record.get("container") == cid[:12]

    return matches


def bench_latency_idle(
    docker: Docker, res: Results, work: Path, folder: Path, starts: int, idle: float
) -> None:
    print("bench: daemon latency and idle CPU", file=sys.stderr, flush=True)
    with (
        webhook_receiver() as (webhook, posts),
        daemon_running(docker, work, 4, webhook) as daemon,
        event_watch(docker, work / "events-latency.jsonl") as watch,
    ):
        started: dict[str, float] = {}
        # The journal is shared with the run's earlier daemons: count this one's lines.
        journal = work / "state" / "jobs.jsonl"
        lines_before = len(journal.read_text().splitlines()) if journal.exists() else 0
        for i in range(starts):
            cid = docker.container(
                f"{docker.repo}-lat-{i}", "-l", "kegpack.package=true", "-v", f"{folder}:{MOUNT}"
            )
            record = daemon.wait_for(_job("job started", cid), 120)
            started[cid] = log_time(record)
            _finished(daemon, cid, 300)
            made = docker.made_by_kegpackd([cid])
            docker.rm(cid)
            docker.rmi(*made)
        events = watch.starts(list(started))
        res.latencies = [started[c] - events[c] for c in started if c in events]
        time.sleep(1)
        ticks = os.sysconf("SC_CLK_TCK")
        before, wall = cpu_ticks(daemon), time.monotonic()
        time.sleep(idle)
        used = (cpu_ticks(daemon) - before) / ticks
        res.idle_seconds = time.monotonic() - wall
        res.idle_cpu = used / res.idle_seconds
        res.idle_rss = rss_bytes(daemon)
        with contextlib.suppress(AssertionError):  # a shortfall is noted just below
            wait_until(lambda: len(posts) >= starts, 10, "a webhook POST per job")
        written = len(journal.read_text().splitlines()) - lines_before
        if written != starts or len(posts) != starts:
            NOTES.append(
                f"daemon: {starts} jobs, but {written} journal lines and {len(posts)} webhook POSTs"
            )


# ---------------------------------------------------------------- report


def machine(docker: Docker) -> list[tuple[str, str]]:
    mem = next(
        line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )  # fmt: skip
    scratch = docker.scratch_root()
    fstype = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "-T", str(scratch)],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return [
        ("CPUs (nproc)", str(os.cpu_count())),
        ("memory", human(int(mem) * 1024)),
        ("kernel", platform.release()),
        ("dockerd", docker("version", "--format", "{{.Server.Version}}")),
        ("storage driver", docker("info", "--format", "{{.Driver}}")),
        ("engine data root", f"`{docker.data_root}`"),
        ("(4) extracts into", f"a fresh dir in `{scratch}` ({fstype or 'unknown fs'})"),
        ("python", platform.python_version()),
    ]


def _config_match(image: dict[str, Any], source: dict[str, Any]) -> str:
    if image == source:
        return "yes"
    added = set(image["Labels"]) - set(source["Labels"])
    without = {**image, "Labels": {k: v for k, v in image["Labels"].items() if k not in added}}
    if without == source:
        return f"yes, plus label(s) {', '.join(sorted(added))}"
    return "no"


def met(ok: bool) -> str:
    return "**met**" if ok else "**MISSED**"


def _median_of(runs: Sequence[dict[str, float]], *keys: str) -> float:
    """Median over runs of the sum of ``keys`` in each run (missing keys count 0)."""
    return statistics.median([sum(r.get(k, 0.0) for k in keys) for r in runs]) if runs else 0.0


def engine_floor(res: Results, med: dict[str, dict[str, float]]) -> list[str]:
    """Per-step medians of (2), (3) and (4), and kegpackd against the floor (4)."""
    lines = [
        "",
        "Where the docker CLI procedures' time goes (median seconds per step, same rounds):",
        "",
    ]
    for proc in ("tarball", "pipeline", "floor"):
        names = list(
            dict.fromkeys(k for n in res.steps for r in res.steps[n].get(proc, []) for k in r)
        )
        lines += [
            f"| {PROC_TITLES[proc]} | " + " | ".join(names) + " |",
            "| --- |" + " --- |" * len(names),
        ]
        for name, procs in res.steps.items():
            runs = procs.get(proc, [])
            cells = [statistics.median([r.get(k, 0.0) for r in runs]) for k in names]
            lines.append(f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + " |")
        lines.append("")
    lines += [
        "**The floor.** Procedure (4) reads the mount once through the engine's archive API "
        "and writes it once onto the engine's disk: the least any packager that reads through "
        "the API must do. kegpackd reads the mounts twice (a pre-pass counts the layer's "
        "size, which the archive must state before the layer's bytes; then the layer is read "
        "again and sent), and the engine writes a loaded upload twice (its own temporary "
        "copy, then the layer), so about 2x the floor is the floor of any path through "
        "`POST /images/load`. `measure + stream` is kegpackd's time in those two stages, "
        "which hold both reads, the upload and the engine's apply whichever stage line the "
        "pre-pass falls under; `stream / floor` is the `stream` stage alone against (4).",
        "",
        "| corpus | floor (4) median s | 2x floor | kegpackd median s | kegpackd measure + "
        "stream s | kegpackd stream / floor | within 2x? |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    verdicts: list[str] = []
    for name, runs in res.stages.items():
        floor = med[name]["floor"]
        total = med[name]["kegpackd"]
        both = _median_of(runs, "measure", "stream")
        stream = _median_of(runs, "stream")
        ok = total <= 2 * floor
        lines.append(
            f"| {name} | {floor:.2f} | {2 * floor:.2f} | {total:.2f} | {both:.2f} | "
            f"{stream / floor:.2f}x | {met(ok)} |"
        )
        if not ok:
            others = {st: _median_of(runs, st) for st in STAGES if st not in ("measure", "stream")}
            rest = ", ".join(f"{st} {sec:.2f} s" for st, sec in others.items())
            verdicts.append(
                f"- **{name}**: kegpackd takes {total / floor:.2f}x the floor. Its "
                f"`measure + stream` alone is {both:.2f} s = {both / floor:.2f}x the floor "
                f"(`measure` {_median_of(runs, 'measure'):.2f} s, `stream` {stream:.2f} s); "
                f"the other stages add {total - both:.2f} s ({rest}; medians per stage, so "
                "they need not add up exactly). "
                + (
                    "The two reads and the engine's two writes are above the 2x budget by "
                    "themselves."
                    if both > 2 * floor
                    else "The reads and writes fit in 2x; the stages around them do not."
                )
            )
    pipe = [n for n in res.steps if res.steps[n].get("pipeline") and res.steps[n].get("floor")]
    if pipe:
        lines += [
            "",
            "For scale: (3)'s `cp pipe` (one read, one write into a helper's upper dir) takes "
            + "; ".join(
                f"{n} {_median_of(res.steps[n]['pipeline'], 'cp pipe'):.2f} s vs the floor's "
                f"{_median_of(res.steps[n]['floor'], FLOOR_STEP):.2f} s"
                for n in pipe
            )
            + ".",
        ]
    if verdicts:
        lines += ["", "Where the time goes when kegpackd is above 2x the floor:", "", *verdicts]
    slow: list[str] = []
    for name, runs in res.stages.items():
        speed = med[name]["pipeline"] / med[name]["kegpackd"]
        if speed < 1.5:
            steps = res.steps.get(name, {}).get("pipeline", [])
            helper = _median_of(steps, "commit helper", "remove helper")
            slow += [
                f"- **{name}**: (3) / (1) is {speed:.2f}x, not 1.5x or more. (3) spends "
                f"{_median_of(steps, 'cp pipe'):.2f} s in its one read + write and {helper:.2f} "
                "s committing and removing its helper; kegpackd spends "
                f"{_median_of(runs, 'measure', 'stream'):.2f} s in its two reads, upload and "
                f"apply, and {med[name]['kegpackd'] - _median_of(runs, 'measure', 'stream'):.2f}"
                " s elsewhere.",
            ]
    if slow:
        lines += ["", "Where the time goes when kegpackd is not 1.5x faster than (3):", "", *slow]
    return lines


def reuse_section(res: Results, med: dict[str, dict[str, float]]) -> list[str]:
    """The second package of unchanged content against the new-layer rounds."""
    lines = [
        "",
        "## Unchanged content",
        "",
        "After the rounds, each corpus's source is packaged once more (untimed, its image "
        "kept), then again with nothing changed, timed like (1) (process start included). The "
        "engine then has the layer: kegpackd still commits the source and counts the mounts' "
        "layer (its digest), finds an image of this container with the same layers, and loads "
        "only a new config. Both images are removed afterwards.",
        "",
        "| corpus | new layer: (1) median s (rounds) | unchanged: second run s | second / new "
        "| second run's measure + stream s | first run's layer | second run's summary |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, again in res.reuse.items():
        new = med[name]["kegpackd"]
        both = sum(again.stages.get(st, 0.0) for st in ("measure", "stream"))
        said = f"`layer {again.layer}`"
        lines.append(
            f"| {name} | {new:.2f} | {again.seconds:.2f} | {again.seconds / new:.2f}x | "
            f"{both:.2f} | {res.reuse_first.get(name, '?')} | "
            f"{said if again.layer == 'reused' else '**' + said + '**, not reused'} |"
        )
    lines += [
        "",
        "Then a third run with `packaging.skip_unchanged = true`: the latest image has the same "
        "layers and config, so the job ends `unchanged` and makes no image (its tag goes on "
        "the existing one). Against a changed job, that is the new-layer median above.",
        "",
        "| corpus | changed job: (1) median s | `skip_unchanged` job s | unchanged / changed "
        "| its commit + measure s | outcome |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, skipped in res.skipped.items():
        new = med[name]["kegpackd"]
        before = sum(skipped.stages.get(st, 0.0) for st in ("commit", "measure"))
        outcome = "`unchanged`" if skipped.unchanged else "**not unchanged**"
        lines.append(
            f"| {name} | {new:.2f} | {skipped.seconds:.2f} | {skipped.seconds / new:.2f}x | "
            f"{before:.2f} | {outcome} |"
        )
    return lines


def report(res: Results, args: argparse.Namespace, facts: list[tuple[str, str]], chart: str) -> str:
    med = {n: {p: statistics.median(v) for p, v in t.items()} for n, t in res.times.items()}
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python -m bench.run` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC. "
        "Every number below comes from that run.",
        "",
        "## Command",
        "",
        "```sh",
        'eval "$(scripts/testenv.sh up)"',
        "python -m bench.run " + " ".join(shlex.quote(a) for a in args.argv),
        "```",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in facts],
        "",
        "## Corpora",
        "",
        *[f"- **{n}**: {d}" for n, d in res.corpora.items()],
        "",
        f"Each corpus is a temp dir bind-mounted at `{MOUNT}` into a running busybox source "
        f"container. The four procedures run on the same source, in rotating order, "
        f"{args.rounds} round(s); times are medians of wall-clock seconds.",
        "",
        "- (1) `python -m kegpackd package SRC --no-push` (one-shot CLI, process start "
        "included): commit the source, measure the mounts' layer (a counting pre-pass), load "
        "the layer on the commit with `POST /images/load`, tag, remove the commit",
        "- (2) `docker exec SRC tar czf /tmp/x.tgz -C / data`; `docker commit SRC T`; "
        "`docker exec SRC rm /tmp/x.tgz`; `docker run T sh -c 'tar xzf /tmp/x.tgz -C / && rm "
        "/tmp/x.tgz'`; `docker commit`; remove the temporary container and image",
        "- (3) `docker commit SRC T`; `docker create T`; "
        "`docker cp SRC:/data - | docker cp - HELPER:/`; `docker commit HELPER`; remove helper",
        "- (4) the floor, no image: `docker cp SRC:/data - | tar -x -C DIR`, DIR a fresh "
        "directory on the engine's data-root filesystem (see Machine); only the pipe is timed, "
        "DIR is removed afterwards",
        "",
        "## Packaging time and image size",
        "",
        "| corpus | procedure | median s | all rounds s | vs (3) time | vs floor (4) | image size"
        " | vs (3) size | config equals source |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, times in res.times.items():
        for proc in PROCEDURES:
            if proc in IMAGE_PROCEDURES:
                size = human(res.sizes[name][proc])
                vs_size = f"{res.sizes[name][proc] / res.sizes[name]['pipeline']:.4f}x"
                same = _config_match(res.configs[name][proc], res.source_config)
            else:
                size = vs_size = same = "n/a"
            lines.append(
                f"| {name} | {PROC_TITLES[proc]} | {med[name][proc]:.2f} | "
                f"{', '.join(f'{t:.2f}' for t in times[proc])} | "
                f"{med[name][proc] / med[name]['pipeline']:.2f}x | "
                f"{med[name][proc] / med[name]['floor']:.2f}x | "
                f"{size} | {vs_size} | {same} |"
            )
    lines += [
        "",
        "Where kegpackd's time goes (median seconds per phase; `startup` is process start to the"
        " job's start: interpreter, imports, config, engine connection, sweep; `cleanup` runs to"
        " process exit):",
        "",
        "| corpus | " + " | ".join(STAGES) + " | kegpackd's own CPU s | of its wall time |",
        "| --- |" + " --- |" * (len(STAGES) + 2),
    ]
    for name, runs in res.stages.items():
        cells = [statistics.median([r.get(st, 0.0) for r in runs]) for st in STAGES]
        cpu = statistics.median([c for c, _ in res.cpu[name]])
        share = statistics.median([c / w for c, w in res.cpu[name]])
        lines.append(
            f"| {name} | " + " | ".join(f"{c:.2f}" for c in cells) + f" | {cpu:.2f} | {share:.0%} |"
        )
    lines += [
        "",
        "The CPU column is the CLI process's user+system time (`wait4` rusage): the rest of the "
        "wall time kegpackd spends waiting for the engine.",
    ]
    lines += [
        "",
        "`measure` is the pre-pass: one read of the mounts through the tar filter, counted and "
        "hashed, not sent (it mostly reads what the page cache still holds). `stream` is the "
        "second read, the upload and the engine's apply.",
    ]
    lines += engine_floor(res, med)
    lines += ["", "Speed-up of kegpackd over procedure (2) (information, not a target):", ""]
    lines += [f"- {n}: {med[n]['tarball'] / med[n]['kegpackd']:.2f}x faster" for n in res.times]
    lines += ["", "Config fields that differ from the source's (Cmd, Entrypoint, Env, WorkingDir,"
              " User, ExposedPorts, Labels minus `kegpack.*`):", ""]  # fmt: skip
    for name in res.times:
        for proc in IMAGE_PROCEDURES:
            diff = {
                k: v for k, v in res.configs[name][proc].items() if v != res.source_config.get(k)
            }
            if diff:
                lines.append(
                    f"- {name} / {PROC_TITLES[proc]}: `{json.dumps(diff)}` "
                    f"(source: `{json.dumps({k: res.source_config[k] for k in diff})}`)"
                )
    if all(res.configs[n][p] == res.source_config for n in res.times for p in IMAGE_PROCEDURES):
        lines.append("- none")
    lines += [
        "",
        "## kegpackd memory and streaming throughput",
        "",
        "Peak RSS is the CLI process's `VmHWM` from `/proc/PID/status`, polled every 20 ms "
        "while it runs. Stream throughput is the bytes streamed (summary line) divided by the "
        "time between the `stream` and `finalize` stage lines on stderr (ms resolution).",
        "",
        "| corpus | peak RSS | stream MB/s (median) |",
        "| --- | --- | --- |",
    ]
    for name, peak in res.rss.items():
        rates = res.stream_mbps.get(name)
        rate = f"{statistics.median(rates):.1f}" if rates else "n/a"
        label = f"big ({human(args.big)})" if name == "big" else name
        lines.append(f"| {label} | {human(peak)} | {rate} |")
    lines += reuse_section(res, med)
    lat_med = statistics.median(res.latencies) if res.latencies else float("nan")
    lat_p99 = percentile(res.latencies, 99) if res.latencies else float("nan")
    lines += [
        "",
        "## Daemon",
        "",
        f"Concurrency scaling: {args.scaling_containers} labelled containers with "
        f"`{human(args.scaling_size)}` each (one random file) started back to back; time from "
        "the first engine `start` event to the last `job succeeded` log line.",
        "",
        "| packaging.concurrency | total s | vs concurrency 1 |",
        "| --- | --- | --- |",
    ]
    first = next(iter(res.scaling.values()), float("nan"))
    lines += [f"| {c} | {s:.2f} | {s / first:.2f}x |" for c, s in res.scaling.items()]
    lines += [
        "",
        f"Latency from a container's `start` event (engine time, `docker events` `timeNano`) "
        f"to the daemon's `job started` log line (its `time`, ms resolution; both UTC, same "
        f"host clock), over {len(res.latencies)} starts, one at a time (each waited to "
        f"finish): median **{lat_med * 1000:.0f} ms**, p99 (nearest rank) "
        f"**{lat_p99 * 1000:.0f} ms**, max {max(res.latencies or [0]) * 1000:.0f} ms.",
        "",
        f"Idle, with the job journal and the webhook notifier on (a loopback receiver got one "
        f"POST per job above): utime+stime delta of the daemon over {res.idle_seconds:.1f} s "
        f"of wall time with no jobs: **{res.idle_cpu * 100:.3f} %** of one CPU; resident "
        f"memory (VmRSS) after it: **{human(res.idle_rss)}**.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "| --- | --- | --- |",
    ]
    for name in res.times:
        speed = med[name]["pipeline"] / med[name]["kegpackd"]
        floor_ratio = med[name]["kegpackd"] / med[name]["floor"]
        size_ratio = res.sizes[name]["kegpackd"] / res.sizes[name]["pipeline"]
        lines += [
            f"| {name}: >= 1.5x faster than (3), (3) / (1) | {speed:.2f}x | {met(speed >= 1.5)} |",
            f"| {name}: within 2x of the floor, (1) / (4) <= 2.0 | {floor_ratio:.2f}x | "
            f"{met(floor_ratio <= 2.0)} |",
            f"| {name}: image <= 1.01x pipeline (3) | {size_ratio:.4f}x | "
            f"{met(size_ratio <= 1.01)} |",
        ]
    for name, peak in res.rss.items():
        lines.append(f"| peak RSS < 100 MiB ({name}) | {human(peak)} | {met(peak < 100 * MIB)} |")
    if res.scaling:
        last = list(res.scaling)[-1]
        ok = res.scaling[last] <= first
        lines.append(
            f"| concurrency {last} no slower than 1 | {res.scaling[last]:.2f} s vs {first:.2f} s "
            f"| {met(ok)} |"
        )
    lines += [
        f"| latency p99 < 250 ms | {lat_p99 * 1000:.0f} ms | {met(lat_p99 < 0.25)} |",
        f"| idle CPU < 1 % | {res.idle_cpu * 100:.3f} % | {met(res.idle_cpu < 0.01)} |",
        "",
        "## Problems during the run",
        "",
        *([f"- {note}" for note in NOTES] or ["- none"]),
        "",
        "## Chart",
        "",
        chart,
        "",
    ]
    return "\n".join(lines)


def draw_chart(res: Results, path: Path) -> str:
    try:
        import matplotlib  # noqa: PLC0415 -- optional (the bench extra), only for the chart

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415 -- same
    except ImportError:
        return "matplotlib is not installed (`pip install -e '.[bench]'`): no chart was drawn."
    names = list(res.times)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(PROCEDURES)
    for i, proc in enumerate(PROCEDURES):
        xs = [j + (i - (len(PROCEDURES) - 1) / 2) * width for j in range(len(names))]
        ys = [statistics.median(res.times[n][proc]) for n in names]
        axes[0].bar(xs, ys, width, label=PROC_TITLES[proc])
    axes[0].set_xticks(range(len(names)), names)
    axes[0].set_ylabel("median wall time (s)")
    axes[0].set_title("Packaging time")
    axes[0].legend(fontsize=8)
    levels = list(res.scaling)
    axes[1].bar([str(c) for c in levels], [res.scaling[c] for c in levels])
    axes[1].set_xlabel("packaging.concurrency")
    axes[1].set_ylabel("total time (s)")
    axes[1].set_title("Daemon: all containers packaged")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"![results]({os.path.relpath(path, start=Path.cwd())}) (`{path.name}`)"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=parse_size, default=parse_size("512M"))
    parser.add_argument("--small-files", type=int, default=100_000)
    parser.add_argument("--big", type=parse_size, default=parse_size("2G"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--latency-starts", type=int, default=50)
    parser.add_argument("--scaling-containers", type=int, default=8)
    parser.add_argument("--scaling-size", type=parse_size, default=parse_size("128M"))
    parser.add_argument("--concurrency", default="1,2,4", help="comma-separated concurrency levels")
    parser.add_argument("--output", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument("--chart", type=Path, default=None, help="default: bench/results.png")
    args = parser.parse_args(argv)
    args.argv = list(argv)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    chart_path: Path = args.chart or (
        REPO / "bench" / "results.png"
        if args.output.resolve() == REPO / "BENCHMARKS.md"
        else args.output.with_suffix(".png")
    )
    if "DOCKER_HOST" not in os.environ:
        print('bench: set DOCKER_HOST (eval "$(scripts/testenv.sh up)")', file=sys.stderr)
        return 2

    def on_term(signum: int, frame: object) -> None:
        raise Interrupted(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    docker = Docker(uuid.uuid4().hex[:8])
    res = Results()
    tmp = tempfile.mkdtemp(prefix="kbench-")
    work = Path(tmp)
    try:
        config = work / "kegpackd.toml"
        config.write_text('[log]\nlevel = "info"\n')
        facts = machine(docker)
        print("bench: generating corpora", file=sys.stderr, flush=True)
        res.corpora["bulk"] = make_bulk(work / "bulk", args.size)
        res.corpora["many-small"] = make_many_small(work / "small", args.small_files)
        for name, folder in (("bulk", work / "bulk"), ("many-small", work / "small")):
            bench_corpus(docker, res, name, folder, args.rounds, config)
        _clear(work / "bulk")
        _clear(work / "small")
        big = work / "big"
        big.mkdir()
        write_random_file(big / "big.bin", args.big)
        res.corpora["big"] = f"one {human(args.big)} random file (peak RSS only)"
        bench_big(docker, res, big, args.big, config)
        _clear(big)
        scale = work / "scale"
        scale.mkdir()
        write_random_file(scale / "blob.bin", args.scaling_size)
        levels = [int(c) for c in args.concurrency.split(",")]
        bench_scaling(docker, res, work, scale, args.scaling_containers, levels)
        tiny = work / "tiny"
        tiny.mkdir()
        (tiny / "hello.txt").write_text("hello\n")
        bench_latency_idle(docker, res, work, tiny, args.latency_starts, args.idle_seconds)
    except (KeyboardInterrupt, Interrupted):
        print("bench: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        docker.cleanup()
        subprocess.run(["rm", "-rf", "--", tmp], check=False)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    chart = draw_chart(res, chart_path)
    args.output.write_text(report(res, args, facts, chart))
    print(f"bench: wrote {args.output}", file=sys.stderr)
    return 0


def _clear(folder: Path) -> None:
    subprocess.run(["rm", "-rf", str(folder)], check=True)


if __name__ == "__main__":
    sys.exit(main())
