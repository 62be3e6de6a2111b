"""Tests for registry credential resolution (no Docker needed)."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kegpackd.engine.credentials import Credentials, Secret, resolve_credentials
from kegpackd.errors import RegistryError

PASSWORD = "hunter2-S3CRET"
TOKEN = "id-token-S3CRET"
REGISTRY = "registry.example.com"

HelperFactory = Callable[[str], None]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_config(directory: Path, config: dict[str, Any] | str | bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.json"
    if isinstance(config, dict):
        config = json.dumps(config)
    path.write_bytes(config.encode() if isinstance(config, str) else config)
    return path


def assert_no_secret(err: BaseException) -> None:
    for secret in (PASSWORD, TOKEN, b64(f"user:{PASSWORD}")):
        assert secret not in str(err)
        assert secret not in repr(err)
    assert err.__cause__ is None
    assert err.__context__ is None


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "docker"


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HelperFactory:
    """Install `docker-credential-test` with the given shell body, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    def install(body: str) -> None:
        script = bin_dir / "docker-credential-test"
        script.write_text(f"#!/bin/sh\n{body}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    return install


ECHO_SERVER = (
    "server=$(cat)\n"
    'printf \'{"ServerURL":"%s","Username":"for:%s","Secret":"%s"}\''
    f' "$server" "$server" "{PASSWORD}"'
)


# --- Secret and Credentials ---------------------------------------------------


def test_secret_repr_and_str_are_masked() -> None:
    """repr() and str() never show the value."""
    secret = Secret(PASSWORD)
    assert repr(secret) == "'***'"
    assert str(secret) == "***"


def test_secret_formatting_is_masked() -> None:
    """f-strings, %-formatting and format specs never show the value."""
    secret = Secret(PASSWORD)
    assert f"{secret} {secret!r} {secret:>5}" == "*** '***'   ***"
    assert "%s" % secret == "***"  # noqa: UP031 -- %-formatting is what this checks


def test_secret_reveal_returns_value() -> None:
    """reveal() is the one way to the value."""
    assert Secret(PASSWORD).reveal() == PASSWORD


def test_secret_equality_is_by_value() -> None:
    """Secrets compare and hash by value, and never equal a plain string."""
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert hash(Secret("a")) == hash(Secret("a"))
    assert Secret("a") != "a"


def test_credentials_repr_hides_secrets() -> None:
    """A Credentials repr shows the username but no secret."""
    creds = Credentials("user", Secret(PASSWORD), Secret(TOKEN))
    assert "user" in repr(creds)
    assert PASSWORD not in repr(creds)
    assert TOKEN not in repr(creds)


def decode_header(header: str) -> dict[str, str]:
    data: dict[str, str] = json.loads(base64.urlsafe_b64decode(header))
    return data


def test_auth_header_password() -> None:
    """Username/password credentials encode username, password and server address."""
    header = Credentials("user", Secret(PASSWORD)).auth_header(REGISTRY)
    assert decode_header(header) == {
        "username": "user",
        "password": PASSWORD,
        "serveraddress": REGISTRY,
    }


def test_auth_header_identity_token() -> None:
    """An identity token is sent instead of username and password."""
    header = Credentials("", identity_token=Secret(TOKEN)).auth_header(REGISTRY)
    assert decode_header(header) == {"identitytoken": TOKEN, "serveraddress": REGISTRY}


def test_auth_header_docker_hub_uses_index_address() -> None:
    """Docker Hub's server address is its legacy index URL, as the CLI sends it."""
    header = Credentials("user", Secret("p")).auth_header("docker.io")
    assert decode_header(header)["serveraddress"] == "https://index.docker.io/v1/"


def test_auth_header_uses_url_safe_alphabet() -> None:
    """The header uses base64url, never '+' or '/'."""
    header = Credentials("u", Secret("\xff\xfe??>>")).auth_header(REGISTRY)
    standard = base64.b64encode(base64.urlsafe_b64decode(header)).decode()
    assert "+" in standard or "/" in standard
    assert "+" not in header
    assert "/" not in header


# --- precedence and config location -------------------------------------------


async def test_configured_credentials_win(config_dir: Path) -> None:
    """kegpackd's own config is used before Docker's config.json."""
    write_config(config_dir, {"auths": {REGISTRY: {"auth": b64("docker:pw")}}})
    mine = Credentials("mine", Secret(PASSWORD))
    assert await resolve_credentials(REGISTRY, {REGISTRY: mine}, config_dir) == mine


async def test_configured_for_other_registry_is_ignored(config_dir: Path) -> None:
    """Configured credentials for another registry do not apply."""
    write_config(config_dir, {"auths": {REGISTRY: {"auth": b64("docker:pw")}}})
    other = {"other.example.com": Credentials("mine", Secret(PASSWORD))}
    creds = await resolve_credentials(REGISTRY, other, config_dir)
    assert creds is not None
    assert creds.username == "docker"


async def test_no_config_file_gives_none(config_dir: Path) -> None:
    """Without a config.json there are no credentials, and no error."""
    assert await resolve_credentials(REGISTRY, {}, config_dir) is None


async def test_docker_config_env_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$DOCKER_CONFIG locates config.json when no directory is given."""
    write_config(tmp_path / "env", {"auths": {REGISTRY: {"auth": b64("env:pw")}}})
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "env"))
    creds = await resolve_credentials(REGISTRY, {})
    assert creds is not None
    assert creds.username == "env"


async def test_home_docker_dir_is_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """~/.docker is used when neither a directory nor $DOCKER_CONFIG is given."""
    write_config(tmp_path / ".docker", {"auths": {REGISTRY: {"auth": b64("home:pw")}}})
    monkeypatch.delenv("DOCKER_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    creds = await resolve_credentials(REGISTRY, {})
    assert creds is not None
    assert creds.username == "home"


# --- auths --------------------------------------------------------------------


async def test_auths_base64_auth(config_dir: Path) -> None:
    """auths[...].auth is base64 of user:password; a ':' in the password survives."""
    write_config(config_dir, {"auths": {REGISTRY: {"auth": b64(f"user:{PASSWORD}:x")}}})
    creds = await resolve_credentials(REGISTRY, {}, config_dir)
    assert creds == Credentials("user", Secret(f"{PASSWORD}:x"))


async def test_auths_explicit_username_password(config_dir: Path) -> None:
    """Explicit username and password fields are used when there is no auth field."""
    write_config(config_dir, {"auths": {REGISTRY: {"username": "u", "password": PASSWORD}}})
    assert await resolve_credentials(REGISTRY, {}, config_dir) == Credentials("u", Secret(PASSWORD))


async def test_auths_identity_token(config_dir: Path) -> None:
    """identitytoken becomes the credentials' identity token."""
    write_config(config_dir, {"auths": {REGISTRY: {"identitytoken": TOKEN}}})
    creds = await resolve_credentials(REGISTRY, {}, config_dir)
    assert creds == Credentials("", identity_token=Secret(TOKEN))


async def test_auths_key_with_scheme_matches(config_dir: Path) -> None:
    """A key written as http://host:port matches the bare registry."""
    write_config(config_dir, {"auths": {"http://127.0.0.1:5000": {"auth": b64("u:p")}}})
    creds = await resolve_credentials("127.0.0.1:5000", {}, config_dir)
    assert creds is not None
    assert creds.username == "u"


async def test_auths_key_with_trailing_path_matches(config_dir: Path) -> None:
    """A key written with a trailing path matches the registry host."""
    write_config(config_dir, {"auths": {f"https://{REGISTRY}/v1/": {"auth": b64("u:p")}}})
    assert await resolve_credentials(REGISTRY, {}, config_dir) is not None


async def test_auths_exact_key_preferred(config_dir: Path) -> None:
    """An exactly matching key wins over one that matches only after normalising."""
    auths = {f"https://{REGISTRY}/": {"auth": b64("loose:p")}, REGISTRY: {"auth": b64("exact:p")}}
    write_config(config_dir, {"auths": auths})
    creds = await resolve_credentials(REGISTRY, {}, config_dir)
    assert creds is not None
    assert creds.username == "exact"


async def test_auths_docker_hub_key(config_dir: Path) -> None:
    """docker.io credentials live under https://index.docker.io/v1/."""
    write_config(config_dir, {"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:p")}}})
    creds = await resolve_credentials("docker.io", {}, config_dir)
    assert creds is not None
    assert creds.username == "hub"


