"""The Compose file that runs a packaged project: every service on its packaged image.

Compose knew which containers belong together and how each one runs; this writes that
back down, from what the engine says of each source container, with the mounts whose
content is now in the image left out. Pure: no engine, no files.

The values come from labels and from whoever started the containers, so they are never
formatted into text: the document is built as data, written by PyYAML with every string
that is not plainly a word double-quoted (so YAML 1.1 readers, docker-compose 1.x, and
YAML 1.2 ones, Compose v2, read the same strings), and with ``$`` doubled, since Compose
interpolates ``$VAR`` in every value. The comments on the mounts that stay are placed
from the written file's own parse and checked by loading the result again.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kegpackd.engine.models import ContainerInfo, Mount
from kegpackd.errors import InvalidValueError, PackagingError
from kegpackd.labels import (
    COMPOSE_LABEL_PREFIX,
    COMPOSE_SERVICE_LABEL,
    DEPENDS_ON_LABEL,
    LABEL_PREFIX,
    ORIGINAL_SERVICE_LABEL,
)
from kegpackd.packaging.mounts import is_within

DEPENDS_ON_CONDITIONS = ("service_started", "service_healthy", "service_completed_successfully")
_SERVICE_KEY = re.compile(r"[a-zA-Z0-9._-]+")
_NOT_IN_KEY = re.compile(r"[^a-zA-Z0-9._-]+")
# Docker names an anonymous volume by 64 hex digits.
_ANONYMOUS_VOLUME = re.compile(r"[0-9a-f]{64}")
# Strings left to PyYAML's plain style: they cannot be a number, a date or a null in
# either YAML version (PyYAML still quotes the booleans of 1.1 and anything it must).
PLAIN_STRING = re.compile(r"[A-Za-z_/][A-Za-z0-9_./@:+=,-]*")
_DURATION_UNITS = (
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
)


@dataclass(frozen=True)
class PackagedService:
    """One source container of the project and the image it was packaged into."""

    info: ContainerInfo
    # The packaged image: ``repo:tag``, or ``repo:tag@sha256:…`` once pushed.
    reference: str
    # Destinations of the mounts whose content is in the image.
    packaged: frozenset[str]
    # The source image's config: what equals it is the image's default, not written.
    image_config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Note:
    """A comment to place before one item of a service's ``volumes``."""

    service: str
    index: int
    text: str


def service_name(info: ContainerInfo) -> str:
    """The Compose service a container belongs to, from the label Compose sets."""
    name = info.labels.get(COMPOSE_SERVICE_LABEL, "")
    if not name:
        raise PackagingError(
            f"container {info.name} has no {COMPOSE_SERVICE_LABEL} label:"
            " Docker Compose did not start it"
        )
    return name


def service_key(name: str) -> str:
    """The key of service ``name`` in the file: ``name`` itself when Compose accepts it.

    Compose keys must match ``[a-zA-Z0-9._-]+``; the Compose CLI refuses others, so such a
    name comes from a hand-set label. Its image was packaged as well as any other, so
    rather than fail the whole file it gets a key of its own: the name's runs of other
    characters become ``_``, and 8 hex digits of its SHA-256 follow, so that two names
    never share a key. The name itself stays in the label ``kegpack.source.service``.
    """
    if _SERVICE_KEY.fullmatch(name):
        return name
    readable = _NOT_IN_KEY.sub("_", name).strip("_") or "service"
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def compose_duration(nanoseconds: int) -> str:
    """Nanoseconds as a Go duration (``1m30s``), which every Compose version parses."""
    if nanoseconds <= 0:
        return "0s"
    parts = []
    rest = nanoseconds
    for unit, size in _DURATION_UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def escape_interpolation(value: Any) -> Any:
    """Every string in ``value`` with ``$`` doubled: Compose reads ``$$`` as one ``$``."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [escape_interpolation(v) for v in value]
    if isinstance(value, dict):
        return {k: escape_interpolation(v) for k, v in value.items()}
    return value


def compose_document(project: str, services: Sequence[PackagedService]) -> dict[str, Any]:
    """The Compose file's content, as data (the form ``yaml.safe_load`` gives back)."""
    document, _notes = document_and_notes(project, services)
    return document


