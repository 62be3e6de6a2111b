"""How the engine is reached: one aiohttp session (made by aiodocker), requests translated.

The base of ``engine.client.Engine``; it changes with the transport (aiodocker, aiohttp,
TLS, ssh, version negotiation), never with what is asked of the engine.

Only aiodocker's public API is used: ``Docker`` makes the session (unix socket, TLS,
``DOCKER_HOST``'s forms) and names the engine (``docker_host``); requests go through that
``session`` to ``{docker_host}/v{ApiVersion}/{path}``, the version read once from
``GET /version`` as aiodocker itself does. Its private ``_query*``, ``_check_version``
and ``_canonicalize_url`` (used before) are no promise from one release to the next.
"""

from __future__ import annotations

import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, Self

import aiodocker
import aiohttp

from kegpackd.engine import podman, sshdial, translate
from kegpackd.engine.endpoint import Endpoint
from kegpackd.errors import EngineError, EngineUnreachable

ARCHIVE_HEADERS = {"Accept-Encoding": "identity"}
# Requests with no time limit of ours, as aiodocker's were: the engine bounds its answers,
# and a slow one (a commit of a large container) is not a failure.
REQUEST_TIMEOUT = aiohttp.ClientTimeout()
# A long-running transfer: no limit on it, only on connecting.
NO_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=30)


def _ssl_context(endpoint: Endpoint) -> ssl.SSLContext | None:
    """The client TLS context of ``endpoint``'s files (see ``endpoint.TLSFiles``)."""
    tls = endpoint.tls
    if tls is None:
        return None
    try:
        context = ssl.create_default_context(cafile=str(tls.ca) if tls.ca else None)
        if not tls.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.cert is not None:
            context.load_cert_chain(str(tls.cert), str(tls.key) if tls.key else None)
    except (OSError, ssl.SSLError) as exc:
        raise EngineUnreachable(
            f"cannot load the TLS files of the Docker engine at {endpoint.where}: {exc}"
        ) from None
    return context


class Transport:
    """One connection to one Docker engine: requests and their failures, the engine's
    version and kind."""

    def __init__(self, docker: aiodocker.Docker, endpoint: Endpoint) -> None:
        self._docker = docker
        self.endpoint = endpoint
        self.host = endpoint.host
        self._store: str | None = None
        # ``GET /version``'s answer: the API version requests name, and the product.
        self._version: Mapping[str, Any] | None = None
        # The ssh bridge of an ssh:// engine, whose last ssh failure explains a lost connection.
        self._ssh: sshdial.Bridge | None = None
        # How messages name the engine: its address, and what chose it.
        self.where = endpoint.where

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, endpoint: Endpoint | str) -> AsyncIterator[Self]:
        """A connection to ``endpoint`` (a bare host string: one given by the caller)."""
        if isinstance(endpoint, str):
            endpoint = Endpoint.given(endpoint)
        async with contextlib.AsyncExitStack() as stack:
            url, ssh = endpoint.url, None
            if url.startswith("ssh://"):
                ssh = await stack.enter_async_context(sshdial.bridge(endpoint))
                url = ssh.url
            try:
                docker = aiodocker.Docker(url=url, ssl_context=_ssl_context(endpoint))
            except ValueError as exc:
                raise EngineUnreachable(f"Docker engine at {endpoint.where}: {exc}") from None
            engine = cls(docker, endpoint)
            engine._ssh = ssh
            try:
                yield engine
            finally:
                await docker.close()

    def _translate(self, what: str) -> contextlib.AbstractContextManager[None]:
        return translate.translated(what, self.where, self._ssh)

    @contextlib.asynccontextmanager
    async def _request(
        self,
        what: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
        client_timeout: aiohttp.ClientTimeout = REQUEST_TIMEOUT,
        versioned: bool = True,
        answer_errors: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; an error status raises (unless ``answer_errors``: a HEAD has no body
        to explain it), and the connection is closed, not pooled, on any early exit.

        Released half-read, the engine would keep writing into a connection
        nobody reads, and keep the container locked while it does.
        """
        with self._translate(what):
            prefix = f"v{await self._api_version()}/" if versioned else ""
            url = f"{self._docker.docker_host}/{prefix}{path}"
            async with self._docker.session.request(
                method,
                url,
                params=params,
                data=data,
                headers={"Content-Type": "application/json", **(headers or {})},
                timeout=client_timeout,
            ) as resp:
                if resp.status >= 400 and not answer_errors:
                    body = await resp.read()
                    message = translate.error_message(resp.status, body, resp.content_type)
                    raise translate.by_status(what, resp.status, message)
                try:
                    yield resp
                except BaseException:
                    resp.close()
                    raise

    async def _api_version(self) -> str:
        return str((await self._version_info())["ApiVersion"])

    async def _version_info(self) -> Mapping[str, Any]:
        """``GET /version``, unversioned and once, as aiodocker negotiates the version."""
        if self._version is None:
            answer = await self._json("engine version", "GET", "version", versioned=False)
            if not isinstance(answer, dict) or "ApiVersion" not in answer:
                raise EngineError(f"engine version: unexpected answer {str(answer)[:200]!r}")
            self._version = answer
        return self._version

    async def _json(
        self,
        what: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        client_timeout: aiohttp.ClientTimeout = REQUEST_TIMEOUT,
        versioned: bool = True,
    ) -> Any:
        """A request with a JSON body (or none), and its JSON answer (None when empty)."""
        data = None if body is None else json.dumps(body)
        async with self._request(
            what,
            method,
            path,
            params=params,
            data=data,
            client_timeout=client_timeout,
            versioned=versioned,
        ) as resp:
            answer = await resp.read()
        if not answer.strip():
            return None
        try:
            return json.loads(answer)
        except ValueError:
            raise EngineError(f"{what}: malformed answer {answer[:200]!r}") from None

    async def product(self) -> str:
        """``podman`` for Podman's Docker-compatible API, else ``docker``.

        Podman differs in what this boundary hides (names, event names, ids, filters) and in
        one thing the pipeline must know: its archives report every owner as the container
        user's.
        """
        version = await self._version_info()
        names = {
            str(part.get("Name", ""))
            for part in version.get("Components") or ()
            if isinstance(part, dict)
        }
        return "podman" if podman.PODMAN_COMPONENT in names else "docker"

    async def image_store(self) -> str:
        """``containerd`` for the containerd image store (Docker 29's default), else ``graph``."""
        if self._store is None:
            info = await self._json("docker info", "GET", "info")
            status = info.get("DriverStatus") or []
            containerd = any(
                isinstance(pair, list)
                and len(pair) == 2
                and pair[0] == "driver-type"
                and str(pair[1]).startswith("io.containerd.snapshotter")
                for pair in status
            )
            self._store = "containerd" if containerd else "graph"
        return self._store
