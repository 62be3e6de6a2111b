"""Tests for image name templates and Docker reference parsing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kegpackd.engine.naming import (
    ImageNames,
    Reference,
    TemplateContext,
    parse_reference,
    parse_repository,
    render,
    repository_allowed,
    repository_rule,
    resolve_names,
    split_list,
    validate_tag,
)
from kegpackd.errors import InvalidValueError
from tests.valuetools import outcome

CONTAINER_ID = "0123456789ab" + "c" * 52
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
CTX = TemplateContext(name="MyApp", id=CONTAINER_ID, now=NOW)
SRC = "label kegpack.tags"
DIGEST = "sha256:" + "a" * 64


def render_error(template: str) -> InvalidValueError:
    with pytest.raises(InvalidValueError) as info:
        render(template, CTX, SRC)
    return info.value


def parse_error(text: str, source: str = "--repository") -> InvalidValueError:
    with pytest.raises(InvalidValueError) as info:
        parse_reference(text, source)
    return info.value


# --- render -------------------------------------------------------------------


def test_render_name_placeholder() -> None:
    """{name} expands to the container name as is."""
    assert render("{name}", CTX, SRC) == "MyApp"


def test_render_id_placeholder_is_short_id() -> None:
    """{id} expands to the first 12 hex characters of the id."""
    assert render("{id}", CTX, SRC) == "0123456789ab"


def test_render_date_placeholder() -> None:
    """{date} expands to YYYYMMDD."""
    assert render("{date}", CTX, SRC) == "20240506"


def test_render_time_placeholder() -> None:
    """{time} expands to HHMMSS."""
    assert render("{time}", CTX, SRC) == "070809"


def test_render_date_and_time_are_utc() -> None:
    """An aware non-UTC `now` is converted to UTC before formatting."""
    local = datetime(2024, 5, 6, 1, 30, 0, tzinfo=timezone(timedelta(hours=3)))
    ctx = TemplateContext(name="a", id=CONTAINER_ID, now=local)
    assert render("{date}-{time}", ctx, SRC) == "20240505-223000"


def test_render_naive_now_is_taken_as_utc() -> None:
    """A naive `now` is read as UTC rather than as the host's local time."""
    ctx = TemplateContext(name="a", id=CONTAINER_ID, now=datetime(2024, 1, 2, 3, 4, 5))
    assert render("{date}{time}", ctx, SRC) == "20240102030405"


def test_render_strips_leading_slash_from_name() -> None:
    """A Docker API name like '/web' renders without its slash."""
    ctx = TemplateContext(name="/web", id=CONTAINER_ID, now=NOW)
    assert render("{name}", ctx, SRC) == "web"


def test_render_combines_placeholders_and_text() -> None:
    """Placeholders expand in place among literal text."""
    assert render("app-{name}-{date}.{time}", CTX, SRC) == "app-MyApp-20240506.070809"


def test_render_doubled_braces_are_literal() -> None:
    """{{ and }} produce single literal braces."""
    assert render("{{name}}", CTX, SRC) == "{name}"


def test_render_plain_text_unchanged() -> None:
    """A template without braces is returned unchanged."""
    assert render("latest", CTX, SRC) == "latest"


def test_render_refuses_empty_placeholder() -> None:
    """{} is refused as an empty placeholder."""
    assert "empty placeholder" in str(render_error("{}"))


def test_render_refuses_positional_placeholder() -> None:
    """{0} is refused as unknown."""
    assert "unknown placeholder {0}" in str(render_error("{0}"))


def test_render_refuses_unknown_name() -> None:
    """A name outside the four placeholders is refused."""
    assert "unknown placeholder {image}" in str(render_error("{image}"))


@pytest.mark.parametrize(
    "template", ["{name.__class__}", "{name[0]}", "{name!r}", "{name:>300}", "{id.__len__}"]
)
def test_render_refuses_format_tricks(template: str) -> None:
    """Attribute access, indexing, conversions and format specs are refused."""
    assert "attribute, index, conversion or format spec" in str(render_error(template))


def test_render_refuses_unclosed_brace() -> None:
    """An opening brace without a closing one is refused."""
    assert "never closed" in str(render_error("v-{name"))


def test_render_refuses_lone_closing_brace() -> None:
    """A closing brace that closes nothing is refused."""
    assert "closes nothing" in str(render_error("v}1"))


def test_render_refuses_nested_brace() -> None:
    """A brace inside a placeholder is refused."""
    assert "inside a placeholder" in str(render_error("{na{me}"))


