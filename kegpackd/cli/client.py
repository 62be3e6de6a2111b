"""The running daemon's client: ``jobs`` and ``trigger`` over its HTTP API.

The API token goes only to the daemon's own port, straight (no proxy, no redirect), and
only once the port's listener is known to be the daemon's user's or root's.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import shutil
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from kegpackd.cli.parser import check_target
from kegpackd.config import Config
from kegpackd.daemon.api import local_token_path, read_local_token
from kegpackd.engine.credentials import Secret
from kegpackd.errors import KegpackError
from kegpackd.peer import server_uid
from kegpackd.shown import MESSAGE_LIMIT, shown


def _api(config: Config, method: str, path: str, body: object = None) -> dict[str, Any]:
    """One request to the running daemon's HTTP API, straight to its port: never through
    an ``http_proxy`` (which would be handed the token), never following a redirect."""
    host = config.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{config.http.port}{path}"
    headers = {"Authorization": f"Bearer {_client_token(config).reveal()}"}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    connection = http.client.HTTPConnection(host, config.http.port, timeout=30)
    try:
        connection.connect()
        _check_peer(config, connection)
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        status, raw = response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise KegpackError(f"cannot reach the daemon at {url}: {shown(str(exc))}") from None
    finally:
        connection.close()
    answer = _answer(raw)
    if status >= 400 or answer is None:
        detail = answer.get("error") if answer else None
        detail = shown(str(detail)) if detail else f"{len(raw)} bytes that are no JSON object"
        raise KegpackError(f"the daemon at {url} answered {status}: {detail}")
    return answer


def _check_peer(config: Config, connection: http.client.HTTPConnection) -> None:
    """Refuse to hand the token to a port that someone else holds (the daemon down and a
    local user listening in its place): its listener must be the token file's owner's
    (the daemon's user) or root's. Where /proc cannot tell, the request goes ahead."""
    owner = _daemon_uid(config.daemon.state_dir)
    uid = None if connection.sock is None or owner is None else server_uid(connection.sock)
    if uid is not None and uid not in (owner, 0):
        raise KegpackError(
            f"refusing to send the API token to port {config.http.port}: it is held by uid"
            f" {uid}, not by the daemon's user (uid {owner}) or root"
        )


def _daemon_uid(state_dir: Path) -> int | None:
    """The daemon's user: the owner of its token file, else of its state directory."""
    for path in (local_token_path(state_dir), state_dir):
        with contextlib.suppress(OSError):
            return path.stat().st_uid
    return None


def _answer(raw: bytes) -> dict[str, Any] | None:
    try:
        answer = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return answer if isinstance(answer, dict) else None


def _client_token(config: Config) -> Secret:
    """The daemon's local token when this user may read it, else the configured one."""
    path = local_token_path(config.daemon.state_dir)
    try:
        return read_local_token(config.daemon.state_dir)
    except (OSError, KegpackError) as exc:
        if config.http.token is not None:
            return config.http.token
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise KegpackError(
            f"cannot read the daemon's API token {path}: {reason} (run as the daemon's user,"
            " or set http.token_file)"
        ) from None


def client(config: Config, args: argparse.Namespace) -> int:
    """``trigger`` (prints the job's id) and ``jobs`` (a table, or the API's JSON)."""
    if args.command == "trigger":
        check_target(args)
        body: dict[str, object] = (
            {"container": args.container}
            if args.project is None
            else {"project": args.project, "partial": args.partial}
        )
        answer = _api(config, "POST", "/v1/jobs", body)
        if not isinstance(answer.get("id"), str):
            raise KegpackError("the daemon's answer to the trigger has no job id")
        print(shown(answer["id"]))
        return 0
    answer = _api(config, "GET", "/v1/jobs")
    if args.json:
        print(json.dumps(answer, indent=2))
        return 0
    jobs = answer.get("jobs")
    if not isinstance(jobs, list) or not all(isinstance(job, dict) for job in jobs):
        raise KegpackError("the daemon's answer to GET /v1/jobs has no list of jobs")
    width = shutil.get_terminal_size((120, 24)).columns
    try:
        lines = jobs_table(jobs, width)
    except (TypeError, ValueError, OverflowError):
        raise KegpackError("the daemon's answer to GET /v1/jobs has a malformed job") from None
    for line in lines:
        print(line)
    return 0


JOB_COLUMNS = ("JOB", "CONTAINER", "TRIGGER", "STATE", "STARTED", "DURATION", "IMAGES / ERROR")


def jobs_table(jobs: Sequence[Mapping[str, Any]], width: int) -> list[str]:
    """``kegpackd jobs`` for people: a header, local times, durations, fitted to ``width``.

    Every cell is escaped to one line: names and errors come from containers' owners.
    """
    rows: list[tuple[str, ...]] = [JOB_COLUMNS]
    for job in jobs:
        started = job.get("started")
        finished = job.get("finished")
        when = (
            datetime.fromtimestamp(float(started)).strftime("%Y-%m-%d %H:%M:%S") if started else "-"
        )
        took = f"{float(finished) - float(started):.1f}s" if started and finished else "-"
        if job.get("quiesced_seconds") is not None:
            took += f" ({job.get('quiesce')} {float(job['quiesced_seconds']):.1f}s)"
        images = ", ".join(str(i) for i in job.get("images") or ())
        error = job.get("error")
        cells = (
            str(job.get("id", "")),
            str(job.get("name") or str(job.get("container", ""))[:12] or "-"),
            str(job.get("trigger", "")),
            str(job.get("state", "")) + ("*" if job.get("restored") else ""),
            when,
            took,
            f"error: {error}" if error else images or "-",
        )
        rows.append(tuple(shown(cell, MESSAGE_LIMIT) for cell in cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(JOB_COLUMNS) - 1)]
    lines = []
    for row in rows:
        fixed = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
        room = max(width - len(fixed) - 2, 10)
        last = row[-1] if len(row[-1]) <= room else row[-1][: room - 1] + "…"
        lines.append(f"{fixed}  {last}".rstrip())
    if any(job.get("restored") for job in jobs):
        lines.append("* from before the daemon's last restart (its job journal)")
    return lines
