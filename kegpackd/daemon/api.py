"""The daemon's HTTP face: metrics, health, the job API (the manual trigger), the status page.

It talks to the scheduler, never to the Docker client. ``/metrics``, ``/healthz`` and
``/readyz`` are open and read-only; every other route needs a bearer token, because
loopback is no trust boundary on a multi-user host. The local token (``api.token`` in
``daemon.state_dir``, readable by the daemon's user alone) grants what the engine socket
grants; the configured ``http.token`` only jobs of opted-in containers. A browser cannot
use the API: requests with an ``Origin``, a foreign ``Host`` (DNS rebinding) or a
non-JSON body are refused. Tokens are compared in constant time and never logged.

The status page ``/`` alone also takes the token as an HTTP Basic password, since a
browser sends no bearer header. Basic is accepted nowhere else: a browser that remembers
it (and sends it along with any other site's request) still reaches no ``/v1`` route.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import ipaddress
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kegpackd import __version__
from kegpackd.compose.project import ProjectRun
from kegpackd.config import Config
from kegpackd.daemon import statuspage
from kegpackd.daemon.metrics import Metrics
from kegpackd.daemon.scheduler import Scheduler
from kegpackd.engine.credentials import Secret
from kegpackd.errors import (
    InvalidValueError,
    JobConflict,
    KegpackError,
    NotFoundError,
    NotPermitted,
    PackagingError,
    ProjectNotFound,
)
from kegpackd.packaging.jobs import JobRecord, job_json
from kegpackd.packaging.options import Overrides
from kegpackd.shown import quoted


class Backend(Protocol):
    """What the API reads and asks of the service behind it (the daemon, or a test's)."""

    config: Config
    metrics: Metrics
    ready: bool
    not_ready_reason: str
    scheduler: Scheduler | None
    local_token: Secret | None

    @property
    def projects(self) -> Mapping[str, ProjectRun]: ...

    async def submit_manual(
        self, container: str, overrides: Overrides, *, any_container: bool
    ) -> JobRecord: ...

    async def submit_project(self, name: str, partial: bool) -> ProjectRun: ...


log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 64 * 1024
# A request body (at most MAX_BODY) that takes longer than this is a slow client: 408.
BODY_TIMEOUT = 10.0
# The routes anyone who can connect may read: counts and health, nothing about a job.
OPEN_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})
LOCAL_TOKEN_FILE = "api.token"
# Set on a request that carried the local token (the right of the engine socket).
LOCAL = web.RequestKey("kegpackd.local_token", bool)
# The one route that takes the token as an HTTP Basic password (a browser's only way).
STATUS_PAGE = "/"
BASIC_CHALLENGE = {"WWW-Authenticate": 'Basic realm="kegpackd", charset="UTF-8"'}


# The status a refused job request answers, by the error that refused it: the first row
# whose class the error is (subclasses before their bases). The one place an error becomes
# a status; tests/test_api_errors.py has a request per row.
ERROR_STATUS: tuple[tuple[type[KegpackError], int], ...] = (
    (NotPermitted, 403),  # the token does not grant what the request asks
    (JobConflict, 409),  # a waiting job for the container has other options
    (NotFoundError, 404),  # no such container (or it went while asked about)
    (ProjectNotFound, 404),  # no container carries the Compose project's label
    (InvalidValueError, 400),  # a field of the request, or a label it applies, is not valid
    (PackagingError, 422),  # the project's containers are labelled so they cannot be packaged
    (KegpackError, 503),  # the daemon (starting, stopping) or its engine cannot take it now
)


