"""Hostile label values: every parser gives a typed value or an error naming label and value."""

from __future__ import annotations

import posixpath
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kegpackd.archive.ignore import ExcludeRules
from kegpackd.config import Config, parse_config
from kegpackd.engine.naming import TemplateContext, resolve_names
from kegpackd.errors import InvalidValueError
from kegpackd.labels import (
    LABEL_DELAY,
    LABEL_PACKAGE,
    LABEL_PATHS,
    LABEL_PAUSE,
    LABEL_PUSH,
    LABEL_REPOSITORY,
    LABEL_TAGS,
    LABEL_TRIGGER,
)
from kegpackd.packaging.checks import check_registries
from kegpackd.packaging.options import (
    JobOptions,
    Overrides,
    is_packaging_enabled,
    parse_trigger,
    resolve_options,
)
from kegpackd.packaging.triggers import LABEL_TRIGGERS
from kegpackd.values import MAX_DURATION_SECONDS, parse_bool, parse_duration
from tests.valuetools import outcome, refusal

CONFIG = Config()
CTX = TemplateContext(
    name="/web", id="0123456789ab" + "c" * 52, now=datetime(2024, 5, 6, tzinfo=UTC)
)
LABEL_EXCLUDE = "kegpack.exclude"
LABELS = [
    LABEL_PACKAGE,
    LABEL_REPOSITORY,
    LABEL_TAGS,
    LABEL_PUSH,
    LABEL_PATHS,
    LABEL_EXCLUDE,
    LABEL_PAUSE,
    LABEL_TRIGGER,
    LABEL_DELAY,
]
HOSTILE_VALUES = [
    "",
    " ",
    ",",
    ",,,",
    "true",
    "TRUE",
    "yes",
    "0",
    "maybe",
    "start",
    " healthy ",
    "manual\n",
    "30s",
    "1m30s",
    "250ms",
    "1.5h",
    "169h",
    "9" * 400,
    "1" * 5000 + "x",
    "-5s",
    "1e3",
    "nan",
    "inf",
    "\u0661\u0662s",
    "/data",
    "/data/",
    "//data",
    "/data,/logs",
    "data",
    "./data",
    "/data/../etc",
    "/../../etc",
    "/da\x00ta",
    "../x",
    "/../../etc",
    "*.log,!keep",
    "{name}",
    "{name!r}",
    "{name.__class__}",
    "registry.example:5000/apps/{name}",
    "t" * 129,
    "a" * 300,
    "\u202e\ufeff\x85",
]
LABEL_VALUES = st.one_of(st.sampled_from(HOSTILE_VALUES), st.text(max_size=40))
LABEL_DICTS = st.dictionaries(
    st.one_of(st.sampled_from(LABELS), st.text(max_size=12).map(lambda s: "kegpack." + s)),
    LABEL_VALUES,
    max_size=9,
)
DURATION_TEXT = st.text(alphabet="0123456789.mshd -", max_size=24)


def options(labels: dict[str, str], overrides: Overrides | None = None) -> JobOptions:
    return resolve_options(labels, CONFIG, overrides or Overrides())


# --- property tests: arbitrary input ------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), st.sampled_from(HOSTILE_VALUES)))
def test_parse_bool_gives_bool_or_invalid_value(text: str) -> None:
    """Any text is a boolean or an InvalidValueError naming its source."""
    result = outcome(lambda: parse_bool(text, "label kegpack.push"))
    assert isinstance(result, bool) or result.source == "label kegpack.push"


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.text(), DURATION_TEXT, st.sampled_from(HOSTILE_VALUES)))
def test_parse_duration_gives_bounded_seconds_or_invalid_value(text: str) -> None:
    """Any text is a duration between zero and a week, or an InvalidValueError."""
    result = outcome(lambda: parse_duration(text, "label kegpack.delay"))
    if isinstance(result, InvalidValueError):
        assert result.source == "label kegpack.delay"
        assert result.value == text
    else:
        assert 0.0 <= result <= MAX_DURATION_SECONDS


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(
        st.tuples(st.integers(min_value=0, max_value=39), st.sampled_from(["h", "m", "s", "ms"])),
        min_size=1,
        max_size=4,
    )
)
def test_parse_duration_sums_its_parts(parts: list[tuple[int, str]]) -> None:
    """'1h2m3s4ms' is the sum of its parts, in seconds."""
    unit = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    text = "".join(f"{number}{suffix}" for number, suffix in parts)
    expected = sum(number * unit[suffix] for number, suffix in parts)
    assert parse_duration(text, "label kegpack.delay") == pytest.approx(expected)


