"""Bad config input: every value validates or raises ConfigError naming the key, never a crash."""

from __future__ import annotations

import math
from datetime import UTC, date, time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kegpackd.config import LOG_LEVELS, SECRET_LIMIT, Config, load_config, parse_config
from kegpackd.errors import ConfigError
from kegpackd.shown import MESSAGE_LIMIT
from kegpackd.values import MAX_DURATION_SECONDS

SECTIONS: dict[str, list[str]] = {
    "docker": ["host", "tls_verify", "cert_path"],
    "packaging": [
        "repository",
        "tags",
        "push",
        "pause",
        "exclude",
        "concurrency",
        "job_timeout",
        "push_retries",
    ],
    "registries": ["allowed", "auth"],
    "daemon": ["shutdown_grace"],
    "log": ["level", "format"],
    "http": ["listen", "token_file"],
}
HUGE = 10**5000
SECRET_FILES = ["secret", "missing", "adir", "latin1", "empty", "nul\x00byte", "adir/../secret"]


def huge(sign: int) -> int:
    """An integer too long for repr() (hypothesis must not have to print it in a strategy)."""
    return sign * HUGE


SCALARS = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.sampled_from([1, -1]).map(huge),
    st.sampled_from([0, 1, 65535, 65536]),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(
        ["", "30s", "1m30s", "169h", "nan", "info", "DEBUG", "json", "text", "127.0.0.1:9477"]
    ),
    st.sampled_from(
        ["0.0.0.0:80", "[::1]:9477", "h:\u00b2", "h:" + "1" * 5000, "h:0", ":80", "h:", "x"]
    ),
    st.sampled_from(SECRET_FILES),
    st.datetimes(timezones=st.just(UTC)),
    st.dates(),
    st.times(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=8,
)


