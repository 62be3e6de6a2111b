"""Registry credentials: kegpackd's own config first, then whatever `docker login` left.

Secrets travel wrapped in :class:`Secret` so that logging, formatting or an
exception message can never print one by accident.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.to_thread

from kegpackd.errors import RegistryError

HELPER_TIMEOUT: Final = 30.0
DOCKER_HUB: Final = "docker.io"
DOCKER_HUB_SERVER: Final = "https://index.docker.io/v1/"
_HUB_HOSTS: Final = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_TOKEN_USERNAME: Final = "<token>"
_NOT_FOUND: Final = "credentials not found in native keychain"
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class Secret:
    """A string that shows as ``***`` everywhere except through :meth:`reveal`."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return format("***", spec)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return self._value == other._value

    def __hash__(self) -> int:
        return hash((Secret, self._value))


@dataclass(frozen=True)
class Credentials:
    """What the engine needs to authenticate one push."""

    username: str
    password: Secret | None = None
    identity_token: Secret | None = None

    def auth_header(self, registry: str) -> str:
        """The ``X-Registry-Auth`` value, encoded exactly as the docker CLI does."""
        server = _server_address(registry)
        payload: dict[str, str]
        if self.identity_token is not None:
            payload = {"identitytoken": self.identity_token.reveal(), "serveraddress": server}
        else:
            password = self.password.reveal() if self.password is not None else ""
            payload = {"username": self.username, "password": password, "serveraddress": server}
        raw = json.dumps(payload, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode("ascii")


def _server_address(registry: str) -> str:
    """Docker keys Hub credentials by its legacy index URL, everything else by host."""
    return DOCKER_HUB_SERVER if registry == DOCKER_HUB else registry


def _host_of(key: str) -> str:
    """Reduce a config key like ``https://host:5000/v1/`` to ``host:5000``."""
    return _SCHEME.sub("", key, count=1).split("/", 1)[0].lower()


def _matches(key: str, registry: str) -> bool:
    host = _host_of(key)
    if registry == DOCKER_HUB:
        return host in _HUB_HOSTS
    return host == registry.lower()


def _lookup(section: Mapping[str, Any], registry: str) -> tuple[str, Any] | None:
    """Find the entry for ``registry``: the exact key first, then one written differently."""
    server = _server_address(registry)
    if server in section:
        return server, section[server]
    for key, value in section.items():
        if _matches(key, registry):
            return key, value
    return None


def _config_dir(docker_config_dir: Path | None) -> Path:
    if docker_config_dir is not None:
        return docker_config_dir
    env = os.environ.get("DOCKER_CONFIG")
    if env:
        return Path(env)
    return Path.home() / ".docker"


async def _load_config(path: Path, registry: str) -> dict[str, Any] | None:
    # Errors are raised outside the except blocks: a UnicodeDecodeError or
    # JSONDecodeError holds the whole file, and even a suppressed __context__
    # would keep the secrets in it reachable from our exception.
    problem: str | None = None
    try:
        raw = await anyio.to_thread.run_sync(path.read_bytes)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raw = b""
        problem = f"cannot read Docker config {path}: {exc.strerror or type(exc).__name__}"
    data: object = None
    if problem is None:
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            problem = f"Docker config {path} is not valid UTF-8"
        except json.JSONDecodeError as exc:
            problem = (
                f"Docker config {path} is not valid JSON"
                f" ({exc.msg} at line {exc.lineno}, column {exc.colno})"
            )
    if problem is None:
        if isinstance(data, dict):
            return data
        problem = f"Docker config {path} is malformed: not a JSON object"
    raise RegistryError(f"{problem}; needed for registry {registry}")


def _section(config: Mapping[str, Any], name: str, path: Path, registry: str) -> dict[str, Any]:
    value = config.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RegistryError(
            f"Docker config {path} is malformed: {name!r} is not an object;"
            f" needed for registry {registry}"
        )
    return value


async def _run_helper(helper: str, registry: str, seconds: float) -> Credentials | None:
    """Ask a docker-credential-helpers program, the protocol `docker push` itself uses."""
    program = f"docker-credential-{helper}"
    if not _HELPER_NAME.fullmatch(helper):
        raise RegistryError(
            f"credential helper name {helper!r} for registry {registry} is not a plain name"
        )
    server = _server_address(registry)
    try:
        with anyio.fail_after(seconds):
            result = await anyio.run_process([program, "get"], input=server.encode(), check=False)
    except TimeoutError:
        raise RegistryError(
            f"credential helper {program} did not answer within {seconds:g} s"
            f" for registry {registry}"
        ) from None
    except FileNotFoundError:
        raise RegistryError(
            f"credential helper {program} for registry {registry} is not installed (not on PATH)"
        ) from None
    except OSError as exc:
        raise RegistryError(
            f"cannot run credential helper {program} for registry {registry}: {exc.strerror}"
        ) from None
    if result.returncode != 0:
        if _NOT_FOUND in result.stdout.decode(errors="replace"):
            return None
        # The helper's output is not quoted: nothing guarantees it holds no secret.
        raise RegistryError(
            f"credential helper {program} failed for registry {registry}"
            f" (exit status {result.returncode})"
        )
    return _parse_helper_output(result.stdout, program, registry)


def _parse_helper_output(stdout: bytes, program: str, registry: str) -> Credentials | None:
    try:
        data = json.loads(stdout)
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise RegistryError(
            f"credential helper {program} returned malformed output for registry {registry}"
        )
    username = data.get("Username", "")
    secret = data.get("Secret", "")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise RegistryError(
            f"credential helper {program} returned malformed output for registry {registry}"
        )
    if not username and not secret:
        return None
    if username == _TOKEN_USERNAME:
        return Credentials(username="", identity_token=Secret(secret))
    return Credentials(username=username, password=Secret(secret) if secret else None)


def _decode_auth(auth: str, path: Path, key: str, registry: str) -> tuple[str, str]:
    """Decode ``base64(user:password)``; errors say where, never what."""
    try:
        decoded = base64.b64decode(auth.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        decoded = None
    if decoded is None or ":" not in decoded:
        raise RegistryError(
            f"Docker config {path} is malformed: auths[{key!r}].auth is not"
            f" base64 of 'username:password'; needed for registry {registry}"
        )
    username, _, password = decoded.partition(":")
    return username, password.strip("\x00")


def _from_auths_entry(entry: Any, path: Path, key: str, registry: str) -> Credentials | None:
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(f, ""), str) for f in ("auth", "username", "password", "identitytoken")
    ):
        raise RegistryError(
            f"Docker config {path} is malformed: auths[{key!r}] is not an object of strings;"
            f" needed for registry {registry}"
        )
    username: str = entry.get("username", "")
    password: str = entry.get("password", "")
    token: str = entry.get("identitytoken", "")
    auth: str = entry.get("auth", "")
    if auth:
        username, password = _decode_auth(auth, path, key, registry)
    if not (username or password or token):
        return None
    return Credentials(
        username=username,
        password=Secret(password) if password else None,
        identity_token=Secret(token) if token else None,
    )


