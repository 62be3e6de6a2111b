"""``docker kegpack``: kegpackd as a docker CLI plugin, the ``docker-kegpack`` script.

The docker CLI (20.10 and 28 alike, measured) runs ``docker-kegpack`` with the whole
original argv, its own global flags first (``docker-kegpack --context prod -H … kegpack
package web``), and resolves no engine for it: no address, no TLS files, not even
``DOCKER_CONFIG`` when ``--config DIR`` was given. So this module reads docker's global
flags itself, hands the engine choice to kegpackd's command line (``--context``/``-H``, the
flags ``endpoint.resolve`` ranks first) and docker's directories to the environment
variables the docker CLI reads for them, then runs kegpackd with the rest of the argv.

``-c`` before ``kegpack`` is docker's ``--context``; after it, kegpackd's ``-c/--config``
(a config file), as each program's own help says.

Imports kegpackd's command line only to run a command: the docker CLI asks every plugin
for its metadata whenever it lists commands (``docker --help``), so that answer is quick.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from kegpackd import __version__
from kegpackd.engine.endpoint import docker_config_dir
from kegpackd.errors import KegpackError

NAME = "kegpack"
SCRIPT = f"docker-{NAME}"
METADATA_COMMAND = "docker-cli-plugin-metadata"
EXIT_USAGE = 2
# A kegpackd console script names its entry point; a look at its head tells ours apart.
_SCRIPT_MARK = b"kegpackd.plugin"
_SCRIPT_HEAD = 4096

# docker's global flags (`docker --help`, 20.10 to 28): long name → short name, by kind.
_VALUE_FLAGS = {
    "context": "c",
    "host": "H",
    "config": "",
    "log-level": "l",
    "tlscacert": "",
    "tlscert": "",
    "tlskey": "",
}
_BOOL_FLAGS = {"debug": "D", "tls": "", "tlsverify": ""}
_SHORT = {short: name for table in (_VALUE_FLAGS, _BOOL_FLAGS) for name, short in table.items()}
# The names docker's TLS file flags must have for DOCKER_CERT_PATH to stand for them.
_TLS_FILES = {"tlscacert": "ca.pem", "tlscert": "cert.pem", "tlskey": "key.pem"}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class PluginUsage(KegpackError):
    """An argv from the docker CLI that docker-kegpack cannot follow (exit status 2)."""


@dataclass(frozen=True)
class DockerFlags:
    """The docker global flags that decide the engine; the others are accepted and dropped."""

    context: str | None = None
    host: str | None = None
    config_dir: str | None = None
    tls: bool = False
    tls_verify: bool | None = None
    tls_files: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Invocation:
    flags: DockerFlags
    # kegpackd's own argv: what followed `kegpack`.
    args: tuple[str, ...]

    def kegpackd_argv(self) -> list[str]:
        """kegpackd's argv, with docker's engine choice as kegpackd's own global flags."""
        engine = []
        if self.flags.context is not None:
            engine += ["--context", self.flags.context]
        if self.flags.host is not None:
            engine += ["--host", self.flags.host]
        return [*engine, *self.args]


def metadata() -> dict[str, str]:
    """What ``docker-kegpack docker-cli-plugin-metadata`` prints for the docker CLI."""
    return {
        "SchemaVersion": "0.1.0",
        "Vendor": "kegpackd",
        "Version": __version__,
        "ShortDescription": "Package containers together with their mounted volumes",
    }


def parse(argv: Sequence[str]) -> Invocation:
    """Docker's global flags, up to the plugin's name; what follows it is kegpackd's."""
    flags = DockerFlags()
    index = 0
    while index < len(argv) and argv[index].startswith("-") and argv[index] != "-":
        if argv[index] == "--":
            index += 1
            break
        flags, index = _flag(flags, argv, index)
    rest = list(argv[index:])
    if rest[:1] == [NAME]:
        return Invocation(flags, tuple(rest[1:]))
    if rest[:2] == ["help", NAME]:
        # `docker help kegpack [command]`, as the docker CLI passes it on.
        return Invocation(flags, (*rest[2:], "--help"))
    found = json.dumps(rest[0]) if rest else "nothing"
    raise PluginUsage(
        f"{SCRIPT}: expected {NAME!r} after docker's global flags, found {found} (the docker"
        f" CLI runs it as `docker {NAME} …`; without it, run kegpackd)"
    )


def _flag(flags: DockerFlags, argv: Sequence[str], index: int) -> tuple[DockerFlags, int]:
    """One docker global flag at ``argv[index]`` (pflag's forms): the flags, the next index."""
    word = argv[index]
    if word.startswith("--"):
        name, has_value, value = word[2:].partition("=")
        return _long(flags, name, value if has_value else None, argv, index)
    return _short(flags, argv, index)