async def test_auths_other_registry_gives_none(config_dir: Path) -> None:
    """Credentials for another registry, or a mere prefix of the host, do not apply."""
    write_config(config_dir, {"auths": {"registry.example": {"auth": b64("u:p")}}})
    assert await resolve_credentials(REGISTRY, {}, config_dir) is None


async def test_auths_empty_entry_gives_none(config_dir: Path) -> None:
    """An empty auths entry (left by a credential store) means no credentials."""
    write_config(config_dir, {"auths": {REGISTRY: {}}})
    assert await resolve_credentials(REGISTRY, {}, config_dir) is None


async def test_auths_bad_base64_is_error_without_secret(config_dir: Path) -> None:
    """Undecodable auth is a RegistryError naming file and registry, not the value."""
    path = write_config(config_dir, {"auths": {REGISTRY: {"auth": PASSWORD + "!"}}})
    with pytest.raises(RegistryError) as info:
        await resolve_credentials(REGISTRY, {}, config_dir)
    assert str(path) in str(info.value)
    assert REGISTRY in str(info.value)
    assert_no_secret(info.value)


async def test_auths_auth_without_colon_is_error(config_dir: Path) -> None:
    """auth that decodes to no 'user:password' pair is refused without showing it."""
    write_config(config_dir, {"auths": {REGISTRY: {"auth": b64(PASSWORD)}}})
    with pytest.raises(RegistryError, match="username:password") as info:
        await resolve_credentials(REGISTRY, {}, config_dir)
    assert PASSWORD not in str(info.value)


