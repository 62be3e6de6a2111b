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
from kegpackd.errors import InvalidValueError
from kegpackd.naming import split_list
from kegpackd.triggers import LABEL_TRIGGERS
from kegpackd.values import parse_bool, parse_duration

T = TypeVar("T")

LABEL_PREFIX = "kegpack."
LABEL_PACKAGE = "kegpack.package"
LABEL_REPOSITORY = "kegpack.repository"
LABEL_TAGS = "kegpack.tags"
LABEL_PUSH = "kegpack.push"
LABEL_PATHS = "kegpack.paths"
LABEL_EXCLUDE = "kegpack.exclude"
LABEL_PAUSE = "kegpack.pause"
LABEL_ALLOW_FORCED_OWNERS = "kegpack.allow-forced-owners"
LABEL_TRIGGER = "kegpack.trigger"
LABEL_DELAY = "kegpack.delay"


@dataclass(frozen=True)
class Trigger:
    kind: str
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
    return Trigger(kind, delay)


@dataclass(frozen=True)
class Overrides:
    """What the caller (CLI flags, API request) asked for; None/empty means "not given"."""

    repository: str | None = None
    tags: tuple[str, ...] = ()
    push: bool | None = None
    paths: tuple[str, ...] = ()
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
    pause: bool
    exclude: tuple[str, ...]
    exclude_source: str
    # Package even where the engine reports every owner as the container user's (Podman).
    allow_forced_owners: bool = False


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
    pause, _ = _pick(
        None, "", labels, LABEL_PAUSE, parse_bool, pack.pause, "config packaging.pause"
    )
    exclude, exclude_source = _pick(
        None, "", labels, LABEL_EXCLUDE, _patterns, pack.exclude, "config packaging.exclude"
    )
    allow_forced_owners, _ = _pick(
        None, "", labels, LABEL_ALLOW_FORCED_OWNERS, parse_bool, pack.allow_forced_owners,
        "config packaging.allow_forced_owners",
    )  # fmt: skip
    return JobOptions(
        allow_forced_owners=allow_forced_owners,
        repository=repository,
        repository_source=repository_source,
        tags=tuple(tags),
        tags_source=tags_source,
        push=push,
        paths=paths,
        paths_source=paths_source,
        pause=pause,
        exclude=exclude,
        exclude_source=exclude_source,
    )