def _short(flags: DockerFlags, argv: Sequence[str], index: int) -> tuple[DockerFlags, int]:
    """``-Dc prod``, ``-cprod``, ``-c=prod``: booleans, then at most one flag with a value."""
    word = argv[index]
    cluster = word[1:]
    while cluster:
        name = _SHORT.get(cluster[0])
        if name is None:
            raise _unknown(f"-{cluster[0]}", word)
        cluster = cluster[1:]
        if name in _VALUE_FLAGS:
            if cluster:
                return _set_value(flags, name, cluster.removeprefix("="), word), index + 1
            return _long(flags, name, None, argv, index)
        if cluster.startswith("="):
            return _set_bool(flags, name, cluster[1:], word), index + 1
        flags = _set_bool(flags, name, None, word)
    return flags, index + 1


def _long(
    flags: DockerFlags, name: str, value: str | None, argv: Sequence[str], index: int
) -> tuple[DockerFlags, int]:
    """``--name``, ``--name=value`` or ``--name value`` (the next word)."""
    if name in _BOOL_FLAGS:
        return _set_bool(flags, name, value, argv[index]), index + 1
    if name not in _VALUE_FLAGS:
        raise _unknown(f"--{name}", argv[index])
    if value is not None:
        return _set_value(flags, name, value, argv[index]), index + 1
    if index + 1 >= len(argv):
        raise PluginUsage(f"docker flag {argv[index]} needs a value, and the argv ends there")
    return _set_value(flags, name, argv[index + 1], argv[index]), index + 2


def _unknown(flag: str, word: str) -> PluginUsage:
    known = ", ".join(f"--{name}" for name in (*_VALUE_FLAGS, *_BOOL_FLAGS))
    return PluginUsage(
        f"docker global flag {flag} (in {json.dumps(word)}) is not one {SCRIPT} knows: {known}"
    )


def _set_bool(flags: DockerFlags, name: str, value: str | None, word: str) -> DockerFlags:
    if value is None or value in _TRUE:
        on = True
    elif value in _FALSE:
        on = False
    else:
        raise PluginUsage(f"docker flag {json.dumps(word)}: {value!r} is not true or false")
    if name == "tls":
        return replace(flags, tls=on)
    if name == "tlsverify":
        return replace(flags, tls_verify=on)
    return flags  # --debug: kegpackd's log level is its config's log.level


def _set_value(flags: DockerFlags, name: str, value: str, word: str) -> DockerFlags:
    if name == "context":
        return replace(flags, context=value)
    if name == "host":
        if flags.host is not None:
            raise PluginUsage(f"docker flag {json.dumps(word)}: give one -H/--host, not two")
        return replace(flags, host=value)
    if name == "config":
        return replace(flags, config_dir=value)
    if name in _TLS_FILES:
        return replace(flags, tls_files={**flags.tls_files, name: value})
    return flags  # --log-level: as --debug


def environment(flags: DockerFlags, env: Mapping[str, str]) -> dict[str, str | None]:
    """The variables that stand for docker's ``--config`` and TLS flags (None: unset).

    kegpackd reads the docker CLI's variables for these (``endpoint.resolve``): a flag
    given to docker wins over the variable, as in the docker CLI. The TLS file flags must
    name ``DIR/ca.pem``, ``DIR/cert.pem``, ``DIR/key.pem`` of one ``DIR``, which becomes
    ``DOCKER_CERT_PATH``.
    """
    changes: dict[str, str | None] = {}
    if flags.config_dir is not None:
        changes["DOCKER_CONFIG"] = flags.config_dir
    cert_dir = _cert_dir(flags.tls_files)
    if cert_dir is not None:
        changes["DOCKER_CERT_PATH"] = cert_dir
    if flags.tls_verify is not None:
        changes["DOCKER_TLS_VERIFY"] = "1" if flags.tls_verify else None
    if flags.tls and cert_dir is None and not env.get("DOCKER_CERT_PATH"):
        # --tls alone: TLS without verification, which kegpackd turns on for a certificate
        # directory; the docker CLI's default one is ~/.docker (not --config's).
        changes["DOCKER_CERT_PATH"] = str(_home(env) / ".docker")
    return changes


