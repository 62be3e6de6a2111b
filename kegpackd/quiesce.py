"""The options that make a copy of a live app consistent, as values: the quiesce mode and
the commands run in the source around the copy.

Labels, flags and the config share these parsers (``options`` picks which one wins;
``config`` checks its keys at load), so each names its source in the error.
"""

from __future__ import annotations

import shlex

from kegpackd.errors import InvalidValueError
from kegpackd.values import parse_duration

# What is done to the source while its mounts are copied: nothing, pause it (a
# crash-consistent copy), or stop it and start it again after (a clean shut-down).
QUIESCE_MODES = ("none", "pause", "stop")
DEFAULT_EXEC_TIMEOUT = 300.0
# A command line in a label or a flag: long enough for any real one, short enough to split.
COMMAND_LIMIT = 16 * 1024


def parse_quiesce(value: str, source: str) -> str:
    mode = value.strip().lower()
    if mode not in QUIESCE_MODES:
        raise InvalidValueError(source, value, f"expected one of {', '.join(QUIESCE_MODES)}")
    return mode


def parse_command(value: str, source: str) -> tuple[str, ...]:
    """A command line split as a shell splits words, to be run without a shell; blank
    means no command (so a label can turn off the config's)."""
    if len(value) > COMMAND_LIMIT:
        raise InvalidValueError(source, value, f"longer than {COMMAND_LIMIT} characters")
    if "\x00" in value:
        raise InvalidValueError(source, value, "contains a NUL character")
    try:
        return tuple(shlex.split(value))
    except ValueError as exc:
        raise InvalidValueError(source, value, f"not a command line: {exc}") from None


def parse_exec_timeout(value: str, source: str) -> float:
    """Seconds (or a duration such as ``2m``), more than zero: a limit of 0 runs nothing."""
    seconds = parse_duration(value, source)
    if seconds <= 0:
        raise InvalidValueError(source, value, "expected a positive number of seconds")
    return seconds
