"""Command line: ``kegpackd package`` runs one job without a daemon."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import http.client
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import anyio
from rich.console import Console
from rich.live import Live
from rich.text import Text

from kegpackd import __version__
from kegpackd.compose.project import ProjectResult, package_project
from kegpackd.config import Config, load_config
from kegpackd.daemon.api import local_token_path, read_local_token
from kegpackd.daemon.service import Daemon
from kegpackd.daemon.watcher import sweep
from kegpackd.engine.client import Engine
from kegpackd.engine.credentials import Secret
from kegpackd.errors import ConfigError, KegpackError
from kegpackd.logs import configure as configure_logging
from kegpackd.packaging.jobs import JobRequest, JobResult
from kegpackd.packaging.options import Overrides
from kegpackd.packaging.pipeline import package
from kegpackd.packaging.retention import PruneReport, prune
from kegpackd.packaging.stoprecord import recover_stopped
from kegpackd.peer import server_uid
from kegpackd.plugin import find_script, install, remove
from kegpackd.quiesce import QUIESCE_MODES, parse_exec_timeout
from kegpackd.shown import MESSAGE_LIMIT, shown

EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("kegpackd")


def _human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError


class LogProgress:
    """Plain lines on stderr, for logs and pipes."""

    def __init__(self, container: str) -> None:
        self.container = container
        self.bytes = 0
        self.started = time.monotonic()

    def stage(self, name: str, detail: str = "") -> None:
        log.info("%s: %s%s", self.container, name, f" {detail}" if detail else "")

    def streamed(self, count: int) -> None:
        self.bytes += count


class TerminalProgress(LogProgress):
    """One live line: stage, bytes streamed and rate."""

    def __init__(self, container: str, live: Live) -> None:
        super().__init__(container)
        self.live = live
        self.current = "starting"
        self.last_draw = 0.0

    def stage(self, name: str, detail: str = "") -> None:
        self.current = f"{name} {detail}".strip()
        self._draw(force=True)

    def streamed(self, count: int) -> None:
        super().streamed(count)
        self._draw()

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        rate = self.bytes / max(now - self.started, 1e-6)
        self.live.update(
            Text.assemble(
                (f"{self.container} ", "bold"),
                (self.current, "cyan"),
                f"  {_human(self.bytes)} streamed, {_human(rate)}/s",
            )
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kegpackd",
        description="Package Docker containers together with their mounted volumes.",
    )
    parser.add_argument("--version", action="version", version=f"kegpackd {__version__}")
    _engine_flags(parser, None)
    sub = parser.add_subparsers(dest="command", required=True)
    pkg = sub.add_parser(
        "package", help="package one container (or a Compose project) now, without a daemon"
    )
    pkg.add_argument("container", nargs="?", help="container name or id")
    pkg.add_argument(
        "--project", help="package every service of this Compose project instead of a container"
    )
    pkg.add_argument(
        "--compose-out",
        metavar="FILE",
        default="-",
        help="with --project: write the packaged project's Compose file here (- for stdout)",
    )
    pkg.add_argument(
        "--partial",
        action="store_true",
        help="with --project: write the Compose file of the services that succeeded",
    )
    pkg.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    _engine_flags(pkg, argparse.SUPPRESS)
    pkg.add_argument("--repository", help="image repository template, e.g. registry/app-{name}")
    pkg.add_argument("--tag", action="append", default=[], help="tag template (repeatable)")
    push = pkg.add_mutually_exclusive_group()
    push.add_argument("--push", dest="push", action="store_true", default=None)
    push.add_argument("--no-push", dest="push", action="store_false")
    pkg.add_argument(
        "--path", action="append", default=[], help="only this mount destination (repeatable)"
    )
    _quiesce_flags(pkg)
    run = sub.add_parser("run", help="run the daemon: package labelled containers as they start")
    run.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    _engine_flags(run, argparse.SUPPRESS)
    jobs = sub.add_parser("jobs", help="list the running daemon's recent jobs")
    jobs.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    jobs.add_argument("--json", action="store_true", help="the API's JSON, unchanged")
    sweep_cmd = sub.add_parser(
        "sweep", help="remove what killed kegpackd runs left behind (a live run's is kept)"
    )
    sweep_cmd.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    _engine_flags(sweep_cmd, argparse.SUPPRESS)
    sweep_cmd.add_argument("--dry-run", action="store_true", help="list, do not remove")
    prune_cmd = sub.add_parser(
        "prune", help="apply [retention] to every container's local images kegpackd made"
    )
    prune_cmd.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    _engine_flags(prune_cmd, argparse.SUPPRESS)
    prune_cmd.add_argument("--dry-run", action="store_true", help="list, do not remove")
    prune_cmd.add_argument(
        "--container", metavar="NAME", help="only the images of the container named NAME"
    )
    trigger = sub.add_parser(
        "trigger", help="ask the running daemon to package a container (or a Compose project)"
    )
    trigger.add_argument("container", nargs="?", help="container name or id")
    trigger.add_argument("--project", help="a Compose project's name instead of a container")
    trigger.add_argument("--partial", action="store_true", help="with --project: as for package")
    trigger.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    plugin = sub.add_parser(
        "install-plugin",
        help="link docker-kegpack into $DOCKER_CONFIG/cli-plugins: `docker kegpack` runs kegpackd",
    )
    plugin.add_argument(
        "--remove", action="store_true", help="remove the link instead (only one kegpackd made)"
    )
    plugin.set_defaults(config=None)
    return parser


def _quiesce_flags(pkg: argparse.ArgumentParser) -> None:
    """What ``package`` does to the source around the copy (as the kegpack.quiesce and
    kegpack.exec-* labels, which these override)."""
    pkg.add_argument(
        "--quiesce",
        choices=QUIESCE_MODES,
        help="pause or stop the source during the copy (stop: started again after)",
    )
    pkg.add_argument(
        "--exec-before", metavar="CMD", help="command line run in the source before the copy"
    )
    pkg.add_argument(
        "--exec-after", metavar="CMD", help="command line run in the source after the copy"
    )
    pkg.add_argument(
        "--exec-timeout", metavar="SECONDS", help="time limit of each command (default 300)"
    )


def _engine_flags(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``--context``/``-H``, the docker CLI's global flags: accepted before the command (as
    the docker CLI hands them to a plugin) and after it; a subcommand's copy suppresses its
    default so that it does not undo the one given before."""
    parser.add_argument(
        "--context", default=default, metavar="NAME", help="the docker CLI context to use"
    )
    parser.add_argument(
        "-H",
        "--host",
        default=default,
        metavar="URL",
        help="the engine's address (unix://, tcp://)",
    )


