"""Per-job options: flags and API overrides, then container labels, then the config.

Label values come from whoever can start a container, so every one is parsed
here into a typed value or refused with an error naming the label.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from kegpackd.config import Config
from kegpackd.engine.naming import split_list
from kegpackd.errors import InvalidValueError
from kegpackd.labels import (
    LABEL_ALLOW_FORCED_OWNERS,
    LABEL_DELAY,
    LABEL_EXCLUDE,
    LABEL_EXEC_AFTER,
    LABEL_EXEC_BEFORE,
    LABEL_EXEC_TIMEOUT,
    LABEL_INCREMENTAL,
    LABEL_PACKAGE,
    LABEL_PATHS,
    LABEL_PAUSE,
    LABEL_PREFIX,
    LABEL_PUSH,
    LABEL_QUIESCE,
    LABEL_REPOSITORY,
    LABEL_TAGS,
    LABEL_TRIGGER,
)
from kegpackd.packaging.triggers import LABEL_TRIGGERS, TriggerName
from kegpackd.quiesce import parse_command, parse_exec_timeout, parse_quiesce
from kegpackd.values import parse_bool, parse_duration

T = TypeVar("T")


@dataclass(frozen=True)
class Trigger:
    kind: TriggerName
    delay: float


def is_packaging_enabled(labels: Mapping[str, str]) -> bool:
    """``kegpack.package`` takes the booleans every other label takes (true, yes, on, 1);
    a value that is none of them raises, so it can be reported rather than ignored."""
    value = labels.get(LABEL_PACKAGE)
    return value is not None and parse_bool(value, f"label {LABEL_PACKAGE}")


def parse_trigger(labels: Mapping[str, str]) -> Trigger:
    kind = labels.get(LABEL_TRIGGER, "start").strip()
    if kind not in LABEL_TRIGGERS:
        raise InvalidValueError(
            f"label {LABEL_TRIGGER}",
            labels[LABEL_TRIGGER],
            f"expected one of {', '.join(LABEL_TRIGGERS)}",
        )
    delay = (
        parse_duration(labels[LABEL_DELAY], f"label {LABEL_DELAY}")
        if LABEL_DELAY in labels
        else 0.0
    )
    return Trigger(TriggerName(kind), delay)


@dataclass(frozen=True)
class Overrides:
    """What the caller (CLI flags, API request) asked for; None/empty means "not given"."""

    repository: str | None = None
    tags: tuple[str, ...] = ()
    push: bool | None = None
    paths: tuple[str, ...] = ()
    quiesce: str | None = None
    # Command lines as given (split here, so that an error names the flag).
    exec_before: str | None = None
    exec_after: str | None = None
    exec_timeout: float | None = None
    origin: str = "flag"


@dataclass(frozen=True)
class JobOptions:
    repository: str
    repository_source: str
    tags: tuple[str, ...]
    tags_source: str
    push: bool
    paths: tuple[str, ...] | None
    paths_source: str
    exclude: tuple[str, ...]
    exclude_source: str
    quiesce: str = "none"
    quiesce_source: str = "default"
    # argv of the commands run in the source around the copy; () for none.
    exec_before: tuple[str, ...] = ()
    exec_before_source: str = ""
    exec_after: tuple[str, ...] = ()
    exec_after_source: str = ""
    exec_timeout: float = 300.0
    exec_timeout_source: str = "default"

    @property
    def pause(self) -> bool:
        return self.quiesce == "pause"

    # Package even where the engine reports every owner as the container user's (Podman).
    allow_forced_owners: bool = False
    # A repackage writes only what changed in the mounts (packaging.incremental).
    incremental: bool = True


def normalize_path(text: str, source: str) -> str:
    """A mount destination as the engine reports it: absolute, no trailing slash."""
    value = text.strip()
    if not value.startswith("/"):
        raise InvalidValueError(source, text, "must be an absolute path inside the container")
    if "\x00" in value:
        raise InvalidValueError(source, text, "contains a NUL character")
    if ".." in value.split("/"):
        raise InvalidValueError(source, text, "must not contain a '..' component")
    return posixpath.normpath(value).replace("//", "/")


def _override_source(origin: str, name: str) -> str:
    """Name an override in errors: origin '--' gives the flag '--tag', 'request' 'request tag'."""
    return f"{origin}{name}" if origin.endswith("-") else f"{origin} {name}"


def _pick(
    given: T | None,
    given_source: str,
    labels: Mapping[str, str],
    label: str,
    parse: Callable[[str, str], T],
    default: T,
    default_source: str,
) -> tuple[T, str]:
    """Flag (or request), then the container's label, then the config: the first given wins,
    with the name of where it came from (for errors that point at it)."""
    if given is not None:
        return given, given_source
    if label in labels:
        source = f"label {label}"
        return parse(labels[label], source), source
    return default, default_source


def _text(value: str, source: str) -> str:
    return value


def _list_of(what: str) -> Callable[[str, str], tuple[str, ...]]:
    def parse(value: str, source: str) -> tuple[str, ...]:
        items = tuple(split_list(value))
        if not items:
            raise InvalidValueError(source, value, f"names no {what}")
        return items

    return parse


def _paths(value: str, source: str) -> tuple[str, ...] | None:
    return tuple(normalize_path(p, source) for p in _list_of("path")(value, source))


LABEL_EXCLUDE_LIMIT = 64 * 1024


def _patterns(value: str, source: str) -> tuple[str, ...]:
    """The label's patterns; its size is capped like a ``.kegpackignore``'s, since the count
    and length limits of the rules only apply once the whole value has been split."""
    if len(value) > LABEL_EXCLUDE_LIMIT:
        raise InvalidValueError(
            source, value, f"at most {LABEL_EXCLUDE_LIMIT} characters of patterns are read"
        )
    return tuple(split_list(value))


def _label_quiesce(labels: Mapping[str, str]) -> str | None:
    """``kegpack.quiesce``, or ``kegpack.pause`` as its old spelling; both given, they must
    agree (pause=false agrees with any mode but pause)."""
    mode = pause = None
    if LABEL_QUIESCE in labels:
        mode = parse_quiesce(labels[LABEL_QUIESCE], f"label {LABEL_QUIESCE}")
    if LABEL_PAUSE in labels:
        pause = parse_bool(labels[LABEL_PAUSE], f"label {LABEL_PAUSE}")
    if mode is None:
        return None if pause is None else ("pause" if pause else "none")
    if pause is not None and pause != (mode == "pause"):
        raise InvalidValueError(
            f"labels {LABEL_QUIESCE} and {LABEL_PAUSE}",
            f"{labels[LABEL_QUIESCE]} and {labels[LABEL_PAUSE]}",
            f"they disagree; {LABEL_PAUSE} is the old spelling of {LABEL_QUIESCE}=pause: "
            "keep one of them",
        )
    return mode


def _quiesce(labels: Mapping[str, str], config: Config, overrides: Overrides) -> tuple[str, str]:
    if overrides.quiesce is not None:
        source = _override_source(overrides.origin, "quiesce")
        return parse_quiesce(overrides.quiesce, source), source
    labelled = _label_quiesce(labels)
    if labelled is not None:
        which = [f"label {k}" for k in (LABEL_QUIESCE, LABEL_PAUSE) if k in labels]
        return labelled, " and ".join(which)
    return config.packaging.quiesce, "config packaging.quiesce"


def _command(
    given: str | None, origin: str, labels: Mapping[str, str], label: str,
    configured: tuple[str, ...], key: str,
) -> tuple[tuple[str, ...], str]:  # fmt: skip
    """A command line of the flag (or request), the label or the config, split."""
    flag = _override_source(origin, label.removeprefix(LABEL_PREFIX))
    parsed = None if given is None else parse_command(given, flag)
    return _pick(parsed, flag, labels, label, parse_command, configured, f"config {key}")


def resolve_options(
    labels: Mapping[str, str], config: Config, overrides: Overrides = Overrides()
) -> JobOptions:
    flag = overrides.origin
    pack = config.packaging
    repository, repository_source = _pick(
        overrides.repository, _override_source(flag, "repository"), labels, LABEL_REPOSITORY,
        _text, pack.repository, "config packaging.repository",
    )  # fmt: skip
    tags, tags_source = _pick(
        overrides.tags or None, _override_source(flag, "tag"), labels, LABEL_TAGS,
        _list_of("tag"), pack.tags, "config packaging.tags",
    )  # fmt: skip
    push, _ = _pick(
        overrides.push, _override_source(flag, "push"), labels, LABEL_PUSH,
        parse_bool, pack.push, "config packaging.push",
    )  # fmt: skip
    paths_flag = _override_source(flag, "path")
    given_paths = tuple(normalize_path(p, paths_flag) for p in overrides.paths) or None
    paths, paths_source = _pick(
        given_paths, paths_flag, labels, LABEL_PATHS, _paths, None, "mounts"
    )
    quiesce, quiesce_source = _quiesce(labels, config, overrides)
    before, before_source = _command(
        overrides.exec_before, flag, labels, LABEL_EXEC_BEFORE,
        pack.exec_before, "packaging.exec_before",
    )  # fmt: skip
    after, after_source = _command(
        overrides.exec_after, flag, labels, LABEL_EXEC_AFTER,
        pack.exec_after, "packaging.exec_after",
    )  # fmt: skip
    timeout, timeout_source = _pick(
        overrides.exec_timeout, _override_source(flag, "exec-timeout"), labels,
        LABEL_EXEC_TIMEOUT, parse_exec_timeout, pack.exec_timeout, "config packaging.exec_timeout",
    )  # fmt: skip
    exclude, exclude_source = _pick(
        None, "", labels, LABEL_EXCLUDE, _patterns, pack.exclude, "config packaging.exclude"
    )
    allow_forced_owners, _ = _pick(
        None, "", labels, LABEL_ALLOW_FORCED_OWNERS, parse_bool, pack.allow_forced_owners,
        "config packaging.allow_forced_owners",
    )  # fmt: skip
    incremental, _ = _pick(
        None, "", labels, LABEL_INCREMENTAL, parse_bool, pack.incremental,
        "config packaging.incremental",
    )  # fmt: skip
    return JobOptions(
        allow_forced_owners=allow_forced_owners,
        incremental=incremental,
        repository=repository,
        repository_source=repository_source,
        tags=tuple(tags),
        tags_source=tags_source,
        push=push,
        paths=paths,
        paths_source=paths_source,
        exclude=exclude,
        exclude_source=exclude_source,
        quiesce=quiesce,
        quiesce_source=quiesce_source,
        exec_before=before,
        exec_before_source=before_source,
        exec_after=after,
        exec_after_source=after_source,
        exec_timeout=timeout,
        exec_timeout_source=timeout_source,
    )
