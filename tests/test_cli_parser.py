"""The command line's grammar: shared flags declared once, and what argparse cannot check."""

from __future__ import annotations

from pathlib import Path

import pytest

from kegpackd.cli import main
from kegpackd.cli.parser import build_parser

WITH_CONFIG = {
    "package": ["package", "web"],
    "run": ["run"],
    "jobs": ["jobs"],
    "sweep": ["sweep"],
    "prune": ["prune"],
    "trigger": ["trigger", "web"],
}


@pytest.mark.parametrize("command", sorted(WITH_CONFIG))
def test_every_command_but_install_plugin_takes_the_config_flag(command: str) -> None:
    """``-c FILE`` after the command names the config file, for each one that reads it."""
    args = build_parser().parse_args([*WITH_CONFIG[command], "-c", "/etc/k.toml"])
    assert args.config == Path("/etc/k.toml")


def test_an_engine_flag_before_the_command_survives_the_commands_copy() -> None:
    """``-H URL package web``: the subcommand's own ``-H`` does not reset the one given first."""
    args = build_parser().parse_args(["-H", "tcp://e:2376", "package", "web"])
    assert args.host == "tcp://e:2376"


def test_result_is_refused_with_project(capsys: pytest.CaptureFixture[str]) -> None:
    """``package --project NAME --result FILE`` exits 2: the file holds one job's JSON."""
    assert main(["package", "--project", "shop", "--result", "job.json"]) == 2
    assert "--result writes one job" in capsys.readouterr().err