def _with_engine_flags(config: Config, args: argparse.Namespace) -> Config:
    """``config`` with the command line's engine choice, which wins over everything else."""
    if args.context and args.host:
        raise Usage("--context and --host: give one of them, not both")
    if not (args.context or args.host):
        return config
    docker = dataclasses.replace(config.docker, flag_host=args.host, flag_context=args.context)
    return dataclasses.replace(config, docker=docker)


def _api(config: Config, method: str, path: str, body: object = None) -> dict[str, Any]:
    """One request to the running daemon's HTTP API, straight to its port: never through
    an ``http_proxy`` (which would be handed the token), never following a redirect."""
    host = config.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.http.port}{path}"
    headers = {"Authorization": f"Bearer {_client_token(config).reveal()}"}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection(host, config.http.port, timeout=30)
    try:
        connection.connect()
        _check_peer(config, connection)
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        status, raw = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise KegpackError(f"cannot reach the daemon at {url}: {shown(str(exc))}") from None
    finally:
        connection.close()
    answer = _answer(raw)
    if status >= 400 or answer is None:
        detail = answer.get("error") if answer else None
        detail = shown(str(detail)) if detail else f"{len(raw)} bytes that are no JSON object"
        raise KegpackError(f"the daemon at {url} answered {status}: {detail}")
    return answer


