"""A job's checks, before anything is made and again before a tag moves.

Apart from the stages because they are policy (which repositories and registries, whose
tags, which engines): each raises with the value and where it came from, and the API runs
``check_request`` to refuse a request with the same message a job would fail with.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from kegpackd.archive.ignore import ExcludeRules
from kegpackd.config import Config
from kegpackd.engine.models import ContainerInfo
from kegpackd.engine.naming import (
    ImageNames,
    TemplateContext,
    parse_reference,
    repository_allowed,
    repository_rule,
    resolve_names,
)
from kegpackd.engine.port import EnginePort
from kegpackd.errors import InvalidValueError, NotFoundError, PackagingError
from kegpackd.labels import COMPOSE_SERVICE_LABEL, LABEL_ALLOW_FORCED_OWNERS
from kegpackd.packaging.markers import final_comment_container
from kegpackd.packaging.mounts import SelectedMount
from kegpackd.packaging.options import (
    JobOptions,
    Overrides,
    resolve_options,
)
from kegpackd.shown import quoted


def check_registries(names: ImageNames, config: Config, source: str) -> None:
    """A push goes only to a registry, or a repository, that ``registries.allowed`` lists.

    A bare host allows the whole registry, where the daemon's credentials may reach
    every repository; ``host/apps/`` allows only the repositories below ``apps/``.
    """
    allowed = config.registries.allowed
    hosts = [entry for entry in allowed if "/" not in entry]
    rules = [repository_rule(e, "registries.allowed") for e in allowed if "/" in e]
    if names.registry in hosts or repository_allowed(names.repository, rules):
        return
    what = "registry" if not rules else "repository"
    shown = names.registry if not rules else names.repository.repository
    raise InvalidValueError(
        source,
        str(names.repository),
        f"{what} {shown} is not in registries.allowed ({', '.join(allowed) or 'empty'})",
    )


def check_repository(names: ImageNames, config: Config, source: str) -> None:
    """Every job's repository is one that ``packaging.allowed_repositories`` lists, if set."""
    allowed = config.packaging.allowed_repositories
    if allowed is None:
        return
    rules = [repository_rule(entry, "packaging.allowed_repositories") for entry in allowed]
    if not repository_allowed(names.repository, rules):
        raise InvalidValueError(
            source,
            str(names.repository),
            f"repository {names.repository.repository} is not in"
            f" packaging.allowed_repositories ({', '.join(allowed)})",
        )


def check_request(
    info: ContainerInfo, config: Config, overrides: Overrides, now: datetime
) -> tuple[JobOptions, ImageNames]:
    """Options and image names of a job for ``info``; raises on a bad value, before anything
    is made (the API refuses such a request with the same message)."""
    options = resolve_options(info.labels, config, overrides)
    names = resolve_names(
        options.repository,
        options.repository_source,
        options.tags,
        options.tags_source,
        TemplateContext(
            name=info.name, id=info.id, now=now, service=info.labels.get(COMPOSE_SERVICE_LABEL, "")
        ),
    )
    check_repository(names, config, options.repository_source)
    if options.push:
        check_registries(names, config, options.repository_source)
    ExcludeRules.parse(options.exclude, options.exclude_source)
    return options, names


async def check_existing_tags(
    engine: EnginePort, names: ImageNames, info: ContainerInfo, options: JobOptions
) -> None:
    """A job never moves a tag off an image that kegpackd did not make of this container.

    The repository and tags may come from the container's labels: without this, a label
    could re-point any local tag (``victim/db:15``) at its owner's image, and the next
    ``docker run victim/db:15`` would run it. Such an image has kegpackd's final comment
    naming this container (a comment, unlike a label, is not inherited by a child image).
    """
    for reference in names.references():
        try:
            image = await engine.inspect_image(reference)
        except NotFoundError:
            continue
        if final_comment_container(image.comment) == info.name:
            continue
        sources = dict.fromkeys((options.repository_source, options.tags_source))
        raise InvalidValueError(
            ", ".join(sources),
            str(parse_reference(reference, "image tag")),
            f"the tag is on image {image.id[:19]}, which kegpackd did not make of container"
            f" {info.name}; a job never moves such a tag",
        )


async def forced_owners_warning(
    engine: EnginePort, info: ContainerInfo, mounts: Sequence[SelectedMount], options: JobOptions
) -> str | None:
    """Podman's archive API reports every file as owned by the container's user (its
    copier forces owners), so the image cannot keep the mounts' owners: refused unless
    allowed, and then the warning the job's result, log, metrics and labels carry."""
    if not mounts or await engine.product() != "podman":
        return None
    where = ", ".join(quoted(m.destination) for m in mounts)
    if not options.allow_forced_owners:
        raise PackagingError(
            f"{quoted(info.name)}: the engine is Podman, whose archive API reports every "
            f"file under {where} as owned by the container's user, so the image would not "
            f"keep the files' owners; to package it with those owners, set the label "
            f"{LABEL_ALLOW_FORCED_OWNERS}=true or the config key "
            f"packaging.allow_forced_owners = true"
        )
    return (
        f"owners under {where} are the container user's, as Podman reports them, "
        f"not the files' own ({LABEL_ALLOW_FORCED_OWNERS})"
    )
