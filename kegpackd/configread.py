"""How kegpackd's config file is read: typed keys of one table, leftovers refused, values
shown on one line, and secret files opened safely.

Apart from :mod:`kegpackd.config` (what the sections are and what they mean), since this
changes with TOML and the file system instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kegpackd.engine.credentials import Secret
from kegpackd.errors import ConfigError, InvalidValueError
from kegpackd.values import MAX_DURATION_SECONDS, parse_duration, span_words

# Messages keep the name of the module that validates the config.
log = logging.getLogger("kegpackd.config")

# A password or token file is a line of text; a bigger one (or /dev/zero) is a mistake.
SECRET_LIMIT = 64 * 1024


class Section:
    """Reads one table, remembering which keys were consumed so leftovers can be refused."""

    def __init__(self, name: str, table: object) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"config key {name}: expected a table, got {kind(table)}")
        self.name = name
        self._table: dict[str, Any] = table
        self._seen: set[str] = set()

    def _path(self, key: str) -> str:
        shown = key if _BARE_KEY.fullmatch(key) else quoted(key)
        return f"{self.name}.{shown}" if self.name else shown

    def _get(self, key: str, check: Callable[[Any], bool], expected: str) -> Any:
        self._seen.add(key)
        if key not in self._table:
            return None
        value = self._table[key]
        if not check(value):
            raise ConfigError(
                f"config key {self._path(key)}: expected {expected},"
                f" got {kind(value)} {show(value)}"
            )
        return value

    def string(self, key: str) -> str | None:
        value: str | None = self._get(key, lambda v: isinstance(v, str), "a string")
        return value

    def boolean(self, key: str) -> bool | None:
        value: bool | None = self._get(key, lambda v: isinstance(v, bool), "true or false")
        return value

    def integer(self, key: str, minimum: int) -> int | None:
        value: int | None = self._get(
            key,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= minimum,
            f"an integer >= {minimum}",
        )
        return value

    def strings(self, key: str) -> tuple[str, ...] | None:
        value = self._get(
            key,
            lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
            "a list of strings",
        )
        return None if value is None else tuple(value)

    def duration(self, key: str, limit: float = MAX_DURATION_SECONDS) -> float | None:
        value = self._get(
            key,
            lambda v: isinstance(v, (int, float, str)) and not isinstance(v, bool),
            'a duration (seconds, or a string such as "30s")',
        )
        if value is None:
            return None
        source = f"config key {self._path(key)}"
        if isinstance(value, str):
            try:
                return parse_duration(value, source, limit)
            except InvalidValueError as exc:
                raise ConfigError(str(exc)) from None
        # A number is compared as it is: str() of a huge integer raises, and NaN fails this test.
        if not 0 <= value <= limit:
            raise ConfigError(
                f"{source}: invalid value {show(value)}: expected 0 to {limit:.0f}"
                f" seconds (at most {span_words(limit)})"
            )
        return float(value)

    def table(self, key: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self._get(key, lambda v: isinstance(v, dict), "a table")
        return value

    def finish(self) -> None:
        unknown = sorted(set(self._table) - self._seen)
        if unknown:
            raise ConfigError(f"config: unknown key {self._path(unknown[0])}")


def kind(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


# Keys other than these are shown quoted and escaped, so that a message stays on one line.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def quoted(key: str) -> str:
    return json.dumps(key, ensure_ascii=not key.isprintable())


def shown_path(path: Path) -> str:
    """A file name for a one-line message: as is, unless it holds a newline or the like."""
    text = str(path)
    return text if text.isprintable() else repr(text)


def show(value: object) -> str:
    """repr() for an error message; repr() of an integer of thousands of digits raises."""
    try:
        return repr(value)
    except ValueError:
        return f"<{kind(value)} too long to show>"


def read_secret(path_text: str, key: str, base: Path | None) -> Secret:
    """A password, token or secret file's text.

    Opened without blocking and checked to be a regular file before any read: a FIFO (or
    a device) would otherwise hold the daemon in ``open()`` at a SIGHUP. Symlinks are
    followed (Docker and Kubernetes secrets are symlinks). A file other users can read or
    write is loaded, with a warning: refusing it would break the 0644/0444 secrets that
    orchestrators mount.
    """
    path = Path(path_text)
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        with open(path, "rb", opener=_nonblocking) as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise ConfigError(f"config key {key}: {shown_path(path)} is not a regular file")
            _warn_if_shared(path, mode, key)
            data = handle.read(SECRET_LIMIT + 1)
        if len(data) > SECRET_LIMIT:
            raise ConfigError(f"config key {key}: {shown_path(path)} is over {SECRET_LIMIT} bytes")
        text = data.decode("utf-8")
    except OSError as exc:
        shown = shown_path(path)
        raise ConfigError(f"config key {key}: cannot read {shown}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config key {key}: {shown_path(path)} is not UTF-8 text") from None
    except ValueError as exc:  # a NUL (or an unencodable character) in the file name
        raise ConfigError(f"config key {key}: cannot read {path_text!r}: {exc}") from None
    secret = text.rstrip("\r\n")
    if not secret:
        raise ConfigError(f"config key {key}: {shown_path(path)} is empty")
    return Secret(secret)


def _nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)


def _warn_if_shared(path: Path, mode: int, key: str) -> None:
    """Say so when a secret file can be read or changed by users other than its owner."""
    if mode & 0o066:
        log.warning(
            "config key %s: %s can be read or written by other users (mode %04o); "
            "it holds a secret: chmod 600 it",
            key,
            shown_path(path),
            stat.S_IMODE(mode),
        )
