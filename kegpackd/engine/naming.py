"""Image name templates and Docker image references.

Templates and names arrive in container labels, so anyone who can start a
container controls them: they are expanded by a closed, explicit grammar and
validated against distribution/reference's grammar before the engine sees them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from kegpackd.errors import InvalidValueError
from kegpackd.labels import COMPOSE_SERVICE_LABEL

PLACEHOLDERS: tuple[str, ...] = ("name", "id", "service", "date", "time")
_ALLOWED = (
    "allowed placeholders are {name}, {id}, {service}, {date} and {time};"
    " write {{ or }} for a brace"
)
_FIELD_SYNTAX = ".[!:"

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
NAME_TOTAL_LENGTH_MAX = 255
TAG_LENGTH_MAX = 128

# Python's \w and \d are Unicode-aware and `$` accepts a trailing newline, so every
# class below is spelled out in ASCII and only ever used with fullmatch().
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_HOST = re.compile(rf"(?:{_DOMAIN_NAME}|{_IPV6})")
_PORT = re.compile(r"[0-9]+")
_TAG_CHARS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}")
_IDENTIFIER = re.compile(r"[a-f0-9]{64}")
_HEX = re.compile(r"[a-f0-9]+")
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}


@dataclass(frozen=True)
class TemplateContext:
    """What a template may refer to: one container at one moment."""

    name: str
    id: str
    now: datetime
    # The container's com.docker.compose.service label; "" when it has none.
    service: str = ""

    def values(self) -> dict[str, str]:
        """Placeholder values, with the time in UTC so names do not depend on the host's zone."""
        now = self.now.replace(tzinfo=UTC) if self.now.tzinfo is None else self.now
        now = now.astimezone(UTC)
        return {
            "name": self.name.removeprefix("/"),
            "id": self.id[:12],
            "service": self.service,
            "date": now.strftime("%Y%m%d"),
            "time": now.strftime("%H%M%S"),
        }


def _placeholder_error(template: str, source: str, field: str) -> InvalidValueError:
    shown = "{" + field + "}"
    if not field:
        reason = "empty placeholder {}"
    elif any(
        field[len(p) : len(p) + 1] in tuple(_FIELD_SYNTAX)
        for p in PLACEHOLDERS
        if field.startswith(p)
    ):
        reason = (
            f"placeholder {shown} uses an attribute, index, conversion or format spec,"
            " which are not supported"
        )
    else:
        reason = f"unknown placeholder {shown}"
    return InvalidValueError(source, template, f"{reason}; {_ALLOWED}")


def render(template: str, ctx: TemplateContext, source: str) -> str:
    """Expand the five placeholders and nothing else.

    str.format would hand an untrusted template attribute access, indexing and
    unbounded padding; this parser only knows plain names and doubled braces.
    """
    values = ctx.values()
    out: list[str] = []
    i = 0
    n = len(template)
    while i < n:
        c = template[i]
        if c == "{":
            if template.startswith("{", i + 1):
                out.append("{")
                i += 2
                continue
            end = template.find("}", i + 1)
            if end == -1:
                raise InvalidValueError(
                    source, template, f"'{{' at position {i} is never closed; {_ALLOWED}"
                )
            nested = template.find("{", i + 1, end)
            if nested != -1:
                raise InvalidValueError(
                    source, template, f"'{{' inside a placeholder at position {nested}; {_ALLOWED}"
                )
            field = template[i + 1 : end]
            if field not in values:
                raise _placeholder_error(template, source, field)
            if field == "service" and not values[field]:
                raise InvalidValueError(
                    source,
                    template,
                    f"placeholder {{service}} has no value: the container has no"
                    f" {COMPOSE_SERVICE_LABEL} label (Docker Compose sets it)",
                )
            out.append(values[field])
            i = end + 1
        elif c == "}":
            if template.startswith("}", i + 1):
                out.append("}")
                i += 2
                continue
            raise InvalidValueError(
                source, template, f"single '}}' at position {i} closes nothing; {_ALLOWED}"
            )
        else:
            out.append(c)
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Reference:
    """A parsed image reference, with Docker Hub's implicit parts made explicit."""

    registry: str
    path: str
    tag: str | None = None
    digest: str | None = None

    @property
    def repository(self) -> str:
        """Canonical ``registry/path``: unambiguous whatever the engine's defaults are."""
        return f"{self.registry}/{self.path}"

    def familiar_name(self) -> str:
        """The repository as people write it (``nginx``, ``user/app``, ``host:5000/app``)."""
        if self.registry != DEFAULT_DOMAIN:
            return self.repository
        rest = self.path.removeprefix(OFFICIAL_REPO_PREFIX)
        return rest if "/" not in rest else self.path

    def __str__(self) -> str:
        text = self.familiar_name()
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def _check_tag(tag: str, value: str, source: str) -> None:
    if not tag:
        raise InvalidValueError(source, value, "tag is empty")
    if not _TAG_CHARS.fullmatch(tag):
        raise InvalidValueError(
            source,
            value,
            f"tag {tag!r} must start with a letter, digit or '_' and contain only"
            " letters, digits, '_', '.' and '-'",
        )
    if len(tag) > TAG_LENGTH_MAX:
        raise InvalidValueError(source, value, f"tag longer than {TAG_LENGTH_MAX} characters")


