"""Command line: ``kegpackd package`` runs one job without a daemon."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import anyio
from rich.console import Console
from rich.live import Live
from rich.text import Text

from kegpackd import __version__
from kegpackd.config import Config, load_config
from kegpackd.daemon import Daemon
from kegpackd.engine import Engine
from kegpackd.errors import ConfigError, KegpackError
from kegpackd.logs import configure as configure_logging
from kegpackd.options import Overrides
from kegpackd.pipeline import JobRequest, JobResult, package

EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("kegpackd")


def _human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    raise AssertionError


class LogProgress:
    """Plain lines on stderr, for logs and pipes."""

    def __init__(self, container: str) -> None:
        self.container = container
        self.bytes = 0
        self.started = time.monotonic()

    def stage(self, name: str, detail: str = "") -> None:
        log.info("%s: %s%s", self.container, name, f" {detail}" if detail else "")

    def streamed(self, count: int) -> None:
        self.bytes += count


class TerminalProgress(LogProgress):
    """One live line: stage, bytes streamed and rate."""

    def __init__(self, container: str, live: Live) -> None:
        super().__init__(container)
        self.live = live
        self.current = "starting"
        self.last_draw = 0.0

    def stage(self, name: str, detail: str = "") -> None:
        self.current = f"{name} {detail}".strip()
        self._draw(force=True)

    def streamed(self, count: int) -> None:
        super().streamed(count)
        self._draw()

    def _draw(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        rate = self.bytes / max(now - self.started, 1e-6)
        self.live.update(
            Text.assemble(
                (f"{self.container} ", "bold"),
                (self.current, "cyan"),
                f"  {_human(self.bytes)} streamed, {_human(rate)}/s",
            )
        )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kegpackd",
        description="Package Docker containers together with their mounted volumes.",
    )
    parser.add_argument("--version", action="version", version=f"kegpackd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    pkg = sub.add_parser("package", help="package one container now, without a daemon")
    pkg.add_argument("container", help="container name or id")
    pkg.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    pkg.add_argument("--repository", help="image repository template, e.g. registry/app-{name}")
    pkg.add_argument("--tag", action="append", default=[], help="tag template (repeatable)")
    push = pkg.add_mutually_exclusive_group()
    push.add_argument("--push", dest="push", action="store_true", default=None)
    push.add_argument("--no-push", dest="push", action="store_false")
    pkg.add_argument(
        "--path", action="append", default=[], help="only this mount destination (repeatable)"
    )
    run = sub.add_parser("run", help="run the daemon: package labelled containers as they start")
    run.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    jobs = sub.add_parser("jobs", help="list the running daemon's recent jobs")
    jobs.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    trigger = sub.add_parser("trigger", help="ask the running daemon to package a container")
    trigger.add_argument("container", help="container name or id")
    trigger.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    return parser


def _api(config: Config, method: str, path: str, body: object = None) -> object:
    """One request to the running daemon's HTTP API."""
    host = config.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.http.port}{path}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if config.http.token is not None:
        request.add_header("Authorization", f"Bearer {config.http.token.reveal()}")
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        detail = json.load(exc).get("error", exc.reason) if exc.fp else exc.reason
        raise KegpackError(f"the daemon answered {exc.code}: {detail}") from None
    except OSError as exc:
        raise KegpackError(f"cannot reach the daemon at {url}: {exc}") from None


def _client(config: Config, args: argparse.Namespace) -> int:
    if args.command == "trigger":
        answer = _api(config, "POST", "/v1/jobs", {"container": args.container})
        assert isinstance(answer, dict)
        print(answer["id"])
        return 0
    answer = _api(config, "GET", "/v1/jobs")
    assert isinstance(answer, dict)
    for job in answer["jobs"]:
        images = ",".join(job["images"]) or "-"
        print(f"{job['id']}  {job['state']:<10} {job['trigger']:<8} {job['name'] or '-'}  {images}")
        if job["error"]:
            print(f"    error: {job['error']}")
    return 0


async def _package(config: Config, args: argparse.Namespace, out: TextIO) -> JobResult:
    request = JobRequest(
        container=args.container,
        trigger="cli",
        overrides=Overrides(
            repository=args.repository,
            tags=tuple(args.tag),
            push=args.push,
            paths=tuple(args.path),
            origin="--",
        ),
    )
    async with Engine.open(
        config.docker.host, tls_verify=config.docker.tls_verify, cert_path=config.docker.cert_path
    ) as engine:
        if sys.stderr.isatty():
            console = Console(stderr=True)
            with Live(console=console, refresh_per_second=10, transient=True) as live:
                result = await package(
                    engine, config, request, TerminalProgress(args.container, live)
                )
        else:
            result = await package(engine, config, request, LogProgress(args.container))
    for reference in result.references:
        digest = result.digests.get(reference)
        print(f"{reference} {digest}" if digest else reference, file=out)
    return result


def _package_once(config: Config, args: argparse.Namespace) -> int:
    started = time.monotonic()
    result = anyio.run(_package, config, args, sys.stdout)
    log.info(
        "%s: packaged %s in %.1fs (layer %s, %s streamed, %d entries)",
        result.container_name,
        ", ".join(result.references),
        time.monotonic() - started,
        result.layer,
        _human(result.streamed_bytes),
        result.entries,
    )
    return 0


def _run_daemon(config: Config, args: argparse.Namespace) -> int:
    anyio.run(Daemon(config).serve)
    return 0


COMMANDS = {"package": _package_once, "run": _run_daemon, "jobs": _client, "trigger": _client}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"kegpackd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(config.log.level, config.log.format)
    try:
        return COMMANDS[args.command](config, args)
    except KegpackError as exc:
        print(f"kegpackd: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("kegpackd: interrupted; temporary objects were removed", file=sys.stderr)
        return 130
