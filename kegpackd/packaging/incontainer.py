"""Commands run in the source container around the copy (``kegpack.exec-before`` and
``kegpack.exec-after``): through the engine's exec API, with a time limit, and their output
kept bounded and shown so that it cannot pass for kegpackd's own log lines.

The command line is the label's, config's or flag's words as given: nothing of kegpackd's
is put into it, and no shell of ours runs it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import anyio

from kegpackd.engine.port import EnginePort
from kegpackd.errors import EngineError, EngineUnreachable, PackagingError
from kegpackd.shown import cut, one_line, quoted

log = logging.getLogger(__name__)

# The tail of a command's output that is kept (memory) and logged: its last lines, each cut.
OUTPUT_KEEP = 16 * 1024
OUTPUT_LINES = 100
LINE_SHOWN = 400


class OutputTail:
    """The last ``keep`` bytes of a stream, and how many bytes it had in all."""

    def __init__(self, keep: int = OUTPUT_KEEP) -> None:
        self.keep = keep
        self.buffer = bytearray()
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        self.buffer += data[-self.keep :]
        excess = len(self.buffer) - self.keep
        if excess > 0:
            del self.buffer[:excess]

    def lines(self) -> tuple[list[str], int]:
        """The kept output's last lines, and how many lines of the kept output were dropped."""
        text = self.buffer.decode("utf-8", errors="replace")
        if len(self.buffer) < self.total and "\n" in text:
            text = text.split("\n", 1)[1]  # the first kept line is a fragment
        # Split on newlines only: a carriage return stays in its line, escaped when shown.
        lines = text.split("\n")
        if lines[-1] == "":
            lines.pop()
        return lines[-OUTPUT_LINES:], max(0, len(lines) - OUTPUT_LINES)


@dataclass(frozen=True)
class Command:
    """One command of a job: ``phase`` is exec-before or exec-after."""

    phase: str
    argv: tuple[str, ...]
    source: str
    timeout: float
    timeout_source: str

    @property
    def shown(self) -> str:
        return quoted(list(self.argv))


async def run_command(
    engine: EnginePort, container_id: str, name: str, command: Command, job_id: str
) -> None:
    """Run ``command`` in the container; a non-zero status or the time limit raises."""
    tail = OutputTail()
    started = time.monotonic()
    status: int | None = None
    what = f"{command.phase} command {command.shown} (from {command.source}) in container {name}"
    with anyio.move_on_after(command.timeout) as limit:
        try:
            status = await engine.exec_command(container_id, command.argv, tail.feed)
        except EngineUnreachable:
            raise
        except EngineError as exc:
            raise PackagingError(f"{what} could not run: {exc}") from None
    seconds = time.monotonic() - started
    _log(job_id, name, command, status, seconds, tail)
    if limit.cancelled_caught:
        raise PackagingError(
            f"{what} did not finish within {command.timeout:g} s (the limit, from "
            f"{command.timeout_source}); the engine's exec API cannot stop it, so it may "
            "still be running in the container"
        )
    if status != 0:
        raise PackagingError(f"{what} failed with exit status {status}")


def _log(
    job_id: str, name: str, command: Command, status: int | None, seconds: float, tail: OutputTail
) -> None:
    """One line for the command, then its output's kept lines, each marked as output and
    escaped (a line of the output is never a line of the log)."""
    ended = "timed out" if status is None else f"exit status {status}"
    level = logging.INFO if status == 0 else logging.WARNING
    lines, dropped_lines = tail.lines()
    kept = len(tail.buffer)
    note = ""
    if tail.total > kept or dropped_lines:
        note = f"; only its last {len(lines)} line(s) are shown"
    log.log(
        level,
        "job %s: %s %s in container %s: %s after %.2f s, %d byte(s) of output%s",
        job_id,
        command.phase,
        command.shown,
        one_line(cut(name, LINE_SHOWN)),
        ended,
        seconds,
        tail.total,
        note,
    )
    for line in lines:
        log.log(
            level, "job %s: %s output| %s", job_id, command.phase, one_line(cut(line, LINE_SHOWN))
        )
