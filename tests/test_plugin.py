"""``docker kegpack``: the plugin's argv, its metadata, ``kegpackd install-plugin``, and
the real docker CLIs (28.2.2 at /usr/local/bin, Debian's 20.10 at /usr/bin) running it."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kegpackd import __version__, cli, plugin
from kegpackd.errors import KegpackError
from kegpackd.plugin import PluginUsage, environment, parse
from tests.dockertools import Docker, TestEnv

DOCKER_CLIS = ("/usr/local/bin/docker", "/usr/bin/docker")


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private DOCKER_CONFIG for this process (the plugin sets docker's variables in it)."""
    config = tmp_path / "dockercfg"
    for key in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    return config


def test_metadata_is_the_json_the_docker_cli_asks_for(capsys: pytest.CaptureFixture[str]) -> None:
    """`docker-kegpack docker-cli-plugin-metadata` prints schema 0.1.0, a vendor, the version."""
    assert plugin.main(["docker-cli-plugin-metadata"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["SchemaVersion"] == "0.1.0"
    assert answer["Vendor"] == "kegpackd"
    assert answer["Version"] == __version__
    assert answer["ShortDescription"]


def test_global_flags_before_the_plugin_name_choose_the_engine() -> None:
    """`--context prod -H URL kegpack package web`: both reach kegpackd as its own flags."""
    invocation = parse(["--context", "prod", "-H", "unix:///x", "kegpack", "package", "web"])
    assert invocation.flags.context == "prod"
    assert invocation.kegpackd_argv() == [
        *("--context", "prod", "--host", "unix:///x"),
        *("package", "web"),
    ]


def test_dash_c_before_kegpack_is_dockers_context_and_after_it_kegpackds_config() -> None:
    """`-c prod kegpack package web -c k.toml`: docker's context, then kegpackd's config."""
    invocation = parse(["-c", "prod", "kegpack", "package", "web", "-c", "k.toml"])
    assert invocation.flags.context == "prod"
    assert invocation.args == ("package", "web", "-c", "k.toml")


def test_pflag_forms_of_global_flags_are_understood() -> None:
    """`--context=a`, `-cb`, `-Dl debug`, `--tlsverify=false` parse as docker parses them."""
    assert parse(["--context=a", "kegpack"]).flags.context == "a"
    assert parse(["-Dcb", "kegpack"]).flags.context == "b"
    assert parse(["-Dl", "debug", "-H=tcp://h:1", "kegpack", "jobs"]).flags.host == "tcp://h:1"
    assert parse(["--tlsverify=false", "kegpack"]).flags.tls_verify is False


def test_an_unknown_global_flag_is_refused_by_name() -> None:
    """A flag docker-kegpack does not know fails, naming it, rather than being guessed at."""
    with pytest.raises(PluginUsage, match="--bogus"):
        parse(["--bogus", "x", "kegpack", "jobs"])


def test_an_unknown_global_flag_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The entry point turns a refused argv into exit status 2 and one line on stderr."""
    assert plugin.main(["-Z", "kegpack", "jobs"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "-Z" in err


def test_an_argv_without_the_plugin_name_is_refused() -> None:
    """Run by hand as `docker-kegpack package web`, it says to use docker kegpack or kegpackd."""
    with pytest.raises(PluginUsage, match="expected 'kegpack'"):
        parse(["package", "web"])


def test_docker_help_kegpack_shows_kegpackds_help() -> None:
    """`docker help kegpack package` arrives as `help kegpack package`: kegpackd's --help."""
    assert parse(["help", "kegpack", "package"]).args == ("package", "--help")


def test_config_dir_flag_becomes_docker_config() -> None:
    """`--config DIR` (not passed on by the docker CLI in any variable) sets DOCKER_CONFIG."""
    flags = parse(["--config", "/tmp/dc", "kegpack", "jobs"]).flags
    assert environment(flags, {})["DOCKER_CONFIG"] == "/tmp/dc"


def test_tls_file_flags_in_one_directory_become_docker_cert_path() -> None:
    """`--tlsverify --tlscacert D/ca.pem --tlscert D/cert.pem --tlskey D/key.pem`."""
    argv = ["--tlsverify", "--tlscacert", "/d/ca.pem", "--tlscert", "/d/cert.pem"]
    flags = parse([*argv, "--tlskey", "/d/key.pem", "kegpack"]).flags
    assert environment(flags, {}) == {"DOCKER_CERT_PATH": "/d", "DOCKER_TLS_VERIFY": "1"}


def test_tls_files_that_docker_cert_path_cannot_name_are_refused() -> None:
    """A CA file named other than ca.pem cannot be expressed as DOCKER_CERT_PATH: refused."""
    flags = parse(["--tlscacert", "/d/my-ca.crt", "kegpack"]).flags
    with pytest.raises(PluginUsage, match=r"my-ca\.crt"):
        environment(flags, {})


def test_dockers_context_reaches_kegpackds_engine_resolution(
    docker_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`docker --config DIR --context nope kegpack sweep` looks for `nope` in DIR's store."""
    other = docker_config.parent / "other"
    assert plugin.main(["--config", str(other), "--context", "nope", "kegpack", "sweep"]) == 1
    err = capsys.readouterr().err
    assert 'context "nope" from --context: no such context' in err
    assert str(other / "contexts" / "meta") in err


def test_install_plugin_links_the_script_into_docker_config(docker_config: Path) -> None:
    """`kegpackd install-plugin` makes $DOCKER_CONFIG/cli-plugins/docker-kegpack → script."""
    assert cli.main(["install-plugin"]) == 0
    link = docker_config / "cli-plugins" / "docker-kegpack"
    assert link.is_symlink()
    assert Path(os.readlink(link)) == plugin.find_script()


def test_install_plugin_remove_undoes_the_link(docker_config: Path) -> None:
    """`kegpackd install-plugin --remove` removes the link it made."""
    assert cli.main(["install-plugin"]) == 0
    assert cli.main(["install-plugin", "--remove"]) == 0
    assert not (docker_config / "cli-plugins" / "docker-kegpack").is_symlink()


def test_install_plugin_remove_leaves_a_plugin_kegpackd_did_not_make(
    docker_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A docker-kegpack that is not kegpackd's link stays, and the command fails saying so."""
    foreign = docker_config / "cli-plugins" / "docker-kegpack"
    foreign.parent.mkdir(parents=True)
    foreign.write_text("#!/bin/sh\necho someone else's\n")
    assert cli.main(["install-plugin", "--remove"]) == 1
    assert "is not a link kegpackd made" in capsys.readouterr().err
    assert foreign.read_text() == "#!/bin/sh\necho someone else's\n"


def test_install_plugin_does_not_overwrite_a_plugin_kegpackd_did_not_make(
    docker_config: Path,
) -> None:
    """An existing docker-kegpack of someone else's is not replaced by the install."""
    foreign = docker_config / "cli-plugins" / "docker-kegpack"
    foreign.parent.mkdir(parents=True)
    foreign.symlink_to("/bin/true")
    with pytest.raises(KegpackError, match="is not a link kegpackd made"):
        plugin.install(os.environ, plugin.find_script())
    assert os.readlink(foreign) == "/bin/true"


def test_install_plugin_refuses_a_script_others_may_rewrite(
    docker_config: Path, tmp_path: Path
) -> None:
    """The docker CLI would run a group-writable script as whoever types docker: refused."""
    script = tmp_path / "bin" / "docker-kegpack"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n# kegpackd.plugin\n")
    script.chmod(0o775)
    with pytest.raises(KegpackError, match="writable by group or others"):
        plugin.install(os.environ, script)
    assert not (docker_config / "cli-plugins").exists()


# The real docker CLIs, on the private engine.


def _cli_env(tmp_path: Path) -> dict[str, str]:
    """No DOCKER_* of the caller: a private DOCKER_CONFIG and HOME only."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DOCKER_")}
    return {**env, "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path / "dockercfg")}


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(params=DOCKER_CLIS, ids=["docker-28", "docker-20.10"])
def docker_cli(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real docker CLI and a private HOME whose DOCKER_CONFIG has the plugin installed by
    `kegpackd install-plugin` (then removed by --remove, which must succeed)."""
    binary = str(request.param)
    assert Path(binary).exists(), f"{binary} is missing: scripts/testenv.sh install puts it"
    kegpackd = str(plugin.find_script().with_name("kegpackd"))
    env = _cli_env(tmp_path)
    installed = _run([kegpackd, "install-plugin"], env)
    assert installed.returncode == 0, installed.stderr
    yield binary, tmp_path
    removed = _run([kegpackd, "install-plugin", "--remove"], env)
    assert removed.returncode == 0, removed.stderr


def _package(docker: Docker, binary: str, home: Path, *global_flags: str) -> str:
    """`docker GLOBAL_FLAGS kegpack package C`, C labelled and with a bind mount: the image
    exists, is named by the label and carries the mount's file."""
    repository = f"kegpack-test/plugin-{uuid.uuid4().hex[:8]}"
    source = home / "keg"
    source.mkdir()
    (source / "f.txt").write_text(f"via {binary} {' '.join(global_flags)}\n")
    cid = docker.container("-v", f"{source}:/keg", "--label", f"kegpack.repository={repository}")
    done = _run([binary, *global_flags, "kegpack", "package", cid], _cli_env(home))
    assert done.returncode == 0, done.stderr
    reference = done.stdout.split()[0]
    docker.track_image(reference)
    assert reference.startswith(f"{repository}:")
    assert docker.run_image(reference, "cat", "/keg/f.txt") == (source / "f.txt").read_text()
    return reference


@pytest.mark.engine
def test_docker_kegpack_help_shows_kegpackds_commands(docker_cli: tuple[str, Path]) -> None:
    """`docker --help` lists kegpack and `docker kegpack --help` is kegpackd's usage."""
    binary, home = docker_cli
    listed = _run([binary, "--help"], _cli_env(home))
    assert "kegpack" in listed.stdout
    helped = _run([binary, "kegpack", "--help"], _cli_env(home))
    assert helped.returncode == 0, helped.stderr
    assert "{package,run,jobs" in helped.stdout


@pytest.mark.engine
def test_docker_context_kegpack_package_makes_the_image(
    docker_cli: tuple[str, Path], docker: Docker, testenv: TestEnv
) -> None:
    """`docker --context CTX kegpack package C`: CTX (made by docker) is the engine used."""
    binary, home = docker_cli
    context = f"kegpack-plugin-{uuid.uuid4().hex[:8]}"
    create = [binary, "context", "create", context, "--docker", f"host={testenv.docker_host}"]
    made = _run(create, _cli_env(home))
    assert made.returncode == 0, made.stderr
    try:
        _package(docker, binary, home, "--context", context)
    finally:
        _run([binary, "context", "rm", "-f", context], _cli_env(home))


@pytest.mark.engine
def test_docker_host_kegpack_package_makes_the_image(
    docker_cli: tuple[str, Path], docker: Docker, testenv: TestEnv
) -> None:
    """`docker -H ENGINE kegpack package C`, with no DOCKER_HOST: ENGINE is used."""
    binary, home = docker_cli
    _package(docker, binary, home, "-H", testenv.docker_host)


@pytest.mark.engine
def test_docker_tls_flags_kegpack_package_makes_the_image(
    docker_cli: tuple[str, Path], docker: Docker, testenv: TestEnv
) -> None:
    """`docker -H tcp://… --tlsverify --tlscacert/--tlscert/--tlskey … kegpack package C`."""
    binary, home = docker_cli
    certs = testenv.tls_certs
    tls = ("--tlsverify", "--tlscacert", f"{certs}/ca.pem", "--tlscert", f"{certs}/cert.pem")
    _package(docker, binary, home, "-H", testenv.tls_host, *tls, "--tlskey", f"{certs}/key.pem")


def test_the_console_script_is_installed_beside_python() -> None:
    """pip installs `docker-kegpack` (pyproject's [project.scripts]) where find_script looks."""
    script = plugin.find_script()
    assert script.name == "docker-kegpack"
    assert script.stat().st_mode & stat.S_IXUSR
    assert shutil.which("docker-kegpack", path=str(script.parent)) == str(script)
