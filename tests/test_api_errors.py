"""The API's error table (``api.ERROR_STATUS``): a refused job request answers the status of
the error that refused it, one test per row, through the real routes and guards."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from kegpackd.compose.project import ProjectRun
from kegpackd.config import Config
from kegpackd.daemon.api import ERROR_STATUS, Api
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
from kegpackd.packaging.jobs import JobRecord
from kegpackd.packaging.options import Overrides

TOKEN = "t" * 32


class RefusingBackend:
    """A daemon whose every submission is refused with ``error``."""

    def __init__(self, error: KegpackError | None) -> None:
        self.error = error
        self.config = Config()
        self.metrics = Metrics(process=False)
        self.ready = True
        self.not_ready_reason = ""
        self.scheduler: Scheduler | None = None
        self.local_token: Secret | None = Secret(TOKEN)

    @property
    def projects(self) -> Mapping[str, ProjectRun]:
        return {}

    async def submit_manual(
        self, container: str, overrides: Overrides, *, any_container: bool
    ) -> JobRecord:
        raise self.error or AssertionError("the request should have been refused before")

    async def submit_project(self, name: str, partial: bool) -> ProjectRun:
        raise self.error or AssertionError("the request should have been refused before")


@pytest.fixture
def backend() -> RefusingBackend:
    return RefusingBackend(None)


@pytest.fixture
async def client(backend: RefusingBackend) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(Api(backend).app())) as test_client:
        yield test_client


async def post(client: TestClient[Any, Any], body: object) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with client.post("/v1/jobs", json=body, headers=headers) as resp:
        return resp.status, str((await resp.json())["error"])


async def test_a_container_the_token_does_not_grant_answers_403(
    backend: RefusingBackend, client: TestClient[Any, Any]
) -> None:
    """NotPermitted (the configured token, an unlabelled container): 403."""
    backend.error = NotPermitted("container web is not labelled kegpack.package=true")
    assert await post(client, {"container": "web"}) == (403, str(backend.error))


async def test_a_waiting_job_with_other_options_answers_409(
    backend: RefusingBackend, client: TestClient[Any, Any]
) -> None:
    """JobConflict: 409."""
    backend.error = JobConflict("container web has a waiting job with other options")
    assert await post(client, {"container": "web"}) == (409, str(backend.error))


async def test_a_container_the_engine_does_not_know_answers_404(
    backend: RefusingBackend, client: TestClient[Any, Any]
) -> None:
    """NotFoundError from the engine: 404, naming the container asked for."""
    backend.error = NotFoundError("container 'web': No such container: web")
    assert await post(client, {"container": "web"}) == (404, "no such container: 'web'")


async def test_a_project_no_container_belongs_to_answers_404(
    backend: RefusingBackend, client: TestClient[Any, Any]
) -> None:
    """ProjectNotFound: 404."""
    backend.error = ProjectNotFound("Compose project 'shop' has no containers")
    assert await post(client, {"project": "shop"}) == (404, str(backend.error))


async def test_an_invalid_field_answers_400_before_the_daemon_is_asked(
    client: TestClient[Any, Any],
) -> None:
    """InvalidValueError (``push`` not a boolean): 400; the backend would fail the test."""
    status, message = await post(client, {"container": "web", "push": "yes"})
    assert (status, message) == (400, "request push: invalid value 'yes': must be true or false")


async def test_a_project_whose_labels_cannot_be_packaged_answers_422(
    backend: RefusingBackend, client: TestClient[Any, Any]
) -> None:
    """PackagingError (a container without its service label): 422, not 404."""
    backend.error = PackagingError(
        "container shop-web-1 has the label com.docker.compose.project=shop but no"
        " com.docker.compose.service label"
    )
    assert await post(client, {"project": "shop"}) == (422, str(backend.error))


async def test_a_daemon_that_cannot_take_jobs_now_answers_503(
    backend: RefusingBackend, client: TestClient[Any, Any]
) -> None:
    """Any other KegpackError (starting, stopping, engine gone): 503."""
    backend.error = KegpackError("the daemon is still starting")
    assert await post(client, {"container": "web"}) == (503, str(backend.error))


def test_every_row_of_the_table_has_its_test() -> None:
    """A new row needs a new test above: the table and these tests list the same classes."""
    tested = {
        NotPermitted,
        JobConflict,
        NotFoundError,
        ProjectNotFound,
        InvalidValueError,
        PackagingError,
        KegpackError,
    }
    assert {kind for kind, _ in ERROR_STATUS} == tested