def _check_digest(digest: str, value: str, source: str) -> None:
    if not _DIGEST.fullmatch(digest):
        raise InvalidValueError(
            source,
            value,
            f"digest {digest!r} is not of the form algorithm:hex (at least 32 hex digits)",
        )
    algorithm, encoded = digest.split(":", 1)
    expected = _DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        raise InvalidValueError(
            source,
            value,
            f"unsupported digest algorithm {algorithm!r}; use sha256, sha384 or sha512",
        )
    if len(encoded) != expected or not _HEX.fullmatch(encoded):
        raise InvalidValueError(
            source,
            value,
            f"a {algorithm} digest must be {expected} lowercase hex digits",
        )


def _split_domain(name: str) -> tuple[str, str, bool]:
    """Split like distribution's splitDockerDomain; the flag says a domain was written."""
    first, slash, rest = name.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, remainder, explicit = first, rest, True
    else:
        domain, remainder, explicit = DEFAULT_DOMAIN, name, False
    if domain == LEGACY_DEFAULT_DOMAIN:
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder, explicit


def _check_domain(domain: str, value: str, source: str) -> None:
    if domain.startswith("["):
        close = domain.find("]")
        host, port_part = (
            (domain, "") if close == -1 else (domain[: close + 1], domain[close + 1 :])
        )
        if port_part and not port_part.startswith(":"):
            raise InvalidValueError(source, value, f"invalid registry host {domain!r}")
    else:
        host, colon, port = domain.partition(":")
        port_part = colon + port
    if not _HOST.fullmatch(host):
        raise InvalidValueError(
            source,
            value,
            f"invalid registry host {host!r}: expected a host name or an IP address",
        )
    if port_part and not _PORT.fullmatch(port_part[1:]):
        raise InvalidValueError(
            source, value, f"invalid registry port {port_part[1:]!r}: must be digits"
        )


def _check_path(path: str, value: str, source: str) -> None:
    if any("A" <= c <= "Z" for c in path):
        raise InvalidValueError(source, value, "repository name must be lowercase")
    for component in path.split("/"):
        if not component:
            raise InvalidValueError(source, value, "repository path has an empty component")
        if not _PATH_COMPONENT.fullmatch(component):
            raise InvalidValueError(
                source,
                value,
                f"repository path component {component!r} must be lowercase letters and"
                " digits, separated by '.', '_', '__' or '-'",
            )