async def resolve_credentials(
    registry: str,
    configured: Mapping[str, Credentials],
    docker_config_dir: Path | None = None,
    *,
    helper_timeout: float = HELPER_TIMEOUT,
) -> Credentials | None:
    """Credentials for ``registry``, or None to push anonymously.

    Precedence: kegpackd's config, then Docker's config.json as the docker CLI
    reads it (``credHelpers``, then ``credsStore``, then ``auths``). A helper that
    is configured is authoritative: if it has nothing, ``auths`` is not consulted,
    just as ``docker push`` would not.
    """
    if registry in configured:
        return configured[registry]
    path = _config_dir(docker_config_dir) / "config.json"
    config = await _load_config(path, registry)
    if config is None:
        return None
    found = _lookup(_section(config, "credHelpers", path, registry), registry)
    helper = found[1] if found is not None else config.get("credsStore")
    if helper is not None and helper != "":
        if not isinstance(helper, str):
            raise RegistryError(
                f"Docker config {path} is malformed: the credential helper name is not a"
                f" string; needed for registry {registry}"
            )
        return await _run_helper(helper, registry, helper_timeout)
    entry = _lookup(_section(config, "auths", path, registry), registry)
    if entry is None:
        return None
    return _from_auths_entry(entry[1], path, entry[0], registry)