async def test_auths_entry_of_wrong_type_is_error(config_dir: Path) -> None:
    """A non-string field in an auths entry is a RegistryError."""
    write_config(config_dir, {"auths": {REGISTRY: {"username": 1, "password": PASSWORD}}})
    with pytest.raises(RegistryError, match="malformed") as info:
        await resolve_credentials(REGISTRY, {}, config_dir)
    assert_no_secret(info.value)


# --- malformed config ---------------------------------------------------------


async def test_malformed_json_is_error_without_secret(config_dir: Path) -> None:
    """Invalid JSON is a RegistryError naming file and registry and holding no secret."""
    path = write_config(config_dir, '{"auths": {"r": {"password": "' + PASSWORD + '"}} oops')
    with pytest.raises(RegistryError) as info:
        await resolve_credentials(REGISTRY, {}, config_dir)
    assert str(path) in str(info.value)
    assert REGISTRY in str(info.value)
    assert "not valid JSON" in str(info.value)
    assert_no_secret(info.value)


async def test_non_utf8_config_is_error_without_secret(config_dir: Path) -> None:
    """A config that is not UTF-8 is a RegistryError holding no secret."""
    write_config(config_dir, b'{"x": "\xff' + PASSWORD.encode() + b'"}')
    with pytest.raises(RegistryError, match="UTF-8") as info:
        await resolve_credentials(REGISTRY, {}, config_dir)
    assert_no_secret(info.value)


async def test_config_not_an_object_is_error(config_dir: Path) -> None:
    """A JSON document that is not an object is a RegistryError."""
    write_config(config_dir, "[]")
    with pytest.raises(RegistryError, match="not a JSON object"):
        await resolve_credentials(REGISTRY, {}, config_dir)


async def test_auths_not_an_object_is_error(config_dir: Path) -> None:
    """An 'auths' that is not an object is a RegistryError."""
    write_config(config_dir, {"auths": ["x"]})
    with pytest.raises(RegistryError, match="'auths' is not an object"):
        await resolve_credentials(REGISTRY, {}, config_dir)


async def test_unreadable_config_is_error(config_dir: Path) -> None:
    """A config.json that cannot be read (here a directory) is a RegistryError."""
    (config_dir / "config.json").mkdir(parents=True)
    with pytest.raises(RegistryError, match="cannot read Docker config"):
        await resolve_credentials(REGISTRY, {}, config_dir)


# --- credential helpers -------------------------------------------------------


async def test_cred_helper_is_used(config_dir: Path, helper: HelperFactory) -> None:
    """credHelpers[registry] runs the helper with the server address on stdin."""
    helper(ECHO_SERVER)
    write_config(config_dir, {"credHelpers": {REGISTRY: "test"}})
    creds = await resolve_credentials(REGISTRY, {}, config_dir)
    assert creds == Credentials(f"for:{REGISTRY}", Secret(PASSWORD))


async def test_cred_helper_for_docker_hub_gets_index_address(
    config_dir: Path, helper: HelperFactory
) -> None:
    """For docker.io the helper is asked about https://index.docker.io/v1/."""
    helper(ECHO_SERVER)
    write_config(config_dir, {"credHelpers": {"https://index.docker.io/v1/": "test"}})
    creds = await resolve_credentials("docker.io", {}, config_dir)
    assert creds is not None
    assert creds.username == "for:https://index.docker.io/v1/"


async def test_cred_helper_wins_over_auths(config_dir: Path, helper: HelperFactory) -> None:
    """credHelpers is consulted before auths."""
    helper(ECHO_SERVER)
    write_config(
        config_dir,
        {"credHelpers": {REGISTRY: "test"}, "auths": {REGISTRY: {"auth": b64("file:pw")}}},
    )
    creds = await resolve_credentials(REGISTRY, {}, config_dir)
    assert creds is not None
    assert creds.username.startswith("for:")