def _cert_dir(files: Mapping[str, str]) -> str | None:
    """The one directory the TLS file flags name, or None when none was given."""
    if not files:
        return None
    dirs = set()
    for name, value in files.items():
        path = Path(value)
        if path.name != _TLS_FILES[name]:
            raise PluginUsage(
                f"docker flag --{name} {json.dumps(value)}: {SCRIPT} reads TLS files as"
                f" DOCKER_CERT_PATH names them, DIR/{_TLS_FILES[name]}; name it so"
            )
        dirs.add(str(path.parent))
    if len(dirs) > 1:
        raise PluginUsage(
            f"docker flags --tlscacert/--tlscert/--tlskey name {len(dirs)} directories"
            f" ({', '.join(sorted(dirs))}); {SCRIPT} needs them in one (DOCKER_CERT_PATH)"
        )
    return dirs.pop()


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME")
    return Path(home) if home else Path.home()


def _apply(changes: Mapping[str, str | None], env: MutableMapping[str, str]) -> None:
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value


def main(argv: Sequence[str] | None = None) -> int:
    """The ``docker-kegpack`` entry point: the metadata, or kegpackd's command line."""
    argv = sys.argv[1:] if argv is None else argv
    if list(argv[:1]) == [METADATA_COMMAND]:
        print(json.dumps(metadata()))
        return 0
    try:
        invocation = parse(argv)
        _apply(environment(invocation.flags, os.environ), os.environ)
    except PluginUsage as exc:
        print(f"docker {NAME}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from kegpackd.cli import main as kegpackd_main  # noqa: PLC0415 (see the docstring)

    return kegpackd_main(invocation.kegpackd_argv())


# `kegpackd install-plugin`: a symbolic link in the docker CLI's plugin directory.


def plugin_link(env: Mapping[str, str]) -> Path:
    """Where the docker CLI looks for ``docker kegpack``: ``$DOCKER_CONFIG/cli-plugins``."""
    return docker_config_dir(env) / "cli-plugins" / SCRIPT


def find_script(executable: str | None = None) -> Path:
    """This installation's ``docker-kegpack``: beside its Python (a venv's or pipx's bin),
    else on ``PATH``; absolute, as the link must be."""
    beside = Path(executable or sys.executable).parent / SCRIPT
    if beside.is_file():
        return beside.absolute()
    found = shutil.which(SCRIPT)
    if found is None:
        raise KegpackError(
            f"no {SCRIPT} script beside {executable or sys.executable} nor on PATH: install"
            " kegpackd with pip or pipx, which writes it"
        )
    return Path(found).absolute()


def install(env: Mapping[str, str], script: Path) -> str:
    """Link ``script`` as the docker CLI's plugin; re-point a link kegpackd made before."""
    _check_script(script)
    link = plugin_link(env)
    if link.is_symlink() and Path(os.readlink(link)) == script:
        return f"{link} already links to {script}"
    if (link.exists() or link.is_symlink()) and not _made_by_kegpackd(link):
        raise KegpackError(
            f"{link} exists and is not a link kegpackd made: move it away, then run"
            " `kegpackd install-plugin` again"
        )
    try:
        link.parent.mkdir(parents=True, exist_ok=True)
        pending = link.with_name(f".{SCRIPT}.{os.getpid()}")
        pending.unlink(missing_ok=True)
        pending.symlink_to(script)
        pending.replace(link)
    except OSError as exc:
        raise KegpackError(f"cannot link {link} to {script}: {exc.strerror}") from None
    return f"linked {link} to {script}: `docker {NAME} --help` shows the commands"


def remove(env: Mapping[str, str]) -> str:
    """Remove the plugin's link, only when it is one kegpackd made."""
    link = plugin_link(env)
    if not (link.exists() or link.is_symlink()):
        return f"{link} does not exist: nothing to remove"
    if not _made_by_kegpackd(link):
        raise KegpackError(f"{link} is not a link kegpackd made: left as it is")
    try:
        link.unlink()
    except OSError as exc:
        raise KegpackError(f"cannot remove {link}: {exc.strerror}") from None
    return f"removed {link}"


def _check_script(script: Path) -> None:
    """The docker CLI runs the link's target as whoever types ``docker``: a script that
    other users may rewrite would run their code as that user (root, often)."""
    for path in (script, script.parent):
        mode = path.stat().st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise KegpackError(
                f"{path} is writable by group or others ({stat.filemode(mode)}): the docker"
                " CLI would run what they put there; fix its mode first"
            )


def _made_by_kegpackd(link: Path) -> bool:
    """A symbolic link to a ``docker-kegpack`` that is kegpackd's script (or is gone: the
    venv it came from was removed)."""
    if not link.is_symlink():
        return False
    target = Path(os.readlink(link))
    if target.name != SCRIPT:
        return False
    try:
        with link.open("rb") as handle:
            return _SCRIPT_MARK in handle.read(_SCRIPT_HEAD)
    except FileNotFoundError:
        return True
    except OSError:
        return False
