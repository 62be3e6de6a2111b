"""Engine failures as ``kegpackd.errors``: by HTTP status first, then by the connection
error's type, so that callers reason about "not found" or "engine unreachable", never about
status codes, aiohttp or aiodocker.

Apart from the client because it changes with the errors we distinguish, not with the
requests made.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator

import aiodocker
import aiohttp

from kegpackd.engine import sshdial
from kegpackd.errors import EngineError, EnginePermissionDenied, EngineUnreachable, NotFoundError

# aiodocker's stand-in status for "could not connect" (no HTTP status: no answer came), raised
# while handling aiohttp's error. Only aiodocker's own API (the exec calls) raises it; the
# client's requests meet aiohttp's error itself.
AIODOCKER_CANNOT_CONNECT = 900
# How the engine words a registry's refusal of the credentials: retrying cannot help.
_AUTH_REFUSED = re.compile(
    r"unauthorized|authentication required|no basic auth credentials"
    r"|access to the resource is denied",
    re.IGNORECASE,
)


def credentials_refused(message: str) -> bool:
    """Whether a push error says the registry refused the credentials (not worth retrying)."""
    return _AUTH_REFUSED.search(message) is not None


def error_message(status: int, body: bytes, content_type: str) -> str:
    """The first line of the engine's error answer (``{"message": …}`` or text)."""
    text = body.decode(errors="replace")
    if content_type == "application/json":
        with contextlib.suppress(ValueError, AttributeError):
            text = str(json.loads(text).get("message", text))
    return text.strip().splitlines()[0] if text.strip() else f"HTTP {status}"


def by_status(what: str, status: int, message: str) -> EngineError:
    """An engine's error answer: 404 is "not found", any other a refusal or failure."""
    if status == 404:
        return NotFoundError(f"{what}: {message}")
    return EngineError(f"{what}: {message}")


@contextlib.contextmanager
def translated(what: str, where: str, ssh: sshdial.Bridge | None) -> Iterator[None]:
    """Failures inside the block as ``kegpackd.errors`` (``where``: how to name the engine)."""
    try:
        yield
    except aiodocker.DockerError as exc:
        message = str(exc.message).strip().splitlines()[0] if exc.message else f"HTTP {exc.status}"
        if exc.status != AIODOCKER_CANNOT_CONNECT:
            raise by_status(what, exc.status, message) from None
        cause = exc.__context__
        if isinstance(cause, aiohttp.ClientError):
            raise connection_error(what, cause, where, ssh) from None
        raise EngineUnreachable(f"cannot reach the Docker engine at {where}: {message}") from None
    except aiohttp.ClientError as exc:
        raise connection_error(what, exc, where, ssh) from None


def connection_error(
    what: str, exc: aiohttp.ClientError, where: str, ssh: sshdial.Bridge | None
) -> EngineUnreachable:
    """One line for a failed connection, by the error's type, without aiohttp's wording."""
    if ssh is not None and ssh.failure is not None:
        return EngineUnreachable(f"cannot reach the Docker engine at {where}: {ssh.failure}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        verify = getattr(exc.certificate_error, "verify_message", "") or exc.certificate_error
        return EngineUnreachable(
            f"TLS verification of the Docker engine at {where} failed: "
            f"certificate verify failed: {verify} "
            "(is ca.pem in the cert path the CA that signed the engine's certificate?)"
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, PermissionError):
            return EnginePermissionDenied(
                f"permission denied on the Docker socket {where} "
                "(is this user in the docker group?)"
            )
        reason = exc.os_error.strerror or str(exc.os_error)
        return EngineUnreachable(f"cannot reach the Docker engine at {where}: {reason}")
    return EngineUnreachable(
        f"{what}: connection to the Docker engine at {where} failed: {type(exc).__name__}: {exc}"
    )