def test_parse_duration_refuses_a_long_digit_run_without_a_unit() -> None:
    """A 50,000-digit run with no unit is refused (in linear time: no rescan per position)."""
    with pytest.raises(InvalidValueError):
        parse_duration("1" * 50_000 + "x", "label kegpack.delay")


@settings(max_examples=300, deadline=None)
@given(labels=LABEL_DICTS)
def test_parse_trigger_gives_known_trigger_or_invalid_value(labels: dict[str, str]) -> None:
    """Any labels give a known trigger with a bounded delay, or an error naming the label."""
    result = outcome(lambda: parse_trigger(labels))
    if isinstance(result, InvalidValueError):
        assert result.source in (f"label {LABEL_TRIGGER}", f"label {LABEL_DELAY}")
        assert result.value == labels[result.source.removeprefix("label ")]
    else:
        assert result.kind in LABEL_TRIGGERS
        assert 0.0 <= result.delay <= MAX_DURATION_SECONDS


@settings(max_examples=200, deadline=None)
@given(labels=LABEL_DICTS)
def test_packaging_label_takes_the_booleans_every_label_takes(labels: dict[str, str]) -> None:
    """kegpack.package: true/yes/on/1 opt in, false/no/off/0 or absent do not, the rest raise."""
    value = labels.get(LABEL_PACKAGE)
    spelled = None if value is None else value.strip().lower()
    if spelled in ("true", "yes", "on", "1"):
        assert is_packaging_enabled(labels) is True
    elif spelled is None or spelled in ("false", "no", "off", "0"):
        assert is_packaging_enabled(labels) is False
    else:
        with pytest.raises(InvalidValueError, match=r"label kegpack\.package"):
            is_packaging_enabled(labels)


@settings(max_examples=300, deadline=None)
@given(labels=LABEL_DICTS)
def test_resolve_options_gives_typed_options_or_label_error(labels: dict[str, str]) -> None:
    """Any kegpack.* labels give well-formed options or an error naming one of those labels."""
    result = outcome(lambda: options(labels))
    if isinstance(result, InvalidValueError):
        assert result.source.startswith("label kegpack.")
        assert result.source.removeprefix("label ") in labels
        return
    assert isinstance(result.push, bool)
    assert isinstance(result.pause, bool)
    assert result.tags
    assert all(isinstance(tag, str) and tag for tag in result.tags)
    for path in result.paths or ():
        assert path.startswith("/")
        assert ".." not in path.split("/")
        assert "\x00" not in path
        assert path == posixpath.normpath(path)
        assert not path.startswith("//")


@settings(max_examples=200, deadline=None)
@given(labels=LABEL_DICTS)
def test_resolved_labels_render_to_names_or_label_error(labels: dict[str, str]) -> None:
    """Labels that resolve then render to valid image names or an error naming the label."""
    resolved = outcome(lambda: options(labels))
    if isinstance(resolved, InvalidValueError):
        return
    result = outcome(
        lambda: resolve_names(
            resolved.repository,
            resolved.repository_source,
            resolved.tags,
            resolved.tags_source,
            CTX,
        )
    )
    if isinstance(result, InvalidValueError):
        assert result.source in (resolved.repository_source, resolved.tags_source)
    else:
        assert result.tags