async def test_cred_helper_of_other_registry_not_used(
    config_dir: Path, helper: HelperFactory
) -> None:
    """A credHelpers entry for another registry does not apply."""
    helper("exit 7")
    write_config(
        config_dir,
        {"credHelpers": {"other.io": "test"}, "auths": {REGISTRY: {"auth": b64("file:pw")}}},
    )
    creds = await resolve_credentials(REGISTRY, {}, config_dir)
    assert creds is not None
    assert creds.username == "file"


async def test_creds_store_is_used(config_dir: Path, helper: HelperFactory) -> None:
    """credsStore is used when no credHelpers entry matches, before auths."""
    helper(ECHO_SERVER)
    write_config(
        config_dir,
        {
            "credHelpers": {"other.io": "missing"},
            "credsStore": "test",
            "auths": {REGISTRY: {"auth": b64("file:pw")}},
        },
    )
    creds = await resolve_credentials(REGISTRY, {}, config_dir)
    assert creds == Credentials(f"for:{REGISTRY}", Secret(PASSWORD))


async def test_helper_token_username_means_identity_token(
    config_dir: Path, helper: HelperFactory
) -> None:
    """A helper Username of <token> makes the Secret an identity token."""
    helper(f'cat >/dev/null; echo \'{{"Username":"<token>","Secret":"{TOKEN}"}}\'')
    write_config(config_dir, {"credsStore": "test"})
    creds = await resolve_credentials(REGISTRY, {}, config_dir)
    assert creds == Credentials("", identity_token=Secret(TOKEN))


async def test_helper_not_found_in_keychain_gives_none(
    config_dir: Path, helper: HelperFactory
) -> None:
    """The helper's 'credentials not found' answer means no credentials, not an error."""
    helper("cat >/dev/null; echo 'credentials not found in native keychain'; exit 1")
    write_config(config_dir, {"credsStore": "test", "auths": {REGISTRY: {"auth": b64("f:p")}}})
    assert await resolve_credentials(REGISTRY, {}, config_dir) is None


async def test_helper_failure_is_error_without_secret(
    config_dir: Path, helper: HelperFactory
) -> None:
    """A failing helper is a RegistryError naming helper and registry, never its output."""
    helper(f"cat >/dev/null; echo 'bad {PASSWORD}'; echo '{TOKEN}' >&2; exit 3")
    write_config(config_dir, {"credHelpers": {REGISTRY: "test"}})
    with pytest.raises(RegistryError) as info:
        await resolve_credentials(REGISTRY, {}, config_dir)
    message = str(info.value)
    assert "docker-credential-test" in message
    assert REGISTRY in message
    assert "exit status 3" in message
    assert_no_secret(info.value)


@pytest.mark.usefixtures("helper")
async def test_helper_not_installed_is_error(config_dir: Path) -> None:
    """A helper missing from PATH is a RegistryError naming it and the registry."""
    write_config(config_dir, {"credHelpers": {REGISTRY: "test"}})
    with pytest.raises(RegistryError, match=r"docker-credential-test .* not installed") as info:
        await resolve_credentials(REGISTRY, {}, config_dir)
    assert REGISTRY in str(info.value)


async def test_helper_timeout_is_error(config_dir: Path, helper: HelperFactory) -> None:
    """A helper that does not answer in time is a RegistryError."""
    helper("exec sleep 10")
    write_config(config_dir, {"credsStore": "test"})
    with pytest.raises(RegistryError, match=r"did not answer within 0\.2 s") as info:
        await resolve_credentials(REGISTRY, {}, config_dir, helper_timeout=0.2)
    assert REGISTRY in str(info.value)


async def test_helper_malformed_output_is_error_without_secret(
    config_dir: Path, helper: HelperFactory
) -> None:
    """Output that is not the helper JSON is a RegistryError that does not quote it."""
    helper(f"cat >/dev/null; echo 'Secret={PASSWORD}'")
    write_config(config_dir, {"credsStore": "test"})
    with pytest.raises(RegistryError, match="malformed output") as info:
        await resolve_credentials(REGISTRY, {}, config_dir)
    assert_no_secret(info.value)


async def test_helper_name_with_path_is_refused(config_dir: Path) -> None:
    """A helper name that is not a plain name cannot point at another program."""
    write_config(config_dir, {"credsStore": "../../bin/evil"})
    with pytest.raises(RegistryError, match="not a plain name"):
        await resolve_credentials(REGISTRY, {}, config_dir)
