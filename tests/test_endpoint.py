"""Where the engine is: flags, config, DOCKER_HOST, contexts, the default (no engine needed).

Contexts are written here in the docker CLI's own format; tests/test_contexts_engine.py
has the docker CLI make them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kegpackd.cli import main
from kegpackd.config import parse_config
from kegpackd.engine.client import Engine
from kegpackd.engine.endpoint import Choice, Endpoint, SourceKind, TLSFiles, resolve
from kegpackd.errors import ConfigError, EngineUnreachable


def make_context(
    config_dir: Path,
    name: str,
    host: str,
    *,
    skip_verify: bool = False,
    tls: tuple[str, ...] = (),
) -> Path:
    """A context as `docker context create` stores it; returns its TLS directory."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = config_dir / "contexts" / "meta" / digest
    meta.mkdir(parents=True)
    endpoint = {"Host": host, "SkipTLSVerify": skip_verify}
    document = {"Name": name, "Metadata": {}, "Endpoints": {"docker": endpoint}}
    (meta / "meta.json").write_text(json.dumps(document))
    tls_dir = config_dir / "contexts" / "tls" / digest / "docker"
    if tls:
        tls_dir.mkdir(parents=True)
        for part in tls:
            (tls_dir / f"{part}.pem").write_text(f"{part}\n")
    return tls_dir


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose docker config dir holds contexts a, b, c and currentContext c."""
    config_dir = tmp_path / "dockercfg"
    for name in ("a", "b", "c"):
        make_context(config_dir, name, f"unix:///run/{name}.sock")
    (config_dir / "config.json").write_text(json.dumps({"currentContext": "c"}))
    return {"DOCKER_CONFIG": str(config_dir), "HOME": str(tmp_path / "nohome")}


ALL_SET = {
    "flag_context": "a",
    "flag_host": "unix:///run/flag.sock",
    "config_context": "b",
    "config_host": "unix:///run/config.sock",
}
# Each row: the settings left (the ones above it removed), the env left, the host chosen.
ORDER = [
    ("flag_context", True, "unix:///run/a.sock", SourceKind.FLAG),
    ("flag_host", True, "unix:///run/flag.sock", SourceKind.FLAG),
    ("config_context", True, "unix:///run/b.sock", SourceKind.CONFIG),
    ("config_host", True, "unix:///run/config.sock", SourceKind.CONFIG),
    ("DOCKER_HOST", True, "unix:///run/env.sock", SourceKind.DOCKER_HOST),
    ("DOCKER_CONTEXT", True, "unix:///run/a.sock", SourceKind.DOCKER_CONTEXT),
    ("currentContext", True, "unix:///run/c.sock", SourceKind.CURRENT_CONTEXT),
    ("default", False, "unix:///var/run/docker.sock", SourceKind.DEFAULT),
]


@pytest.mark.parametrize(("first", "config_json", "host", "kind"), ORDER)
def test_each_source_wins_over_every_source_after_it(
    home: dict[str, str], first: str, config_json: bool, host: str, kind: SourceKind
) -> None:
    """With every later source also set, the first one present chooses the engine."""
    names = [row[0] for row in ORDER]
    later = set(names[names.index(first) :])
    kept = {key: value for key, value in ALL_SET.items() if key in later}
    choice = Choice(
        flag_context=kept.get("flag_context"),
        flag_host=kept.get("flag_host"),
        config_context=kept.get("config_context"),
        config_host=kept.get("config_host"),
    )
    env = dict(home)
    if "DOCKER_HOST" in later:
        env["DOCKER_HOST"] = "unix:///run/env.sock"
    if "DOCKER_CONTEXT" in later:
        env["DOCKER_CONTEXT"] = "a"
    if not config_json:
        (Path(home["DOCKER_CONFIG"]) / "config.json").unlink()
    endpoint = resolve(choice, env)
    assert (endpoint.host, endpoint.source.kind) == (host, kind)


def test_docker_config_unset_reads_the_home_docker_directory(tmp_path: Path) -> None:
    """Without DOCKER_CONFIG, currentContext and contexts come from $HOME/.docker."""
    make_context(tmp_path / ".docker", "work", "tcp://10.0.0.1:2375")
    (tmp_path / ".docker" / "config.json").write_text('{"currentContext": "work"}')
    endpoint = resolve(Choice(), {"HOME": str(tmp_path)})
    assert endpoint.url == "http://10.0.0.1:2375"


def test_the_context_named_default_is_docker_host_or_the_default_socket(
    home: dict[str, str],
) -> None:
    """`--context default` means the docker CLI's built-in context, not a stored one."""
    endpoint = resolve(Choice(flag_context="default"), home)
    assert endpoint.host == "unix:///var/run/docker.sock"
    assert endpoint.where == ('unix:///var/run/docker.sock (context "default" from --context)')