def test_render_error_lists_allowed_placeholders() -> None:
    """Every template error tells the user what is allowed."""
    assert "{name}, {id}, {service}, {date} and {time}" in str(render_error("{x}"))


def test_render_error_names_source_and_template() -> None:
    """The error names where the template came from and repeats it."""
    err = render_error("{x}")
    assert err.source == SRC
    assert err.value == "{x}"
    assert str(err).startswith("label kegpack.tags: invalid value '{x}': ")


@given(template=st.text(), source=st.text())
def test_render_arbitrary_text_gives_value_or_invalid_value(template: str, source: str) -> None:
    """Any template renders to a string or raises InvalidValueError, nothing else."""
    result = outcome(lambda: render(template, CTX, source))
    assert isinstance(result, str) or result.source == source


@given(template=st.text(alphabet="{}nameidt:!.[0]", max_size=20))
def test_render_brace_heavy_text_gives_value_or_invalid_value(template: str) -> None:
    """Brace-dense templates render or raise InvalidValueError, nothing else."""
    result = outcome(lambda: render(template, CTX, SRC))
    assert isinstance(result, str | InvalidValueError)


# --- parse_reference ----------------------------------------------------------


def test_parse_official_image_gets_library_prefix() -> None:
    """A single-component name lives under docker.io/library."""
    ref = parse_reference("nginx", "--repository")
    assert ref == Reference("docker.io", "library/nginx", None, None)
    assert ref.repository == "docker.io/library/nginx"
    assert str(ref) == "nginx"


def test_parse_user_repository_on_docker_hub() -> None:
    """A two-component name without a domain is a Docker Hub repository."""
    ref = parse_reference("user/app:1.0", "--repository")
    assert (ref.registry, ref.path, ref.tag) == ("docker.io", "user/app", "1.0")
    assert str(ref) == "user/app:1.0"


def test_parse_legacy_hub_domain_is_normalised() -> None:
    """index.docker.io is the same registry as docker.io."""
    ref = parse_reference("index.docker.io/library/nginx", "--repository")
    assert ref.repository == "docker.io/library/nginx"
    assert str(ref) == "nginx"


def test_parse_domain_with_port() -> None:
    """A host:port first component is the registry, and the tag follows the path."""
    ref = parse_reference("registry.example.com:5000/team/app:v1", "--repository")
    assert ref == Reference("registry.example.com:5000", "team/app", "v1", None)
    assert str(ref) == "registry.example.com:5000/team/app:v1"


def test_parse_localhost_is_a_domain() -> None:
    """localhost counts as a domain even without a dot or port."""
    ref = parse_reference("localhost/app", "--repository")
    assert (ref.registry, ref.path) == ("localhost", "app")


def test_parse_localhost_with_port() -> None:
    """localhost:5000 as first component is a registry with a port."""
    ref = parse_reference("localhost:5000/app", "--repository")
    assert ref.repository == "localhost:5000/app"


def test_parse_bare_localhost_port_is_a_tag() -> None:
    """Without a slash, 'localhost:5000' is the image localhost tagged 5000, as in Docker."""
    ref = parse_reference("localhost:5000", "--repository")
    assert (ref.repository, ref.tag) == ("docker.io/library/localhost", "5000")


def test_parse_ipv4_registry() -> None:
    """An IPv4 address with port is a registry."""
    ref = parse_reference("127.0.0.1:5000/app:latest", "--repository")
    assert (ref.registry, ref.path, ref.tag) == ("127.0.0.1:5000", "app", "latest")


def test_parse_ipv6_registry() -> None:
    """A bracketed IPv6 address with port is a registry."""
    ref = parse_reference("[::1]:5000/app", "--repository")
    assert ref.registry == "[::1]:5000"


def test_parse_first_component_without_dot_is_a_path() -> None:
    """A first component without '.', ':' or 'localhost' is part of the path."""
    ref = parse_reference("team/sub/app", "--repository")
    assert ref.repository == "docker.io/team/sub/app"


def test_parse_digest() -> None:
    """A sha256 digest is accepted and kept."""
    ref = parse_reference(f"app@{DIGEST}", "--repository")
    assert (ref.tag, ref.digest) == (None, DIGEST)
    assert str(ref) == f"app@{DIGEST}"


def test_parse_tag_and_digest() -> None:
    """A tag and a digest together are both kept."""
    ref = parse_reference(f"host.io/app:v1@{DIGEST}", "--repository")
    assert (ref.tag, ref.digest) == ("v1", DIGEST)


