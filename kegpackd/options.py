"""Per-job options: flags and API overrides, then container labels, then the config.

Label values come from whoever can start a container, so every one is parsed
here into a typed value or refused with an error naming the label.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from dataclasses import dataclass

from kegpackd.config import Config
from kegpackd.errors import InvalidValueError
from kegpackd.naming import split_list
from kegpackd.triggers import LABEL_TRIGGERS
from kegpackd.values import parse_bool, parse_duration

LABEL_PREFIX = "kegpack."
LABEL_PACKAGE = "kegpack.package"
LABEL_REPOSITORY = "kegpack.repository"
LABEL_TAGS = "kegpack.tags"
LABEL_PUSH = "kegpack.push"
LABEL_PATHS = "kegpack.paths"
LABEL_EXCLUDE = "kegpack.exclude"
LABEL_PAUSE = "kegpack.pause"
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


def resolve_options(
    labels: Mapping[str, str], config: Config, overrides: Overrides = Overrides()
) -> JobOptions:
    flag = overrides.origin
    pack = config.packaging

    if overrides.repository is not None:
        repository, repository_source = overrides.repository, _override_source(flag, "repository")
    elif LABEL_REPOSITORY in labels:
        repository, repository_source = labels[LABEL_REPOSITORY], f"label {LABEL_REPOSITORY}"
    else:
        repository, repository_source = pack.repository, "config packaging.repository"

    if overrides.tags:
        tags, tags_source = overrides.tags, _override_source(flag, "tag")
    elif LABEL_TAGS in labels:
        tags, tags_source = tuple(split_list(labels[LABEL_TAGS])), f"label {LABEL_TAGS}"
        if not tags:
            raise InvalidValueError(f"label {LABEL_TAGS}", labels[LABEL_TAGS], "names no tag")
    else:
        tags, tags_source = pack.tags, "config packaging.tags"

    if overrides.push is not None:
        push = overrides.push
    elif LABEL_PUSH in labels:
        push = parse_bool(labels[LABEL_PUSH], f"label {LABEL_PUSH}")
    else:
        push = pack.push

    paths: tuple[str, ...] | None
    if overrides.paths:
        paths_source = _override_source(flag, "path")
        paths = tuple(normalize_path(p, paths_source) for p in overrides.paths)
    elif LABEL_PATHS in labels:
        paths_source = f"label {LABEL_PATHS}"
        paths = tuple(normalize_path(p, paths_source) for p in split_list(labels[LABEL_PATHS]))
        if not paths:
            raise InvalidValueError(paths_source, labels[LABEL_PATHS], "names no path")
    else:
        paths, paths_source = None, "mounts"

    pause = (
        parse_bool(labels[LABEL_PAUSE], f"label {LABEL_PAUSE}")
        if LABEL_PAUSE in labels
        else pack.pause
    )
    if LABEL_EXCLUDE in labels:
        exclude, exclude_source = tuple(split_list(labels[LABEL_EXCLUDE])), f"label {LABEL_EXCLUDE}"
    else:
        exclude, exclude_source = pack.exclude, "config packaging.exclude"

    return JobOptions(
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
