"""The daemon's HTTP face: metrics, health, and the job API (the manual trigger).

It talks to the scheduler, never to the Docker client. Off loopback every POST
needs the bearer token; tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kegpackd.config import Config
from kegpackd.errors import (
    InvalidValueError,
    JobConflict,
    KegpackError,
    NotFoundError,
    PackagingError,
)
from kegpackd.jobs import JobRecord, job_json
from kegpackd.metrics import Metrics
from kegpackd.options import Overrides
from kegpackd.project import ProjectRun
from kegpackd.scheduler import Scheduler


class Backend(Protocol):
    """What the API reads and asks of the service behind it (the daemon, or a test's)."""

    config: Config
    metrics: Metrics
    ready: bool
    not_ready_reason: str
    scheduler: Scheduler | None

    @property
    def projects(self) -> Mapping[str, ProjectRun]: ...

    async def submit_manual(self, container: str, overrides: Overrides) -> JobRecord: ...

    async def submit_project(self, name: str, partial: bool) -> ProjectRun: ...


log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 64 * 1024


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Api:
    def __init__(self, daemon: Backend) -> None:
        self.daemon = daemon

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=MAX_BODY)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/v1/jobs", self.list_jobs)
        app.router.add_get("/v1/jobs/{id}", self.get_job)
        app.router.add_post("/v1/jobs", self.create_job)
        app.router.add_get("/v1/projects/{id}", self.get_project)
        app.router.add_get("/v1/projects/{id}/compose.yaml", self.get_compose)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = self.daemon.config.http.token
        if request.method != "POST" or token is None:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            log.warning(
                "refused %s %s from %s: no token", request.method, request.path, request.remote
            )
            return _error(401, "missing bearer token")
        if not hmac.compare_digest(header[7:].encode(), token.reveal().encode()):
            log.warning(
                "refused %s %s from %s: bad token", request.method, request.path, request.remote
            )
            return _error(403, "invalid token")
        return await handler(request)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.daemon.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        if self.daemon.ready:
            return web.json_response({"status": "ready"})
        return web.json_response(
            {"status": "not ready", "reason": self.daemon.not_ready_reason}, status=503
        )

    async def list_jobs(self, request: web.Request) -> web.Response:
        """Newest first: this run's jobs, then the journal's from before the last restart."""
        scheduler = self.daemon.scheduler
        if scheduler is None:
            return web.json_response({"jobs": []})
        jobs = [{**job_json(r), "restored": False} for r in reversed(scheduler.history)]
        jobs += [{**job, "restored": True} for job in reversed(scheduler.past)]
        projects = [run.json() for run in list(self.daemon.projects.values())[::-1]]
        return web.json_response({"jobs": jobs, "projects": projects})

    async def get_job(self, request: web.Request) -> web.Response:
        scheduler = self.daemon.scheduler
        job_id = request.match_info["id"]
        record = scheduler.find(job_id) if scheduler else None
        if record is not None:
            return web.json_response({**job_json(record), "restored": False})
        for job in scheduler.past if scheduler else ():
            if job.get("id") == job_id:
                return web.json_response({**job, "restored": True})
        return _error(404, "no such job")

    async def get_project(self, request: web.Request) -> web.Response:
        run = self.daemon.projects.get(request.match_info["id"])
        if run is None:
            return _error(404, "no such project run")
        return web.json_response(run.json())

    async def get_compose(self, request: web.Request) -> web.Response:
        """The packaged project's Compose file, once its jobs ended (409 before, or when a
        service failed without ``partial``)."""
        run = self.daemon.projects.get(request.match_info["id"])
        if run is None:
            return _error(404, "no such project run")
        if run.outcome is None:
            return _error(409, f"project {run.name} is still being packaged")
        if run.outcome.compose is None:
            failed = ", ".join(sorted(run.outcome.errors))
            reason = run.outcome.compose_error or f"service(s) {failed} failed (no partial)"
            return _error(409, f"project {run.name} has no Compose file: {reason}")
        return web.Response(text=run.outcome.compose, content_type="application/yaml")

    async def create_job(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body must be JSON")
        if isinstance(body, dict) and "project" in body:
            return await self._create_project(body)
        try:
            overrides = _overrides(_job_body(body))
            record = await self.daemon.submit_manual(body["container"], overrides)
        except NotFoundError:
            return _error(404, f"no such container: {body['container']!r}")
        except JobConflict as exc:
            return _error(409, str(exc))
        except KegpackError as exc:
            return _error(400 if isinstance(exc, InvalidValueError) else 503, str(exc))
        return web.json_response({"id": record.request.job_id, "state": record.state}, status=202)

    async def _create_project(self, body: dict[str, Any]) -> web.Response:
        name, partial = body.get("project"), body.get("partial", False)
        unknown = set(body) - {"project", "partial"}
        if unknown:
            return _error(400, f"request body: {sorted(unknown)[0]!r} is not a field of a project")
        if not isinstance(name, str) or not name:
            return _error(400, "request project: must be a Compose project's name")
        if not isinstance(partial, bool):
            return _error(400, "request partial: must be true or false")
        try:
            run = await self.daemon.submit_project(name, partial)
        except PackagingError as exc:
            return _error(404, str(exc))
        except KegpackError as exc:
            return _error(503, str(exc))
        return web.json_response(run.json(), status=202)


def _job_body(body: object) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get("container"), str):
        raise InvalidValueError("request body", body, 'must be {"container": "<name or id>", ...}')
    unknown = set(body) - {"container", "repository", "tags", "push"}
    if unknown:
        raise InvalidValueError("request body", sorted(unknown)[0], "is not a known field")
    return body


def _overrides(body: dict[str, Any]) -> Overrides:
    repository = body.get("repository")
    tags = body.get("tags", [])
    push = body.get("push")
    if repository is not None and not isinstance(repository, str):
        raise InvalidValueError("request repository", repository, "must be a string")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidValueError("request tags", tags, "must be a list of strings")
    if push is not None and not isinstance(push, bool):
        raise InvalidValueError("request push", push, "must be true or false")
    return Overrides(repository=repository, tags=tuple(tags), push=push, origin="request")