@pytest.mark.parametrize("path", ["a.b", "a_b", "a__b", "a-b", "a---b", "a1/b2.c_d"])
def test_parse_accepts_path_separators(path: str) -> None:
    """Path components may use '.', '_', '__' and runs of '-' between alphanumerics."""
    assert parse_reference(path, "--repository").path.endswith(path)


@pytest.mark.parametrize("path", ["a..b", "a___b", "-a", "a-", "_a", "a.", "a$b"])
def test_parse_refuses_bad_path_components(path: str) -> None:
    """Components breaking the path grammar are refused with the component named."""
    assert "repository path component" in str(parse_error(path))


def test_parse_refuses_uppercase_repository() -> None:
    """Uppercase in the repository path is refused as not lowercase."""
    assert parse_error("team/MyApp").reason == "repository name must be lowercase"


def test_parse_refuses_uppercase_first_component() -> None:
    """An uppercase first component without a dot is path, hence refused, not a registry."""
    assert parse_error("MyOrg/app").reason == "repository name must be lowercase"


def test_parse_accepts_uppercase_domain() -> None:
    """Domains follow host name rules, which allow uppercase."""
    assert parse_reference("Registry.Example.com/app", "--repository").path == "app"


def test_parse_tag_of_128_characters_is_accepted() -> None:
    """A tag of exactly 128 characters is the longest allowed."""
    assert parse_reference("app:" + "t" * 128, "--repository").tag == "t" * 128


def test_parse_refuses_tag_of_129_characters() -> None:
    """A 129-character tag is refused as too long."""
    assert parse_error("app:" + "t" * 129).reason == "tag longer than 128 characters"


def test_parse_refuses_tag_with_bad_characters() -> None:
    """A tag may not start with '.' or '-'."""
    assert "must start with" in parse_error("app:-v1").reason


def test_parse_refuses_empty_tag() -> None:
    """A trailing ':' is an empty tag."""
    assert parse_error("app:").reason == "tag is empty"


def test_parse_refuses_name_longer_than_255() -> None:
    """A repository name over 255 characters in canonical form is refused."""
    name = "r.io/" + "a" * 251
    assert len(name) == 256
    assert "longer than 255" in parse_error(name).reason


def test_parse_name_of_255_characters_is_accepted() -> None:
    """A canonical repository name of exactly 255 characters is allowed."""
    name = "r.io/" + "a" * 250
    assert len(parse_reference(name, "--repository").repository) == 255


def test_parse_length_counts_implicit_hub_prefix() -> None:
    """The docker.io/library/ prefix counts towards the 255 limit, as in Docker."""
    assert "longer than 255" in parse_error("a" * 240).reason


def test_parse_refuses_empty() -> None:
    """An empty reference is refused."""
    assert parse_error("").reason == "image reference is empty"


def test_parse_refuses_leading_slash() -> None:
    """An empty path component is refused."""
    assert "empty component" in parse_error("/app").reason


def test_parse_refuses_bad_port() -> None:
    """A non-numeric port is refused."""
    assert "invalid registry port" in parse_error("host:abc/app").reason


def test_parse_refuses_bad_host() -> None:
    """A domain component ending in '-' is not a host name."""
    assert "invalid registry host" in parse_error("bad-.example.com/app").reason


def test_parse_refuses_short_digest() -> None:
    """A digest with too few hex digits is refused."""
    assert "algorithm:hex" in parse_error("app@sha256:abc").reason


def test_parse_refuses_wrong_length_sha256() -> None:
    """A sha256 digest must have exactly 64 hex digits."""
    assert "64 lowercase hex" in parse_error("app@sha256:" + "a" * 40).reason


def test_parse_refuses_unknown_digest_algorithm() -> None:
    """Digest algorithms other than sha256/384/512 are refused."""
    assert "unsupported digest algorithm" in parse_error("app@md5:" + "a" * 32).reason


def test_parse_refuses_image_id() -> None:
    """A bare 64-hex string is an image ID, not a repository."""
    assert "image ID" in parse_error("f" * 64).reason


def test_parse_error_names_source_and_value() -> None:
    """The message names the source and the offending value."""
    err = parse_error("Bad/Name", source="config packaging.repository")
    assert str(err) == (
        "config packaging.repository: invalid value 'Bad/Name': repository name must be lowercase"
    )


@given(text=st.text(), source=st.text())
def test_parse_arbitrary_text_gives_value_or_invalid_value(text: str, source: str) -> None:
    """Any text parses or raises InvalidValueError, nothing else."""
    result = outcome(lambda: parse_reference(text, source))
    assert isinstance(result, Reference) or result.source == source