def parse_reference(text: str, source: str) -> Reference:
    """Parse ``[registry/]path[:tag][@digest]`` as the docker CLI normalises it."""
    if not text:
        raise InvalidValueError(source, text, "image reference is empty")
    if _IDENTIFIER.fullmatch(text):
        raise InvalidValueError(
            source, text, "a 64-character hex string is an image ID, not a repository name"
        )
    name, at, digest = text.partition("@")
    tag: str | None = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    if not name:
        raise InvalidValueError(source, text, "repository name is empty")
    domain, path, explicit = _split_domain(name)
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidValueError(
            source, text, f"repository name longer than {NAME_TOTAL_LENGTH_MAX} characters"
        )
    if explicit:
        _check_domain(domain, text, source)
    _check_path(path, text, source)
    if tag is not None:
        _check_tag(tag, text, source)
    if at:
        _check_digest(digest, text, source)
    return Reference(domain, path, tag, digest if at else None)


def parse_repository(text: str, source: str) -> Reference:
    """Parse a bare repository: tags are configured separately, so one here is a mistake."""
    ref = parse_reference(text, source)
    if ref.tag is not None or ref.digest is not None:
        raise InvalidValueError(
            source, text, "a repository must not include a tag or digest; tags are set separately"
        )
    return ref


def validate_tag(text: str, source: str) -> str:
    """Return ``text`` if Docker accepts it as a tag."""
    _check_tag(text, text, source)
    return text


def validate_registry_host(text: str, source: str) -> str:
    """Return ``text`` if it is a registry host (``host``, ``host:port``, ``[v6]:port``)."""
    if not text or "/" in text:
        raise InvalidValueError(source, text, "expected a registry host such as host:5000")
    _check_domain(text, text, source)
    return text


def repository_rule(text: str, source: str) -> str:
    """The canonical form of an allow-list entry for repositories.

    ``host:5000/apps/`` (a trailing '/') allows every repository below ``apps/``;
    ``host:5000/apps/web`` allows that one repository. Both are canonical
    (``kegpack/`` is ``docker.io/kegpack/``), as ``Reference.repository`` is.
    """
    if not text.endswith("/"):
        return parse_repository(text, source).repository
    # Parsed with two placeholder components, so that "docker.io/" stays the whole
    # registry and "kegpack/" a namespace, not "library/…".
    try:
        probe = parse_repository(text + "x/x", source)
    except InvalidValueError as exc:
        raise InvalidValueError(source, text, exc.reason) from None
    return probe.repository.removesuffix("x/x")


def repository_allowed(repository: Reference, rules: Sequence[str]) -> bool:
    """Whether ``repository`` is one that a canonical rule (``repository_rule``) allows."""
    name = repository.repository
    return any(name.startswith(r) if r.endswith("/") else name == r for r in rules)


@dataclass(frozen=True)
class ImageNames:
    """Where one packaged image goes: one repository under one or more tags."""

    repository: Reference
    tags: tuple[str, ...]

    @property
    def registry(self) -> str:
        return self.repository.registry

    def references(self) -> list[str]:
        """Canonical ``registry/path:tag`` strings, so the engine applies no defaults of its own."""
        return [f"{self.repository.repository}:{tag}" for tag in self.tags]


def resolve_names(
    repository_template: str,
    repository_source: str,
    tag_templates: Sequence[str],
    tags_source: str,
    ctx: TemplateContext,
) -> ImageNames:
    """Render and validate the repository and tags for one container.

    ``{name}`` and ``{service}`` are lowercased in the repository only: container and
    Compose service names may contain uppercase, which repositories refuse and tags accept.
    """
    repo_ctx = dataclasses.replace(ctx, name=ctx.name.lower(), service=ctx.service.lower())
    repository = parse_repository(
        render(repository_template, repo_ctx, repository_source), repository_source
    )
    if not tag_templates:
        raise InvalidValueError(tags_source, ",".join(tag_templates), "at least one tag is needed")
    tags = [validate_tag(render(t, ctx, tags_source), tags_source) for t in tag_templates]
    return ImageNames(repository, tuple(dict.fromkeys(tags)))


def split_list(value: str) -> list[str]:
    """Split a comma-separated label value, ignoring blanks and stray commas."""
    return [item for item in (part.strip() for part in value.split(",")) if item]