def status_of(exc: KegpackError) -> int:
    """The HTTP status of a request refused with ``exc`` (see ``ERROR_STATUS``)."""
    return next(status for kind, status in ERROR_STATUS if isinstance(exc, kind))


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class Api:
    def __init__(self, daemon: Backend) -> None:
        self.daemon = daemon

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get(STATUS_PAGE, self.status_page)
        app.router.add_get("/v1/jobs", self.list_jobs)
        app.router.add_get("/v1/jobs/{id}", self.get_job)
        app.router.add_post("/v1/jobs", self.create_job)
        app.router.add_get("/v1/projects/{id}", self.get_project)
        app.router.add_get("/v1/projects/{id}/compose.yaml", self.get_compose)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every route but the open ones: no browser, a known Host, a token, a JSON body.

        Judged on the route the router matched, not on the path's text, so no spelling of
        a path reaches a guarded handler unguarded (an unknown path is guarded too)."""
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else None
        if route in OPEN_ROUTES:
            return await handler(request)
        if route == STATUS_PAGE:
            return await self._page_guard(request, handler)
        refusal = self._browser(request) or self._token(request) or _not_json(request)
        if refusal is not None:
            _log_refusal(request, refusal[1])
            return _error(*refusal)
        return await handler(request)

    async def _page_guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The status page: a known Host, and the token as a Basic password (or bearer).

        No Origin check: the page is a GET that changes nothing, and its answer is
        unreadable to another origin (and unframeable, by its Content-Security-Policy).
        A refused token is a 401 with the challenge, so a browser asks again."""
        refusal = self._foreign_host(request)
        if refusal is not None:
            _log_refusal(request, refusal[1])
            return web.Response(status=refusal[0], text=refusal[1] + "\n")
        reason = self._page_token(request)
        if reason is not None:
            _log_refusal(request, reason)
            return web.Response(status=401, text=reason + "\n", headers=BASIC_CHALLENGE)
        return await handler(request)

    def _page_token(self, request: web.Request) -> str | None:
        """Why the page's credentials are refused, or None: the token as a Basic password
        (any user name) or as a bearer token, local or configured."""
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        given: str | None
        if scheme.lower() == "bearer":
            given = value
        elif scheme.lower() == "basic":
            given = _basic_password(value)
        else:
            return "missing credentials (the API token as an HTTP Basic password)"
        if given is None or not given.isascii() or not given.isprintable():
            return "malformed credentials"
        if not (
            _same(given, self.daemon.local_token) or _same(given, self.daemon.config.http.token)
        ):
            return "invalid token"
        return None

    def _browser(self, request: web.Request) -> tuple[int, str] | None:
        """A web page's request: it carries an Origin, or a name of its own as the Host."""
        if "Origin" in request.headers:
            return 403, "requests from a web page (with an Origin header) are refused"
        return self._foreign_host(request)

    def _foreign_host(self, request: web.Request) -> tuple[int, str] | None:
        """A Host that is not this daemon's: a rebound DNS name of someone else's page."""
        host = request.headers.get("Host")
        if host is not None and not host_allowed(host, self.daemon.config.http.allowed_hosts):
            return 403, f"Host {quoted(host)} is not this daemon's (see http.allowed_hosts)"
        return None

    def _token(self, request: web.Request) -> tuple[int, str] | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return 401, "missing bearer token"
        given = header[7:]
        if not given.isascii() or not given.isprintable():
            return 400, "malformed bearer token"
        local = _same(given, self.daemon.local_token)
        configured = _same(given, self.daemon.config.http.token)
        if not (local or configured):
            return 403, "invalid token"
        request[LOCAL] = local
        return None

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
        if self.daemon.scheduler is None:
            return web.json_response({"jobs": []})
        projects = [run.json() for run in list(self.daemon.projects.values())[::-1]]
        return web.json_response({"jobs": self._jobs(), "projects": projects})

    def _jobs(self) -> list[dict[str, Any]]:
        """Newest first: this run's jobs, then the journal's from before the last restart."""
        scheduler = self.daemon.scheduler
        if scheduler is None:
            return []
        jobs = [{**job_json(r), "restored": False} for r in reversed(scheduler.history)]
        return jobs + [{**job, "restored": True} for job in reversed(scheduler.past)]

    async def status_page(self, request: web.Request) -> web.Response:
        """The jobs of ``/v1/jobs`` as a page a person reads (see statuspage)."""
        snapshot = statuspage.Snapshot(
            jobs=self._jobs(),
            now=time.time(),
            ready=self.daemon.ready,
            not_ready_reason=self.daemon.not_ready_reason,
            version=__version__,
        )
        return web.Response(
            text=statuspage.render(snapshot),
            content_type="text/html",
            charset="utf-8",
            headers=statuspage.HEADERS,
        )

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
        body, problem = await _json_body(request)
        if problem is not None:
            log.warning(
                "refused POST %s from %s: %s", quoted(request.path), quoted(request.remote), problem
            )
            return _error(400 if problem != "body too slow" else 408, problem)
        any_container = bool(request.get(LOCAL, False))
        if isinstance(body, dict) and "project" in body:
            if not any_container:
                return _error(403, "a Compose project can be packaged only with the local token")
            return await self._create_project(body)
        return await self._create_manual(body, any_container)

    async def _create_manual(self, body: Any, any_container: bool) -> web.Response:
        try:
            overrides = _overrides(_job_body(body))
            record = await self.daemon.submit_manual(
                body["container"], overrides, any_container=any_container
            )
        except KegpackError as exc:
            if isinstance(exc, NotFoundError):
                return _error(status_of(exc), f"no such container: {body['container']!r}")
            return _error(status_of(exc), str(exc))
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
        except KegpackError as exc:
            return _error(status_of(exc), str(exc))
        return web.json_response(run.json(), status=202)


