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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from kegpackd.compose.file import PackagedService
from kegpackd.compose.render import compose_yaml
from kegpackd.config import Config
from kegpackd.engine.port import EnginePort
from kegpackd.errors import KegpackError, PackagingError, ProjectNotFound
from kegpackd.labels import COMPOSE_SERVICE_LABEL, NUMBER_LABEL, ONEOFF_LABEL, PROJECT_LABEL
from kegpackd.packaging.jobs import (
    SUCCESSES,
    EventKind,
    JobEvent,
    JobRecord,
    JobRequest,
    JobResult,
    Progress,
)
from kegpackd.packaging.options import Overrides
from kegpackd.packaging.runner import JobRunner, PipelineRunner
from kegpackd.packaging.triggers import TriggerName

log = logging.getLogger(__name__)

TRIGGER = TriggerName.PROJECT


@dataclass
class ProjectRun:
    """A project packaged by the daemon: its services' jobs, then its Compose file."""

    id: str
    name: str
    partial: bool
    # Service → the container packaged and the job record packaging it.
    containers: dict[str, str]
    jobs: dict[str, JobRecord]
    created: float = field(default_factory=time.time)
    outcome: ProjectResult | None = None
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def state(self) -> str:
        if self.outcome is None:
            return "running"
        if self.outcome.ok:
            return "succeeded"
        return "partial" if self.outcome.compose is not None else "failed"

    def json(self) -> dict[str, Any]:
        outcome = self.outcome
        return {
            "id": self.id,
            "project": self.name,
            "partial": self.partial,
            "state": self.state,
            "jobs": {s: r.request.job_id for s, r in sorted(self.jobs.items())},
            "failed": dict(sorted(outcome.errors.items())) if outcome else {},
            "compose": outcome is not None and outcome.compose is not None,
            "error": outcome.compose_error if outcome else None,
        }

    async def finish(self, engine: EnginePort, config: Config) -> None:
        """Once every job ended: the Compose file of those that succeeded."""
        await self.done.wait()
        outcome = ProjectResult(self.name)
        services: dict[str, PackagedService] = {}
        for service, record in self.jobs.items():
            if record.state not in SUCCESSES:
                outcome.errors[service] = record.error or f"job {record.state}"
                continue
            outcome.results[service] = record.result
            try:
                services[service] = await packaged_service(
                    engine, self.containers[service], record.result
                )
            except KegpackError as exc:
                outcome.errors[service] = str(exc)
        write_compose(outcome, services, partial=self.partial)
        self.outcome = outcome
        log.info(
            "project %s (%s): %s",
            self.name,
            self.id,
            self.state,
            extra={"fields": {"project": self.id, "failed": ",".join(sorted(outcome.errors))}},
        )

    def on_job_event(self, event: JobEvent) -> None:
        """Sets ``done`` when the last of this project's jobs finished (any job's end is
        worth a look: its jobs may have merged into waiting ones of other requests)."""
        if event.kind == EventKind.FINISHED and all(r.state.finished for r in self.jobs.values()):
            self.done.set()


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
    overrides: Overrides | None = None,
    runner: JobRunner | None = None,
) -> ProjectResult:
    """Package every service of ``project`` and write the Compose file that runs them.

    ``overrides`` (the CLI's flags) apply to every service: ``--repository reg/{service}``.
    ``runner`` runs each service's job (the pipeline by default).
    """
    overrides = overrides or Overrides()
    run_job = runner or PipelineRunner()
    chosen, outcome = await project_containers(engine, project)
    services: dict[str, PackagedService] = {}
    limiter = anyio.CapacityLimiter(config.packaging.concurrency)

    async def one(service: str, container_id: str) -> None:
        progress = progress_for(service) if progress_for is not None else None
        request = JobRequest(container=container_id, trigger=TRIGGER, overrides=overrides)
        record = JobRecord(request=request)
        async with limiter:
            await run_job(engine, config, record, progress, docker_config_dir=docker_config_dir)
            if record.state not in SUCCESSES:
                outcome.errors[service] = record.error or f"job {record.state}"
                return
            outcome.results[service] = record.result
            try:
                services[service] = await packaged_service(engine, container_id, record.result)
            except KegpackError as exc:
                outcome.errors[service] = str(exc)

    async with anyio.create_task_group() as group:
        for service, container_id in chosen.items():
            group.start_soon(one, service, container_id)
    write_compose(outcome, services, partial=partial)
    return outcome


def write_compose(
    outcome: ProjectResult, services: Mapping[str, PackagedService], *, partial: bool
) -> None:
    """The Compose file, only when every service was packaged, or with ``partial`` of those
    that were; else ``compose`` stays None (``compose_error`` says why when it is not a
    failed service)."""
    if outcome.errors and not partial:
        return
    if not services:
        outcome.compose_error = f"no service of Compose project {outcome.project} was packaged"
        return
    try:
        outcome.compose = compose_yaml(
            outcome.project, [services[s] for s in sorted(services)], left_out=outcome.errors
        )
    except KegpackError as exc:
        outcome.compose_error = str(exc)


async def project_containers(
    engine: EnginePort, project: str
) -> tuple[dict[str, str], ProjectResult]:
    """The container to package for each service (its lowest numbered), by service name."""
    if not project:
        raise PackagingError("the Compose project name is empty")
    outcome = ProjectResult(project)
    entries = await engine.list_containers({"label": [f"{PROJECT_LABEL}={project}"]})
    entries = [e for e in entries if e.labels.get(ONEOFF_LABEL) != "True"]
    if not entries:
        raise ProjectNotFound(
            f"Compose project {project!r} has no containers: none has the label"
            f" {PROJECT_LABEL}={project} (`docker compose ls -a` lists the names)"
        )
    by_service: dict[str, list[tuple[int, str, str]]] = {}
    for entry in entries:
        labels, name = entry.labels, entry.name
        service = labels.get(COMPOSE_SERVICE_LABEL, "")
        if not service:
            outcome.errors[f"container {name}"] = (
                f"container {name} has the label {PROJECT_LABEL}={project} but no"
                f" {COMPOSE_SERVICE_LABEL} label"
            )
            continue
        number = labels.get(NUMBER_LABEL, "")
        rank = int(number) if number.isdigit() else 0
        by_service.setdefault(service, []).append((rank, name, entry.id))
    chosen = {}
    for service, candidates in by_service.items():
        first, *others = sorted(candidates)
        chosen[service] = first[2]
        outcome.replicas += [name for _rank, name, _id in others]
    return chosen, outcome


async def packaged_service(
    engine: EnginePort, container_id: str, result: JobResult
) -> PackagedService:
    """The service's entry for the Compose file: its image, and the mounts the job copied."""
    info = await engine.inspect_container(container_id)
    if not result.references:
        raise PackagingError(f"the job for container {info.name} named no image")
    reference = result.references[0]
    digest = result.digests.get(reference)
    image = await engine.inspect_image(info.image_id)
    return PackagedService(
        info=info,
        reference=f"{reference}@{digest}" if digest else reference,
        packaged=frozenset(result.copied),
        image_config=image.config,
    )
