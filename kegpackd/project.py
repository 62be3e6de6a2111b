"""Package a whole Compose project: one job per service, then the file that runs them.

The containers are the ones Compose labelled with the project's name (not its one-off
``run`` containers); each is packaged by the pipeline as any container is, concurrently
within ``packaging.concurrency``, and one failing does not stop the others. The Compose
file is made only when every service was packaged, or with ``partial`` from the ones
that were: a failed service is left out rather than kept on its original image, which
would run without the content its mounts gave it, on bind mounts another machine lacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

from kegpackd.compose import PROJECT_LABEL, PackagedService, compose_yaml
from kegpackd.config import Config
from kegpackd.errors import KegpackError, PackagingError
from kegpackd.jobs import JobRequest, JobResult, Progress
from kegpackd.mounts import packaged_destinations, select_mounts
from kegpackd.naming import COMPOSE_SERVICE_LABEL
from kegpackd.options import Overrides
from kegpackd.pipeline import check_request, package
from kegpackd.port import EnginePort

log = logging.getLogger(__name__)

ONEOFF_LABEL = "com.docker.compose.oneoff"
NUMBER_LABEL = "com.docker.compose.container-number"
TRIGGER = "project"


@dataclass
class ProjectResult:
    """What packaging a project gave, by service (the ``com.docker.compose.service`` label)."""

    project: str
    # The jobs that made an image (one whose file entry then failed is in errors too).
    results: dict[str, JobResult] = field(default_factory=dict)
    # A failed service's error; a container without a service label is "container NAME".
    errors: dict[str, str] = field(default_factory=dict)
    # Containers not packaged as their service's has one of a lower number (scaled).
    replicas: list[str] = field(default_factory=list)
    # The Compose file; None when a service failed without partial, or the file could
    # not be written (compose_error says why).
    compose: str | None = None
    compose_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and self.compose is not None


async def package_project(
    engine: EnginePort,
    config: Config,
    project: str,
    *,
    partial: bool,
    progress_for: Callable[[str], Progress] | None = None,
    docker_config_dir: Path | None = None,
) -> ProjectResult:
    """Package every service of ``project`` and write the Compose file that runs them."""
    chosen, outcome = await _containers(engine, project)
    services: dict[str, PackagedService] = {}
    limiter = anyio.CapacityLimiter(config.packaging.concurrency)

    async def one(service: str, container_id: str) -> None:
        progress = progress_for(service) if progress_for is not None else None
        request = JobRequest(container=container_id, trigger=TRIGGER)
        async with limiter:
            try:
                with anyio.fail_after(config.packaging.job_timeout):
                    result = await package(
                        engine, config, request, progress, docker_config_dir=docker_config_dir
                    )
                    outcome.results[service] = result
                    services[service] = await _packaged(engine, config, container_id, result)
            except TimeoutError:
                outcome.errors[service] = f"timed out after {config.packaging.job_timeout:.0f}s"
            except KegpackError as exc:
                outcome.errors[service] = str(exc)
            except Exception as exc:
                log.exception("packaging service %s of project %s failed", service, project)
                outcome.errors[service] = f"{type(exc).__name__}: {exc}"

    async with anyio.create_task_group() as group:
        for service, container_id in chosen.items():
            group.start_soon(one, service, container_id)
    if outcome.errors and not partial:
        return outcome
    if not services:
        outcome.compose_error = f"no service of Compose project {project} was packaged"
        return outcome
    try:
        outcome.compose = compose_yaml(
            project, [services[s] for s in sorted(services)], left_out=outcome.errors
        )
    except KegpackError as exc:
        outcome.compose_error = str(exc)
    return outcome


async def _containers(engine: EnginePort, project: str) -> tuple[dict[str, str], ProjectResult]:
    """The container to package for each service (its lowest numbered), by service name."""
    if not project:
        raise PackagingError("the Compose project name is empty")
    outcome = ProjectResult(project)
    entries = await engine.list_containers({"label": [f"{PROJECT_LABEL}={project}"]})
    entries = [e for e in entries if _labels(e).get(ONEOFF_LABEL) != "True"]
    if not entries:
        raise PackagingError(
            f"Compose project {project!r} has no containers: none has the label"
            f" {PROJECT_LABEL}={project}"
        )
    by_service: dict[str, list[tuple[int, str, str]]] = {}
    for entry in entries:
        labels = _labels(entry)
        name = _entry_name(entry)
        service = labels.get(COMPOSE_SERVICE_LABEL, "")
        if not service:
            outcome.errors[f"container {name}"] = (
                f"container {name} has the label {PROJECT_LABEL}={project} but no"
                f" {COMPOSE_SERVICE_LABEL} label"
            )
            continue
        number = labels.get(NUMBER_LABEL, "")
        rank = int(number) if number.isdigit() else 0
        by_service.setdefault(service, []).append((rank, name, str(entry["Id"])))
    chosen = {}
    for service, candidates in by_service.items():
        first, *others = sorted(candidates)
        chosen[service] = first[2]
        outcome.replicas += [name for _rank, name, _id in others]
    return chosen, outcome


async def _packaged(
    engine: EnginePort, config: Config, container_id: str, result: JobResult
) -> PackagedService:
    """The service's entry for the Compose file: its image, and which mounts it holds."""
    info = await engine.inspect_container(container_id)
    options, _names = check_request(info, config, Overrides(), datetime.now(UTC))
    packaged = packaged_destinations(info, await select_mounts(engine, info, options))
    if not result.references:
        raise PackagingError(f"the job for container {info.name} named no image")
    reference = result.references[0]
    digest = result.digests.get(reference)
    image = await engine.inspect_image(info.image_id)
    return PackagedService(
        info=info,
        reference=f"{reference}@{digest}" if digest else reference,
        packaged=packaged,
        image_config=image.config,
    )


def _labels(entry: Mapping[str, Any]) -> Mapping[str, str]:
    labels: Mapping[str, str] = entry.get("Labels") or {}
    return labels


def _entry_name(entry: Mapping[str, Any]) -> str:
    names = entry.get("Names") or []
    return str(names[0]).lstrip("/") if names else str(entry.get("Id", ""))[:12]