def _log_refusal(request: web.Request, reason: str) -> None:
    log.warning(
        "refused %s %s from %s: %s",
        request.method,
        quoted(request.path),
        quoted(request.remote),
        reason,
    )


def _basic_password(value: str) -> str | None:
    """The password of an HTTP Basic credential (``user:password``, base64), or None."""
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, colon, password = decoded.partition(":")
    return password if colon else None


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


async def _json_body(request: web.Request) -> tuple[Any, str | None]:
    """The decoded body, or why it is refused: slow, not JSON, or nested beyond the parser."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            text = await request.text()
    except TimeoutError:
        return None, "body too slow"
    try:
        return json.loads(text), None
    except ValueError:
        return None, "body must be JSON"
    except RecursionError:
        return None, "body must be JSON (this one is nested too deep)"


def _not_json(request: web.Request) -> tuple[int, str] | None:
    """A POST must say it is JSON: a browser cannot send that cross-origin without asking."""
    if request.method == "POST" and request.content_type != "application/json":
        return 415, "the body must be sent as Content-Type: application/json"
    return None


def _same(given: str, token: Secret | None) -> bool:
    """Constant time, on bytes (``given`` is ASCII, checked by the caller)."""
    if token is None:
        return False
    return hmac.compare_digest(given.encode("ascii"), token.reveal().encode())


def host_allowed(host: str, allowed: tuple[str, ...]) -> bool:
    """``localhost``, an IP literal or an ``allowed`` name, each with or without a port."""
    name = host.lower()
    if name.startswith("["):
        literal, end, rest = name[1:].partition("]")
        port_ok = not rest or (rest.startswith(":") and _is_port(rest[1:]))
        return bool(end) and port_ok and _is_ip(literal)
    if ":" in name:
        name, _, port = name.rpartition(":")
        if not _is_port(port):
            return False
    return name == "localhost" or _is_ip(name) or name in allowed


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 5


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def local_token_path(state_dir: Path) -> Path:
    return state_dir / LOCAL_TOKEN_FILE


def ensure_local_token(state_dir: Path) -> Secret:
    """The local token: made at first start (0600, never through a link), reused after.

    An existing file is used only if it is a regular file of ours that no one else can
    read; anything else is refused, since a token others could read is no right at all."""
    path = local_token_path(state_dir)
    try:
        return read_local_token(state_dir, check_owner=True)
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    temporary = state_dir / f".{LOCAL_TOKEN_FILE}.{secrets.token_hex(8)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        # link() never replaces: a file planted meanwhile wins, and is checked like any other.
        os.link(temporary, path, follow_symlinks=False)
    except FileExistsError:
        return read_local_token(state_dir, check_owner=True)
    except OSError as exc:
        raise KegpackError(f"cannot create the API token {path}: {exc.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return Secret(token)


def read_local_token(state_dir: Path, *, check_owner: bool = False) -> Secret:
    """The local token from ``state_dir``; FileNotFoundError when there is none."""
    path = local_token_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise KegpackError(f"cannot read the API token {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise KegpackError(f"the API token {path} is not a regular file")
        if check_owner and (info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) != 0o600):
            raise KegpackError(
                f"the API token {path} must be owned by uid {os.geteuid()} with mode 0600"
                f" (it is uid {info.st_uid}, {stat.S_IMODE(info.st_mode):04o}); remove it to"
                " have a new one made"
            )
        text = handle.read(256).decode("ascii", "replace").strip()
    if len(text) < 32 or not text.isascii() or not text.isprintable() or " " in text:
        raise KegpackError(f"the API token {path} holds no token; remove it to have one made")
    return Secret(text)
