"""`kegpackd package` with a bad config: exit 2, one line on stderr naming the problem.

The config is loaded before the engine is contacted, so these need no engine; DOCKER_HOST
points nowhere to make sure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kegpackd.cli import main

AUTH = '[registries.auth."r.example"]\nusername = "ci"\n'
Setup = Callable[[Path], bytes]


def text(content: str) -> Setup:
    """A config file with this TOML text."""
    return lambda _: content.encode()


def secret_at(kind: str, key: str) -> Setup:
    """A config whose secret file (``key``'s value) is missing, a directory, or not UTF-8."""

    def setup(base: Path) -> bytes:
        target = base / "secret"
        if kind == "directory":
            target.mkdir()
        elif kind == "latin1":
            target.write_bytes(b"caf\xe9\n")
        section = AUTH if key == "password_file" else "[http]\n"
        return f'{section}{key} = "{target}"\n'.encode()

    return setup


CASES: dict[str, tuple[Setup, str]] = {
    "unknown-section": (text('[dockr]\nhost = "x"\n'), "config: unknown key dockr"),
    "unknown-key": (text('[log]\nlevle = "debug"\n'), "config: unknown key log.levle"),
    "unknown-auth-key": (
        text(AUTH + 'password = "pw"\n'),
        'config: unknown key registries.auth."r.example".password',
    ),
    "wrong-type-bool": (text('[packaging]\npush = "yes"\n'), "config key packaging.push:"),
    "wrong-type-int": (text("[packaging]\nconcurrency = 0\n"), "config key packaging.concurrency:"),
    "wrong-type-list": (text('[packaging]\ntags = "v1"\n'), "config key packaging.tags:"),
    "bad-duration": (
        text('[daemon]\nshutdown_grace = "8d"\n'),
        "config key daemon.shutdown_grace:",
    ),
    "bad-listen": (text('[http]\nlisten = "h:\\u00b2"\n'), "config key http.listen:"),
    "key-with-newline": (
        text('[packaging]\n"a\\nb" = 1\n'),
        'config: unknown key packaging."a\\nb"',
    ),
    "password-file-missing": (
        secret_at("missing", "password_file"),
        'config key registries.auth."r.example".password_file: cannot read ',
    ),
    "password-file-directory": (
        secret_at("directory", "password_file"),
        'config key registries.auth."r.example".password_file: cannot read ',
    ),
    "password-file-not-utf8": (
        secret_at("latin1", "password_file"),
        'config key registries.auth."r.example".password_file: ',
    ),
    "password-file-nul": (
        text(AUTH + 'password_file = "/x\\u0000y"\n'),
        'config key registries.auth."r.example".password_file: cannot read ',
    ),
    "token-file-missing": (secret_at("missing", "token_file"), "config key http.token_file:"),
    "token-file-directory": (secret_at("directory", "token_file"), "config key http.token_file:"),
    "invalid-toml": (text("[packaging\npush = true\n"), "not valid TOML"),
    "not-utf8": (lambda _: b'[log]\nlevel = "caf\xe9"\n', "not valid TOML"),
    "huge-integer": (text("[packaging]\nconcurrency = " + "1" * 5000 + "\n"), "not valid TOML"),
    "deep-nesting": (text("a = " + "[" * 5000 + "]" * 5000 + "\n"), "nested too deeply"),
}


# Run through the real entry point too (each run spends about half a second importing).
ENTRY_POINT_CASES = ["unknown-key", "password-file-directory", "not-utf8", "deep-nesting"]


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str


def write_case(base: Path, case: str) -> Path:
    config = base / "kegpackd.toml"
    config.write_bytes(CASES[case][0](base))
    return config


def check_one_line_exit_2(done: Outcome, expected: str) -> None:
    """Exit 2, nothing on stdout, one 'kegpackd: ' line on stderr holding ``expected``."""
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.endswith("\n")
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("kegpackd: ")
    assert expected in done.stderr


def start_package(config: Path) -> subprocess.Popen[str]:
    """Start ``python -m kegpackd package somecontainer --config CONFIG``, with no engine."""
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    return subprocess.Popen(
        [sys.executable, "-m", "kegpackd", "package", "somecontainer", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def finish(process: subprocess.Popen[str]) -> Outcome:
    stdout, stderr = process.communicate(timeout=120)
    return Outcome(process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def entry_point_outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """The entry-point runs, started together so that their imports overlap."""
    processes = {
        case: start_package(write_case(tmp_path_factory.mktemp(case), case))
        for case in ENTRY_POINT_CASES
    }
    return {case: finish(process) for case, process in processes.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_config_exits_2_with_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    """A bad config file: main() returns 2 and writes one line naming the problem."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    config = write_case(tmp_path, case)
    returncode = main(["package", "somecontainer", "--config", str(config)])
    captured = capsys.readouterr()
    check_one_line_exit_2(Outcome(returncode, captured.out, captured.err), CASES[case][1])


@pytest.mark.parametrize("case", ENTRY_POINT_CASES)
def test_entry_point_exits_2_with_one_line(
    entry_point_outcomes: dict[str, Outcome], case: str
) -> None:
    """`python -m kegpackd package` exits 2 with one line and no traceback."""
    check_one_line_exit_2(entry_point_outcomes[case], CASES[case][1])


@pytest.mark.parametrize(
    ("kind", "reason"), [("missing", "No such file or directory"), ("directory", "Is a directory")]
)
def test_unreadable_config_file_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, reason: str
) -> None:
    """A config path that is missing or a directory: exit 2 and one line naming the path."""
    config = tmp_path / "kegpackd.toml"
    if kind == "directory":
        config.mkdir()
    assert main(["package", "somecontainer", "-c", str(config)]) == 2
    assert capsys.readouterr().err == f"kegpackd: config {config}: cannot read: {reason}\n"