@settings(max_examples=200, deadline=None)
@given(labels=LABEL_DICTS)
def test_resolved_exclude_labels_parse_or_name_the_label(labels: dict[str, str]) -> None:
    """kegpack.exclude patterns parse to rules or fail naming the label and the pattern."""
    resolved = outcome(lambda: options(labels))
    if isinstance(resolved, InvalidValueError):
        return
    result = outcome(lambda: ExcludeRules.parse(resolved.exclude, resolved.exclude_source))
    if isinstance(result, InvalidValueError):
        assert result.source == f"label {LABEL_EXCLUDE}"
        assert result.value in resolved.exclude


# --- specific refusals: each names the label and the value -------------------------------------


def test_unknown_trigger_names_label_and_value() -> None:
    """kegpack.trigger=sometimes is refused, naming the label, the value and the choices."""
    message = refusal(lambda: parse_trigger({LABEL_TRIGGER: "sometimes"}))
    assert "label kegpack.trigger" in message
    assert "'sometimes'" in message
    assert "start, healthy, stop, manual" in message


@pytest.mark.parametrize(
    "value",
    ["5x", "1m30", "-5s", "1.5.5s", "s", "8d", "169h", "1e3", "\u0661\u0662s", "30 s", "", "nan"],
)
def test_malformed_delay_names_label_and_value(value: str) -> None:
    """A malformed or over-long kegpack.delay is refused, naming the label and the value."""
    message = refusal(lambda: parse_trigger({LABEL_TRIGGER: "start", LABEL_DELAY: value}))
    assert "label kegpack.delay" in message
    assert repr(value) in message


@pytest.mark.parametrize("label", [LABEL_PUSH, LABEL_PAUSE])
@pytest.mark.parametrize("value", ["maybe", "2", "", "tru e", "ja"])
def test_malformed_boolean_names_label_and_value(label: str, value: str) -> None:
    """kegpack.push and kegpack.pause accept only the boolean spellings."""
    message = refusal(lambda: options({label: value}))
    assert f"label {label}" in message
    assert repr(value) in message


def test_tags_label_without_a_tag_names_label_and_value() -> None:
    """kegpack.tags made only of commas and blanks is refused."""
    message = refusal(lambda: options({LABEL_TAGS: " , ,"}))
    assert "label kegpack.tags" in message
    assert "' , ,'" in message


def test_over_long_tag_label_names_label_and_value() -> None:
    """A kegpack.tags entry of 129 characters is refused, naming the label and the tag."""
    tag = "t" * 129
    resolved = options({LABEL_TAGS: f"v1,{tag}"})
    message = refusal(
        lambda: resolve_names(
            resolved.repository,
            resolved.repository_source,
            resolved.tags,
            resolved.tags_source,
            CTX,
        )
    )
    assert "label kegpack.tags" in message
    assert repr(tag) in message
    assert "longer than 128" in message


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        ("Registry.example/App", "Registry.example/App"),
        ("r.example/app:v1", "r.example/app:v1"),
        ("r.example/a..b", "r.example/a..b"),
        ("/{name}", "/web"),
        ("r.example:port/{name}", "r.example:port/web"),
        ("r.example/{name}@sha256:00", "r.example/web@sha256:00"),
    ],
)
def test_invalid_repository_label_names_label_and_rendered_value(
    template: str, rendered: str
) -> None:
    """A kegpack.repository that renders to an invalid reference is refused, naming both."""
    resolved = options({LABEL_REPOSITORY: template})
    message = refusal(
        lambda: resolve_names(
            resolved.repository,
            resolved.repository_source,
            resolved.tags,
            resolved.tags_source,
            CTX,
        )
    )
    assert message.startswith(f"label kegpack.repository: invalid value {rendered!r}: ")