@st.composite
def sections(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """A table with mostly known keys of the section, holding any TOML-like values."""
    keys = st.one_of(st.sampled_from(SECTIONS[name]), st.text(max_size=8))
    table: dict[str, Any] = draw(st.dictionaries(keys, VALUES, max_size=4))
    if name == "registries" and draw(st.booleans()):
        entry = draw(
            st.dictionaries(
                st.sampled_from(["username", "password_file", "password"]),
                st.one_of(st.sampled_from(SECRET_FILES), VALUES),
                max_size=3,
            )
        )
        table["auth"] = {draw(st.text(max_size=12)): entry}
    if name == "http" and draw(st.booleans()):
        table["token_file"] = draw(st.sampled_from(SECRET_FILES))
    return table


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A TOML-like document: known sections, unknown ones, and values where tables belong."""
    doc: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(list(SECTIONS)), max_size=6, unique=True)):
        doc[name] = draw(st.one_of(sections(name), sections(name), VALUES))
    doc.update(draw(st.dictionaries(st.text(max_size=8), VALUES, max_size=2)))
    return doc


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the secret files that SECRET_FILES name (some deliberately bad)."""
    base = tmp_path_factory.mktemp("secrets")
    (base / "secret").write_text("s3cret\n")
    (base / "adir").mkdir()
    (base / "latin1").write_bytes(b"caf\xe9\n")
    (base / "empty").write_text("\n")
    return base


def config_error(data: dict[str, Any], base: Path | None = None) -> str:
    """The message of the ConfigError parse_config raises for ``data``."""
    with pytest.raises(ConfigError) as info:
        parse_config(data, None if base is None else base / "c.toml", env={})
    return str(info.value)


def load_error(path: Path) -> str:
    """The message of the ConfigError load_config raises for the file at ``path``."""
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    return str(info.value)


def write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def check_valid(config: Config) -> None:
    """What every module may assume of a Config that parse_config returned."""
    pack = config.packaging
    assert isinstance(pack.repository, str)
    assert pack.tags
    assert all(isinstance(tag, str) for tag in pack.tags)
    assert all(isinstance(pattern, str) for pattern in pack.exclude)
    assert isinstance(pack.push, bool)
    assert isinstance(pack.pause, bool)
    assert pack.concurrency >= 1
    assert pack.push_retries >= 0
    for seconds in (pack.job_timeout, config.daemon.shutdown_grace):
        assert isinstance(seconds, float)
        assert 0.0 <= seconds <= MAX_DURATION_SECONDS
    assert all(isinstance(name, str) for name in config.registries.allowed)
    for creds in config.registries.auth.values():
        assert creds.password is not None
        assert creds.password.reveal()
    assert config.log.level in LOG_LEVELS
    assert config.log.format in ("text", "json")
    assert 0 < config.http.port < 65536
    assert config.http.loopback or config.http.token is not None


# --- property tests ------------------------------------------------------------------------------


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(doc=documents())
def test_arbitrary_documents_give_a_valid_config_or_config_error(
    secrets_dir: Path, doc: dict[str, Any]
) -> None:
    """Any TOML-like document validates to a usable Config or raises ConfigError."""
    try:
        config = parse_config(doc, secrets_dir / "c.toml", env={})
    except ConfigError as exc:
        message = str(exc)
    else:
        check_valid(config)
        return
    assert message.startswith("config")
    assert "\n" not in message


TOML_PIECES = st.sampled_from(
    [
        b"[packaging]\n",
        b"[registries]\n",
        b"[http]\n",
        b"[log]\n",
        b'[registries.auth."r.example"]\n',
        b'repository = "r.example/{name}"\n',
        b'tags = ["v1", "latest"]\n',
        b"push = true\n",
        b"concurrency = 0\n",
        b'job_timeout = "5m"\n',
        b"job_timeout = nan\n",
        b'level = "loud"\n',
        b'listen = "0.0.0.0:9477"\n',
        b'username = "ci"\n',
        b'password_file = "missing"\n',
        b'token_file = "adir"\n',
        b"x = " + b"1" * 5000 + b"\n",
        b"a = " + b"[" * 3000 + b"]" * 3000 + b"\n",
        b"t = 1979-05-27T07:32:00Z\n",
        b"d = 1979-02-30\n",
        b'"\\u0000" = 1\n',
        b"\xff\xfe",
        b"caf\xe9 = 1\n",
        b"= =\n",
        b"[[",
    ]
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(content=st.one_of(st.binary(max_size=200), st.lists(TOML_PIECES, max_size=8).map(b"".join)))
def test_arbitrary_file_bytes_give_a_valid_config_or_config_error(
    secrets_dir: Path, content: bytes
) -> None:
    """Any file content loads to a usable Config or raises ConfigError naming the file."""
    path = write(secrets_dir / "c.toml", content)
    try:
        config = load_config(path, env={})
    except ConfigError as exc:
        message = str(exc)
    else:
        check_valid(config)
        return
    assert str(path) in message
    assert "\n" not in message


# --- the file itself -----------------------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    """A config path that does not exist is refused, naming it."""
    path = tmp_path / "nope.toml"
    message = load_error(path)
    assert message.startswith(f"config {path}: cannot read: ")


def test_directory_as_config_names_the_file(tmp_path: Path) -> None:
    """A directory given as the config file is refused, naming it."""
    assert load_error(tmp_path).startswith(f"config {tmp_path}: cannot read: ")


def test_non_utf8_file_is_not_valid_toml(tmp_path: Path) -> None:
    """A config file that is not UTF-8 is refused as invalid TOML."""
    path = write(tmp_path / "c.toml", b'[log]\nlevel = "caf\xe9"\n')
    assert load_error(path).startswith(f"config {path}: not valid TOML: ")


def test_invalid_toml_names_the_file_and_position(tmp_path: Path) -> None:
    """A TOML syntax error is refused with the file and tomllib's position."""
    path = write(tmp_path / "c.toml", b"[packaging\npush = true\n")
    message = load_error(path)
    assert message.startswith(f"config {path}: not valid TOML: ")
    assert "line 1" in message


def test_integer_too_long_to_read_is_not_valid_toml(tmp_path: Path) -> None:
    """A 5000-digit integer (beyond Python's int-from-text limit) is a ConfigError."""
    path = write(tmp_path / "c.toml", b"[packaging]\nconcurrency = " + b"1" * 5000 + b"\n")
    assert load_error(path).startswith(f"config {path}: not valid TOML: ")


def test_deeply_nested_arrays_are_not_valid_toml(tmp_path: Path) -> None:
    """Arrays nested thousands deep are a ConfigError, not a RecursionError."""
    path = write(tmp_path / "c.toml", b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n")
    assert load_error(path) == f"config {path}: not valid TOML: values nested too deeply"


def test_validation_errors_are_prefixed_with_the_file(tmp_path: Path) -> None:
    """A key error from a loaded file names the file, then the key."""
    path = write(tmp_path / "c.toml", b"[packaging]\npush = 1\n")
    assert load_error(path).startswith(f"{path}: config key packaging.push: ")


# --- keys and types ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"dockr": {}}, "dockr"),
        ({"packaging": {"repositry": "x"}}, "packaging.repositry"),
        ({"log": {"levle": "info"}}, "log.levle"),
        ({"http": {"token": "t"}}, "http.token"),
        (
            {"registries": {"auth": {"r.example": {"username": "u", "password": "p"}}}},
            'registries.auth."r.example".password',
        ),
    ],
)
def test_unknown_key_is_named(data: dict[str, Any], key: str) -> None:
    """An unknown key anywhere is refused by its dotted path."""
    assert config_error(data) == f"config: unknown key {key}"


@pytest.mark.parametrize(
    ("data", "key", "shown"),
    [
        ({"packaging": {"push": "yes"}}, "packaging.push", "a string 'yes'"),
        ({"packaging": {"tags": "latest"}}, "packaging.tags", "a string 'latest'"),
        ({"packaging": {"tags": ["v1", 2]}}, "packaging.tags", "a list ['v1', 2]"),
        ({"packaging": {"concurrency": 0}}, "packaging.concurrency", "an integer 0"),
        ({"packaging": {"concurrency": True}}, "packaging.concurrency", "a boolean True"),
        ({"packaging": {"push_retries": -1}}, "packaging.push_retries", "an integer -1"),
        ({"packaging": {"job_timeout": [1]}}, "packaging.job_timeout", "a list [1]"),
        ({"docker": {"tls_verify": 1}}, "docker.tls_verify", "an integer 1"),
        ({"registries": {"allowed": "r.example"}}, "registries.allowed", "a string"),
        ({"registries": {"auth": []}}, "registries.auth", "a list []"),
        ({"log": {"level": 3}}, "log.level", "an integer 3"),
        ({"packaging": {"repository": date(2024, 1, 2)}}, "packaging.repository", "date"),
        ({"packaging": {"repository": time(1, 2)}}, "packaging.repository", "time"),
        pytest.param(
            {"packaging": {"repository": HUGE}},
            "packaging.repository",
            "too long to show",
            id="huge-int",
        ),
    ],
)
def test_wrong_type_names_key_and_value(data: dict[str, Any], key: str, shown: str) -> None:
    """A value of the wrong type is refused, naming the key, the type and the value."""
    message = config_error(data)
    assert message.startswith(f"config key {key}: expected ")
    assert shown in message


@pytest.mark.parametrize("section", ["docker", "packaging", "registries", "daemon", "log", "http"])
def test_section_that_is_not_a_table_is_named(section: str) -> None:
    """A section given as a scalar is refused by name."""
    assert config_error({section: 1}) == f"config key {section}: expected a table, got an integer 1"


def test_auth_entry_that_is_not_a_table_is_named() -> None:
    """A registries.auth entry given as a string is refused by its key."""
    message = config_error({"registries": {"auth": {"r.example": "ci:pw"}}})
    assert message.startswith('config key registries.auth."r.example": expected a table')


def test_auth_entry_without_password_file_is_named() -> None:
    """An auth entry needs both username and password_file."""
    message = config_error({"registries": {"auth": {"r.example": {"username": "ci"}}}})
    assert message == (
        'config key registries.auth."r.example": needs both username and password_file'
    )


def test_empty_tag_list_is_named() -> None:
    """packaging.tags = [] is refused."""
    assert config_error({"packaging": {"tags": []}}) == (
        "config key packaging.tags: needs at least one tag"
    )


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("5x", "'5x'"),
        ("169h", "'169h'"),
        ("-1s", "'-1s'"),
        (-1, "-1"),
        (math.nan, "nan"),
        (math.inf, "inf"),
        (604801, "604801"),
        pytest.param(HUGE, "<an integer too long to show>", id="huge-int"),
    ],
)
def test_bad_duration_names_key_and_value(value: object, shown: str) -> None:
    """Durations must be 0 to a week, as seconds or text; the error names key and value."""
    message = config_error({"daemon": {"shutdown_grace": value}})
    assert message.startswith(f"config key daemon.shutdown_grace: invalid value {shown}")