def _check_peer(config: Config, connection: http.client.HTTPConnection) -> None:
    """Refuse to hand the token to a port that someone else holds (the daemon down and a
    local user listening in its place): its listener must be the token file's owner's
    (the daemon's user) or root's. Where /proc cannot tell, the request goes ahead."""
    owner = _daemon_uid(config.daemon.state_dir)
    uid = None if connection.sock is None or owner is None else server_uid(connection.sock)
    if uid is not None and uid not in (owner, 0):
        raise KegpackError(
            f"refusing to send the API token to port {config.http.port}: it is held by uid"
            f" {uid}, not by the daemon's user (uid {owner}) or root"
        )


def _daemon_uid(state_dir: Path) -> int | None:
    """The daemon's user: the owner of its token file, else of its state directory."""
    for path in (local_token_path(state_dir), state_dir):
        with contextlib.suppress(OSError):
            return path.stat().st_uid
    return None


def _answer(raw: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return answer if isinstance(answer, dict) else None


def _client_token(config: Config) -> Secret:
    """The daemon's local token when this user may read it, else the configured one."""
    path = local_token_path(config.daemon.state_dir)
    try:
        return read_local_token(config.daemon.state_dir)
    except (OSError, KegpackError) as exc:
        if config.http.token is not None:
            return config.http.token
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise KegpackError(
            f"cannot read the daemon's API token {path}: {reason} (run as the daemon's user,"
            " or set http.token_file)"
        ) from None


def _client(config: Config, args: argparse.Namespace) -> int:
    if args.command == "trigger":
        _target(args)
        body: dict[str, object] = (
            {"container": args.container}
            if args.project is None
            else {"project": args.project, "partial": args.partial}
        )
        answer = _api(config, "POST", "/v1/jobs", body)
        if not isinstance(answer.get("id"), str):
            raise KegpackError("the daemon's answer to the trigger has no job id")
        print(shown(answer["id"]))
        return 0
    answer = _api(config, "GET", "/v1/jobs")
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    jobs = answer.get("jobs")
    if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
        raise KegpackError("the daemon's answer to GET /v1/jobs has no list of jobs")
    width = shutil.get_terminal_size((120, 24)).columns
    try:
        lines = jobs_table(jobs, width)
    except (TypeError, ValueError, OverflowError):
        raise KegpackError("the daemon's answer to GET /v1/jobs has a malformed job") from None
    for line in lines:
        print(line)
    return 0


JOB_COLUMNS = ("JOB", "CONTAINER", "TRIGGER", "STATE", "STARTED", "DURATION", "IMAGES / ERROR")


def jobs_table(jobs: Sequence[Mapping[str, Any]], width: int) -> list[str]:
    """``kegpackd jobs`` for people: a header, local times, durations, fitted to ``width``.

    Every cell is escaped to one line: names and errors come from containers' owners.
    """
    rows: list[tuple[str, ...]] = [JOB_COLUMNS]
    for job in jobs:
        started = job.get("started")
        finished = job.get("finished")
        when = (
            datetime.fromtimestamp(float(started)).strftime("%Y-%m-%d %H:%M:%S") if started else "-"
        )
        took = f"{float(finished) - float(started):.1f}s" if started and finished else "-"
        if job.get("quiesced_seconds") is not None:
            took += f" ({job.get('quiesce')} {float(job['quiesced_seconds']):.1f}s)"
        images = ", ".join(str(i) for i in job.get("images") or ())
        error = job.get("error")
        cells = (
            str(job.get("id", "")),
            str(job.get("name") or str(job.get("container", ""))[:12] or "-"),
            str(job.get("trigger", "")),
            str(job.get("state", "")) + ("*" if job.get("restored") else ""),
            when,
            took,
            f"error: {error}" if error else images or "-",
        )
        rows.append(tuple(shown(cell, MESSAGE_LIMIT) for cell in cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(JOB_COLUMNS) - 1)]
    lines = []
    for row in rows:
        fixed = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
        room = max(width - len(fixed) - 2, 10)
        last = row[-1] if len(row[-1]) <= room else row[-1][: room - 1] + "…"
        lines.append(f"{fixed}  {last}".rstrip())
    if any(job.get("restored") for job in jobs):
        lines.append("* from before the daemon's last restart (its job journal)")
    return lines


class Usage(KegpackError):
    """A command line that cannot mean anything (exit status 2)."""


class Interrupted(Exception):
    """A one-shot run stopped by a signal, after its cleanup ran."""

    def __init__(self, signum: int, failures: Sequence[str]) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        if failures:
            left = "; ".join(failures)
            message = (
                f"interrupted by {name}; cleanup could not finish ({left}); run `kegpackd sweep`"
            )
        else:
            message = f"interrupted by {name}; temporary objects were removed"
        super().__init__(message)


class _Signals:
    """SIGINT and SIGTERM for a one-shot job, from before it starts until the process exits.

    The first cancels the job (its cleanup then runs, shielded). A second does not cut the
    cleanup short; a third forces the exit, saying what may be left. Python-level handlers,
    not the event loop's: those are removed when the loop ends, and a signal landing in that
    window would kill the process before it could say whether its cleanup finished.
    """

    def __init__(self) -> None:
        self.caught: list[int] = []
        self._cancel: Callable[[], None] | None = None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    @staticmethod
    def settle() -> None:
        """The job and its cleanup are over: a late signal can only cut the exit short (and
        turn its status into the signal's), so it is ignored from here on."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)

    def watch(self, job: anyio.CancelScope) -> None:
        """Cancel ``job`` on the first signal (at once, if one came already)."""
        loop = asyncio.get_running_loop()

        def cancel() -> None:
            loop.call_soon_threadsafe(job.cancel)

        self._cancel = cancel
        if self.caught:
            job.cancel()

    def _handle(self, signum: int, frame: object) -> None:
        self.caught.append(signum)
        if len(self.caught) == 1:
            if self._cancel is not None:
                self._cancel()
        elif len(self.caught) == 2:
            os.write(2, b"kegpackd: cleaning up; one more signal forces the exit and may "
                        b"leave temporary objects behind\n")  # fmt: skip
        else:
            os.write(2, b"kegpackd: forced exit during cleanup; temporary objects of this "
                        b"run may be left: `kegpackd sweep` removes them\n")  # fmt: skip
            os._exit(128 + signum)


def _open_engine(config: Config) -> contextlib.AbstractAsyncContextManager[Engine]:
    return Engine.open(config.docker.endpoint())


def _overrides(args: argparse.Namespace) -> Overrides:
    """``package``'s flags (with ``--project``, for every service: ``--path`` is refused)."""
    return Overrides(
        repository=args.repository,
        tags=tuple(args.tag),
        push=args.push,
        paths=tuple(args.path),
        quiesce=args.quiesce,
        exec_before=args.exec_before,
        exec_after=args.exec_after,
        exec_timeout=(
            None
            if args.exec_timeout is None
            else parse_exec_timeout(args.exec_timeout, "--exec-timeout")
        ),
        origin="--",
    )


async def _interruptible(
    config: Config,
    signals: _Signals,
    work: Callable[[Engine], Awaitable[None]],
    cleanup_failures: Sequence[str] = (),
) -> None:
    """``work`` on the engine, after a sweep; a signal cancels it, and once its cleanup ran
    ``Interrupted`` says so (with what ``cleanup_failures`` holds by then)."""
    async with _open_engine(config) as engine:
        with anyio.CancelScope() as job:
            signals.watch(job)
            # What a killed run left behind goes first; a live process's is left alone.
            await sweep(engine, set())
            await recover_stopped(engine, config.daemon.state_dir)
            await work(engine)
    signals.settle()
    if signals.caught:
        raise Interrupted(signals.caught[0], cleanup_failures)


async def _package(
    config: Config, args: argparse.Namespace, out: TextIO, signals: _Signals
) -> JobResult:
    request = JobRequest(container=args.container, trigger="cli", overrides=_overrides(args))
    result = JobResult(job_id=request.job_id)

    async def work(engine: Engine) -> None:
        await _package_showing_progress(engine, config, request, result, args.container)

    await _interruptible(config, signals, work, result.cleanup_failures)
    for line in _reference_lines(result):
        print(line, file=out)
    return result


def _reference_lines(result: JobResult, service: str = "") -> list[str]:
    """``[service] reference [digest] [unchanged]``, one per reference: what stdout says.

    The service is a container's label: escaped (blanks too), so that it stays one field
    of one line for the scripts that split these.
    """
    lines = []
    for reference in result.references:
        fields = [_field(service), reference, result.digests.get(reference, "")]
        lines.append(" ".join(f for f in [*fields, "unchanged" * result.unchanged] if f))
    return lines


def _field(text: str) -> str:
    """One whitespace-free field of a line: control characters and blanks escaped."""
    return shown(text).replace(" ", "\\x20")


async def _package_showing_progress(
    engine: Engine, config: Config, request: JobRequest, result: JobResult, container: str
) -> None:
    if sys.stderr.isatty():
        console = Console(stderr=True)
        with Live(console=console, refresh_per_second=10, transient=True) as live:
            progress: LogProgress = TerminalProgress(container, live)
            await package(engine, config, request, progress, result=result)
    else:
        await package(engine, config, request, LogProgress(container), result=result)


def _target(args: argparse.Namespace) -> None:
    """Exactly one of CONTAINER and --project; the project-only flags only with --project."""
    if (args.container is None) == (args.project is None):
        raise Usage(f"{args.command}: give a CONTAINER or --project NAME (one of them)")
    if args.project is None and args.partial:
        raise Usage(f"{args.command}: --partial needs --project")
    if args.project is not None and getattr(args, "path", None):
        raise Usage("package: --path names one container's mounts; not with --project")


def _package_once(config: Config, args: argparse.Namespace) -> int:
    _target(args)
    if args.project is not None:
        return _project_once(config, args)
    started = time.monotonic()
    signals = _Signals()
    signals.install()
    result = anyio.run(_package, config, args, sys.stdout, signals)
    what = f"unchanged, tagged {result.image_id[:19]}" if result.unchanged else "packaged"
    pruned = f", {len(result.pruned)} old image(s) pruned" if result.pruned else ""
    log.info(
        "%s: %s %s in %.1fs (layer %s, %s streamed, %d entries%s)",
        result.container_name,
        what,
        ", ".join(result.references),
        time.monotonic() - started,
        result.layer,
        _human(result.streamed_bytes),
        result.entries,
        pruned,
    )
    return 0


async def _sweep(config: Config, args: argparse.Namespace) -> list[str]:
    """The sweep's lines: what was removed, and the sources a dead kegpackd left stopped
    that were started again (with --dry-run: what would be)."""
    removing = "would remove" if args.dry_run else "removed"
    starting = "would start" if args.dry_run else "started"
    async with _open_engine(config) as engine:
        removed = await sweep(engine, set(), dry_run=args.dry_run)
        started = await recover_stopped(engine, config.daemon.state_dir, dry_run=args.dry_run)
    return [f"{removing} {what}" for what in removed] + [
        f"{starting} {what} (a kegpackd that died had stopped it)" for what in started
    ]


def _sweep_once(config: Config, args: argparse.Namespace) -> int:
    found = anyio.run(_sweep, config, args)
    for line in found:
        print(line)
    if not found:
        print("nothing to remove", file=sys.stderr)
    return 0


async def _project(
    config: Config, args: argparse.Namespace, signals: _Signals
) -> ProjectResult | None:
    outcome: ProjectResult | None = None

    async def work(engine: Engine) -> None:
        nonlocal outcome
        outcome = await package_project(
            engine,
            config,
            args.project,
            partial=args.partial,
            progress_for=lambda service: LogProgress(f"{args.project}/{service}"),
            overrides=_overrides(args),
        )

    await _interruptible(config, signals, work)
    return outcome


def _project_once(config: Config, args: argparse.Namespace) -> int:
    """``package --project``: every service, then the Compose file; exit 1 if any failed."""
    signals = _Signals()
    signals.install()
    outcome = anyio.run(_project, config, args, signals)
    assert outcome is not None
    to_stdout = args.compose_out == "-"
    for service, result in sorted(outcome.results.items()):
        for line in _reference_lines(result, service):
            print(line, file=sys.stderr if to_stdout else sys.stdout)
    if outcome.compose is not None:
        if to_stdout:
            sys.stdout.write(outcome.compose)
        else:
            _write_file(Path(args.compose_out), outcome.compose)
    for service, error in sorted(outcome.errors.items()):
        shown_error = shown(error, MESSAGE_LIMIT)
        print(f"kegpackd: {args.project}/{_field(service)} failed: {shown_error}", file=sys.stderr)
    done = ", ".join(_field(s) for s in sorted(outcome.results)) or "none"
    failed = ", ".join(_field(s) for s in sorted(outcome.errors))
    if outcome.compose is not None:
        written = "stdout" if to_stdout else args.compose_out
        where = f"Compose file written to {written}"
    else:
        where = shown(outcome.compose_error or "", MESSAGE_LIMIT) or (
            "no Compose file written (use --partial for the rest)"
        )
    summary = f"project {args.project}: packaged {done}" + (f"; failed {failed}" if failed else "")
    print(f"kegpackd: {summary}; {where}", file=sys.stderr)
    return EXIT_FAILED if outcome.errors or outcome.compose is None else 0


def _write_file(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all: a temporary file beside it, then a rename.

    The file holds the services' environment (secrets, often), so it is 0600. The
    temporary file is made by mkstemp (a random name, O_EXCL, 0600): in a directory that
    others can write, a name they can guess would let them plant a symlink that the write
    follows.
    """
    try:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise KegpackError(f"--compose-out: cannot write {path}: {exc.strerror}") from None
    temporary = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise KegpackError(f"--compose-out: cannot write {path}: {exc.strerror}") from None


async def _prune(config: Config, args: argparse.Namespace) -> PruneReport:
    async with _open_engine(config) as engine:
        return await prune(
            engine,
            config.retention,
            time.time_ns(),
            source_name=args.container,
            dry_run=args.dry_run,
        )


def _prune_once(config: Config, args: argparse.Namespace) -> int:
    if not config.retention.enabled:
        raise KegpackError(
            "retention is off: set [retention] keep or max_age in the config (see "
            "config.example.toml)"
        )
    report = anyio.run(_prune, config, args)
    verb = "would remove" if args.dry_run else "removed"
    for candidate in report.removed:
        print(f"{verb} {candidate.id} ({', '.join(candidate.tags)})")
    for kept in report.kept:
        print(f"kept {kept}")
    for failure in report.failures:
        print(f"kegpackd: {failure}", file=sys.stderr)
    if not report.removed:
        print("nothing to remove", file=sys.stderr)
    else:
        print(
            f"{verb} {len(report.removed)} image(s), {_human(report.freed_bytes)}", file=sys.stderr
        )
    return EXIT_FAILED if report.failures else 0


def _run_daemon(config: Config, args: argparse.Namespace) -> int:
    try:
        anyio.run(Daemon(config).serve)
    except BaseExceptionGroup as group:
        raise _first_error(group) from None
    return 0


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Our own error inside a task group's exception group, so it prints as one line."""
    ours = group.subgroup(KegpackError)
    while ours is not None:
        first = ours.exceptions[0]
        if not isinstance(first, BaseExceptionGroup):
            return first
        ours = first
    return group


def _install_plugin(config: Config, args: argparse.Namespace) -> int:
    """``install-plugin``: the docker CLI finds a plugin only in its own directories, so
    this links the ``docker-kegpack`` script of this installation into the user's."""
    print(remove(os.environ) if args.remove else install(os.environ, find_script()))
    return 0


COMMANDS = {
    "package": _package_once,
    "run": _run_daemon,
    "jobs": _client,
    "trigger": _client,
    "sweep": _sweep_once,
    "prune": _prune_once,
    "install-plugin": _install_plugin,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"kegpackd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.log.level, config.log.format)
    try:
        return COMMANDS[args.command](_with_engine_flags(config, args), args)
    except KegpackError as exc:
        print(f"kegpackd: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, Usage) else EXIT_FAILED
    except Interrupted as exc:
        print(f"kegpackd: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:
        # The reader went away (`kegpackd jobs | head -1`): not an error worth a word.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        # Outside a job (starting up, or a daemon client): nothing of ours to clean.
        print("kegpackd: interrupted", file=sys.stderr)
        return 130
