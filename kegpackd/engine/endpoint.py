"""Where the Docker engine is: the one answer, chosen as the docker CLI chooses it.

The order, first match wins:

1. ``--context NAME`` or ``-H/--host URL`` on the command line (not both);
2. ``[docker] context`` or ``[docker] host`` in kegpackd's config file: kegpackd's own
   written-down choice, so an ambient variable of whoever starts the daemon cannot move
   it to another engine (and so configs written before contexts keep their meaning);
3. ``DOCKER_HOST``;
4. ``DOCKER_CONTEXT``;
5. ``currentContext`` in ``$DOCKER_CONFIG/config.json`` (default ``~/.docker``);
6. the default socket, ``unix:///var/run/docker.sock``.

A context is read from the docker CLI's own store: ``contexts/meta/<sha256 of the
name>/meta.json`` (``Endpoints.docker.Host``, ``SkipTLSVerify``) and
``contexts/tls/<sha256>/docker/{ca,cert,key}.pem``. The context ``default`` is the
docker CLI's built-in one: ``DOCKER_HOST`` or the default socket. aiodocker reads contexts
too, but ranks ``currentContext`` above ``DOCKER_HOST`` and ignores ``DOCKER_CONFIG``,
so kegpackd resolves and hands aiodocker a URL.

``DOCKER_TLS_VERIFY``, ``DOCKER_CERT_PATH`` and the config's ``tls_verify`` and
``cert_path`` apply to a host given by flag, config or ``DOCKER_HOST``, never to a named
context, which carries its own TLS files (as with the docker CLI).

Only reads files; imports nothing of kegpackd's but ``errors``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kegpackd.errors import EngineUnreachable

DEFAULT_HOST = "unix:///var/run/docker.sock"
DEFAULT_CONTEXT = "default"
# meta.json and config.json are small documents; a bigger one is not what we look for.
_FILE_LIMIT = 1024 * 1024


class SourceKind(enum.Enum):
    """What chose the engine; ``Source.describe()`` words it for messages."""

    FLAG = "flag"
    CONFIG = "config"
    DOCKER_HOST = "DOCKER_HOST"
    DOCKER_CONTEXT = "DOCKER_CONTEXT"
    CURRENT_CONTEXT = "currentContext"
    DEFAULT = "default"
    # A host handed to Engine.open directly by code (tests, tools), not by the user.
    GIVEN = "given"


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    # The setting that chose: "--host", "config key docker.context", a config.json path.
    setting: str = ""
    context: str | None = None

    def describe(self) -> str:
        """``from DOCKER_HOST``, ``context "work" from DOCKER_CONTEXT``, ``the default``."""
        if self.kind is SourceKind.DEFAULT:
            return "the default: no flag, config key, DOCKER_HOST or context chose one"
        if self.kind is SourceKind.GIVEN:
            return "given by the caller"
        origin = f"from {self.setting or self.kind.value}"
        return f"context {json.dumps(self.context)} {origin}" if self.context else origin


@dataclass(frozen=True)
class TLSFiles:
    """The client side of a TLS connection: verify the engine or not, and the files."""

    verify: bool
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


@dataclass(frozen=True)
class Endpoint:
    """One engine address, how to talk TLS to it, and what chose it (for every message)."""

    host: str
    source: Source
    tls: TLSFiles | None = None

    @property
    def url(self) -> str:
        """The URL aiodocker is given: ``tcp://`` is HTTP, or HTTPS when TLS is on."""
        if self.host.startswith("tcp://"):
            scheme = "https://" if self.tls is not None else "http://"
            return scheme + self.host[len("tcp://") :]
        return self.host

    @property
    def where(self) -> str:
        """The address and its source, as every engine error names the engine."""
        return f"{self.host} ({self.source.describe()})"

    @classmethod
    def given(cls, host: str) -> Endpoint:
        return cls(host, Source(SourceKind.GIVEN))


@dataclass(frozen=True)
class Choice:
    """What the command line and the config file ask for (each at most one of the two)."""

    flag_host: str | None = None
    flag_context: str | None = None
    config_host: str | None = None
    config_context: str | None = None
    # The config's [docker] tls_verify and cert_path; None: the environment's.
    tls_verify: bool | None = None
    cert_path: Path | None = None


def docker_config_dir(env: Mapping[str, str]) -> Path:
    """``$DOCKER_CONFIG``, else ``~/.docker``, as the docker CLI finds its config."""
    configured = env.get("DOCKER_CONFIG")
    if configured:
        return Path(configured)
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".docker"


def resolve(choice: Choice, env: Mapping[str, str] | None = None) -> Endpoint:
    """The engine to use, and what chose it: see the module's docstring for the order."""
    env = os.environ if env is None else env
    if choice.flag_context:
        return _context(choice.flag_context, Source(SourceKind.FLAG, "--context"), choice, env)
    if choice.flag_host:
        return _host(choice.flag_host, Source(SourceKind.FLAG, "--host"), choice, env)
    if choice.config_context:
        source = Source(SourceKind.CONFIG, "config key docker.context")
        return _context(choice.config_context, source, choice, env)
    if choice.config_host:
        return _host(
            choice.config_host, Source(SourceKind.CONFIG, "config key docker.host"), choice, env
        )
    return _from_environment(choice, env)