@pytest.mark.parametrize(("value", "seconds"), [(90, 90.0), (1.5, 1.5), ("1m30s", 90.0), (0, 0.0)])
def test_durations_are_read_as_seconds(value: object, seconds: float) -> None:
    """Numbers are seconds, strings use units."""
    config = parse_config({"packaging": {"job_timeout": value}}, env={})
    assert config.packaging.job_timeout == seconds


@pytest.mark.parametrize("level", ["loud", "", "INFO "])
def test_unknown_log_level_is_named(level: str) -> None:
    """log.level must be one of the four levels."""
    message = config_error({"log": {"level": level}})
    assert message.startswith(f"config key log.level: {level.lower()!r} is not one of ")


def test_unknown_log_format_is_named() -> None:
    """log.format must be text or json."""
    assert config_error({"log": {"format": "xml"}}).startswith("config key log.format: 'xml'")


@pytest.mark.parametrize(
    "listen",
    [
        "9477",
        ":9477",
        "host:",
        "host:0",
        "host:65536",
        "host:\u00b2",
        "host:\u0661",
        pytest.param("h:" + "1" * 5000, id="5000-digit-port"),
    ],
)
def test_bad_http_listen_is_named(listen: str) -> None:
    """http.listen must be HOST:PORT with an ASCII port from 1 to 65535."""
    message = config_error({"http": {"listen": listen}})
    expected = f"config key http.listen: {listen!r} is not HOST:PORT"
    if len(expected) <= MESSAGE_LIMIT:
        assert message == expected
    else:  # the value is cut; the key and the reason stay
        assert message.startswith(expected[:100])
        assert message.endswith(" is not HOST:PORT")
        assert len(message) < MESSAGE_LIMIT + 50


