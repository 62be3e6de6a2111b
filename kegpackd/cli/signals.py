"""A one-shot run and its signals: the first cancels the job, whose cleanup still runs.

``package`` has no daemon to drain it: SIGINT or SIGTERM cancels its job, the job's cleanup
runs shielded, and the exit status says the signal and whether the cleanup finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Sequence

import anyio

from kegpackd.config import Config
from kegpackd.daemon.watcher import sweep
from kegpackd.engine.client import Engine
from kegpackd.packaging.stoprecord import recover_stopped


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


class Signals:
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


def open_engine(config: Config) -> contextlib.AbstractAsyncContextManager[Engine]:
    return Engine.open(config.docker.endpoint())


async def interruptible(
    config: Config,
    signals: Signals,
    work: Callable[[Engine], Awaitable[None]],
    cleanup_failures: Sequence[str] = (),
) -> None:
    """``work`` on the engine, after a sweep; a signal cancels it, and once its cleanup ran
    ``Interrupted`` says so (with what ``cleanup_failures`` holds by then)."""
    async with open_engine(config) as engine:
        with anyio.CancelScope() as job:
            signals.watch(job)
            # What a killed run left behind goes first; a live process's is left alone.
            await sweep(engine, set())
            await recover_stopped(engine, config.daemon.state_dir)
            await work(engine)
    signals.settle()
    if signals.caught:
        raise Interrupted(signals.caught[0], cleanup_failures)