@given(text=st.text(alphabet="aZ09.-_:/@[]", max_size=40))
def test_parse_reference_alphabet_gives_value_or_invalid_value(text: str) -> None:
    """Strings built from reference punctuation parse or raise InvalidValueError."""
    try:
        ref = parse_reference(text, "--repository")
    except InvalidValueError:
        return
    assert parse_reference(ref.repository, "--repository").repository == ref.repository


# --- parse_repository / validate_tag ------------------------------------------


def test_parse_repository_accepts_bare_repository() -> None:
    """A repository without tag or digest is accepted."""
    assert parse_repository("host.io/app", "--repository").repository == "host.io/app"


def test_parse_repository_refuses_tag() -> None:
    """A repository with a tag is refused."""
    with pytest.raises(InvalidValueError, match="must not include a tag"):
        parse_repository("host.io/app:v1", "--repository")


def test_parse_repository_refuses_digest() -> None:
    """A repository with a digest is refused."""
    with pytest.raises(InvalidValueError, match="must not include a tag or digest"):
        parse_repository(f"host.io/app@{DIGEST}", "--repository")


def test_validate_tag_returns_valid_tag() -> None:
    """A valid tag comes back unchanged, case kept."""
    assert validate_tag("V1.2_rc-3", "--tag") == "V1.2_rc-3"


def test_validate_tag_refuses_unicode_word_characters() -> None:
    """Only ASCII word characters count, unlike Python's default \\w."""
    with pytest.raises(InvalidValueError):
        validate_tag("v\u00e9", "--tag")


def test_validate_tag_refuses_trailing_newline() -> None:
    """A trailing newline is not silently accepted."""
    with pytest.raises(InvalidValueError):
        validate_tag("v1\n", "--tag")


def test_render_service_placeholder() -> None:
    """{service} expands to the com.docker.compose.service label's value as is."""
    ctx = dataclasses.replace(CTX, service="Web")
    assert render("{service}", ctx, SRC) == "Web"


def test_render_service_without_compose_label_is_refused() -> None:
    """{service} for a container without the Compose label names the source and the label."""
    err = render_error("{service}-{id}")
    assert err.source == SRC
    assert err.value == "{service}-{id}"
    assert "has no com.docker.compose.service label" in str(err)


def test_render_refuses_format_tricks_on_service() -> None:
    """{service} is a plain name too: attribute access on it is refused."""
    assert "attribute, index, conversion or format spec" in str(render_error("{service.x}"))


def test_render_name_may_be_empty_without_compose_label() -> None:
    """Only {service} needs its label: the other placeholders render without it."""
    assert render("{name}-{id}", CTX, SRC) == "MyApp-0123456789ab"


# --- resolve_names ------------------------------------------------------------


def resolve(repository: str, tags: list[str]) -> ImageNames:
    return resolve_names(repository, "label kegpack.repository", tags, "label kegpack.tags", CTX)


def test_resolve_lowercases_name_in_repository() -> None:
    """{name} is lowercased in the repository, where uppercase is invalid."""
    names = resolve("registry.local/{name}", ["latest"])
    assert names.repository.repository == "registry.local/myapp"


def test_resolve_lowercases_service_in_repository() -> None:
    """{service} is lowercased in the repository, like {name}."""
    ctx = dataclasses.replace(CTX, service="Web")
    names = resolve_names("r.io/{service}", "label kegpack.repository", ["v1"], SRC, ctx)
    assert names.repository.repository == "r.io/web"


def test_resolve_keeps_service_case_in_tags() -> None:
    """{service} keeps its case in tags, which allow uppercase."""
    ctx = dataclasses.replace(CTX, service="Web")
    names = resolve_names("r.io/app", "label kegpack.repository", ["{service}-1"], SRC, ctx)
    assert names.tags == ("Web-1",)


def test_resolve_service_that_cannot_be_a_repository_is_refused() -> None:
    """A service name that no repository may contain gives the repository's own error."""
    ctx = dataclasses.replace(CTX, service="my app")
    with pytest.raises(InvalidValueError) as info:
        resolve_names("r.io/{service}", "label kegpack.repository", ["v1"], SRC, ctx)
    assert str(info.value).startswith("label kegpack.repository: invalid value 'r.io/my app': ")
    assert "'my app'" in str(info.value)


def test_resolve_service_without_label_names_the_repository_source() -> None:
    """{service} in the repository of a non-Compose container names the repository source."""
    with pytest.raises(
        InvalidValueError, match=r"^config key packaging\.repository: .*com\.docker"
    ):
        resolve_names("r.io/{service}", "config key packaging.repository", ["v1"], SRC, CTX)