# ---------------------------------------------------------------- the document


def document_and_notes(
    project: str, services: Sequence[PackagedService]
) -> tuple[dict[str, Any], list[Note]]:
    keys: dict[str, str] = {}
    by_id: dict[str, str] = {}
    for service in services:
        name = service_name(service.info)
        key = service_key(name)
        if key in keys.values() or name in keys:
            raise InvalidValueError(
                f"label {COMPOSE_SERVICE_LABEL} of container {service.info.name}",
                name,
                "another container of the project is the same service; package one of them",
            )
        keys[name] = key
        by_id[service.info.id] = key
        by_id[service.info.name] = key
    rendered: dict[str, Any] = {}
    notes: list[Note] = []
    volumes: dict[str, Any] = {}
    networks: dict[str, Any] = {}
    for service in services:
        name = service_name(service.info)
        key = keys[name]
        body = _service(project, service, name, key, keys, by_id, volumes, networks)
        for index, text in body.pop("_notes"):
            notes.append(Note(key, index, text))
        rendered[key] = body
    document: dict[str, Any] = {"services": rendered}
    if volumes:
        document["volumes"] = volumes
    if networks:
        document["networks"] = networks
    return escape_interpolation(document), notes


def _service(
    project: str,
    service: PackagedService,
    name: str,
    key: str,
    keys: Mapping[str, str],
    by_id: Mapping[str, str],
    volumes: dict[str, Any],
    networks: dict[str, Any],
) -> dict[str, Any]:
    info, image = service.info, service.image_config
    config, host = info.config, info.host_config
    body: dict[str, Any] = {"image": service.reference}

    def differs(config_key: str) -> Any:
        """The container's value, when it is set and not the image's own."""
        value = config.get(config_key)
        return value if value and value != image.get(config_key) else None

    for compose_key, config_key in (
        ("command", "Cmd"),
        ("entrypoint", "Entrypoint"),
        ("working_dir", "WorkingDir"),
        ("user", "User"),
    ):
        value = differs(config_key)
        if value:
            body[compose_key] = list(value) if isinstance(value, list) else value
    image_env = set(image.get("Env") or ())
    environment = [e for e in config.get("Env") or () if e not in image_env]
    if environment:
        body["environment"] = environment
    labels = _labels(info, image)
    if key != name:
        labels[ORIGINAL_SERVICE_LABEL] = name
    if labels:
        body["labels"] = labels
    bindings: Mapping[str, Any] = host.get("PortBindings") or {}
    ports = _ports(bindings)
    if ports:
        body["ports"] = ports
    image_exposed = set(image.get("ExposedPorts") or ())
    expose = [
        _short_port(p)
        for p in sorted(config.get("ExposedPorts") or ())
        if p not in image_exposed and p not in bindings
    ]
    if expose:
        body["expose"] = expose
    restart = _restart(host.get("RestartPolicy") or {})
    if restart:
        body["restart"] = restart
    healthcheck = differs("Healthcheck")
    if healthcheck:
        body["healthcheck"] = _healthcheck(healthcheck)
    stop_signal = differs("StopSignal")
    if stop_signal:
        body["stop_signal"] = stop_signal
    tmpfs = [
        f"{path}:{options}" if options else path
        for path, options in sorted((host.get("Tmpfs") or {}).items())
    ]
    tmpfs += [m.destination for m in info.mounts if m.type == "tmpfs" and m.destination]
    if tmpfs:
        body["tmpfs"] = list(dict.fromkeys(tmpfs))
    body.update(_networking(project, info, name, by_id, networks))
    kept, notes = _kept_mounts(project, service, volumes)
    if kept:
        body["volumes"] = kept
    depends_on = _depends_on(info, keys, implied=_network_service(body))
    if depends_on:
        body["depends_on"] = depends_on
    body["_notes"] = notes
    return body


