"""The command line's grammar: commands, flags, and the checks argparse cannot express.

Flags several commands share (``-c/--config``, the engine's ``--context``/``-H``) are
declared once, in parent parsers, so that one spelling and one help text serve them all.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from kegpackd import __version__
from kegpackd.config import Config
from kegpackd.errors import KegpackError
from kegpackd.packaging.options import Overrides
from kegpackd.quiesce import QUIESCE_MODES, parse_exec_timeout


class Usage(KegpackError):
    """A command line that cannot mean anything (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kegpackd",
        description="Package Docker containers together with their mounted volumes.",
    )
    parser.add_argument("--version", action="version", version=f"kegpackd {__version__}")
    _engine_flags(parser, None)
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    # A subcommand's copy of the engine flags suppresses its default, so that it does not
    # undo the one given before the command.
    engine = argparse.ArgumentParser(add_help=False)
    _engine_flags(engine, argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    _package_command(sub, [config, engine])
    sub.add_parser(
        "run",
        parents=[config, engine],
        help="run the daemon: package labelled containers as they start",
    )
    jobs = sub.add_parser("jobs", parents=[config], help="list the running daemon's recent jobs")
    jobs.add_argument("--json", action="store_true", help="the API's JSON, unchanged")
    sweep_cmd = sub.add_parser(
        "sweep",
        parents=[config, engine],
        help="remove what killed kegpackd runs left behind (a live run's is kept)",
    )
    sweep_cmd.add_argument("--dry-run", action="store_true", help="list, do not remove")
    prune_cmd = sub.add_parser(
        "prune",
        parents=[config, engine],
        help="apply [retention] to every container's local images kegpackd made",
    )
    prune_cmd.add_argument("--dry-run", action="store_true", help="list, do not remove")
    prune_cmd.add_argument(
        "--container", metavar="NAME", help="only the images of the container named NAME"
    )
    trigger = sub.add_parser(
        "trigger",
        parents=[config],
        help="ask the running daemon to package a container (or a Compose project)",
    )
    trigger.add_argument("container", nargs="?", help="container name or id")
    trigger.add_argument("--project", help="a Compose project's name instead of a container")
    trigger.add_argument("--partial", action="store_true", help="with --project: as for package")
    plugin = sub.add_parser(
        "install-plugin",
        help="link docker-kegpack into $DOCKER_CONFIG/cli-plugins: `docker kegpack` runs kegpackd",
    )
    plugin.add_argument(
        "--remove", action="store_true", help="remove the link instead (only one kegpackd made)"
    )
    plugin.set_defaults(config=None)
    return parser


def _package_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    parents: list[argparse.ArgumentParser],
) -> None:
    pkg = sub.add_parser(
        "package",
        parents=parents,
        help="package one container (or a Compose project) now, without a daemon",
    )
    pkg.add_argument("container", nargs="?", help="container name or id")
    pkg.add_argument(
        "--project", help="package every service of this Compose project instead of a container"
    )
    pkg.add_argument(
        "--compose-out",
        metavar="FILE",
        default="-",
        help="with --project: write the packaged project's Compose file here (- for stdout)",
    )
    pkg.add_argument(
        "--partial",
        action="store_true",
        help="with --project: write the Compose file of the services that succeeded",
    )
    pkg.add_argument("--repository", help="image repository template, e.g. registry/app-{name}")
    pkg.add_argument("--tag", action="append", default=[], help="tag template (repeatable)")
    push = pkg.add_mutually_exclusive_group()
    push.add_argument("--push", dest="push", action="store_true", default=None)
    push.add_argument("--no-push", dest="push", action="store_false")
    pkg.add_argument(
        "--path", action="append", default=[], help="only this mount destination (repeatable)"
    )
    pkg.add_argument(
        "--result",
        metavar="FILE",
        type=Path,
        help="also write the job as JSON here (as /v1/jobs shows one), for scripts",
    )
    _quiesce_flags(pkg)


def _quiesce_flags(pkg: argparse.ArgumentParser) -> None:
    """What ``package`` does to the source around the copy (as the kegpack.quiesce and
    kegpack.exec-* labels, which these override)."""
    pkg.add_argument(
        "--quiesce",
        choices=QUIESCE_MODES,
        help="pause or stop the source during the copy (stop: started again after)",
    )
    pkg.add_argument(
        "--exec-before", metavar="CMD", help="command line run in the source before the copy"
    )
    pkg.add_argument(
        "--exec-after", metavar="CMD", help="command line run in the source after the copy"
    )
    pkg.add_argument(
        "--exec-timeout", metavar="SECONDS", help="time limit of each command (default 300)"
    )


def _engine_flags(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``--context``/``-H``, the docker CLI's global flags: accepted before the command (as
    the docker CLI hands them to a plugin) and after it."""
    parser.add_argument(
        "--context", default=default, metavar="NAME", help="the docker CLI context to use"
    )
    parser.add_argument(
        "-H",
        "--host",
        default=default,
        metavar="URL",
        help="the engine's address (unix://, tcp://)",
    )


def with_engine_flags(config: Config, args: argparse.Namespace) -> Config:
    """``config`` with the command line's engine choice, which wins over everything else."""
    if args.context and args.host:
        raise Usage("--context and --host: give one of them, not both")
    if not (args.context or args.host):
        return config
    docker = dataclasses.replace(config.docker, flag_host=args.host, flag_context=args.context)
    return dataclasses.replace(config, docker=docker)


def check_target(args: argparse.Namespace) -> None:
    """Exactly one of CONTAINER and --project; the project-only flags only with --project."""
    if (args.container is None) == (args.project is None):
        raise Usage(f"{args.command}: give a CONTAINER or --project NAME (one of them)")
    if args.project is None and args.partial:
        raise Usage(f"{args.command}: --partial needs --project")
    if args.project is not None and getattr(args, "path", None):
        raise Usage("package: --path names one container's mounts; not with --project")
    if args.project is not None and getattr(args, "result", None):
        raise Usage("package: --result writes one job; not with --project")


def overrides(args: argparse.Namespace) -> Overrides:
    """``package``'s flags (with ``--project``, for every service: ``--path`` is refused)."""
    return Overrides(
        repository=args.repository,
        tags=tuple(args.tag),
        push=args.push,
        paths=tuple(args.path),
        quiesce=args.quiesce,
        exec_before=args.exec_before,
        exec_after=args.exec_after,
        exec_timeout=(
            None
            if args.exec_timeout is None
            else parse_exec_timeout(args.exec_timeout, "--exec-timeout")
        ),
        origin="--",
    )