def test_every_source_is_named_where_the_engine_is_shown(home: dict[str, str]) -> None:
    """The engine's description names the context and what chose it."""
    config_json = Path(home["DOCKER_CONFIG"]) / "config.json"
    assert resolve(Choice(), home).where == (
        f'unix:///run/c.sock (context "c" from currentContext in {config_json})'
    )
    assert resolve(Choice(), {**home, "DOCKER_CONTEXT": "b"}).where == (
        'unix:///run/b.sock (context "b" from DOCKER_CONTEXT)'
    )
    assert resolve(Choice(config_host="unix:///x.sock"), home).where == (
        "unix:///x.sock (from config key docker.host)"
    )
    assert resolve(Choice(flag_host="unix:///x.sock"), home).where == (
        "unix:///x.sock (from --host)"
    )


@pytest.mark.parametrize(
    ("env_extra", "choice", "source"),
    [
        ({"DOCKER_CONTEXT": "nope"}, Choice(), 'context "nope" from DOCKER_CONTEXT'),
        ({}, Choice(flag_context="nope"), 'context "nope" from --context'),
        ({}, Choice(config_context="nope"), 'context "nope" from config key docker.context'),
    ],
)
def test_a_missing_context_is_named_with_its_source(
    home: dict[str, str], env_extra: dict[str, str], choice: Choice, source: str
) -> None:
    """A context that does not exist fails naming it and what asked for it."""
    with pytest.raises(EngineUnreachable) as caught:
        resolve(choice, {**home, **env_extra})
    assert str(caught.value).startswith(f"{source}: no such context (no ")


def test_a_missing_current_context_names_the_config_json(home: dict[str, str]) -> None:
    """currentContext naming no context fails naming the config.json that says so."""
    config_json = Path(home["DOCKER_CONFIG"]) / "config.json"
    config_json.write_text('{"currentContext": "gone"}')
    with pytest.raises(EngineUnreachable) as caught:
        resolve(Choice(), home)
    assert f'context "gone" from currentContext in {config_json}: no such context' in str(
        caught.value
    )


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ("{not json", "is not valid JSON"),
        ("[]", "has no docker endpoint (Endpoints.docker.Host)"),
        ('{"Endpoints": {}}', "has no docker endpoint (Endpoints.docker.Host)"),
        ('{"Endpoints": {"docker": {"Host": 7}}}', "has no docker endpoint"),
        (
            '{"Endpoints": {"docker": {"Host": "tcp://h:1", "SkipTLSVerify": "yes"}}}',
            'Endpoints.docker.SkipTLSVerify is "yes", not true or false',
        ),
    ],
)
def test_a_malformed_meta_json_is_an_error_naming_the_file_and_context(
    home: dict[str, str], document: str, reason: str
) -> None:
    """A meta.json kegpackd cannot read fails naming the context, its source and the file."""
    digest = hashlib.sha256(b"a").hexdigest()
    meta = Path(home["DOCKER_CONFIG"]) / "contexts" / "meta" / digest / "meta.json"
    meta.write_text(document)
    with pytest.raises(EngineUnreachable) as caught:
        resolve(Choice(), {**home, "DOCKER_CONTEXT": "a"})
    message = str(caught.value)
    assert message.startswith(f'context "a" from DOCKER_CONTEXT: {meta}')
    assert reason in message


def test_a_context_with_tls_files_verifies_with_its_ca_and_client_certificate(
    tmp_path: Path,
) -> None:
    """ca.pem, cert.pem and key.pem of the context: HTTPS, verified, with a client cert."""
    tls = make_context(tmp_path, "remote", "tcp://h:2376", tls=("ca", "cert", "key"))
    endpoint = resolve(Choice(flag_context="remote"), {"DOCKER_CONFIG": str(tmp_path)})
    assert endpoint.url == "https://h:2376"
    assert endpoint.tls == TLSFiles(
        verify=True, ca=tls / "ca.pem", cert=tls / "cert.pem", key=tls / "key.pem"
    )