def _labels(info: ContainerInfo, image: Mapping[str, Any]) -> dict[str, str]:
    image_labels: Mapping[str, str] = image.get("Labels") or {}
    return {
        k: v
        for k, v in sorted(info.labels.items())
        if not k.startswith((LABEL_PREFIX, COMPOSE_LABEL_PREFIX)) and image_labels.get(k) != v
    }


def _short_port(port: str) -> str:
    """``8080/tcp`` as Compose writes it (``8080``); another protocol stays (``53/udp``)."""
    return port.removesuffix("/tcp")


def _ports(bindings: Mapping[str, Any]) -> list[str]:
    """HostConfig.PortBindings in Compose's short syntax, the one every version reads."""
    ports = []
    for container_port, hosts in sorted(bindings.items()):
        number, _, protocol = container_port.partition("/")
        suffix = "" if protocol in ("", "tcp") else f"/{protocol}"
        for binding in hosts or [{}]:
            host_ip = str(binding.get("HostIp") or "")
            host_port = str(binding.get("HostPort") or "")
            if ":" in host_ip:
                host_ip = f"[{host_ip}]"
            if host_ip in ("0.0.0.0", "[::]"):
                host_ip = ""
            if host_ip:
                ports.append(f"{host_ip}:{host_port}:{number}{suffix}")
            elif host_port:
                ports.append(f"{host_port}:{number}{suffix}")
            else:
                ports.append(f"{number}{suffix}")
    return list(dict.fromkeys(ports))


def _restart(policy: Mapping[str, Any]) -> str:
    name = str(policy.get("Name") or "")
    if name in ("", "no"):
        return ""
    retries = int(policy.get("MaximumRetryCount") or 0)
    return f"{name}:{retries}" if name == "on-failure" and retries else name


def _healthcheck(check: Mapping[str, Any]) -> dict[str, Any]:
    """Docker's healthcheck (nanoseconds) as Compose's (duration strings)."""
    test = list(check.get("Test") or ())
    if test == ["NONE"]:
        return {"disable": True}
    out: dict[str, Any] = {}
    if test:
        out["test"] = test
    for compose_key, docker_key in (
        ("interval", "Interval"),
        ("timeout", "Timeout"),
        ("start_period", "StartPeriod"),
    ):
        nanoseconds = int(check.get(docker_key) or 0)
        if nanoseconds > 0:
            out[compose_key] = compose_duration(nanoseconds)
    retries = int(check.get("Retries") or 0)
    if retries > 0:
        out["retries"] = retries
    return out


def _networking(
    project: str,
    info: ContainerInfo,
    name: str,
    by_id: Mapping[str, str],
    networks: dict[str, Any],
) -> dict[str, Any]:
    """``network_mode``, or the project's networks (declared at the top level)."""
    mode = _network_mode(str(info.host_config.get("NetworkMode") or ""), by_id)
    if mode is not None:
        return {"network_mode": mode}
    attached: dict[str, Any] = {}
    own = {name, info.id[:12], info.name}
    for network, settings in sorted(info.networks.items()):
        aliases = [a for a in (settings or {}).get("Aliases") or () if a not in own]
        key = _declare(project, network, networks, network=True)
        attached[key] = {"aliases": aliases} if aliases else None
    if attached == {"default": None}:
        return {}  # the project's default network, which Compose makes on its own
    if all(v is None for v in attached.values()):
        return {"networks": list(attached)}
    return {"networks": attached}


def _network_mode(mode: str, by_id: Mapping[str, str]) -> str | None:
    """The ``network_mode`` to write; None for a container on networks of its own."""
    if mode in ("none", "host"):
        return mode
    if mode in ("bridge", "default"):
        return "bridge"
    if mode.startswith("container:"):
        target = by_id.get(mode.removeprefix("container:"))
        # Compose v1 writes a service's container by id; another container stays named.
        return mode if target is None else f"service:{target}"
    return None


