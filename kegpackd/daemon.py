"""The long-running service: one root task group owns the watcher and the jobs.

Startup → watch (ready once the event stream is live) → on SIGTERM/SIGINT stop
taking jobs, give running ones ``daemon.shutdown_grace``, then cancel them (their
cleanup still runs, shielded). A second signal cancels at once.
"""

from __future__ import annotations

import logging
import signal

import anyio

from kegpackd.config import Config
from kegpackd.engine import Engine
from kegpackd.notify import notify
from kegpackd.scheduler import Scheduler
from kegpackd.watcher import Watcher

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.ready = False
        self.not_ready_reason = "starting"
        self.scheduler: Scheduler | None = None

    def _on_live(self, live: bool, reason: str) -> None:
        self.ready, self.not_ready_reason = live, "" if live else reason
        if live:
            log.info("ready: watching the engine's events")
            notify("READY=1\nSTATUS=watching events")
        else:
            notify(f"STATUS=not ready: {reason}")

    async def _signals(self, stop: anyio.Event, root: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            async for signum in received:
                if not stop.is_set():
                    log.info("%s: shutting down", signal.Signals(signum).name)
                    stop.set()
                else:
                    log.warning("second signal: cancelling running jobs now")
                    root.cancel()

    async def serve(self) -> None:
        docker = self.config.docker
        log.info("kegpackd starting; engine %s", docker.host)
        async with Engine.open(
            docker.host, tls_verify=docker.tls_verify, cert_path=docker.cert_path
        ) as engine:
            scheduler = self.scheduler = Scheduler(engine, self.config)
            watcher = Watcher(engine, scheduler, self._on_live)
            stop = anyio.Event()
            async with anyio.create_task_group() as root:
                root.start_soon(self._signals, stop, root.cancel_scope)
                await root.start(scheduler.run)
                watching = anyio.CancelScope()
                root.start_soon(_in_scope, watching, watcher)
                await stop.wait()
                notify("STOPPING=1")
                watching.cancel()
                await scheduler.shutdown(self.config.daemon.shutdown_grace)
                root.cancel_scope.cancel()
        log.info("kegpackd stopped")


async def _in_scope(scope: anyio.CancelScope, watcher: Watcher) -> None:
    with scope:
        await watcher.run()