def test_skip_tls_verify_turns_tls_on_without_verification(tmp_path: Path) -> None:
    """SkipTLSVerify with no files still speaks TLS, as the docker CLI does."""
    make_context(tmp_path, "lax", "tcp://h:2376", skip_verify=True)
    endpoint = resolve(Choice(flag_context="lax"), {"DOCKER_CONFIG": str(tmp_path)})
    assert (endpoint.url, endpoint.tls) == ("https://h:2376", TLSFiles(verify=False))


def test_a_context_without_tls_files_is_plain_http(tmp_path: Path) -> None:
    """No TLS files and no SkipTLSVerify: plain HTTP, whatever DOCKER_TLS_VERIFY says."""
    make_context(tmp_path, "plain", "tcp://h:2375")
    env = {"DOCKER_CONFIG": str(tmp_path), "DOCKER_TLS_VERIFY": "1"}
    endpoint = resolve(Choice(flag_context="plain"), env)
    assert (endpoint.url, endpoint.tls) == ("http://h:2375", None)


def test_a_client_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    """cert.pem without key.pem names the missing file."""
    tls = make_context(tmp_path, "half", "tcp://h:2376", tls=("ca", "cert"))
    with pytest.raises(EngineUnreachable) as caught:
        resolve(Choice(flag_context="half"), {"DOCKER_CONFIG": str(tmp_path)})
    assert str(caught.value) == (
        f'context "half" from --context: {tls / "key.pem"} is missing '
        "(cert.pem and key.pem go together)"
    )


def test_docker_tls_verify_applies_to_docker_host_with_the_cert_path(tmp_path: Path) -> None:
    """DOCKER_HOST with DOCKER_TLS_VERIFY and DOCKER_CERT_PATH: the cert path's three files."""
    (tmp_path / "cert.pem").write_text("c")
    env = {
        "DOCKER_HOST": "tcp://h:2376",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(tmp_path),
    }
    endpoint = resolve(Choice(), env)
    assert endpoint.tls == TLSFiles(
        verify=True, ca=tmp_path / "ca.pem", cert=tmp_path / "cert.pem", key=tmp_path / "key.pem"
    )


def test_the_config_file_host_and_context_together_are_refused() -> None:
    """[docker] host and context both set: a config error naming both keys."""
    with pytest.raises(ConfigError, match=r"docker\.host and docker\.context"):
        parse_config({"docker": {"host": "unix:///x.sock", "context": "a"}})


def test_the_config_file_context_is_read_when_the_engine_is_opened(
    home: dict[str, str],
) -> None:
    """[docker] context names a context of the docker CLI's store."""
    config = parse_config({"docker": {"context": "b"}})
    assert config.docker.endpoint(home).where == (
        'unix:///run/b.sock (context "b" from config key docker.context)'
    )


def test_context_and_host_flags_together_are_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--context` with `--host` is refused with exit status 2, as the docker CLI refuses it."""
    status = main(["--context", "a", "-H", "unix:///x.sock", "package", "web"])
    assert status == 2
    assert capsys.readouterr().err == (
        "kegpackd: --context and --host: give one of them, not both\n"
    )


def test_the_context_flag_goes_before_or_after_the_command(
    home: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kegpackd --context a package` and `kegpackd package --context a` both choose a."""
    for key, value in home.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    for argv in (["--context", "a", "package", "web"], ["package", "--context", "a", "web"]):
        assert main(argv) == 1
        assert capsys.readouterr().err == (
            "kegpackd: cannot reach the Docker engine at unix:///run/a.sock "
            '(context "a" from --context): No such file or directory\n'
        )


async def test_an_unreachable_context_engine_names_the_context(tmp_path: Path) -> None:
    """The connection error of an engine chosen by a context names the context."""
    make_context(tmp_path, "gone", f"unix://{tmp_path}/none.sock")
    endpoint = resolve(Choice(), {"DOCKER_CONFIG": str(tmp_path), "DOCKER_CONTEXT": "gone"})
    async with Engine.open(endpoint) as engine:
        with pytest.raises(EngineUnreachable) as caught:
            await engine.system_time_ns()
    assert str(caught.value) == (
        f"cannot reach the Docker engine at unix://{tmp_path}/none.sock "
        '(context "gone" from DOCKER_CONTEXT): No such file or directory'
    )


def test_a_host_given_by_code_is_described_as_such() -> None:
    """Engine.open("unix://…") from code (tests, tools) still names a source."""
    assert Endpoint.given("unix:///x.sock").where == "unix:///x.sock (given by the caller)"
