"""The long-running service: one root task group owns the watcher, the jobs and HTTP.

Startup → HTTP listening → watch (ready once the event stream is live) → on
SIGTERM/SIGINT stop taking jobs, give running ones ``daemon.shutdown_grace``,
then cancel them (their cleanup still runs, shielded). A second signal cancels
at once. SIGHUP reloads the config; a bad one keeps the old.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import anyio
from aiohttp import web

from kegpackd.backoff import Backoff
from kegpackd.compose.project import ProjectRun, project_containers
from kegpackd.config import Config, load_config
from kegpackd.daemon.api import Api, ensure_local_token, local_token_path
from kegpackd.daemon.journal import Journal
from kegpackd.daemon.metrics import Metrics
from kegpackd.daemon.scheduler import HISTORY, Scheduler
from kegpackd.daemon.sd_notify import notify
from kegpackd.daemon.watcher import Watcher
from kegpackd.daemon.webhook import Notifier
from kegpackd.engine.client import Engine
from kegpackd.engine.credentials import Secret
from kegpackd.errors import ConfigError, EngineError, KegpackError, NotPermitted, PackagingError
from kegpackd.labels import LABEL_PACKAGE
from kegpackd.packaging.checks import check_request
from kegpackd.packaging.jobs import JobEvent, JobRecord, JobRequest
from kegpackd.packaging.options import Overrides, is_packaging_enabled
from kegpackd.packaging.stoprecord import recover_stopped
from kegpackd.packaging.triggers import TriggerName

log = logging.getLogger(__name__)

HTTP_STOP_DEADLINE = 5.0
# What an open connection or listener was made with; a reload cannot change them safely.
RESTART_SECTIONS = ("docker", "http", "log")
STATUS_INTERVAL = 2.0
PROJECTS = 50
# At shutdown, the journal and the notifier get this long to write and send what is queued.
OUTPUT_DRAIN_DEADLINE = 10.0
# An HTTP connection that sends no complete request for this long is closed: idle keep-alive
# and slow headers alike (aiohttp's keep-alive timer runs from the connection's start).
HTTP_IDLE_TIMEOUT = 5.0
# Connections beyond this many get a 503 and are closed at once: well under systemd's
# default soft limit of 1024 open files, so a flood of idle connections cannot starve the
# jobs, the engine connection or the journal of file descriptors.
HTTP_MAX_CONNECTIONS = 256
# The same warning (connections refused, accept() failing) at most once per this many seconds.
WARN_INTERVAL = 60.0
# Retries of the start-up check of sources a dead kegpackd left stopped (engine not up yet).
RECOVER_START = 1.0
RECOVER_CAP = 30.0


class Daemon:
    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.ready = False
        self.not_ready_reason = "starting"
        self.engine: Engine | None = None
        self.scheduler: Scheduler | None = None
        # Made (or read) in state_dir at start: the API's right of the engine socket.
        self.local_token: Secret | None = None
        self.notifier = Notifier(config.notify, self.metrics)
        # Compose projects asked for through the API, oldest first (the newest PROJECTS).
        self.projects: dict[str, ProjectRun] = {}
        self._group: anyio.abc.TaskGroup | None = None

    def _on_live(self, live: bool, reason: str) -> None:
        self.ready, self.not_ready_reason = live, "" if live else reason
        self.metrics.connected.set(1 if live else 0)
        if self.scheduler is not None:
            self.scheduler.engine_reachable(live)
        if live:
            log.info("ready: watching the engine's events")
            notify("READY=1\nSTATUS=ready")
        else:
            notify(f"STATUS=not ready: {reason}")

    async def submit_manual(
        self, container: str, overrides: Overrides, *, any_container: bool
    ) -> JobRecord:
        """The manual trigger (HTTP API): resolve the container, queue a job.

        Without ``any_container`` (the local token's right) only an opted-in container may
        be named: the configured http.token must not reach what its owner never offered."""
        if self.engine is None or self.scheduler is None:
            raise KegpackError("the daemon is still starting")
        info = await self.engine.inspect_container(container)
        if not any_container and not _opted_in(info.labels):
            raise NotPermitted(
                f"container {info.name} does not have {LABEL_PACKAGE}=true: only the local"
                " token may package it"
            )
        check_request(info, self.config, overrides, datetime.now(UTC))
        record = self.scheduler.submit(JobRequest(info.id, TriggerName.MANUAL, overrides))
        if record is None:
            raise KegpackError("the daemon is shutting down")
        return record

    async def submit_project(self, name: str, partial: bool) -> ProjectRun:
        """A job per service of Compose project ``name``; its file once they all ended."""
        if self.engine is None or self.scheduler is None or self._group is None:
            raise KegpackError("the daemon is still starting")
        chosen, found = await project_containers(self.engine, name)
        if found.errors:
            raise PackagingError("; ".join(found.errors.values()))
        run = ProjectRun(uuid.uuid4().hex[:16], name, partial, chosen, {})
        for service, container in sorted(chosen.items()):
            record = self.scheduler.submit(
                JobRequest(container, TriggerName.PROJECT, project=run.id)
            )
            if record is None:
                raise KegpackError("the daemon is shutting down")
            run.jobs[service] = record
        self.projects[run.id] = run
        while len(self.projects) > PROJECTS:
            self.projects.pop(next(iter(self.projects)))
        self._group.start_soon(run.finish, self.engine, self.config)
        return run

    def _on_job_event(self, event: JobEvent) -> None:
        """A project's Compose file waits for its last job."""
        for run in self.projects.values():
            run.on_job_event(event)

    def reload(self) -> None:
        if self.config.path is None:
            log.info("SIGHUP: no config file to reload")
            return
        try:
            config = load_config(self.config.path)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded, keeping the old one: %s", exc)
            return
        kept = {}
        for section in RESTART_SECTIONS:
            if getattr(config, section) != getattr(self.config, section):
                kept[section] = getattr(self.config, section)
                log.warning(
                    "SIGHUP: [%s] changed; the whole section stays as it was until a restart "
                    "(the open connection and listener keep their settings and their guard)",
                    section,
                )
        if config.daemon.state_dir != self.config.daemon.state_dir:
            log.warning(
                "SIGHUP: daemon.state_dir changed; the journal stays where it is until a restart"
            )
            kept["daemon"] = dataclasses.replace(
                config.daemon, state_dir=self.config.daemon.state_dir
            )
        config = dataclasses.replace(config, **kept)
        self.config = config
        self.notifier.config = config.notify
        if self.scheduler is not None:
            self.scheduler.reconfigure(config)
        log.info("SIGHUP: config reloaded from %s", config.path)

    async def _signals(self, stop: anyio.Event, root: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
            async for signum in received:
                if signum == signal.SIGHUP:
                    self.reload()
                elif not stop.is_set():
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    stop.set()
                else:
                    log.warning("second signal: cancelling running jobs now")
                    root.cancel()

    async def _status(self) -> None:
        """STATUS= with job counts, and WATCHDOG=1 when systemd asks for it."""
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        interval = min(STATUS_INTERVAL, watchdog_usec / 2e6) if watchdog_usec else STATUS_INTERVAL
        last = ""
        while True:
            if self.scheduler is not None and self.ready:
                counts = self.scheduler.counts
                status = f"STATUS=ready; {counts['running']} running, {counts['queued']} queued"
                if status != last:
                    notify(status)
                    last = status
            if watchdog_usec:
                notify("WATCHDOG=1")
            await anyio.sleep(interval)

    async def _serve_http(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        runner = web.AppRunner(
            Api(self).app(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=HTTP_IDLE_TIMEOUT,
        )
        await runner.setup()
        listener: asyncio.Server | None = None
        try:
            listener = await self._listen(runner)
            task_status.started()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(HTTP_STOP_DEADLINE):
                if listener is not None:
                    listener.close()
                await runner.cleanup()

    async def _listen(self, runner: web.AppRunner) -> asyncio.Server:
        """The listening socket, its accepted connections capped (see HTTP_MAX_CONNECTIONS)."""
        http, server = self.config.http, runner.server
        assert server is not None
        refusals = _Throttled("HTTP: %d connection(s) refused: %d already open (the cap)")

        counter = _Open()

        def protocol() -> asyncio.BaseProtocol:
            if counter.open < HTTP_MAX_CONNECTIONS:
                return _Counted(server(), counter)
            refusals.warn(counter.open)
            return _Busy()

        try:
            # A listen queue past the cap: a burst reaches the cap and is told so, instead of
            # waiting in the kernel's queue for SYN retries (asyncio's default is 100).
            listener = await asyncio.get_running_loop().create_server(
                protocol, http.host, http.port, backlog=2 * HTTP_MAX_CONNECTIONS
            )
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise KegpackError(f"cannot listen on {http.listen}: {reason}") from None
        log.info(
            "HTTP on %s; /v1 needs the bearer token in %s",
            http.listen,
            local_token_path(self.config.daemon.state_dir),
        )
        return listener

    async def serve(self) -> None:
        endpoint = self.config.docker.endpoint()
        log.info("kegpackd starting; engine %s", endpoint.where)
        journal = Journal(self.config.daemon.state_dir)
        journal.prepare()
        self.local_token = ensure_local_token(self.config.daemon.state_dir)
        logging.getLogger("asyncio").addFilter(ACCEPT_ERRORS)
        past = await journal.load(HISTORY)
        async with Engine.open(endpoint) as engine:
            self.engine = engine
            scheduler = self.scheduler = Scheduler(engine, self.config, self.metrics, past=past)
            scheduler.events.subscribe(journal.on_job_event)
            scheduler.events.subscribe(self._on_job_event)
            # Always: a SIGHUP may turn notifications on or off.
            scheduler.events.subscribe(self.notifier.on_job_event)
            watcher = Watcher(engine, scheduler, self._on_live)
            stop = anyio.Event()
            # The journal and the notifier outlive the jobs: they write and send the last ones.
            async with anyio.create_task_group() as outputs:
                await outputs.start(journal.run)
                await outputs.start(self.notifier.run)
                try:
                    async with anyio.create_task_group() as root:
                        self._group = root
                        root.start_soon(self._signals, stop, root.cancel_scope)
                        await root.start(self._serve_http)
                        await root.start(scheduler.run)
                        watching = anyio.CancelScope()
                        root.start_soon(_in_scope, watching, watcher)
                        root.start_soon(_recover_stopped, engine, self.config.daemon.state_dir)
                        root.start_soon(self._status)
                        await stop.wait()
                        notify("STOPPING=1")
                        watching.cancel()
                        await scheduler.shutdown(self.config.daemon.shutdown_grace)
                        root.cancel_scope.cancel()
                finally:
                    journal.close()
                    self.notifier.close()
                    outputs.cancel_scope.deadline = anyio.current_time() + OUTPUT_DRAIN_DEADLINE
                    outputs.cancel_scope.shield = True
        log.info("kegpackd stopped")


async def _recover_stopped(engine: Engine, state_dir: Path) -> None:
    """Start the sources a dead kegpackd left stopped (stop mode), once the engine answers."""
    backoff = Backoff(RECOVER_START, RECOVER_CAP, jitter=True)
    while True:
        try:
            await recover_stopped(engine, state_dir)
            return
        except EngineError as exc:
            delay = backoff.next()
            log.warning("stopped sources not checked yet (%s); retrying in %.1fs", exc, delay)
            await anyio.sleep(delay)


async def _in_scope(scope: anyio.CancelScope, watcher: Watcher) -> None:
    with scope:
        await watcher.run()


def _opted_in(labels: Mapping[str, str]) -> bool:
    try:
        return is_packaging_enabled(labels)
    except KegpackError:
        return False


class _Open:
    """How many accepted connections are open (see _Counted)."""

    def __init__(self) -> None:
        self.open = 0


class _Counted(asyncio.Protocol):
    """aiohttp's handler, counted from the moment it is made until its connection is lost.

    aiohttp counts a connection only once its ``connection_made`` has run, and asyncio
    makes the protocols of a burst of accepts before it runs any of those: counted there,
    a burst of 1,100 connections all got past the cap."""

    def __init__(self, inner: asyncio.BaseProtocol, counter: _Open) -> None:
        assert isinstance(inner, asyncio.Protocol)
        self.inner, self.counter = inner, counter
        counter.open += 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.counter.open -= 1
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class _Busy(asyncio.Protocol):
    """A connection over the cap: told so, and closed before it costs anything more."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        transport.close()


class _Throttled:
    """One warning per WARN_INTERVAL, counting what it left out: a flood writes no flood."""

    def __init__(self, message: str) -> None:
        self.message = message
        self.next = 0.0
        self.count = 0

    def warn(self, *args: object) -> None:
        self.count += 1
        now = time.monotonic()
        if now >= self.next:
            log.warning(self.message, self.count, *args)
            self.next, self.count = now + WARN_INTERVAL, 0


class _AcceptErrors(logging.Filter):
    """asyncio logs a failed accept() (out of file descriptors) for every try, in a loop
    that repeats it a million times a minute: let one through per WARN_INTERVAL."""

    def __init__(self) -> None:
        super().__init__()
        self.next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("socket.accept() out of"):
            return True
        now = time.monotonic()
        if now < self.next:
            return False
        self.next = now + WARN_INTERVAL
        record.exc_info, record.exc_text = None, None
        return True


ACCEPT_ERRORS = _AcceptErrors()
