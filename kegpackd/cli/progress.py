"""What a one-shot job shows while it runs: a live line on a terminal, else log lines."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

from rich.console import Console
from rich.live import Live
from rich.text import Text

log = logging.getLogger("kegpackd")


def human(count: float) -> str:
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
                f"  {human(self.bytes)} streamed, {human(rate)}/s",
            )
        )


@contextlib.contextmanager
def showing_progress(container: str) -> Iterator[LogProgress]:
    """The live line while the block runs when stderr is a terminal (gone after it); log
    lines otherwise."""
    if not sys.stderr.isatty():
        yield LogProgress(container)
        return
    console = Console(stderr=True)
    with Live(console=console, refresh_per_second=10, transient=True) as live:
        yield TerminalProgress(container, live)