def _declare(project: str, name: str, table: dict[str, Any], *, network: bool = False) -> str:
    """The key of volume or network ``name`` in ``table``, declared there if needed.

    One the project made (``<project>_<key>``) is declared plainly: Compose makes it anew,
    under the new project's name. Any other, external or named in the file, is something
    the environment provides: declared external, so Compose says when it is missing rather
    than make an empty one. The project's ``default`` network is implicit.
    """
    key = name.removeprefix(f"{project}_")
    if key != name and _SERVICE_KEY.fullmatch(key):
        if network and key == "default":
            return key
        definition: dict[str, Any] | None = None
    else:
        key = service_key(name)
        definition = {"name": name, "external": True}
    if key in table and table[key] != definition:
        key = f"{key}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    table.setdefault(key, definition)
    return key


def _kept_mounts(
    project: str, service: PackagedService, volumes: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """The mounts whose content is not in the image, each with the comment that says so."""
    kept: list[dict[str, Any]] = []
    notes: list[tuple[int, str]] = []
    for mount in sorted(service.info.mounts, key=lambda m: m.destination):
        if mount.type not in ("bind", "volume") or _packaged(mount, service.packaged):
            continue
        entry: dict[str, Any] = {"type": mount.type}
        if mount.type == "bind":
            entry["source"] = mount.source
            what = f"bind mount of {mount.source}"
        elif mount.name and not _ANONYMOUS_VOLUME.fullmatch(mount.name):
            entry["source"] = _declare(project, mount.name, volumes)
            what = f"volume {mount.name}"
        else:
            what = "anonymous volume"
        entry["target"] = mount.destination
        if not mount.rw:
            entry["read_only"] = True
        notes.append((len(kept), f"not packaged: {what} at {mount.destination}"))
        kept.append(entry)
    return kept, notes


def _packaged(mount: Mount, packaged: frozenset[str]) -> bool:
    """Whether a mount's content is in the image: it or a mount it is inside was copied."""
    destination = posixpath.normpath(mount.destination)
    return any(is_within(destination, posixpath.normpath(p)) for p in packaged)


def _network_service(body: Mapping[str, Any]) -> str | None:
    """The service whose network ``network_mode: service:NAME`` shares, if any."""
    mode = str(body.get("network_mode") or "")
    return mode.removeprefix("service:") if mode.startswith("service:") else None


def _depends_on(
    info: ContainerInfo, keys: Mapping[str, str], *, implied: str | None = None
) -> dict[str, Any]:
    """``svc:condition[:restart]`` entries of the label Compose v2 writes, long syntax.

    A dependency on a service that is not in the file (left out by ``--partial``) is
    dropped: Compose refuses a file that depends on a service it does not define.
    So is the one Compose v2 adds on its own for ``network_mode: service:NAME``
    (``NAME:service_started:true``, service ``implied``): the written ``network_mode``
    makes v2 add it again, and written out its ``restart`` is a key Compose v1 refuses.
    """
    value = info.labels.get(DEPENDS_ON_LABEL, "")
    source = f"label {DEPENDS_ON_LABEL} of container {info.name}"
    out: dict[str, Any] = {}
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        parts = entry.split(":")
        if len(parts) > 3 or not parts[0]:
            raise InvalidValueError(source, value, f"{entry!r} is not service:condition:restart")
        condition = parts[1] if len(parts) > 1 and parts[1] else "service_started"
        if condition not in DEPENDS_ON_CONDITIONS:
            raise InvalidValueError(
                source,
                value,
                f"unknown condition {condition!r}; expected {', '.join(DEPENDS_ON_CONDITIONS)}",
            )
        restart = parts[2] if len(parts) > 2 else "false"
        if restart not in ("true", "false"):
            raise InvalidValueError(source, value, f"restart {restart!r} is not true or false")
        target = keys.get(parts[0])
        implicit = target == implied and f"{condition}:{restart}" == "service_started:true"
        if target is None or implicit:
            continue
        out[target] = {"condition": condition}
        if restart == "true":
            # Compose v2.17 and later only; only Compose v2 writes the label.
            out[target]["restart"] = True
    return out
