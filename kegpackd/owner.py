"""Which process made a temporary object, and whether that process still runs.

A helper container or temporary image is live work while the process that made it
(a daemon, or a ``kegpackd package`` run) is alive; the start-up sweep must only take
what a dead process left. A process is named by the host's boot id, its pid and its
start time, so a recycled pid is not mistaken for the maker.
"""

from __future__ import annotations

import functools
import os

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def _boot_id() -> str:
    try:
        with open(BOOT_ID_PATH, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return "unknown"


def _start_ticks(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None if no such pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def token_of(pid: int) -> str | None:
    """The token of a running process on this host, or None if there is none with that pid."""
    ticks = _start_ticks(pid)
    return None if ticks is None else f"{_boot_id()}/{pid}/{ticks}"


@functools.cache
def current_token() -> str:
    """This process's token, written on everything temporary that it creates."""
    return token_of(os.getpid()) or f"{_boot_id()}/{os.getpid()}/0"


def is_alive(token: str) -> bool:
    """Whether the process named by ``token`` still runs.

    A token from another boot (or another host sharing the engine) cannot be checked
    and counts as gone: its maker is either dead or, on another host, out of reach.
    """
    parts = token.split("/")
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    return token_of(int(parts[1])) == token