def test_non_loopback_listen_without_token_is_refused() -> None:
    """Listening beyond loopback requires http.token_file."""
    message = config_error({"http": {"listen": "0.0.0.0:9477"}})
    assert message.startswith("config key http.listen: '0.0.0.0:9477' is not loopback")


# --- secret files --------------------------------------------------------------------------------


def auth(password_file: str) -> dict[str, Any]:
    return {
        "registries": {"auth": {"r.example": {"username": "ci", "password_file": password_file}}}
    }


KEY = 'config key registries.auth."r.example".password_file'


def test_password_file_is_read_relative_to_the_config(secrets_dir: Path) -> None:
    """A relative password_file is read next to the config, without its trailing newline."""
    config = parse_config(auth("secret"), secrets_dir / "c.toml", env={})
    password = config.registries.auth["r.example"].password
    assert password is not None
    assert password.reveal() == "s3cret"


def test_missing_password_file_names_key_and_path(secrets_dir: Path) -> None:
    """A password_file that does not exist is refused, naming the key and the path."""
    message = config_error(auth("missing"), secrets_dir)
    assert message == f"{KEY}: cannot read {secrets_dir / 'missing'}: No such file or directory"


def test_directory_as_password_file_names_key_and_path(secrets_dir: Path) -> None:
    """A password_file that is a directory is refused, naming the key and the path."""
    message = config_error(auth("adir"), secrets_dir)
    assert message == f"{KEY}: cannot read {secrets_dir / 'adir'}: Is a directory"


