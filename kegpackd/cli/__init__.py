"""Command line: ``kegpackd package`` runs one job without a daemon; ``run`` is the daemon.

``parser`` is the grammar, ``commands`` what acts on the engine, ``client`` what asks the
running daemon, ``progress`` what a job shows while it runs, ``signals`` how a one-shot
run ends on a signal. This module maps a command to its function, and errors to exit
statuses: 2 for a command line or config that cannot mean anything, 1 for a failure,
128 + N for signal N.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

from kegpackd.cli.client import client, jobs_table
from kegpackd.cli.commands import (
    EXIT_FAILED,
    install_plugin,
    package_once,
    prune_once,
    run_daemon,
    sweep_once,
)
from kegpackd.cli.parser import Usage, build_parser, with_engine_flags
from kegpackd.cli.signals import Interrupted
from kegpackd.config import Config, load_config
from kegpackd.errors import ConfigError, KegpackError
from kegpackd.logs import configure as configure_logging

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "jobs_table", "main"]

EXIT_USAGE = 2

COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "package": package_once,
    "run": run_daemon,
    "jobs": client,
    "trigger": client,
    "sweep": sweep_once,
    "prune": prune_once,
    "install-plugin": install_plugin,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"kegpackd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.log.level, config.log.format)
    try:
        return COMMANDS[args.command](with_engine_flags(config, args), args)
    except KegpackError as exc:
        print(f"kegpackd: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, Usage) else EXIT_FAILED
    except Interrupted as exc:
        print(f"kegpackd: {exc}", file=sys.stderr)
        return 128 + exc.signum
    except BrokenPipeError:
        # The reader went away (`kegpackd jobs | head -1`): not an error worth a word.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        # Outside a job (starting up, or a daemon client): nothing of ours to clean.
        print("kegpackd: interrupted", file=sys.stderr)
        return 130