@pytest.mark.parametrize(
    "item", ["data", "./data", "/data/../etc", "/../../etc", "/data/..", "/da\x00ta", "~/x"]
)
def test_bad_path_label_names_label_and_item(item: str) -> None:
    """kegpack.paths entries must be absolute, without '..' or NUL; the error names the entry."""
    message = refusal(lambda: options({LABEL_PATHS: f"/ok,{item}"}))
    assert message.startswith(f"label kegpack.paths: invalid value {item!r}: ")


def test_paths_label_without_a_path_names_label_and_value() -> None:
    """kegpack.paths made only of commas is refused."""
    message = refusal(lambda: options({LABEL_PATHS: ",,"}))
    assert message.startswith("label kegpack.paths: invalid value ',,': ")


def test_paths_label_is_normalised_to_mount_destinations() -> None:
    """Trailing slashes, doubled slashes and '.' are spelled as the engine spells mounts."""
    resolved = options({LABEL_PATHS: "/data/, //logs,/srv/./www"})
    assert resolved.paths == ("/data", "/logs", "/srv/www")


def test_bad_path_flag_names_the_flag() -> None:
    """A --path flag is refused under its own name, '--path'."""
    message = refusal(lambda: options({}, Overrides(paths=("rel",), origin="--")))
    assert message.startswith("--path: invalid value 'rel': ")


def test_override_source_names_the_flag_or_the_request() -> None:
    """Overrides are named '--repository' for the CLI and 'request repository' for the API."""
    cli = options({}, Overrides(repository="x", tags=("v",), origin="--"))
    api = options({}, Overrides(repository="x", tags=("v",), origin="request"))
    assert (cli.repository_source, cli.tags_source) == ("--repository", "--tag")
    assert (api.repository_source, api.tags_source) == ("request repository", "request tag")


@pytest.mark.parametrize("pattern", ["../x", "/../../etc", "a/../../b", "!../x", ".."])
def test_exclude_label_escaping_the_mount_names_label_and_pattern(pattern: str) -> None:
    """kegpack.exclude patterns that climb above the mount fail as the pipeline parses them."""
    resolved = options({LABEL_EXCLUDE: f"*.log,{pattern}"})
    message = refusal(lambda: ExcludeRules.parse(resolved.exclude, resolved.exclude_source))
    assert message.startswith(f"label kegpack.exclude: invalid value {pattern!r}: ")
    assert "climbs above the mount's root" in message


@pytest.mark.parametrize(
    ("repository", "allowed", "registry"),
    [
        ("registry.example:5000/apps/{name}", ["other.example:5000"], "registry.example:5000"),
        ("kegpack/{name}", ["registry.example:5000"], "docker.io"),
        ("registry.example/{name}", [], "registry.example"),
    ],
)
def test_registry_not_allowed_names_label_value_and_registry(
    repository: str, allowed: list[str], registry: str
) -> None:
    """A push to a registry outside registries.allowed is refused, naming label and registry."""
    config = parse_config({"registries": {"allowed": allowed}}, env={})
    resolved = resolve_options({LABEL_REPOSITORY: repository, LABEL_PUSH: "true"}, config)
    names = resolve_names(
        resolved.repository, resolved.repository_source, resolved.tags, resolved.tags_source, CTX
    )
    message = refusal(lambda: check_registries(names, config, resolved.repository_source))
    assert message.startswith("label kegpack.repository: invalid value ")
    assert f"registry {registry} is not in registries.allowed" in message


@pytest.mark.parametrize(
    ("repository", "allowed"),
    [
        ("registry.example:5000/apps/{name}", ["registry.example:5000"]),
        ("{name}", ["docker.io"]),
        ("index.docker.io/team/{name}", ["docker.io"]),
    ],
)
def test_allowed_registry_passes(repository: str, allowed: list[str]) -> None:
    """A registry listed in registries.allowed (Docker Hub as docker.io) passes the check."""
    config = parse_config({"registries": {"allowed": allowed}}, env={})
    names = resolve_names(repository, "label kegpack.repository", ["v1"], "label kegpack.tags", CTX)
    check_registries(names, config, "label kegpack.repository")