def _from_environment(choice: Choice, env: Mapping[str, str]) -> Endpoint:
    """``DOCKER_HOST``, then ``DOCKER_CONTEXT``, then ``currentContext``, then the default."""
    if env.get("DOCKER_HOST"):
        return _host(env["DOCKER_HOST"], Source(SourceKind.DOCKER_HOST), choice, env)
    if env.get("DOCKER_CONTEXT"):
        return _context(env["DOCKER_CONTEXT"], Source(SourceKind.DOCKER_CONTEXT), choice, env)
    config_file = docker_config_dir(env) / "config.json"
    current = _current_context(config_file)
    if current:
        source = Source(SourceKind.CURRENT_CONTEXT, f"currentContext in {config_file}")
        return _context(current, source, choice, env)
    return _host(DEFAULT_HOST, Source(SourceKind.DEFAULT), choice, env)


def _host(host: str, source: Source, choice: Choice, env: Mapping[str, str]) -> Endpoint:
    """A host given as such: TLS as ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH`` (or the
    config's keys) say, for a TCP or HTTPS address only."""
    env_verify = env.get("DOCKER_TLS_VERIFY", "") not in ("", "0")
    verify = env_verify if choice.tls_verify is None else choice.tls_verify
    env_certs = env.get("DOCKER_CERT_PATH")
    cert_path = choice.cert_path or (Path(env_certs) if env_certs else None)
    if not host.startswith(("tcp://", "https://")) or (not verify and cert_path is None):
        return Endpoint(host, source)
    certs = cert_path or docker_config_dir(env)
    cert = certs / "cert.pem"
    has_cert = cert.exists()
    tls = TLSFiles(
        verify=verify,
        ca=certs / "ca.pem" if verify else None,
        cert=cert if has_cert else None,
        key=certs / "key.pem" if has_cert else None,
    )
    return Endpoint(host, source, tls)


def context_dirs(name: str, env: Mapping[str, str]) -> tuple[Path, Path]:
    """The docker CLI's directories of context ``name``: its metadata and its TLS files."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    store = docker_config_dir(env) / "contexts"
    return store / "meta" / digest, store / "tls" / digest / "docker"


def _context(name: str, source: Source, choice: Choice, env: Mapping[str, str]) -> Endpoint:
    """The docker endpoint of context ``name``, read from the docker CLI's store."""
    chosen = Source(source.kind, source.setting, name)
    if name == DEFAULT_CONTEXT:
        host = env.get("DOCKER_HOST") or DEFAULT_HOST
        return _host(host, chosen, choice, env)
    meta_dir, tls_dir = context_dirs(name, env)
    meta_file = meta_dir / "meta.json"
    if not meta_file.exists():
        raise EngineUnreachable(
            f"{chosen.describe()}: no such context (no {meta_file}; `docker context ls` "
            "lists the contexts)"
        )
    host, skip_verify = _docker_endpoint(_read_json(meta_file, chosen), meta_file, chosen)
    return Endpoint(host, chosen, _context_tls(tls_dir, skip_verify, chosen))


def _docker_endpoint(meta: Any, meta_file: Path, source: Source) -> tuple[str, bool]:
    """``Endpoints.docker.Host`` and ``SkipTLSVerify`` of a context's meta.json."""
    endpoints = meta.get("Endpoints") if isinstance(meta, dict) else None
    docker = endpoints.get("docker") if isinstance(endpoints, dict) else None
    host = docker.get("Host") if isinstance(docker, dict) else None
    if not isinstance(docker, dict) or not isinstance(host, str) or not host:
        raise EngineUnreachable(
            f"{source.describe()}: {meta_file} has no docker endpoint (Endpoints.docker.Host)"
        )
    skip = docker.get("SkipTLSVerify", False)
    if not isinstance(skip, bool):
        raise EngineUnreachable(
            f"{source.describe()}: {meta_file}: Endpoints.docker.SkipTLSVerify is "
            f"{json.dumps(skip)[:50]}, not true or false"
        )
    return host, skip


def _context_tls(tls_dir: Path, skip_verify: bool, source: Source) -> TLSFiles | None:
    """The context's TLS files; none and no ``SkipTLSVerify``: no TLS, as the docker CLI."""
    ca, cert, key = (tls_dir / f"{part}.pem" for part in ("ca", "cert", "key"))
    present = {path: path.exists() for path in (ca, cert, key)}
    if not any(present.values()) and not skip_verify:
        return None
    if present[cert] != present[key]:
        missing = key if present[cert] else cert
        raise EngineUnreachable(
            f"{source.describe()}: {missing} is missing (cert.pem and key.pem go together)"
        )
    return TLSFiles(
        verify=not skip_verify,
        ca=ca if present[ca] else None,
        cert=cert if present[cert] else None,
        key=key if present[key] else None,
    )


def _current_context(config_file: Path) -> str | None:
    """``currentContext`` of the docker CLI's config.json, if it has one."""
    if not config_file.exists():
        return None
    source = Source(SourceKind.CURRENT_CONTEXT, str(config_file))
    data = _read_json(config_file, source)
    current = data.get("currentContext") if isinstance(data, dict) else None
    if current is not None and not isinstance(current, str):
        raise EngineUnreachable(f"{config_file}: currentContext is not a string")
    return current or None


def _read_json(path: Path, source: Source) -> Any:
    """A small JSON document of the docker CLI's, or an error naming it and its source."""
    try:
        with path.open("rb") as handle:
            raw = handle.read(_FILE_LIMIT + 1)
    except OSError as exc:
        raise EngineUnreachable(
            f"{source.describe()}: cannot read {path}: {exc.strerror}"
        ) from None
    if len(raw) > _FILE_LIMIT:
        raise EngineUnreachable(f"{source.describe()}: {path} is over {_FILE_LIMIT} bytes")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise EngineUnreachable(f"{source.describe()}: {path} is not valid JSON: {exc}") from None