def test_resolve_keeps_name_case_in_tags() -> None:
    """{name} keeps its case in tags, which allow uppercase."""
    assert resolve("registry.local/app", ["{name}-{date}"]).tags == ("MyApp-20240506",)


def test_resolve_does_not_lowercase_literal_repository_text() -> None:
    """Only {name} is lowercased: literal uppercase in the template is still an error."""
    with pytest.raises(InvalidValueError, match="must be lowercase"):
        resolve("registry.local/Team/{name}", ["latest"])


def test_resolve_references_are_canonical_repo_and_tag() -> None:
    """references() gives one canonical repo:tag per tag."""
    names = resolve("{name}", ["v1", "latest"])
    assert names.references() == ["docker.io/library/myapp:v1", "docker.io/library/myapp:latest"]


def test_resolve_registry_property() -> None:
    """registry is the repository's registry."""
    assert resolve("localhost:5000/{name}", ["v1"]).registry == "localhost:5000"


def test_resolve_removes_duplicate_tags_keeping_order() -> None:
    """Duplicate tags, even after rendering, are dropped, first occurrence kept."""
    names = resolve("r.io/app", ["b", "{date}", "a", "b", "20240506"])
    assert names.tags == ("b", "20240506", "a")


def test_resolve_refuses_empty_tag_list() -> None:
    """At least one tag is required, and the error names the tags source."""
    with pytest.raises(InvalidValueError, match=r"^label kegpack\.tags: .*at least one tag"):
        resolve("r.io/app", [])


def test_resolve_bad_tag_names_source_and_rendered_value() -> None:
    """A bad tag's message names the tags source and the rendered value."""
    with pytest.raises(InvalidValueError) as info:
        resolve("r.io/app", ["v1 beta"])
    assert str(info.value).startswith("label kegpack.tags: invalid value 'v1 beta': ")


def test_resolve_bad_repository_names_source_and_rendered_value() -> None:
    """A bad repository's message names its source and the rendered value."""
    with pytest.raises(InvalidValueError) as info:
        resolve("r.io/{name}..x", ["v1"])
    assert str(info.value).startswith("label kegpack.repository: invalid value 'r.io/myapp..x': ")


def test_resolve_refuses_tag_in_repository_template() -> None:
    """A repository template that renders with a tag is refused."""
    with pytest.raises(InvalidValueError, match="must not include a tag"):
        resolve("r.io/app:{date}", ["v1"])


def test_resolve_template_error_names_tags_source() -> None:
    """A bad tag template is reported against the tags source."""
    with pytest.raises(InvalidValueError) as info:
        resolve("r.io/app", ["{name!r}"])
    assert info.value.source == "label kegpack.tags"


# --- split_list ---------------------------------------------------------------


def test_split_list_strips_and_drops_empties() -> None:
    """Whitespace is stripped and empty items are dropped."""
    assert split_list(" a, b ,,c , ") == ["a", "b", "c"]


def test_split_list_of_blank_is_empty() -> None:
    """A blank value gives no items."""
    assert split_list("  ") == []


@pytest.mark.parametrize(
    ("rule", "repository", "allowed"),
    [
        ("registry.example:5000/apps/", "registry.example:5000/apps/web", True),
        ("registry.example:5000/apps/", "registry.example:5000/apps-x/web", False),
        ("registry.example:5000/apps/", "registry.example:5000/prod/payments", False),
        ("registry.example:5000/apps/web", "registry.example:5000/apps/web", True),
        ("registry.example:5000/apps/web", "registry.example:5000/apps/web/x", False),
        ("kegpack/", "kegpack/web", True),
        ("kegpack/", "docker.io/kegpack/web", True),
        ("kegpack/", "web", False),
        ("docker.io/", "web", True),
    ],
)
def test_repository_rules_match_on_whole_components(
    rule: str, repository: str, allowed: bool
) -> None:
    """A rule ending in '/' allows what is below it; one without, that repository only."""
    rules = [repository_rule(rule, "test")]
    assert repository_allowed(parse_repository(repository, "test"), rules) is allowed


@pytest.mark.parametrize("rule", ["apps//", "Apps/", "/", "", "host:5000"])
def test_a_malformed_repository_rule_is_refused_by_value(rule: str) -> None:
    """An allow-list entry that is no repository or prefix is an InvalidValueError naming it."""
    with pytest.raises(InvalidValueError) as caught:
        repository_rule(rule, "config key x")
    assert repr(rule) in str(caught.value)