def test_non_utf8_password_file_names_key_and_path(secrets_dir: Path) -> None:
    """A password_file that is not UTF-8 text is a ConfigError, not a UnicodeDecodeError."""
    message = config_error(auth("latin1"), secrets_dir)
    assert message == f"{KEY}: {secrets_dir / 'latin1'} is not UTF-8 text"


def test_password_file_name_with_nul_names_key_and_path(secrets_dir: Path) -> None:
    """A NUL in the file name (TOML allows \\u0000) is a ConfigError, not a ValueError."""
    message = config_error(auth("nul\x00byte"), secrets_dir)
    assert message.startswith(f"{KEY}: cannot read 'nul\\x00byte': ")


def test_empty_password_file_names_key_and_path(secrets_dir: Path) -> None:
    """A password_file holding only a newline is refused as empty."""
    message = config_error(auth("empty"), secrets_dir)
    assert message == f"{KEY}: {secrets_dir / 'empty'} is empty"


def test_missing_token_file_names_key_and_path(secrets_dir: Path) -> None:
    """An http.token_file that does not exist is refused, naming the key and the path."""
    message = config_error({"http": {"token_file": "missing"}}, secrets_dir)
    assert message.startswith(f"config key http.token_file: cannot read {secrets_dir}/missing: ")


def test_unreadable_token_file_names_key_and_path(secrets_dir: Path) -> None:
    """An http.token_file that is a directory is refused, naming the key and the path."""
    message = config_error({"http": {"token_file": "adir"}}, secrets_dir)
    assert message == f"config key http.token_file: cannot read {secrets_dir}/adir: Is a directory"


def test_password_file_that_is_not_a_regular_file_is_refused() -> None:
    """A device such as /dev/zero would never end; it is refused without reading it."""
    message = config_error(auth("/dev/zero"))
    assert message == f"{KEY}: /dev/zero is not a regular file"


def test_oversized_password_file_is_refused(tmp_path: Path) -> None:
    """A password file over SECRET_LIMIT bytes is a mistake, refused by name."""
    big = tmp_path / "big"
    big.write_bytes(b"x" * (SECRET_LIMIT + 1))
    message = config_error(auth(str(big)))
    assert message == f"{KEY}: {big} is over {SECRET_LIMIT} bytes"


def test_loopback_lookalike_host_needs_a_token() -> None:
    """A host name that merely starts with 127. is not loopback: it needs http.token_file."""
    message = config_error({"http": {"listen": "127.evil.example:9477"}})
    assert "is not loopback" in message


@pytest.mark.parametrize(
    ("packaging", "named"),
    [
        ({"repository": "kegpack/{name.__class__}"}, "config key packaging.repository"),
        ({"repository": "Kegpack/UPPER"}, "config key packaging.repository"),
        ({"tags": ["{unknown}"]}, "config key packaging.tags"),
        ({"exclude": ["../outside"]}, "config key packaging.exclude"),
    ],
)
def test_bad_defaults_are_refused_at_load(packaging: dict[str, Any], named: str) -> None:
    """Templates and patterns that would fail every job are refused when the config loads."""
    assert named in config_error({"packaging": packaging})


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"registries": {"allowed": ["https://r.example"]}}, "registries.allowed"),
        ({"registries": {"allowed": ["r.example:5000/Apps/"]}}, "registries.allowed"),
        ({"packaging": {"allowed_repositories": []}}, "packaging.allowed_repositories"),
        ({"packaging": {"allowed_repositories": ["r.example:5000"]}}, "allowed_repositories"),
    ],
)
def test_a_bad_allow_list_entry_is_named(data: dict[str, Any], key: str) -> None:
    """registries.allowed and packaging.allowed_repositories entries are checked at load."""
    assert key in config_error(data)


def test_repository_prefixes_load_as_written() -> None:
    """A host, a repository prefix and one repository all load, as written."""
    entries = ["r.example:5000", "r.example:5000/apps/", "r.example:5000/apps/web"]
    config = parse_config(
        {"registries": {"allowed": entries}, "packaging": {"allowed_repositories": ["kegpack/"]}}
    )
    assert config.registries.allowed == tuple(entries)
    assert config.packaging.allowed_repositories == ("kegpack/",)
