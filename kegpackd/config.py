"""Load and validate kegpackd's TOML config into one frozen object.

Validation happens once, here: every other module receives a ``Config`` it can
trust. Unknown keys and wrong types are errors that name the key, because a
misspelt key silently falling back to a default is the worst kind of bug in a
service that runs unattended.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from kegpackd.archive.ignore import ExcludeRules
from kegpackd.configread import SECRET_LIMIT as SECRET_LIMIT  # noqa: PLC0414 -- re-exported
from kegpackd.configread import Section, quoted, read_secret, show, shown_path
from kegpackd.engine.credentials import Credentials, Secret
from kegpackd.engine.endpoint import Choice, Endpoint, resolve
from kegpackd.engine.naming import (
    TemplateContext,
    repository_rule,
    resolve_names,
    validate_registry_host,
)
from kegpackd.errors import ConfigError, InvalidValueError
from kegpackd.quiesce import DEFAULT_EXEC_TIMEOUT, parse_command, parse_quiesce
from kegpackd.values import MAX_AGE_SECONDS

DEFAULT_CONFIG_PATH = Path("/etc/kegpackd/config.toml")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class DockerConfig:
    """The ``[docker]`` section as written, plus the command line's ``--host``/``--context``.

    Where the engine is, is decided from these and the environment by
    ``endpoint.resolve`` when an engine is opened (see ``DockerConfig.endpoint``).
    """

    host: str | None = None
    context: str | None = None
    # None: DOCKER_TLS_VERIFY and DOCKER_CERT_PATH decide.
    tls_verify: bool | None = None
    cert_path: Path | None = None
    # The command line's choice is not the file's: a SIGHUP reload compares the file only.
    flag_host: str | None = field(default=None, compare=False)
    flag_context: str | None = field(default=None, compare=False)

    def endpoint(self, env: Mapping[str, str] | None = None) -> Endpoint:
        """The engine these settings and ``env`` (default: the process's) choose."""
        choice = Choice(
            flag_host=self.flag_host,
            flag_context=self.flag_context,
            config_host=self.host,
            config_context=self.context,
            tls_verify=self.tls_verify,
            cert_path=self.cert_path,
        )
        return resolve(choice, env)


@dataclass(frozen=True)
class PackagingConfig:
    repository: str = "kegpack/{name}"
    tags: tuple[str, ...] = ("{date}-{time}",)
    push: bool = False
    # The old spelling of quiesce = "pause"; kept equal to it.
    pause: bool = False
    exclude: tuple[str, ...] = ()
    quiesce: str = "none"
    # argv of the commands run in the source before and after the copy; () for none.
    exec_before: tuple[str, ...] = ()
    exec_after: tuple[str, ...] = ()
    exec_timeout: float = DEFAULT_EXEC_TIMEOUT
    concurrency: int = 4
    job_timeout: float = 1800.0
    push_retries: int = 3
    skip_unchanged: bool = False
    # Package on an engine whose archives force every owner to the container user's (Podman).
    allow_forced_owners: bool = False
    # Repackage only what changed in the mounts (a delta layer), see packaging.delta.
    incremental: bool = True
    # Delta layers stacked on a full one before a full layer is written again.
    max_delta_layers: int = 8
    # Changed files fetched one by one through the archive API; more: one filtered re-read.
    # Measured (BENCHMARKS.md): a fetch costs about 32 ms on dockerd 20.10, and reading a
    # 14 000-file mount again 0.65 s; so about 20 fetches pay for a re-read of such a mount.
    delta_fetch_limit: int = 16
    # Repository rules (naming.repository_rule) a job's repository must match; None: any.
    allowed_repositories: tuple[str, ...] | None = None


@dataclass(frozen=True)
class RegistriesConfig:
    # Registry hosts (the whole registry) and repository rules (naming.repository_rule).
    allowed: tuple[str, ...] = ()
    auth: Mapping[str, Credentials] = field(default_factory=dict)


DEFAULT_STATE_DIR = Path("/var/lib/kegpackd")


@dataclass(frozen=True)
class DaemonConfig:
    shutdown_grace: float = 30.0
    state_dir: Path = DEFAULT_STATE_DIR


@dataclass(frozen=True)
class RetentionConfig:
    """Local images kept per source container and repository; None is "no limit"."""

    keep: int | None = None
    max_age: float | None = None

    @property
    def enabled(self) -> bool:
        return self.keep is not None or self.max_age is not None


NOTIFY_ON = ("succeeded", "unchanged", "failed", "cancelled")


@dataclass(frozen=True)
class NotifyConfig:
    webhook_url: str | None = None
    secret: Secret | None = None
    on: tuple[str, ...] = NOTIFY_ON
    timeout: float = 10.0
    retries: int = 3


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    format: Literal["text", "json"] = "text"


DEFAULT_HTTP_LISTEN = "127.0.0.1:9477"


@dataclass(frozen=True)
class HttpConfig:
    listen: str = DEFAULT_HTTP_LISTEN
    token: Secret | None = None
    # Host names (beyond localhost and IP literals) a /v1 request's Host header may carry;
    # any other name is refused, so a DNS-rebound web page cannot reach the API.
    allowed_hosts: tuple[str, ...] = ()

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def loopback(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"


@dataclass(frozen=True)
class Config:
    docker: DockerConfig = field(default_factory=DockerConfig)
    packaging: PackagingConfig = field(default_factory=PackagingConfig)
    registries: RegistriesConfig = field(default_factory=RegistriesConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    log: LogConfig = field(default_factory=LogConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    path: Path | None = None


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _docker(table: object) -> DockerConfig:
    """The section as written: the environment is read when an engine is opened."""
    s = Section("docker", table)
    host = s.string("host")
    context = s.string("context")
    tls_verify = s.boolean("tls_verify")
    cert_path = s.string("cert_path")
    s.finish()
    if host and context:
        raise ConfigError("config keys docker.host and docker.context: set one of them, not both")
    return DockerConfig(
        host=host or None,
        context=context or None,
        tls_verify=tls_verify,
        cert_path=Path(cert_path) if cert_path else None,
    )


def _packaging(table: object) -> PackagingConfig:
    s = Section("packaging", table)
    d = PackagingConfig()
    tags = s.strings("tags")
    if tags is not None and not tags:
        raise ConfigError("config key packaging.tags: needs at least one tag")
    quiesce = _quiesce(s.boolean("pause"), s.string("quiesce"))
    exec_timeout = s.duration("exec_timeout")
    if exec_timeout is not None and exec_timeout <= 0:
        raise ConfigError(
            f"config key packaging.exec_timeout: invalid value {show(exec_timeout)}: "
            "expected a positive number of seconds"
        )
    result = PackagingConfig(
        repository=_pick(s.string("repository"), d.repository),
        tags=_pick(tags, d.tags),
        push=_pick(s.boolean("push"), d.push),
        pause=quiesce == "pause",
        exclude=_pick(s.strings("exclude"), d.exclude),
        quiesce=quiesce,
        exec_before=_command(s.string("exec_before"), "exec_before"),
        exec_after=_command(s.string("exec_after"), "exec_after"),
        exec_timeout=_pick(exec_timeout, d.exec_timeout),
        concurrency=_pick(s.integer("concurrency", 1), d.concurrency),
        job_timeout=_pick(s.duration("job_timeout"), d.job_timeout),
        push_retries=_pick(s.integer("push_retries", 0), d.push_retries),
        skip_unchanged=_pick(s.boolean("skip_unchanged"), d.skip_unchanged),
        allow_forced_owners=_pick(s.boolean("allow_forced_owners"), d.allow_forced_owners),
        incremental=_pick(s.boolean("incremental"), d.incremental),
        max_delta_layers=_pick(s.integer("max_delta_layers", 0), d.max_delta_layers),
        delta_fetch_limit=_pick(s.integer("delta_fetch_limit", 0), d.delta_fetch_limit),
        allowed_repositories=_repository_rules(s.strings("allowed_repositories")),
    )
    s.finish()
    _check_defaults(result)
    return result


def _quiesce(pause: bool | None, quiesce: str | None) -> str:
    """packaging.quiesce, or packaging.pause as its old spelling; both, they must agree
    (pause = false agrees with any mode but "pause")."""
    if quiesce is None:
        return "pause" if pause else "none"
    try:
        mode = parse_quiesce(quiesce, "config key packaging.quiesce")
    except InvalidValueError as exc:
        raise ConfigError(str(exc)) from None
    if pause is not None and pause != (mode == "pause"):
        raise ConfigError(
            f"config keys packaging.quiesce and packaging.pause: they disagree ({mode!r} and "
            f'{str(pause).lower()}); pause is the old spelling of quiesce = "pause": keep one'
        )
    return mode


def _command(text: str | None, key: str) -> tuple[str, ...]:
    if text is None:
        return ()
    try:
        return parse_command(text, f"config key packaging.{key}")
    except InvalidValueError as exc:
        raise ConfigError(str(exc)) from None


def _repository_rules(entries: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """packaging.allowed_repositories, checked; an empty list would refuse every job."""
    key = "config key packaging.allowed_repositories"
    if entries is None:
        return None
    if not entries:
        raise ConfigError(f"{key}: needs at least one entry (leave it out to allow any)")
    for entry in entries:
        try:
            repository_rule(entry, key)
        except InvalidValueError as exc:
            raise ConfigError(
                f"{exc} (a repository such as kegpack/web, or a prefix ending in '/')"
            ) from None
    return entries


def _registry_entries(entries: tuple[str, ...]) -> tuple[str, ...]:
    """registries.allowed, checked: a host (the whole registry) or a repository rule."""
    key = "config key registries.allowed"
    for entry in entries:
        try:
            if "/" in entry:
                repository_rule(entry, key)
            else:
                validate_registry_host(entry, key)
        except InvalidValueError as exc:
            raise ConfigError(
                f"{exc} (a registry host such as registry.example:5000, or a repository"
                " prefix such as registry.example:5000/apps/)"
            ) from None
    return entries


def _check_defaults(packaging: PackagingConfig) -> None:
    """Refuse templates and patterns at load that would otherwise fail every job later."""
    sample = TemplateContext(name="example", id="0" * 64, now=datetime.now(UTC), service="example")
    try:
        resolve_names(
            packaging.repository,
            "config key packaging.repository",
            packaging.tags,
            "config key packaging.tags",
            sample,
        )
        ExcludeRules.parse(packaging.exclude, "config key packaging.exclude")
    except InvalidValueError as exc:
        raise ConfigError(str(exc)) from None


def _registries(table: object, base: Path | None) -> RegistriesConfig:
    s = Section("registries", table)
    allowed = _registry_entries(_pick(s.strings("allowed"), ()))
    auth_table = _pick(s.table("auth"), {})
    s.finish()
    auth: dict[str, Credentials] = {}
    for registry, entry in auth_table.items():
        name = f"registries.auth.{quoted(registry)}"
        a = Section(name, entry)
        username = a.string("username")
        password_file = a.string("password_file")
        a.finish()
        if not username or not password_file:
            raise ConfigError(f"config key {name}: needs both username and password_file")
        auth[registry] = Credentials(
            username=username,
            password=read_secret(password_file, f"{name}.password_file", base),
        )
    return RegistriesConfig(allowed=allowed, auth=auth)


def _daemon(table: object, base: Path | None) -> DaemonConfig:
    s = Section("daemon", table)
    grace = s.duration("shutdown_grace")
    state_dir = s.string("state_dir")
    s.finish()
    if state_dir is not None and not state_dir:
        raise ConfigError("config key daemon.state_dir: must not be empty")
    path = DEFAULT_STATE_DIR if state_dir is None else Path(state_dir)
    if not path.is_absolute() and base is not None:
        path = base / path
    return DaemonConfig(shutdown_grace=_pick(grace, DaemonConfig.shutdown_grace), state_dir=path)


def _retention(table: object) -> RetentionConfig:
    s = Section("retention", table)
    keep = s.integer("keep", 1)
    max_age = s.duration("max_age", MAX_AGE_SECONDS)
    s.finish()
    if max_age == 0:
        raise ConfigError(
            "config key retention.max_age: must be longer than 0 (leave it out for none)"
        )
    return RetentionConfig(keep=keep, max_age=max_age)


def _notify(table: object, base: Path | None) -> NotifyConfig:
    s = Section("notify", table)
    url = s.string("webhook_url")
    secret_file = s.string("secret_file")
    on = s.strings("on")
    timeout = s.duration("timeout")
    retries = s.integer("retries", 0)
    s.finish()
    d = NotifyConfig()
    if url is not None and not re.fullmatch(r"https?://[^\s/?#]+[^\s]*", url):
        raise ConfigError(
            f"config key notify.webhook_url: {url!r} is not an http:// or https:// URL"
        )
    for outcome in on or ():
        if outcome not in NOTIFY_ON:
            raise ConfigError(
                f"config key notify.on: {outcome!r} is not one of {', '.join(NOTIFY_ON)}"
            )
    if secret_file is not None and url is None:
        raise ConfigError("config key notify.secret_file: needs notify.webhook_url")
    if timeout == 0:
        raise ConfigError("config key notify.timeout: must be longer than 0")
    return NotifyConfig(
        webhook_url=url,
        secret=read_secret(secret_file, "notify.secret_file", base) if secret_file else None,
        on=_pick(on, d.on),
        timeout=_pick(timeout, d.timeout),
        retries=_pick(retries, d.retries),
    )


def _log(table: object) -> LogConfig:
    s = Section("log", table)
    level = _pick(s.string("level"), "info").lower()
    fmt = _pick(s.string("format"), "text")
    s.finish()
    if level not in LOG_LEVELS:
        raise ConfigError(f"config key log.level: {level!r} is not one of {', '.join(LOG_LEVELS)}")
    if fmt not in ("text", "json"):
        raise ConfigError(f'config key log.format: {fmt!r} is not "text" or "json"')
    return LogConfig(level=level, format=fmt)


def _http(table: object, base: Path | None) -> HttpConfig:
    s = Section("http", table)
    listen = _pick(s.string("listen"), DEFAULT_HTTP_LISTEN)
    token_file = s.string("token_file")
    allowed_hosts = tuple(_host_name(name) for name in s.strings("allowed_hosts") or ())
    s.finish()
    host, _, port = listen.rpartition(":")
    # isdigit() alone accepts '²' and 5000-digit strings, which int() refuses.
    if not host or not (port.isascii() and port.isdigit() and len(port) <= 5):
        raise ConfigError(f"config key http.listen: {listen!r} is not HOST:PORT")
    if not 0 < int(port) < 65536:
        raise ConfigError(f"config key http.listen: {listen!r} is not HOST:PORT")
    token = read_secret(token_file, "http.token_file", base) if token_file else None
    http = HttpConfig(listen=listen, token=token, allowed_hosts=allowed_hosts)
    if not http.loopback and token is None:
        raise ConfigError(
            f"config key http.listen: {listen!r} is not loopback, which needs http.token_file"
        )
    return http


_HOST_NAME = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*")


def _host_name(name: str) -> str:
    """An ``http.allowed_hosts`` entry: a DNS name, compared lower-case, without a port."""
    lowered = name.lower()
    if not (lowered.isascii() and len(lowered) <= 253 and _HOST_NAME.fullmatch(lowered)):
        raise ConfigError(
            f"config key http.allowed_hosts: {name!r} is not a host name (no port, no scheme)"
        )
    return lowered


def parse_config(
    data: Mapping[str, Any], path: Path | None = None, env: Mapping[str, str] | None = None
) -> Config:
    """Validate an already-parsed TOML document.

    ``env`` is no longer read here: the environment's say on where the engine is comes in
    when an engine is opened (``DockerConfig.endpoint``), after the command line's.
    """
    del env
    root = Section("", dict(data))
    base = path.parent if path is not None else None
    config = Config(
        docker=_docker(_pick(root.table("docker"), {})),
        packaging=_packaging(_pick(root.table("packaging"), {})),
        registries=_registries(_pick(root.table("registries"), {}), base),
        daemon=_daemon(_pick(root.table("daemon"), {}), base),
        log=_log(_pick(root.table("log"), {})),
        http=_http(_pick(root.table("http"), {}), base),
        retention=_retention(_pick(root.table("retention"), {})),
        notify=_notify(_pick(root.table("notify"), {}), base),
        path=path,
    )
    root.finish()
    return config


def load_config(path: Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load ``path``; with no path, the default file when present, else the defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return parse_config({}, None, env)
        path = DEFAULT_CONFIG_PATH
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"config {shown_path(path)}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except RecursionError:
        raise ConfigError(
            f"config {shown_path(path)}: not valid TOML: values nested too deeply"
        ) from None
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError, an integer too long to read
        raise ConfigError(f"config {shown_path(path)}: not valid TOML: {exc}") from None
    try:
        return parse_config(data, path, env)
    except ConfigError as exc:
        raise ConfigError(f"{shown_path(path)}: {exc}") from None
