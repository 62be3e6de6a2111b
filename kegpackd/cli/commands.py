"""The commands that act on the engine: ``package`` (a container or a Compose project),
``sweep``, ``prune``, ``run`` (the daemon) and ``install-plugin``.

What stdout says is for scripts (one reference per line, the Compose file); what people
read goes to stderr, as log lines.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TextIO

import anyio

from kegpackd.cli.parser import check_target, overrides
from kegpackd.cli.progress import LogProgress, human, showing_progress
from kegpackd.cli.signals import Signals, interruptible, open_engine
from kegpackd.compose.project import ProjectResult, package_project
from kegpackd.config import Config
from kegpackd.daemon.service import Daemon
from kegpackd.daemon.watcher import sweep
from kegpackd.engine.client import Engine
from kegpackd.errors import KegpackError
from kegpackd.packaging.jobs import JobRecord, JobRequest, JobResult, JobState, job_json
from kegpackd.packaging.retention import PruneReport, prune
from kegpackd.packaging.runner import PipelineRunner
from kegpackd.packaging.stoprecord import recover_stopped
from kegpackd.packaging.triggers import TriggerName
from kegpackd.plugin import find_script, install, remove
from kegpackd.shown import MESSAGE_LIMIT, shown

EXIT_FAILED = 1

log = logging.getLogger("kegpackd")


async def _package(
    config: Config, args: argparse.Namespace, out: TextIO, signals: Signals
) -> JobRecord:
    """One container's job, run as the daemon runs one (same runner, same timeout);
    ``--result`` gets its JSON whatever the outcome, a failure its one-line error."""
    request = JobRequest(
        container=args.container, trigger=TriggerName.CLI, overrides=overrides(args)
    )
    record = JobRecord(request=request)
    runner = PipelineRunner()

    async def work(engine: Engine) -> None:
        record.state, record.started = JobState.RUNNING, time.time()
        try:
            with showing_progress(args.container) as progress:
                await runner(engine, config, record, progress)
        finally:
            record.finished = time.time()
            if args.result is not None:
                write_file(args.result, json.dumps(job_json(record)) + "\n", "--result")
        if record.state == JobState.FAILED:
            raise KegpackError(record.error)

    await interruptible(config, signals, work, record.result.cleanup_failures)
    for line in _reference_lines(record.result):
        print(line, file=out)
    return record


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


def package_once(config: Config, args: argparse.Namespace) -> int:
    check_target(args)
    if args.project is not None:
        return _project_once(config, args)
    started = time.monotonic()
    signals = Signals()
    signals.install()
    result = anyio.run(_package, config, args, sys.stdout, signals).result
    what = f"unchanged, tagged {result.image_id[:19]}" if result.unchanged else "packaged"
    pruned = f", {len(result.pruned)} old image(s) pruned" if result.pruned else ""
    mounts = ""
    if result.mounts_layer:
        mounts = f", mounts {result.mounts_layer}"
        if result.mounts_layer != "none":
            made, full = human(result.mounts_layer_bytes), human(result.mounts_full_bytes)
            mounts += f" {made} of {full}"
    log.info(
        "%s: %s %s in %.1fs (layer %s%s, %s streamed, %d entries%s)",
        result.container_name,
        what,
        ", ".join(result.references),
        time.monotonic() - started,
        result.layer or "",
        mounts,
        human(result.streamed_bytes),
        result.entries,
        pruned,
    )
    return 0


async def _sweep(config: Config, args: argparse.Namespace) -> list[str]:
    """The sweep's lines: what was removed, and the sources a dead kegpackd left stopped
    that were started again (with --dry-run: what would be)."""
    removing = "would remove" if args.dry_run else "removed"
    starting = "would start" if args.dry_run else "started"
    async with open_engine(config) as engine:
        removed = await sweep(engine, set(), dry_run=args.dry_run)
        started = await recover_stopped(engine, config.daemon.state_dir, dry_run=args.dry_run)
    return [f"{removing} {what}" for what in removed] + [
        f"{starting} {what} (a kegpackd that died had stopped it)" for what in started
    ]


def sweep_once(config: Config, args: argparse.Namespace) -> int:
    found = anyio.run(_sweep, config, args)
    for line in found:
        print(line)
    if not found:
        print("nothing to remove", file=sys.stderr)
    return 0


async def _project(
    config: Config, args: argparse.Namespace, signals: Signals
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
            overrides=overrides(args),
        )

    await interruptible(config, signals, work)
    return outcome


def _project_once(config: Config, args: argparse.Namespace) -> int:
    """``package --project``: every service, then the Compose file; exit 1 if any failed."""
    signals = Signals()
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
            write_file(Path(args.compose_out), outcome.compose, "--compose-out")
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


def write_file(path: Path, text: str, flag: str) -> None:
    """Write ``text`` whole or not at all: a temporary file beside it, then a rename.

    A Compose file holds the services' environment (secrets, often), so it is 0600. The
    temporary file is made by mkstemp (a random name, O_EXCL, 0600): in a directory that
    others can write, a name they can guess would let them plant a symlink that the write
    follows.
    """
    try:
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise KegpackError(f"{flag}: cannot write {path}: {exc.strerror}") from None
    temporary = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise KegpackError(f"{flag}: cannot write {path}: {exc.strerror}") from None


async def _prune(config: Config, args: argparse.Namespace) -> PruneReport:
    async with open_engine(config) as engine:
        return await prune(
            engine,
            config.retention,
            time.time_ns(),
            source_name=args.container,
            dry_run=args.dry_run,
        )


def prune_once(config: Config, args: argparse.Namespace) -> int:
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
            f"{verb} {len(report.removed)} image(s), {human(report.freed_bytes)}", file=sys.stderr
        )
    return EXIT_FAILED if report.failures else 0


def run_daemon(config: Config, args: argparse.Namespace) -> int:
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


def install_plugin(config: Config, args: argparse.Namespace) -> int:
    """``install-plugin``: the docker CLI finds a plugin only in its own directories, so
    this links the ``docker-kegpack`` script of this installation into the user's."""
    print(remove(os.environ) if args.remove else install(os.environ, find_script()))
    return 0
